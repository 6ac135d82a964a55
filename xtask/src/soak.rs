//! `cargo xtask soak [--minutes N]`: netpath under load and churn for minutes (not in CI).
//!
//! Three hosts (h1-h2 direct, every pair with h3 vxlan), two containers each and an
//! outside host; masquerade and a policy on every host. For N minutes:
//! - traffic: every container pings its namesake on each other host at 10/s (12 pings,
//!   both modes), a container of h2 opens and closes 20 masqueraded connections a second
//!   to the outside, the outside host does 200 requests and responses a second on one
//!   connection through h1's published port;
//! - churn: h1's and h2's agents are restarted every 30 s (kill -9 and SIGTERM in turn,
//!   15 s apart), and every 10 s a peer is added to or removed from h1, a published port
//!   to or from h2, a policy rule to or from h3. h3's agent runs throughout.
//!
//! At the end: no ping lost and the connections all worked; the counters reconcile (what
//! each host counted as sent to a peer, that peer counted as received from it, and no
//! drop was counted); after the timeouts no conntrack or NAT entry is left; h3's agent's
//! memory is flat. Results in target/soak/results.json.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netpath_tests::{Lab, PeerMode, Spec, in_ns, output, ping};
use serde_json::{Value, json};

const PING_INTERVAL: f64 = 0.1;

fn lab() -> Result<Lab> {
    let lab = Lab::new(Spec {
        hosts: 3,
        containers: 2,
        locked_down: true,
        outside: true,
    })?;
    lab.write_configs(|a, b| {
        if a.idx == 3 || b.idx == 3 {
            PeerMode::Vxlan
        } else {
            PeerMode::Direct
        }
    })?;
    for i in 0..3 {
        lab.set_host_option(i, "masquerade", "true")?;
        lab.append_config(
            i,
            "[conntrack]\ntcp_syn = 5\ntcp_closing = 5\nudp = 5\nicmp = 5\ngc_interval = 1\n\n\
             [[policy]]\nfrom = \"10.244.0.0/16\"\nto = \"10.244.0.0/16\"\nproto = \"tcp\"\nport = 9999\naction = \"reject\"\n",
        )?;
    }
    let c1 = lab.hosts[0].containers[0].ip.clone();
    lab.append_config(
        0,
        &format!(
            "\n[[publish]]\nproto = \"tcp\"\nhost_port = 8080\ncontainer = \"{c1}\"\nport = 7000\n"
        ),
    )?;
    Ok(lab)
}

/// `netpath ARGS` on host `i`; the error says which command failed.
fn netpath(lab: &Lab, i: usize, args: &[&str]) -> Result<String> {
    output(lab.netpath(i, args)).with_context(|| format!("h{}: netpath {}", i + 1, args.join(" ")))
}

pub fn run(minutes: f64) -> Result<()> {
    let secs = (minutes * 60.0).max(60.0);
    let probe = netpath_tests::probe_bin();
    let probe = probe.to_str().context("probe path")?.to_owned();
    let mut lab = lab()?;
    lab.start_all()?;
    let out_ns = lab.outside().ns.clone();
    let out = lab.outside().addr.clone();
    let h1 = lab.hosts[0].underlay.clone();
    for ns in [&out_ns, &lab.hosts[0].containers[0].ns.clone()] {
        lab.spawn_in(
            ns,
            Path::new(&probe),
            &["serve", "7000", &(secs as u64 + 60).to_string()],
        )?;
    }
    thread::sleep(Duration::from_millis(500));
    eprintln!(
        "[soak] {:.0} s: 3 hosts, pings in both modes, masquerade churn, a published port; agents restarted every 30 s",
        secs
    );

    // Traffic, each with a fixed end.
    let count = (secs / PING_INTERVAL) as u32;
    let mut pings = Vec::new();
    for a in 0..3 {
        for b in 0..3 {
            if a == b {
                continue;
            }
            for c in 0..2 {
                let from = lab.hosts[a].containers[c].ns.clone();
                let to = lab.hosts[b].containers[c].ip.clone();
                let name = format!("h{}c{} -> h{}c{}", a + 1, c + 1, b + 1, c + 1);
                pings.push((
                    name,
                    thread::spawn(move || ping(&from, &to, count, &PING_INTERVAL.to_string())),
                ));
            }
        }
    }
    let churn_conns = {
        let (ns, cmd) = (
            lab.hosts[1].containers[0].ns.clone(),
            format!("{probe} connrate {out} 7000 {} 20", secs - 5.0),
        );
        thread::spawn(move || output(in_ns(&ns, &cmd)))
    };
    let rr = {
        let (ns, cmd) = (
            out_ns.clone(),
            format!("{probe} rr {h1} 8080 {} 200", secs - 5.0),
        );
        thread::spawn(move || output(in_ns(&ns, &cmd)))
    };

    // Churn, and the samples.
    let start = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    let mut restarts = 0u32;
    let mut changes = 0u32;
    let mut rule_id: Option<String> = None;
    let mut mem: Vec<(u64, u64)> = Vec::new(); // (second, h3 agent KiB)
    let mut ct_max = [0usize; 3];
    let c2_h2 = lab.hosts[1].containers[0].ip.clone();
    let mut t = 0u64;
    while (t as f64) < secs - 5.0 {
        t += 1;
        let wake = start + Duration::from_secs(t);
        if let Some(d) = wake.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        if t.is_multiple_of(15) {
            // h1 at 15, 45, ...; h2 at 30, 60, ...; kill -9 and SIGTERM in turn.
            let i = if t % 30 == 15 { 0 } else { 1 };
            if (t / 30).is_multiple_of(2) {
                lab.kill_agent(i);
            } else {
                lab.stop_agent(i);
            }
            if let Err(e) = lab.start(i) {
                errors.push(format!("{t} s: restarting h{}: {e:#}", i + 1));
            }
            restarts += 1;
        }
        if t.is_multiple_of(5) {
            let add = t % 10 == 5;
            let r = if add {
                netpath(
                    &lab,
                    0,
                    &[
                        "peer",
                        "add",
                        "soak",
                        "--subnet",
                        "10.244.99.0/24",
                        "--underlay",
                        "198.18.0.99",
                        "--mode",
                        "direct",
                    ],
                )
                .and_then(|_| {
                    netpath(
                        &lab,
                        1,
                        &["publish", "add", "tcp", "9090", &format!("{c2_h2}:7000")],
                    )
                })
                .and_then(|_| {
                    netpath(
                        &lab,
                        2,
                        &[
                            "policy",
                            "add",
                            "--from",
                            "10.244.99.0/24",
                            "--to",
                            "10.244.13.0/24",
                            "--proto",
                            "tcp",
                            "--port",
                            "9998",
                            "--action",
                            "deny",
                        ],
                    )
                })
                .map(|o| {
                    rule_id = o
                        .split_whitespace()
                        .nth(2)
                        .map(|id| id.trim_end_matches(':').to_owned());
                })
            } else {
                netpath(&lab, 0, &["peer", "del", "soak"])
                    .and_then(|_| netpath(&lab, 1, &["publish", "del", "tcp", "9090"]))
                    .and_then(|_| match rule_id.take() {
                        Some(id) => netpath(&lab, 2, &["policy", "del", &id]).map(|_| ()),
                        None => bail!("no rule id from the last policy add"),
                    })
            };
            match r {
                Ok(()) => changes += 3,
                Err(e) => errors.push(format!("{t} s: {e:#}")),
            }
        }
        if t.is_multiple_of(10) {
            if let Some(kib) = lab
                .agent_pid(2)
                .and_then(|p| netpath_tests::status_kib(p, "VmRSS:").ok())
            {
                mem.push((t, kib));
            }
            for (i, m) in ct_max.iter_mut().enumerate() {
                if let Ok(v) = output(lab.netpath(i, &["stats", "--json"]))
                    && let Ok(s) = serde_json::from_str::<Value>(&v)
                {
                    *m = (*m).max(s["conntrack"]["ct_entries"].as_u64().unwrap_or(0) as usize);
                }
            }
        }
    }

    // The end: traffic results.
    let mut failed: Vec<String> = errors.clone();
    let mut ping_rows = Vec::new();
    let (mut sent, mut got) = (0u64, 0u64);
    for (name, h) in pings {
        match h
            .join()
            .map_err(|_| anyhow::anyhow!("ping thread panicked"))?
        {
            Ok((s, g, _)) => {
                sent += s as u64;
                got += g as u64;
                if g != s {
                    failed.push(format!("ping {name}: {g} of {s}"));
                }
                ping_rows.push(json!({"path": name, "sent": s, "received": g}));
            }
            Err(e) => failed.push(format!("ping {name}: {e:#}")),
        }
    }
    let conns = churn_conns
        .join()
        .map_err(|_| anyhow::anyhow!("connrate panicked"))?;
    let first_line = |o: String| o.lines().next().unwrap_or("").trim().to_owned();
    let conns = match conns {
        Ok(o) => first_line(o),
        Err(e) => {
            failed.push(format!("masqueraded connections: {e:#}"));
            String::new()
        }
    };
    if !conns.contains(", 0 failed") {
        failed.push(format!("masqueraded connections: {conns}"));
    }
    let rr = match rr.join().map_err(|_| anyhow::anyhow!("rr panicked"))? {
        Ok(o) => first_line(o),
        Err(e) => {
            failed.push(format!("published-port request/response: {e:#}"));
            String::new()
        }
    };

    // Counters: what each host sent to a peer, the peer received from it; no drop.
    let stats: Vec<Value> = (0..3)
        .map(|i| netpath(&lab, i, &["stats", "--json"]).and_then(|o| Ok(serde_json::from_str(&o)?)))
        .collect::<Result<_>>()?;
    let peer = |i: usize, name: &str| -> (u64, u64) {
        stats[i]["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .map_or((0, 0), |p| {
                (
                    p["tx_packets"].as_u64().unwrap_or(0),
                    p["rx_packets"].as_u64().unwrap_or(0),
                )
            })
    };
    let mut pairs = Vec::new();
    for a in 0..3 {
        for b in 0..3 {
            if a == b {
                continue;
            }
            let (tx, _) = peer(a, &lab.hosts[b].name);
            let (_, rx) = peer(b, &lab.hosts[a].name);
            if tx != rx || tx == 0 {
                failed.push(format!(
                    "h{} counted {tx} packets sent to h{}, which counted {rx} received",
                    a + 1,
                    b + 1
                ));
            }
            pairs.push(json!({"from": lab.hosts[a].name, "to": lab.hosts[b].name, "sent": tx, "received": rx}));
        }
    }
    let mut drops = Vec::new();
    for (i, s) in stats.iter().enumerate() {
        for c in s["counters"].as_array().into_iter().flatten() {
            let n = c["packets"].as_u64().unwrap_or(0);
            if c["verdict"] == "drop" && n > 0 {
                drops.push(format!("h{}: {} {n}", i + 1, c["reason"]));
            }
        }
    }
    if !drops.is_empty() {
        failed.push(format!("drops counted: {}", drops.join(", ")));
    }

    // Nothing stale once the timeouts (5 s, collected every second) have passed.
    thread::sleep(Duration::from_secs(12));
    let mut left = Vec::new();
    for (i, seen) in ct_max.iter().enumerate() {
        let ct = lab.netpath_json(i, &["dump", "conntrack", "--json"]);
        let nat = lab.netpath_json(i, &["dump", "nat", "--json"]);
        let (ct, nat) = (
            ct.as_array().map_or(0, Vec::len),
            nat.as_array().map_or(0, Vec::len),
        );
        if ct + nat > 0 {
            failed.push(format!(
                "h{}: {ct} conntrack and {nat} NAT entries left after the timeouts",
                i + 1
            ));
        }
        left.push(json!({"host": lab.hosts[i].name, "conntrack": ct, "nat": nat, "conntrack_max_seen": seen}));
    }

    // h3's agent: memory after the first minute against the end.
    let settled: Vec<u64> = mem
        .iter()
        .filter(|(t, _)| *t >= 60)
        .map(|(_, k)| *k)
        .collect();
    let (first, last, peak) = (
        settled.first().copied().unwrap_or(0),
        settled.last().copied().unwrap_or(0),
        settled.iter().copied().max().unwrap_or(0),
    );
    if settled.len() >= 2 && last > first + (first / 10).max(4096) {
        failed.push(format!("h3's agent grew from {first} KiB to {last} KiB"));
    }

    let results = json!({
        "seconds": secs,
        "agent_restarts": restarts,
        "changes": changes,
        "pings": {"sent": sent, "received": got, "paths": ping_rows},
        "masqueraded_connections": conns,
        "published_port_rr": rr,
        "peer_counters": pairs,
        "drops": drops,
        "after_timeouts": left,
        "h3_agent_rss_kib": {"after_first_minute": first, "end": last, "peak": peak, "samples": mem},
        "failed": failed,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!(
        "[soak] {:.0} s, {restarts} agent restarts, {changes} peer/port/rule changes",
        secs
    );
    eprintln!("[soak] pings: {got} of {sent} answered (12 paths, direct and vxlan)");
    eprintln!("[soak] masqueraded connections (h2 -> outside): {conns}");
    eprintln!(
        "[soak] published port (outside -> h1:8080), request/response on one connection: {rr} (tps p50_us p99_us count)"
    );
    for p in &pairs {
        eprintln!(
            "[soak] {} -> {}: {} packets counted sent, {} counted received",
            p["from"].as_str().unwrap_or(""),
            p["to"].as_str().unwrap_or(""),
            p["sent"],
            p["received"]
        );
    }
    eprintln!(
        "[soak] drops counted: {}",
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(", ")
        }
    );
    for l in &left {
        eprintln!(
            "[soak] {} after the timeouts: {} conntrack, {} NAT entries (at most {} seen during the soak)",
            l["host"].as_str().unwrap_or(""),
            l["conntrack"],
            l["nat"],
            l["conntrack_max_seen"]
        );
    }
    if settled.is_empty() {
        eprintln!(
            "[soak] h3's agent (never restarted): {} KiB; growth is judged from the first minute on, and this soak is shorter",
            mem.last().map_or(0, |(_, k)| *k)
        );
    } else {
        eprintln!(
            "[soak] h3's agent (never restarted): {first} KiB after the first minute, {last} KiB at the end, peak {peak} KiB"
        );
    }
    eprintln!("[soak] results: {}", dir.join("results.json").display());
    lab.teardown()?;
    if !failed.is_empty() {
        bail!("the soak found:\n  {}", failed.join("\n  "));
    }
    eprintln!("[soak] every check held");
    Ok(())
}
