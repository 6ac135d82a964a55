//! What `stats` and `dump` print: tables for people, JSON for programs. Both come from
//! the same rows, so they never disagree.

use anyhow::Result;
use netpath_common::{Reason, name_str, reason::Verdict};
use serde::Serialize;

use crate::{datapath, maps::Maps};

#[derive(Serialize)]
pub struct CounterRow {
    pub reason: String,
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub description: &'static str,
}

#[derive(Serialize)]
pub struct PeerRow {
    pub id: u32,
    pub name: String,
    pub subnet: String,
    pub underlay: String,
    pub mode: String,
    pub origin: &'static str,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Its containers of networks across hosts that this host routes to (/32 routes).
    pub across_hosts_containers: usize,
}

#[derive(Serialize)]
pub struct AgentRow {
    pub host: String,
    pub uplink: String,
    pub bridge: String,
    pub agent_pid: u32,
    pub agent_running: bool,
    pub agent_started_at: u64,
    pub attached_at: u64,
    pub generation: u32,
    pub tc_attach: &'static str,
    /// XDP on the uplink: off, generic or native.
    pub xdp: &'static str,
    /// Whether XDP decapsulates tunnel packets: false when it is off, or only checks
    /// (the kernel gives XDP programs no metadata; TC decapsulates).
    pub xdp_decap: bool,
}

#[derive(Serialize)]
pub struct Stats {
    pub agent: AgentRow,
    pub totals: Totals,
    pub counters: Vec<CounterRow>,
    pub peers: Vec<PeerRow>,
    pub conntrack: crate::inspect::flows::CtSummary,
    /// Rules with their counters, the default action's.
    pub policy: crate::inspect::policy::PolicyReport,
}

#[derive(Serialize, Default)]
pub struct Totals {
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
}

pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Forward => "forward",
        Verdict::Pass => "pass",
        Verdict::Drop => "drop",
    }
}

/// Counters by reason; `all` includes reasons that counted nothing.
pub fn counter_rows(maps: &Maps, all: bool) -> Result<Vec<CounterRow>> {
    let mut rows = Vec::new();
    for (i, c) in maps.counters()? {
        let Some(r) = Reason::from_u32(i) else {
            if c.packets != 0 {
                // Counted by newer programs than this CLI knows: show, never hide.
                rows.push(CounterRow {
                    reason: format!("reason-{i}"),
                    verdict: "unknown",
                    packets: c.packets,
                    bytes: c.bytes,
                    description: "a reason this netpath binary does not know (newer programs?)",
                });
            }
            continue;
        };
        if all || c.packets != 0 {
            rows.push(CounterRow {
                reason: r.name().to_owned(),
                verdict: verdict_name(r.verdict()),
                packets: c.packets,
                bytes: c.bytes,
                description: r.description().trim(),
            });
        }
    }
    Ok(rows)
}

pub fn peer_rows(maps: &Maps) -> Result<Vec<PeerRow>> {
    let mut rows = Vec::new();
    let mut across = std::collections::HashMap::<u32, usize>::new();
    for v in crate::reconcile::remote::installed(maps)?.values() {
        *across.entry(v.id).or_default() += 1;
    }
    for (id, info) in maps.peer_infos()? {
        let p = crate::reconcile::peers::peer_from_info(&info);
        let s = maps.peer_stats(id)?;
        rows.push(PeerRow {
            id,
            name: p.name,
            subnet: p.subnet.to_string(),
            underlay: p.underlay.to_string(),
            mode: p.mode.to_string(),
            origin: crate::state::Origin::from_map(info.origin).as_str(),
            tx_packets: s.tx.packets,
            tx_bytes: s.tx.bytes,
            rx_packets: s.rx.packets,
            rx_bytes: s.rx.bytes,
            across_hosts_containers: across.get(&id).copied().unwrap_or(0),
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// The peer whose container subnet holds `a` (or, with `underlay`, whose underlay
/// address `a` is).
pub fn peer_of(rows: &[PeerRow], a: std::net::Ipv4Addr, underlay: bool) -> Option<&PeerRow> {
    rows.iter().find(|p| {
        p.subnet
            .parse::<ipnet::Ipv4Net>()
            .is_ok_and(|n| n.contains(&a))
            || (underlay && p.underlay.parse() == Ok(a))
    })
}

pub fn agent_row(maps: &Maps) -> Result<AgentRow> {
    let a = maps.agent()?;
    Ok(AgentRow {
        host: name_str(&a.host_name).to_owned(),
        uplink: name_str(&a.uplink).to_owned(),
        bridge: name_str(&a.bridge).to_owned(),
        agent_pid: a.agent_pid,
        agent_running: datapath::down::agent_alive(a.agent_pid),
        agent_started_at: a.agent_started_at,
        attached_at: a.attached_at,
        generation: a.generation,
        tc_attach: if a.flags & netpath_common::AGENT_F_TCX != 0 {
            "tcx"
        } else {
            "netlink"
        },
        xdp: datapath::attach::xdp_mode(a.flags).as_str(),
        xdp_decap: datapath::attach::xdp_decap(a.flags),
    })
}

pub fn stats(maps: &Maps) -> Result<Stats> {
    let counters = counter_rows(maps, false)?;
    let mut totals = Totals::default();
    for c in &counters {
        match c.verdict {
            "forward" => totals.forwarded += c.packets,
            "drop" => totals.dropped += c.packets,
            _ => totals.passed += c.packets,
        }
    }
    Ok(Stats {
        agent: agent_row(maps)?,
        totals,
        counters,
        peers: peer_rows(maps)?,
        conntrack: crate::inspect::flows::summary(maps)?,
        policy: crate::inspect::policy::report(maps)?,
    })
}

/// Per-second rates between two readings of [`stats`] (`netpath stats --watch`); only
/// what moved.
#[derive(Serialize)]
pub struct Rates {
    pub interval_s: f64,
    pub reasons: Vec<ReasonRate>,
    pub peers: Vec<PeerRate>,
    pub rules: Vec<RuleRate>,
}

#[derive(Serialize)]
pub struct ReasonRate {
    pub reason: String,
    pub verdict: &'static str,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

#[derive(Serialize)]
pub struct PeerRate {
    pub name: String,
    pub tx_packets_per_s: f64,
    pub tx_bytes_per_s: f64,
    pub rx_packets_per_s: f64,
    pub rx_bytes_per_s: f64,
}

#[derive(Serialize)]
pub struct RuleRate {
    /// The rule's id; 0 is the default action.
    pub id: u32,
    pub rule: String,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

pub fn rates(old: &Stats, new: &Stats, secs: f64) -> Rates {
    let secs = secs.max(1e-3);
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let reasons = new
        .counters
        .iter()
        .filter_map(|c| {
            let o = old.counters.iter().find(|o| o.reason == c.reason);
            let (p, b) = o.map_or((0, 0), |o| (o.packets, o.bytes));
            (c.packets > p).then(|| ReasonRate {
                reason: c.reason.clone(),
                verdict: c.verdict,
                packets_per_s: per(p, c.packets),
                bytes_per_s: per(b, c.bytes),
            })
        })
        .collect();
    // Readings by key: thousands of peers and rules must not be paired one by one.
    let old_peers: std::collections::HashMap<&str, &PeerRow> =
        old.peers.iter().map(|p| (p.name.as_str(), p)).collect();
    let old_rules: std::collections::HashMap<u32, &crate::inspect::policy::RuleRow> =
        old.policy.rules.iter().map(|r| (r.id, r)).collect();
    let peers = new
        .peers
        .iter()
        .filter_map(|n| {
            let o = old_peers.get(n.name.as_str());
            let (tp, tb, rp, rb) = o.map_or((0, 0, 0, 0), |o| {
                (o.tx_packets, o.tx_bytes, o.rx_packets, o.rx_bytes)
            });
            (n.tx_packets > tp || n.rx_packets > rp).then(|| PeerRate {
                name: n.name.clone(),
                tx_packets_per_s: per(tp, n.tx_packets),
                tx_bytes_per_s: per(tb, n.tx_bytes),
                rx_packets_per_s: per(rp, n.rx_packets),
                rx_bytes_per_s: per(rb, n.rx_bytes),
            })
        })
        .collect();
    let mut rules: Vec<RuleRate> = new
        .policy
        .rules
        .iter()
        .filter_map(|r| {
            let o = old_rules.get(&r.id);
            let (p, b) = o.map_or((0, 0), |o| (o.packets, o.bytes));
            (r.packets > p).then(|| RuleRate {
                id: r.id,
                rule: format!("{} -> {} {} {} {}", r.from, r.to, r.proto, r.port, r.action),
                packets_per_s: per(p, r.packets),
                bytes_per_s: per(b, r.bytes),
            })
        })
        .collect();
    if new.policy.default_packets > old.policy.default_packets {
        rules.push(RuleRate {
            id: 0,
            rule: format!("default {}", new.policy.default_action),
            packets_per_s: per(old.policy.default_packets, new.policy.default_packets),
            bytes_per_s: per(old.policy.default_bytes, new.policy.default_bytes),
        });
    }
    Rates {
        interval_s: secs,
        reasons,
        peers,
        rules,
    }
}

pub fn rates_text(r: &Rates) -> String {
    let f = |x: f64| format!("{x:.1}");
    let mut out = format!("rates over the last {:.1} s\n\n", r.interval_s);
    let rows: Vec<Vec<String>> = r
        .reasons
        .iter()
        .map(|c| {
            vec![
                c.reason.clone(),
                c.verdict.into(),
                f(c.packets_per_s),
                f(c.bytes_per_s),
            ]
        })
        .collect();
    out += &table(&["reason", "verdict", "packets/s", "bytes/s"], &rows);
    if !r.peers.is_empty() {
        let rows: Vec<Vec<String>> = r
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    f(p.tx_packets_per_s),
                    f(p.tx_bytes_per_s),
                    f(p.rx_packets_per_s),
                    f(p.rx_bytes_per_s),
                ]
            })
            .collect();
        out.push('\n');
        out += &table(
            &[
                "peer",
                "tx packets/s",
                "tx bytes/s",
                "rx packets/s",
                "rx bytes/s",
            ],
            &rows,
        );
    }
    if !r.rules.is_empty() {
        let rows: Vec<Vec<String>> = r
            .rules
            .iter()
            .map(|x| {
                vec![
                    x.id.to_string(),
                    x.rule.clone(),
                    f(x.packets_per_s),
                    f(x.bytes_per_s),
                ]
            })
            .collect();
        out.push('\n');
        out += &table(&["rule", "", "packets/s", "bytes/s"], &rows);
    }
    out
}

/// Left-aligned text table with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub fn counters_table(rows: &[CounterRow]) -> String {
    table(
        &["REASON", "VERDICT", "PACKETS", "BYTES"],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.reason.clone(),
                    r.verdict.to_owned(),
                    r.packets.to_string(),
                    r.bytes.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

pub fn peers_table(rows: &[PeerRow]) -> String {
    table(
        &[
            "PEER",
            "SUBNET",
            "UNDERLAY",
            "MODE",
            "ORIGIN",
            "TX PKTS",
            "TX BYTES",
            "RX PKTS",
            "RX BYTES",
            "ACROSS-HOSTS",
        ],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.subnet.clone(),
                    r.underlay.clone(),
                    r.mode.clone(),
                    r.origin.to_owned(),
                    r.tx_packets.to_string(),
                    r.tx_bytes.to_string(),
                    r.rx_packets.to_string(),
                    r.rx_bytes.to_string(),
                    r.across_hosts_containers.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

pub fn ago(t: u64) -> String {
    let s = crate::maps::now().saturating_sub(t);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn stats_text(s: &Stats) -> String {
    let a = &s.agent;
    let mut out = format!(
        "host {} (uplink {}, bridge {}, {}, xdp {}): datapath attached {} ago; agent pid {} {}\n",
        a.host,
        a.uplink,
        a.bridge,
        a.tc_attach,
        a.xdp,
        ago(a.attached_at),
        a.agent_pid,
        if a.agent_running {
            format!("running, up {}", ago(a.agent_started_at))
        } else {
            "not running".into()
        },
    );
    out += &format!(
        "forwarded {}  passed to stack {}  dropped {}\n\n",
        s.totals.forwarded, s.totals.passed, s.totals.dropped
    );
    let c = &s.conntrack;
    out += &format!(
        "conntrack {} flows, nat {} entries, of {} each ({:.1}% full); expired {}, evicted halves removed {}; last collected {}\n\n",
        c.ct_entries,
        c.nat_entries,
        c.size,
        100.0 * c.ct_entries.max(c.nat_entries) as f64 / c.size.max(1) as f64,
        c.expired_total,
        c.orphans_total,
        if c.last_gc_at == 0 {
            "never".to_owned()
        } else {
            format!("{} ago", ago(c.last_gc_at))
        },
    );
    out += &counters_table(&s.counters);
    out.push('\n');
    out += &peers_table(&s.peers);
    if s.policy.enabled {
        out.push('\n');
        out += &policies_table(&s.policy);
    }
    out
}

pub fn flows_table(rows: &[crate::inspect::flows::FlowRow]) -> String {
    table(
        &[
            "PROTO",
            "KIND",
            "CONTAINER",
            "REMOTE",
            "HOST PORT",
            "RULE",
            "STATE",
            "AGE",
            "IDLE",
            "EXPIRES IN",
        ],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.proto.clone(),
                    r.kind.to_owned(),
                    r.container.clone(),
                    r.remote.clone(),
                    r.host_port.to_string(),
                    if r.rule == 0 {
                        "default".into()
                    } else {
                        r.rule.to_string()
                    },
                    r.state.to_owned(),
                    format!("{}s", r.age_secs),
                    format!("{}s", r.idle_secs),
                    format!("{}s", r.expires_in_secs),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

pub fn nat_table(rows: &[crate::inspect::flows::NatRow]) -> String {
    table(
        &["PROTO", "REMOTE", "HOST PORT", "CONTAINER"],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.proto.clone(),
                    r.remote.clone(),
                    r.host_port.to_string(),
                    r.container.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

pub fn ports_table(rows: &[crate::inspect::flows::PortRow]) -> String {
    table(
        &["PROTO", "HOST PORT", "CONTAINER", "ORIGIN", "FLOWS"],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.proto.clone(),
                    r.host_port.to_string(),
                    format!("{}:{}", r.container, r.port),
                    r.origin.to_owned(),
                    r.flows.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

pub fn policies_table(r: &crate::inspect::policy::PolicyReport) -> String {
    let mut rows: Vec<Vec<String>> = r
        .rules
        .iter()
        .map(|x| {
            vec![
                x.id.to_string(),
                x.from.clone(),
                x.to.clone(),
                x.proto.clone(),
                x.port.clone(),
                x.action.clone(),
                x.origin.to_owned(),
                x.packets.to_string(),
                x.bytes.to_string(),
            ]
        })
        .collect();
    rows.push(vec![
        "default".into(),
        "*".into(),
        "*".into(),
        "any".into(),
        "any".into(),
        r.default_action.clone(),
        "config".into(),
        r.default_packets.to_string(),
        r.default_bytes.to_string(),
    ]);
    let mut out = format!(
        "policy {} (default {}, {} rules, {} lookup entries, generation {}, reject answers at most {}/s per CPU)\n",
        if r.enabled {
            "on"
        } else {
            "off: no rules, default allow"
        },
        r.default_action,
        r.rules.len(),
        r.entries,
        r.generation,
        r.reject_rate_per_cpu
    );
    out += &table(
        &[
            "ID", "FROM", "TO", "PROTO", "PORT", "ACTION", "ORIGIN", "PACKETS", "BYTES",
        ],
        &rows,
    );
    if !r.groups.is_empty() {
        out += "\ngroups:\n";
        for (g, nets) in &r.groups {
            out += &format!("  {g}: {}\n", nets.join(", "));
        }
    }
    out
}
