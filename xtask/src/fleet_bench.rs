//! The fleet's part of `cargo xtask bench`: a real etcd member in a lab namespace holding
//! N host registrations written by the bench (hosts that exist only as entries: no packet
//! is ever sent to them), and three agents on lab hosts. Measured: the time from an
//! agent's start until all N are peers in its maps (at N/4, N/2 and N, from empty maps),
//! the time for one new registration to reach the maps of all three watching agents, and
//! the agent's resident memory at N peers.
//!
//! N is at most 230: every host needs its own underlay address and the lab's are in
//! 198.18.0.0/24 (the bench's hosts take 198.18.0.20 to .249). The goals are at
//! 1,000 hosts; the report gives the per-host slope from the three sizes and the time it
//! projects for 1,000, marked as a projection.

use std::{
    fmt::Write as _,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use netpath_tests::{Lab, Spec, output};
use serde_json::{Value, json};

/// The most registrations the lab's underlay range leaves for the bench.
pub const MAX_HOSTS: usize = 230;

/// Registration `k` of the bench: host `f{k}`, subnet 10.244.(20+k).0/24, underlay
/// 198.18.0.(20+k).
fn entry(k: usize) -> (String, String) {
    let n = 20 + k;
    let key = format!("/netpath/subnets/10.244.{n}.0-24");
    let value = json!({"host": format!("f{k}"), "underlay": format!("198.18.0.{n}"),
        "mode": "vxlan", "vtep_mac": format!("02:4e:c6:12:00:{n:02x}"), "vni": 42,
        "port": 4789, "version": "bench"});
    (key, value.to_string())
}

/// How many of host `i`'s peers came from etcd.
fn etcd_peers(lab: &Lab, i: usize) -> usize {
    output(lab.netpath(i, &["peer", "list", "--json"]))
        .ok()
        .and_then(|o| serde_json::from_str::<Vec<Value>>(&o).ok())
        .map_or(0, |v| v.iter().filter(|p| p["origin"] == "etcd").count())
}

/// Whether host `i` has peer `name`.
fn has_peer(lab: &Lab, i: usize, name: &str) -> bool {
    output(lab.netpath(i, &["peer", "list", "--json"]))
        .ok()
        .and_then(|o| serde_json::from_str::<Vec<Value>>(&o).ok())
        .is_some_and(|v| v.iter().any(|p| p["name"] == name))
}

/// When host `i`'s agent first logged a line that says `what` (the agent logs in UTC with
/// milliseconds: `[2026-12-02T04:31:00.123Z INFO  etcd: ...]`), at or after `after`.
fn logged(
    lab: &Lab,
    i: usize,
    after: SystemTime,
    what: impl Fn(&str) -> bool,
) -> Result<SystemTime> {
    let log = std::fs::read_to_string(&lab.hosts[i].log)?;
    log.lines()
        .filter(|l| what(l))
        .filter_map(|l| {
            let stamp = l.strip_prefix('[')?.split_whitespace().next()?;
            humantime::parse_rfc3339(stamp).ok()
        })
        .find(|t| *t >= after)
        .with_context(|| format!("h{}'s log has no such line", i + 1))
}

/// Seconds from `t0` to `t`.
fn since(t0: SystemTime, t: SystemTime) -> f64 {
    t.duration_since(t0).unwrap_or_default().as_secs_f64()
}

/// "etcd: N hosts as peers; ...": N.
fn peers_logged(line: &str) -> Option<usize> {
    line.split("etcd: ")
        .nth(1)?
        .split(" hosts as peers")
        .next()?
        .parse()
        .ok()
}

/// Waits (polling every 10 ms, up to `limit`) until `done`; the seconds since `t0`.
fn until(t0: Instant, limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<f64> {
    while !done() {
        if t0.elapsed() > limit {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The agent's resident memory and its peak, in MiB.
fn rss(pid: u32) -> Result<(f64, f64)> {
    let mib =
        |field| Ok::<_, anyhow::Error>(netpath_tests::status_kib(pid, field)? as f64 / 1024.0);
    Ok((mib("VmRSS:")?, mib("VmHWM:")?))
}

/// Median, min, max.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// Runs the fleet measurements with `hosts` registrations, `reps` times each; returns the
/// report's section and its JSON.
pub fn run(hosts: usize, reps: usize) -> Result<(String, Value)> {
    let hosts = hosts.clamp(4, MAX_HOSTS);
    let reps = reps.clamp(1, (MAX_HOSTS - hosts).max(1));
    let mut lab = Lab::new(Spec {
        hosts: 3,
        containers: 0,
        locked_down: true,
        outside: false,
    })?;
    let result = measure(&mut lab, hosts, reps);
    let down = lab.teardown();
    let r = result?;
    down?;
    Ok(r)
}

fn measure(lab: &mut Lab, hosts: usize, reps: usize) -> Result<(String, Value)> {
    let endpoints = lab.etcd(1)?;
    lab.write_fleet_configs(&endpoints, 60)?;
    let config = lab.hosts[0].config.display().to_string();
    output(
        lab.netpath(0, &["cluster", "init", "--config", &config])
            .args(["--cidr", "10.244.0.0/16", "--mode", "vxlan"]),
    )?;

    // Start to all peers, from empty maps, at three sizes.
    let sizes = [hosts / 4, hosts / 2, hosts];
    let mut written = 0;
    let mut starts: Vec<(usize, Vec<f64>)> = Vec::new();
    for &n in &sizes {
        while written < n {
            let (k, v) = entry(written);
            lab.etcdctl(&format!("put {k} {v}"))?;
            written += 1;
        }
        let mut times = Vec::new();
        for _ in 0..reps {
            lab.kill_agent(0);
            netpath_tests::netpath_down(&lab.hosts[0].pin_dir)?;
            let t0 = SystemTime::now();
            lab.start(0)?;
            until(
                Instant::now(),
                Duration::from_secs(60),
                &format!("{n} peers"),
                || etcd_peers(lab, 0) >= n,
            )?;
            let t = logged(lab, 0, t0, |l| peers_logged(l).is_some_and(|k| k >= n))?;
            times.push(since(t0, t));
        }
        eprintln!(
            "[bench] fleet: start to {n} peers in the maps: median {:.3} s",
            spread(&times).0
        );
        starts.push((n, times));
    }
    let pid = lab.agent_pid(0).context("host 0's agent")?;
    let memory = rss(pid)?;

    // One new registration to the maps of three watching agents.
    lab.start(1)?;
    lab.start(2)?;
    for i in 0..3 {
        until(
            Instant::now(),
            Duration::from_secs(60),
            "the agents' first view",
            || etcd_peers(lab, i) >= hosts + 2,
        )?;
    }
    let mut news = Vec::new();
    for r in 0..reps {
        let k = hosts + r;
        let (key, value) = entry(k);
        let name = format!("f{k}");
        let t0 = SystemTime::now();
        lab.etcdctl(&format!("put {key} {value}"))?;
        until(Instant::now(), Duration::from_secs(30), &name, || {
            (0..3).all(|i| has_peer(lab, i, &name))
        })?;
        let quoted = format!("{name:?}");
        let mut last = t0;
        for i in 0..3 {
            last = last.max(logged(lab, i, t0, |l| {
                peers_logged(l).is_some() && l.contains(&quoted)
            })?);
        }
        news.push(since(t0, last));
    }
    eprintln!(
        "[bench] fleet: a new registration to 3 agents' maps: median {:.3} s",
        spread(&news).0
    );

    // The slope between the smallest and the largest size, and what it projects.
    let first = spread(&starts[0].1).0;
    let last = spread(&starts[starts.len() - 1].1).0;
    let per_host = (last - first) / (sizes[2] - sizes[0]).max(1) as f64;
    // A slope below zero is noise (few repetitions): no growth to project.
    let projected = last + per_host.max(0.0) * (1000 - hosts) as f64;
    let noise = if per_host < 0.0 {
        " (below zero: noise; the projection adds nothing)"
    } else {
        ""
    };

    let mut md = format!(
        "\n### Fleet on etcd ({hosts} registrations, 1 member, {reps} repetitions)\n\n| measure | median (min-max) | goal (at 1,000 hosts) |\n|---|---|---|\n"
    );
    for (n, t) in &starts {
        let (m, lo, hi) = spread(t);
        let _ = writeln!(
            md,
            "| agent start to {n} peers in its maps (empty maps) | {m:.3} s ({lo:.3}-{hi:.3}) | |"
        );
    }
    let _ = writeln!(
        md,
        "| per host, {} to {} | {:.2} ms{noise} | |\n| projected for 1,000 hosts | {projected:.2} s | <= 2 s |",
        sizes[0],
        sizes[2],
        per_host * 1000.0
    );
    let (m, lo, hi) = spread(&news);
    let _ = writeln!(
        md,
        "| a new registration to the maps of 3 watching agents | {m:.3} s ({lo:.3}-{hi:.3}) | <= 1 s |"
    );
    let _ = writeln!(
        md,
        "| agent resident memory at {hosts} peers (peak) | {:.1} MiB ({:.1}) | <= 64 MiB |",
        memory.0, memory.1
    );
    md += "\nTimes are from the agent's start (or from just before etcdctl writes the new registration, its own start included) to the agent's log line that reports the peers in its maps (the last of the three agents'). Only 230 hosts fit the lab's underlay range (198.18.0.0/24); the 1,000-host figure is the slope's projection, not a measurement.\n";
    let json = json!({"hosts": hosts, "reps": reps,
        "start_to_all_peers_s": starts.iter().map(|(n, t)| json!({"hosts": n, "samples": t, "median": spread(t).0})).collect::<Vec<_>>(),
        "per_host_ms": per_host * 1000.0, "projected_1000_s": projected,
        "new_entry_to_3_agents_s": {"samples": news, "median": spread(&news).0},
        "rss_mib": memory.0, "rss_peak_mib": memory.1});
    Ok((md, json))
}
