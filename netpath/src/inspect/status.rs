//! `netpath status`: what is attached where, which build runs, how full each map is, and
//! whether an agent looks after it. Everything comes from the kernel (links, programs,
//! map info) and the pinned maps, so it works from any process and while no agent runs.

use std::{os::fd::AsFd, path::Path};

use anyhow::{Context, Result};
use aya::maps::{MapData, MapType};
use netpath_common::{AGENT_F_TCX, LAYOUT_VERSION, Reason, map_names, name_str, prog_names};
use serde::Serialize;

use crate::{datapath, inspect::report, maps::Maps, pin::PinDir, sys};

/// A map this full gets a finding.
pub const FILL_WARN_PCT: f64 = 90.0;

#[derive(Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub host: String,
    pub uplink: String,
    pub bridge: String,
    pub agent: AgentStatus,
    pub versions: Versions,
    pub attachments: Vec<AttachmentRow>,
    pub maps: Vec<MapRow>,
    /// The fleet's store as the agent last saw it; None without `[etcd]`.
    pub etcd: Option<FleetStatus>,
    /// The Docker engine as the agent last saw it; None without `[docker]`.
    pub docker: Option<DockerStatus>,
    /// The host's container networks (docker0 and Docker's others), with their containers.
    pub networks: Vec<crate::inspect::networks::NetworkRow>,
    /// What needs the operator's attention, each with what to do; empty when all is well.
    pub problems: Vec<String>,
}

/// `NP_FLEET`, readable.
#[derive(Serialize, Debug)]
pub struct FleetStatus {
    /// This host's subnet is registered under a live lease.
    pub registered: bool,
    /// Another host holds this host's subnet.
    pub subnet_taken: bool,
    /// Other hosts etcd lists.
    pub hosts: u32,
    /// Registrations left out (not good, or colliding with the config's peers).
    pub skipped: u32,
    /// Seconds since etcd last answered (None: not since the agent started).
    pub last_answer_s: Option<u64>,
    /// Seconds etcd has not answered for; None while it answers.
    pub away_s: Option<u64>,
    pub lease_ttl: u32,
}

/// The fleet's state from `NP_FLEET`; None without `[etcd]`.
pub fn fleet(maps: &Maps, now: u64) -> Result<Option<FleetStatus>> {
    let f = maps.fleet.get(&0, 0)?;
    if f.flags & netpath_common::FLEET_F_CONFIGURED == 0 {
        return Ok(None);
    }
    Ok(Some(FleetStatus {
        registered: f.flags & netpath_common::FLEET_F_REGISTERED != 0,
        subnet_taken: f.flags & netpath_common::FLEET_F_TAKEN != 0,
        hosts: f.hosts,
        skipped: f.skipped,
        last_answer_s: (f.last_ok != 0).then(|| now.saturating_sub(f.last_ok)),
        away_s: (f.away_since != 0).then(|| now.saturating_sub(f.away_since)),
        lease_ttl: f.lease_ttl,
    }))
}

/// `NP_DOCKER`, readable.
#[derive(Serialize, Debug)]
pub struct DockerStatus {
    /// The engine answers.
    pub up: bool,
    /// Running containers it lists.
    pub containers: u32,
    /// Their published ports netpath serves.
    pub ports: u32,
    /// Their published ports netpath refused.
    pub refused: u32,
    /// The first refusal, or why the engine does not answer.
    pub note: Option<String>,
    /// Seconds since the engine last answered (None: not since the agent started).
    pub last_answer_s: Option<u64>,
    /// Seconds the engine has not answered for; None while it answers.
    pub away_s: Option<u64>,
    /// The agent serves the IPAM plugin of networks across hosts.
    pub ipam_plugin: bool,
}

/// The Docker engine's state from `NP_DOCKER`; None without `[docker]`.
pub fn docker(maps: &Maps, now: u64) -> Result<Option<DockerStatus>> {
    let d = maps.docker.get(&0, 0)?;
    if d.flags & netpath_common::DOCKER_F_CONFIGURED == 0 {
        return Ok(None);
    }
    let note = name_str(&d.note);
    Ok(Some(DockerStatus {
        up: d.flags & netpath_common::DOCKER_F_UP != 0,
        containers: d.containers,
        ports: d.ports,
        refused: d.refused,
        note: (!note.is_empty()).then(|| note.to_owned()),
        last_answer_s: (d.last_ok != 0).then(|| now.saturating_sub(d.last_ok)),
        away_s: (d.away_since != 0).then(|| now.saturating_sub(d.away_since)),
        ipam_plugin: d.flags & netpath_common::DOCKER_F_IPAM != 0,
    }))
}

#[derive(Serialize)]
pub struct AgentStatus {
    pub running: bool,
    pub pid: u32,
    /// Unix time the current (or last) agent started.
    pub started_at: u64,
    /// Seconds the agent has been up; None when it is not running.
    pub uptime_s: Option<u64>,
    /// Unix time the datapath was first attached; it outlives agents.
    pub datapath_attached_at: u64,
    pub datapath_uptime_s: u64,
    /// Agents that have adopted this datapath so far.
    pub generation: u32,
}

#[derive(Serialize)]
pub struct Versions {
    /// The netpath that loaded the running programs ("unknown": before version records).
    pub datapath: String,
    pub datapath_object: String,
    pub programs_loaded_at: u64,
    /// This binary.
    pub cli: String,
    pub cli_object: String,
    /// Whether the running programs are this binary's.
    pub same_build: bool,
    /// Layout version of the maps (part of their names).
    pub map_layout: u32,
}

#[derive(Serialize)]
pub struct AttachmentRow {
    pub program: String,
    pub interface: String,
    pub ifindex: u32,
    /// "tc ingress" or "xdp".
    pub hook: &'static str,
    /// "tcx", "clsact (netlink)", "xdp generic", "xdp native".
    pub how: String,
    pub prog_id: Option<u32>,
    /// The kernel's tag of the program (a hash of its instructions).
    pub tag: Option<String>,
    pub link_id: Option<u32>,
    /// "attached", "defunct" (its interface is gone) or "missing".
    pub state: &'static str,
}

#[derive(Serialize)]
pub struct MapRow {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Entries in use (slots in use for arrays indexed by id); None for the ring buffer.
    pub entries: Option<u64>,
    pub max_entries: u32,
    pub fill_pct: Option<f64>,
    pub key_size: u32,
    pub value_size: u32,
}

pub fn map_type_name(t: Option<MapType>) -> &'static str {
    match t {
        Some(MapType::Array) => "array",
        Some(MapType::PerCpuArray) => "percpu array",
        Some(MapType::Hash) => "hash",
        Some(MapType::LruHash) => "lru hash",
        Some(MapType::LpmTrie) => "lpm trie",
        Some(MapType::RingBuf) => "ring buffer",
        _ => "other",
    }
}

pub fn status(pins: &PinDir) -> Result<Status> {
    let maps = Maps::open(pins)?;
    let a = report::agent_row(&maps)?;
    let now = crate::maps::now();
    let mut problems = Vec::new();
    if !a.agent_running {
        problems.push(format!(
            "no agent is running (last pid {}): the datapath keeps forwarding with the maps as they are, but nothing collects expired flows or attaches new containers; start it: netpath run --config ... --pin-dir {}",
            a.agent_pid,
            pins.root.display()
        ));
    }
    let b = maps.build.get(&0, 0)?;
    let cli_object = format!("{:016x}", datapath::object_digest());
    let versions = Versions {
        datapath: match name_str(&b.version) {
            "" => "unknown".to_owned(),
            v => v.to_owned(),
        },
        datapath_object: format!("{:016x}", b.object_digest),
        programs_loaded_at: b.loaded_at,
        cli: env!("CARGO_PKG_VERSION").to_owned(),
        same_build: b.object_digest == datapath::object_digest(),
        cli_object,
        map_layout: LAYOUT_VERSION,
    };
    if !versions.same_build && b.object_digest != 0 {
        problems.push(format!(
            "the running programs (netpath {}, object {}) are not this binary's (netpath {}, object {}): restart the agent with this binary to run its programs",
            versions.datapath, versions.datapath_object, versions.cli, versions.cli_object
        ));
    }
    let attachments = attachments(pins, &maps, &mut problems)?;
    let etcd = fleet(&maps, now)?;
    if let Some(f) = &etcd
        && a.agent_running
    {
        if f.subnet_taken {
            problems.push("this host's subnet is registered in etcd by another host: it is not registered; give it another [host].subnet (see the agent's log)".to_owned());
        } else if let Some(away) = f.away_s {
            problems.push(format!(
                "etcd has not answered for {}: the datapath stays as it is, the agent keeps trying (check [etcd].endpoints and the members)",
                ago(away)
            ));
        }
    }
    let docker = docker(&maps, now)?;
    if let Some(d) = &docker
        && a.agent_running
    {
        if let Some(away) = d.away_s {
            problems.push(format!(
                "the Docker engine has not answered for {} ({}): the published ports stay as they are, the agent keeps trying (check [docker].socket and dockerd)",
                ago(away),
                d.note.as_deref().unwrap_or("not reached yet")
            ));
        } else if d.refused > 0 {
            problems.push(format!(
                "{} port(s) Docker publishes are not served by netpath: {} (see the agent's log for all)",
                d.refused,
                d.note.as_deref().unwrap_or("")
            ));
        }
    }
    let networks = crate::inspect::networks::rows(&maps)?;
    problems.extend(crate::inspect::networks::outside(
        &crate::reconcile::networks::observe(&maps)?,
        maps.subnet()?,
    ));
    let debug = maps.debug.get(&0, 0)?;
    if debug.flags & netpath_common::DEBUG_F_ON != 0 {
        problems.push(format!(
            "{}: each packet it matches costs a log record (netpath monitor --debug shows them); `netpath debug off` when done",
            crate::inspect::decisions::state_text(&debug)
        ));
    }
    let maps_rows = map_rows(pins)?;
    for m in &maps_rows {
        if let Some(f) = m.fill_pct.filter(|f| *f >= FILL_WARN_PCT) {
            problems.push(format!(
                "map {} is {f:.0}% full ({} of {}): {}",
                m.name,
                m.entries.unwrap_or(0),
                m.max_entries,
                full_advice(&m.name)
            ));
        }
    }
    Ok(Status {
        pin_dir: pins.root.display().to_string(),
        host: a.host,
        uplink: a.uplink,
        bridge: a.bridge,
        agent: AgentStatus {
            running: a.agent_running,
            pid: a.agent_pid,
            started_at: a.agent_started_at,
            uptime_s: a
                .agent_running
                .then(|| now.saturating_sub(a.agent_started_at)),
            datapath_attached_at: a.attached_at,
            datapath_uptime_s: now.saturating_sub(a.attached_at),
            generation: a.generation,
        },
        versions,
        attachments,
        maps: maps_rows,
        etcd,
        docker,
        networks,
        problems,
    })
}

fn full_advice(name: &str) -> &'static str {
    if name == map_names::CT || name == map_names::NAT {
        "new flows evict the least recently used ones; raise [conntrack] size (takes effect after `netpath down` and a new start) or lower the timeouts"
    } else {
        "remove entries that are no longer needed"
    }
}

/// Tags of loaded programs by id.
fn program_tags() -> std::collections::HashMap<u32, u64> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.tag()))
        .collect()
}

fn attachments(
    pins: &PinDir,
    maps: &Maps,
    problems: &mut Vec<String>,
) -> Result<Vec<AttachmentRow>> {
    let agent = maps.agent()?;
    let tags = program_tags();
    let mut rows = Vec::new();
    let xdp = datapath::attach::xdp_mode(agent.flags);
    let check = xdp != crate::state::XdpMode::Off && !datapath::attach::xdp_decap(agent.flags);
    let tcx = agent.flags & AGENT_F_TCX != 0;
    let mut expected: Vec<(&str, String, u32, &'static str)> = vec![
        (
            prog_names::FROM_BRIDGE,
            name_str(&agent.bridge).to_owned(),
            agent.bridge_ifindex,
            "tc ingress",
        ),
        (
            prog_names::FROM_UPLINK,
            name_str(&agent.uplink).to_owned(),
            agent.uplink_ifindex,
            "tc ingress",
        ),
    ];
    if xdp != crate::state::XdpMode::Off {
        expected.push((
            prog_names::XDP_UPLINK,
            name_str(&agent.uplink).to_owned(),
            agent.uplink_ifindex,
            "xdp",
        ));
    }
    let from_link = |pin: &Path, prog: &str, hook: &'static str, how: String| {
        let facts = sys::obj_get(pin).and_then(|fd| sys::link_facts(fd.as_fd()));
        match facts {
            Ok(f) => AttachmentRow {
                program: prog.to_owned(),
                interface: crate::iface::name_of(f.ifindex).unwrap_or_else(|| "-".into()),
                ifindex: f.ifindex,
                hook,
                how,
                prog_id: Some(f.prog_id),
                tag: tags.get(&f.prog_id).map(|t| format!("{t:016x}")),
                link_id: Some(f.id),
                state: if f.ifindex == 0 {
                    "defunct"
                } else {
                    "attached"
                },
            },
            Err(_) => AttachmentRow {
                program: prog.to_owned(),
                interface: "-".into(),
                ifindex: 0,
                hook,
                how,
                prog_id: None,
                tag: None,
                link_id: None,
                state: "missing",
            },
        }
    };
    for (prog, iface, ifindex, hook) in expected {
        let how = match hook {
            "xdp" if check => format!("xdp {xdp}, checks only (TC decapsulates)"),
            "xdp" => format!("xdp {xdp}"),
            _ if tcx => "tcx".to_owned(),
            _ => "clsact (netlink)".to_owned(),
        };
        let row = if hook == "xdp" || tcx {
            // np_xdp_check runs under np_xdp_uplink's pin.
            let shown = if hook == "xdp" && check {
                prog_names::XDP_CHECK
            } else {
                prog
            };
            let mut r = from_link(&pins.link_path(prog), shown, hook, how);
            if r.state == "missing" {
                r.interface = iface.clone();
                r.ifindex = ifindex;
            }
            r
        } else {
            // A clsact filter: nothing is pinned; netlink would tell, the agent's record
            // says where it put it.
            AttachmentRow {
                program: prog.to_owned(),
                interface: iface.clone(),
                ifindex,
                hook,
                how,
                prog_id: None,
                tag: None,
                link_id: None,
                state: "attached",
            }
        };
        match row.state {
            "missing" => problems.push(format!(
                "{prog} is not attached to {iface}: its pinned link is gone; restart the agent to attach it again"
            )),
            "defunct" => problems.push(format!(
                "{prog}'s link lost its interface ({iface} was removed?): restart the agent once {iface} exists again"
            )),
            _ => {}
        }
        rows.push(row);
    }
    // np_from_bridge on each other network's bridge, np_from_container on every bridge
    // port: one link per interface.
    for prog in [prog_names::FROM_BRIDGE, prog_names::FROM_CONTAINER] {
        let prefix = format!("{prog}@");
        let mut links: Vec<_> = std::fs::read_dir(pins.links())
            .with_context(|| format!("reading {}", pins.links().display()))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        links.sort();
        for p in links {
            rows.push(from_link(&p, prog, "tc ingress", "tcx".into()));
        }
    }
    Ok(rows)
}

/// Every pinned map with its entries and capacity. Hash maps and tries are counted by
/// walking their keys; the arrays indexed by peer or rule id take the count of the map
/// that holds one entry per peer (NP_PEERS) or rule (NP_POLICY_INFO).
pub fn map_rows(pins: &PinDir) -> Result<Vec<MapRow>> {
    let mut maps = Vec::new();
    let mut counted = std::collections::HashMap::new();
    for name in map_names::ALL {
        let path = pins.map_path(name);
        // The pinned map's own fd (BPF_OBJ_GET): reopening it by id would take
        // CAP_SYS_ADMIN, which the agent serving metrics does not have.
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let info = data.info()?;
        let kind = info.map_type().ok();
        if let Some(MapType::Hash | MapType::LruHash | MapType::LpmTrie) = kind {
            counted.insert(*name, sys::count_keys(data.fd().as_fd(), info.key_size())?);
        }
        maps.push((*name, kind, info));
    }
    let peers = counted.get(map_names::PEERS).copied().unwrap_or(0);
    let rules = counted.get(map_names::POLICY_INFO).copied().unwrap_or(0);
    let mut rows = Vec::new();
    for (name, kind, info) in maps {
        let max = info.max_entries();
        // Fill levels where entries come and go: hash maps, tries, and the arrays
        // indexed by peer or rule id. Fixed arrays (one entry, one per reason) have none.
        let (entries, fills) = match (counted.get(name), kind) {
            (Some(n), _) => (Some(*n), true),
            (None, Some(MapType::RingBuf)) => (None, false),
            (None, _) => match name {
                map_names::PEER_INFO | map_names::PEER_STATS => (Some(peers), true),
                // Rule ids plus the default action's slot 0.
                map_names::POLICY_STATS => (Some(rules + 1), true),
                map_names::COUNTERS => (Some(Reason::ALL.len() as u64), false),
                _ => (Some(max as u64), false),
            },
        };
        rows.push(MapRow {
            name: name.to_string(),
            kind: map_type_name(kind).to_owned(),
            fill_pct: entries
                .filter(|_| fills)
                .map(|e| 100.0 * e as f64 / max.max(1) as f64),
            entries,
            max_entries: max,
            key_size: info.key_size(),
            value_size: info.value_size(),
        })
    }
    Ok(rows)
}

/// "3d 4h", "5m 2s": a duration as people read it.
pub fn ago(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A Unix time as UTC, "2026-11-22 10:04:05 UTC".
pub fn utc(unix: u64) -> String {
    if unix == 0 {
        return "never".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    format!(
        "{} UTC",
        humantime::format_rfc3339_seconds(t)
            .to_string()
            .trim_end_matches('Z')
            .replace('T', " ")
    )
}

pub fn text(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "host {} (uplink {}, bridge {}), datapath at {}",
        s.host, s.uplink, s.bridge, s.pin_dir
    );
    let _ = writeln!(
        o,
        "datapath: attached {} (up {}), adopted by {} agent{}",
        utc(s.agent.datapath_attached_at),
        ago(s.agent.datapath_uptime_s),
        s.agent.generation,
        if s.agent.generation == 1 { "" } else { "s" }
    );
    let _ = match s.agent.uptime_s {
        Some(up) => writeln!(
            o,
            "agent: running, pid {}, up {} (since {})",
            s.agent.pid,
            ago(up),
            utc(s.agent.started_at)
        ),
        None => writeln!(o, "agent: NOT RUNNING (last pid {})", s.agent.pid),
    };
    let v = &s.versions;
    let _ = writeln!(
        o,
        "programs: netpath {} (object {}), loaded {}; this CLI: netpath {} (object {}){}; map layout V{}",
        v.datapath,
        v.datapath_object,
        utc(v.programs_loaded_at),
        v.cli,
        v.cli_object,
        if v.same_build {
            ", the same build"
        } else {
            ", ANOTHER build"
        },
        v.map_layout
    );
    if let Some(f) = &s.etcd {
        let _ = writeln!(
            o,
            "etcd: {}; {} other hosts{}; {}",
            if f.subnet_taken {
                "this host's subnet is ANOTHER HOST'S"
            } else if f.registered {
                "registered"
            } else {
                "NOT registered"
            },
            f.hosts,
            if f.skipped > 0 {
                format!(" ({} registrations skipped)", f.skipped)
            } else {
                String::new()
            },
            match (f.away_s, f.last_answer_s) {
                (Some(away), _) => format!("NOT ANSWERING for {}", ago(away)),
                (None, Some(last)) => format!("last answer {} ago", ago(last)),
                (None, None) => "not reached yet".to_owned(),
            }
        );
    }
    if let Some(d) = &s.docker {
        let _ = writeln!(
            o,
            "docker: {}; {} running containers, {} published ports served{}{}",
            match (d.away_s, d.last_answer_s) {
                (Some(away), _) => format!("NOT ANSWERING for {}", ago(away)),
                (None, Some(last)) => format!("answering (last {} ago)", ago(last)),
                (None, None) => "not reached yet".to_owned(),
            },
            d.containers,
            d.ports,
            if d.refused > 0 {
                format!(", {} REFUSED", d.refused)
            } else {
                String::new()
            },
            if d.ipam_plugin {
                "; IPAM plugin of networks across hosts served"
            } else {
                ""
            }
        );
    }
    let across: Vec<_> = s
        .networks
        .iter()
        .filter_map(|n| n.across_hosts.as_ref().map(|a| (n, a)))
        .collect();
    if !across.is_empty() {
        let _ = writeln!(
            o,
            "across hosts: {} networks ({}), {} containers here, {} on other hosts routed",
            across.len(),
            across
                .iter()
                .map(|(n, a)| format!("{} {} vni {}", n.network, a.mode, a.vni))
                .collect::<Vec<_>>()
                .join(", "),
            across.iter().map(|(n, _)| n.containers).sum::<usize>(),
            across
                .iter()
                .map(|(_, a)| a.remote_containers)
                .sum::<usize>()
        );
    }
    if s.networks.len() > 1 {
        let _ = writeln!(o, "\nnetworks");
        o.push_str(&crate::inspect::networks::table(&s.networks));
    }
    let _ = writeln!(o, "\nattachments");
    o.push_str(&report::table(
        &[
            "PROGRAM",
            "INTERFACE",
            "IFINDEX",
            "HOOK",
            "HOW",
            "PROG ID",
            "TAG",
            "STATE",
        ],
        &s.attachments
            .iter()
            .map(|a| {
                vec![
                    a.program.clone(),
                    a.interface.clone(),
                    a.ifindex.to_string(),
                    a.hook.to_owned(),
                    a.how.clone(),
                    a.prog_id.map(|i| i.to_string()).unwrap_or("-".into()),
                    a.tag.clone().unwrap_or("-".into()),
                    a.state.to_owned(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    let _ = writeln!(o, "\nmaps");
    o.push_str(&report::table(
        &["MAP", "TYPE", "ENTRIES", "MAX", "FILL"],
        &s.maps
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.kind.clone(),
                    m.entries.map(|e| e.to_string()).unwrap_or("-".into()),
                    m.max_entries.to_string(),
                    m.fill_pct.map(|f| format!("{f:.1}%")).unwrap_or("-".into()),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    if s.problems.is_empty() {
        let _ = writeln!(o, "\nproblems: none");
    } else {
        let _ = writeln!(o, "\nproblems:");
        for p in &s.problems {
            let _ = writeln!(o, "  - {p}");
        }
    }
    o
}
