//! The fleet's part of `cargo xtask bench`: a real etcd member in a lab namespace holding
//! N host registrations written by the bench (hosts that exist only as entries: no packet
//! is ever sent to them; subnets in 10.0.0.0/8 outside the lab's 10.244.0.0/16, underlays
//! in 198.19.0.0/16), and three agents on lab hosts. Measured at N/10 and N (1,000 and
//! 10,000 by default): the time from an agent's start until all are peers in its maps
//! (from empty maps); at N: one new registration until it is in the maps of all three
//! watching agents (20 of them: median and p99), the agent's resident memory, and a churn
//! of 100 registrations per second (half new, half deleted) for a minute with the agents'
//! and etcd's CPU, every agent's peers checked against etcd's content at the end.

use std::{
    fmt::Write as _,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use netpath_tests::{Lab, output};
use serde_json::{Value, json};

/// The most registrations the bench writes (/24s from 10.1.0.0 to 10.235.255.0, with room
/// for the new and the churned ones).
pub const MAX_HOSTS: usize = 50_000;

/// Registration `k` of the bench: host `f{k}`, subnet 10.(1 + k/256).(k%256).0/24,
/// underlay 198.19.0.0 + k + 1.
fn entry(k: usize) -> (String, String) {
    let (a, b) = (1 + k / 256, k % 256);
    let u = k + 1;
    let key = format!("/netpath/subnets/10.{a}.{b}.0-24");
    let value = json!({"host": format!("f{k}"),
        "underlay": format!("198.19.{}.{}", u / 256, u % 256),
        "mode": "vxlan", "vtep_mac": format!("02:4e:c6:13:{:02x}:{:02x}", u / 256, u % 256),
        "vni": 42, "port": 4789, "version": "bench"});
    (key, value.to_string())
}

/// Writes to etcd through its JSON gateway from inside its namespace, one transaction per
/// batch (at most 128 operations each: etcd's default limit), a batch every `pace` at
/// most (zero: as fast as etcd answers).
pub(crate) fn txns(lab: &Lab, batches: Vec<Vec<Value>>, pace: Duration) -> Result<()> {
    let ns = format!("/run/netns/{}", lab.etcd_ns()?);
    std::thread::spawn(move || -> Result<()> {
        use std::io::{Read, Write};
        let f = std::fs::File::open(&ns)?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let t0 = Instant::now();
        for (i, ops) in batches.into_iter().enumerate() {
            if let Some(wait) = (pace * i as u32).checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
            let body = json!({"success": ops}).to_string();
            let mut s = std::net::TcpStream::connect(("198.18.0.2", 2379))?;
            write!(
                s,
                "POST /v3/kv/txn HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            if !answer.starts_with("HTTP/1.1 200") || !answer.contains("\"succeeded\":true") {
                bail!("etcd's gateway answered {answer}");
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the etcd writer panicked"))?
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A put of `key` = `value`, in a transaction of [`txns`].
pub(crate) fn put(key: &str, value: &str) -> Value {
    json!({"requestPut": {"key": b64(key), "value": b64(value)}})
}

/// A delete of `key`, in a transaction of [`txns`].
fn delete(key: &str) -> Value {
    json!({"requestDeleteRange": {"key": b64(key)}})
}

/// Registrations `from..to`, written as fast as etcd takes them.
fn put_entries(lab: &Lab, from: usize, to: usize) -> Result<()> {
    let ops: Vec<Value> = (from..to)
        .map(|k| {
            let (key, value) = entry(k);
            put(&key, &value)
        })
        .collect();
    txns(
        lab,
        ops.chunks(128).map(|c| c.to_vec()).collect(),
        Duration::ZERO,
    )
}

/// The names of host `i`'s peers that came from etcd, sorted.
fn etcd_peers(lab: &Lab, i: usize) -> Result<Vec<String>> {
    let v: Vec<Value> =
        serde_json::from_str(&output(lab.netpath(i, &["peer", "list", "--json"]))?)?;
    let mut names: Vec<String> = v
        .iter()
        .filter(|p| p["origin"] == "etcd")
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// The hosts registered in etcd now, sorted.
fn registered(lab: &Lab) -> Result<Vec<String>> {
    let out = lab.etcdctl("get /netpath/subnets/ --prefix --print-value-only")?;
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["host"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// CPU seconds (user and system) process `pid` has used.
pub(crate) fn cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's name (in parentheses), fields 14 and 15 of stat(5).
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// When host `i`'s agent first logged a line that says `what` (the agent logs in UTC with
/// milliseconds: `[2026-12-02T04:31:00.123Z INFO  etcd: ...]`), at or after `after`.
pub(crate) fn logged(
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

/// Runs the fleet measurements with `hosts` registrations (and `hosts / 10`), `reps`
/// starts each, a churn of `churn_secs`; returns the report's section and its JSON.
pub fn run(hosts: usize, reps: usize, churn_secs: u64) -> Result<(String, Value)> {
    let hosts = hosts.clamp(10, MAX_HOSTS);
    let reps = reps.max(1);
    crate::bench::in_lab(3, |lab| measure(lab, hosts, reps, churn_secs))
}

/// Waits until host `i`'s agent has logged, at or after `after`, that its etcd peers are
/// at least `n` (or, with `name`, that it added `name`); when, from the log's stamps.
fn wait_logged(
    lab: &Lab,
    i: usize,
    after: SystemTime,
    limit: Duration,
    what: &str,
    test: impl Fn(&str) -> bool,
) -> Result<SystemTime> {
    let t0 = Instant::now();
    loop {
        if let Ok(t) = logged(lab, i, after, &test) {
            return Ok(t);
        }
        if t0.elapsed() > limit {
            bail!("h{}: {what}: not within {} s", i + 1, limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The p99 of `v` (the largest of fewer than 100 samples).
fn p99(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 * 0.99).ceil() as usize).clamp(1, s.len()) - 1]
}

/// New registrations timed to the maps of the three watching agents.
const NEW_ENTRIES: usize = 20;

fn measure(lab: &mut Lab, hosts: usize, reps: usize, churn_secs: u64) -> Result<(String, Value)> {
    let endpoints = lab.etcd(1)?;
    lab.write_fleet_configs(&endpoints, 60)?;
    let config = lab.hosts[0].config.display().to_string();
    output(
        lab.netpath(0, &["cluster", "init", "--config", &config])
            .args(["--cidr", "10.244.0.0/16", "--mode", "vxlan"]),
    )?;

    // Start to all peers, from empty maps, at two sizes.
    let sizes = [hosts / 10, hosts];
    let mut written = 0;
    let mut starts: Vec<(usize, Vec<f64>)> = Vec::new();
    for &n in &sizes {
        let t = Instant::now();
        put_entries(lab, written, n)?;
        eprintln!(
            "[bench] fleet: {} registrations written to etcd in {:.1} s",
            n - written,
            t.elapsed().as_secs_f64()
        );
        written = n;
        let mut times = Vec::new();
        for _ in 0..reps {
            lab.kill_agent(0);
            netpath_tests::netpath_down(&lab.hosts[0].pin_dir)?;
            let t0 = SystemTime::now();
            lab.start(0)?;
            let t = wait_logged(
                lab,
                0,
                t0,
                Duration::from_secs(120),
                &format!("{n} peers"),
                |l| peers_logged(l).is_some_and(|k| k >= n),
            )?;
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

    // New registrations to the maps of three watching agents.
    lab.start(1)?;
    lab.start(2)?;
    let t0 = SystemTime::UNIX_EPOCH;
    for i in 1..3 {
        wait_logged(
            lab,
            i,
            t0,
            Duration::from_secs(120),
            "the first view",
            |l| peers_logged(l).is_some_and(|k| k >= hosts),
        )?;
    }
    let mut news = Vec::new();
    for r in 0..NEW_ENTRIES {
        let k = hosts + r;
        let (key, value) = entry(k);
        let quoted = format!("{:?}", format!("f{k}"));
        let t0 = SystemTime::now();
        txns(lab, vec![vec![put(&key, &value)]], Duration::ZERO)?;
        let mut last = t0;
        for i in 0..3 {
            last = last.max(wait_logged(
                lab,
                i,
                t0,
                Duration::from_secs(30),
                &quoted,
                |l| peers_logged(l).is_some() && l.contains(&quoted),
            )?);
        }
        news.push(since(t0, last));
    }
    let total = hosts + NEW_ENTRIES;
    eprintln!(
        "[bench] fleet: a new registration to 3 agents' maps: median {:.3} s, p99 {:.3} s",
        spread(&news).0,
        p99(&news)
    );

    // Churn: every 100 ms, 5 new registrations and 5 of the oldest deleted.
    let batches = (churn_secs * 10) as usize;
    let mut ops = Vec::with_capacity(batches);
    for b in 0..batches {
        let mut batch = Vec::new();
        for j in 0..5 {
            let (key, value) = entry(total + b * 5 + j);
            batch.push(put(&key, &value));
            batch.push(delete(&entry(b * 5 + j).0));
        }
        ops.push(batch);
    }
    let pids: Vec<u32> = (0..3).filter_map(|i| lab.agent_pid(i)).collect();
    let etcd_pid = lab.etcd_pids().first().copied().context("etcd's pid")?;
    let before: Vec<f64> = pids.iter().map(|p| cpu_s(*p)).collect::<Result<_>>()?;
    let etcd_before = cpu_s(etcd_pid)?;
    let t = Instant::now();
    txns(lab, ops, Duration::from_millis(100))?;
    // The last batch went at (batches - 1) * 100 ms: its own 100 ms counts too.
    let took = t.elapsed().as_secs_f64().max(batches as f64 * 0.1);
    let agent_cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| Ok(cpu_s(*p)? - b))
        .collect::<Result<_>>()?;
    let etcd_cpu = cpu_s(etcd_pid)? - etcd_before;
    // The deleted ones stay peers for [etcd].peer_grace (5 s): then every agent's peers
    // must be etcd's registrations but its own.
    std::thread::sleep(Duration::from_secs(7));
    let in_etcd = registered(lab)?;
    let mut equal = 0;
    for i in 0..3 {
        let own = format!("h{}", i + 1);
        let want: Vec<&String> = in_etcd.iter().filter(|n| **n != own).collect();
        let have = etcd_peers(lab, i)?;
        if have.iter().collect::<Vec<_>>() == want {
            equal += 1;
        } else {
            eprintln!(
                "[bench] fleet: h{}'s peers differ from etcd after the churn: {} vs {} registered",
                i + 1,
                have.len(),
                want.len()
            );
        }
    }
    let ops_per_s = (batches * 10) as f64 / took;
    let agent_pct = spread(&agent_cpu).0 / took * 100.0;
    let etcd_pct = etcd_cpu / took * 100.0;
    eprintln!(
        "[bench] fleet: churn of {ops_per_s:.0} registrations/s for {took:.0} s: agent CPU {agent_pct:.1}% (median of 3), etcd {etcd_pct:.1}%; maps equal to etcd on {equal} of 3"
    );

    let mut md = format!(
        "\n### Fleet on etcd ({hosts} registrations, 1 member, {reps} starts per size)\n\n| measure | median (min-max) | goal |\n|---|---|---|\n"
    );
    for (n, t) in &starts {
        let (m, lo, hi) = spread(t);
        let goal = if *n == hosts { "<= 2 s at 10,000" } else { "" };
        let _ = writeln!(
            md,
            "| agent start to {n} peers in its maps (empty maps) | {m:.3} s ({lo:.3}-{hi:.3}) | {goal} |"
        );
    }
    let (m, lo, hi) = spread(&news);
    let _ = writeln!(
        md,
        "| a new registration to the maps of 3 watching agents ({NEW_ENTRIES}) | {m:.3} s ({lo:.3}-{hi:.3}), p99 {:.3} s | p99 <= 0.2 s |",
        p99(&news)
    );
    let _ = writeln!(
        md,
        "| agent resident memory at {hosts} peers (peak) | {:.1} MiB ({:.1}) | <= 64 MiB |",
        memory.0, memory.1
    );
    let _ = writeln!(
        md,
        "| churn: {ops_per_s:.0} registrations/s for {took:.0} s, CPU of each agent (median of 3) / of etcd | {agent_pct:.1}% / {etcd_pct:.1}% of one CPU | |\n| every agent's peers equal to etcd's registrations after it | {equal} of 3 | 3 of 3 |"
    );
    md += "\nTimes are from the agent's start (or from just before the new registration is written, its own start included) to the agent's log line that reports the peers in its maps (the last of the three agents'). The registrations are hosts that exist only as entries: subnets in 10.0.0.0/8, underlays in 198.19.0.0/16. The churn puts 5 new registrations and deletes 5 of the oldest every 100 ms; the check after it waits out `[etcd].peer_grace` (5 s).\n";
    let json = json!({"hosts": hosts, "reps": reps,
        "start_to_all_peers_s": starts.iter().map(|(n, t)| json!({"hosts": n, "samples": t, "median": spread(t).0})).collect::<Vec<_>>(),
        "new_entry_to_3_agents_s": {"samples": news, "median": spread(&news).0, "p99": p99(&news)},
        "rss_mib": memory.0, "rss_peak_mib": memory.1,
        "churn": {"ops_per_s": ops_per_s, "secs": took, "agent_cpu_s": agent_cpu, "etcd_cpu_s": etcd_cpu,
            "agent_cpu_pct": agent_pct, "etcd_cpu_pct": etcd_pct, "agents_equal_to_etcd": equal}});
    Ok((md, json))
}
