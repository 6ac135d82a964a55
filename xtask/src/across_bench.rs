//! Networks across hosts in `cargo xtask bench` (`--only across`; also part of the full
//! run): three lab hosts, each with its dockerd and agent, on one etcd member.
//!
//! - Throughput and rates between containers of two hosts: on a network across hosts
//!   against the host subnets (Docker's default network), in the same mode, interleaved
//!   repetitions; vxlan first (the fleet's mode without cluster settings), then direct
//!   (cluster settings with `--mode direct`, agents restarted).
//! - `docker run` on one host until the container answers a ping from another host, 20
//!   times: the clock starts before `docker run`, the pings (every 10 ms) when it returns.
//! - 100 containers started at once on each of the three hosts, no `--ip`: the time, and
//!   whether any address was given twice.
//! - 10,000 containers of other hosts in etcd (100 hosts that exist only as entries,
//!   underlays in 198.19.0.0/24, subnets in 10.200.0.0/16, a network in 10.64.0.0/18: no
//!   packet is ever sent to them): an agent's start, from empty maps, until all are routed
//!   (its log line), and its resident memory then.

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use netpath_tests::{Lab, docker::DockerOptions, output};
use serde_json::{Value, json};

use crate::bench::{Ends, Options, Sample, measure, spread};

/// The networks of the throughput runs and their subnets.
const NETV: (&str, &str) = ("acrossv", "10.244.64.0/24");
const NETD: (&str, &str) = ("acrossd", "10.244.65.0/24");
/// The network of the 100-per-host run.
const BIG: (&str, &str) = ("acrossbig", "10.244.68.0/23");
/// The network of the 10,000 entries.
const MANY: (&str, &str) = ("acrossmany", "10.64.0.0/18");
/// Containers of each entry-only host.
const PER_ENTRY_HOST: usize = 100;

/// How big the measurements are: the sizes, or a smoke test's (`--quick`).
#[derive(Clone, Copy)]
pub struct Size {
    /// Containers started at once on each host.
    pub per_host: usize,
    /// Hosts that exist only as entries, [`PER_ENTRY_HOST`] containers each.
    pub entry_hosts: usize,
    /// Runs of `docker run` to a ping's answer.
    pub latency_runs: usize,
    /// Agent starts timed to all entries routed.
    pub starts: usize,
}

impl Size {
    pub const FULL: Size = Size {
        per_host: 100,
        entry_hosts: 100,
        latency_runs: 20,
        starts: 3,
    };
    pub const QUICK: Size = Size {
        per_host: 5,
        entry_hosts: 10,
        latency_runs: 2,
        starts: 1,
    };
}

pub fn run(opts: &Options) -> Result<(String, Value)> {
    crate::bench::in_lab(3, |lab| {
        let mut named = Vec::new();
        let result = measure_all(lab, opts, &mut named);
        for n in &named {
            let _ = Command::new("ip").args(["netns", "delete", n]).status();
        }
        result
    })
}

fn config(lab: &Lab, i: usize) -> String {
    lab.hosts[i].config.display().to_string()
}

/// Waits (polling every 20 ms, up to `limit`) until `done`.
fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let t0 = Instant::now();
    while !done() {
        if t0.elapsed() > limit {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn docker_networks(lab: &Lab, i: usize) -> String {
    output(lab.docker(i, &["network", "ls", "--format", "{{.Name}}"])).unwrap_or_default()
}

/// `netpath network create` on host 0, then seen on every host's Docker.
fn create(lab: &Lab, (name, subnet): (&str, &str), mode: &str) -> Result<()> {
    let c = config(lab, 0);
    output(lab.netpath(
        0,
        &[
            "network", "create", name, "--subnet", subnet, "--mode", mode, "--config", &c,
        ],
    ))?;
    for i in 0..lab.hosts.len() {
        until(
            Duration::from_secs(20),
            &format!("{name} on host {i}"),
            || docker_networks(lab, i).lines().any(|l| l == name),
        )?;
    }
    Ok(())
}

/// Container `name` of host `i`'s network namespace, named `np<pid>-<name>` for `ip netns`
/// (recorded in `named` for the teardown).
fn attach(lab: &Lab, i: usize, name: &str, named: &mut Vec<String>) -> Result<String> {
    let pid = output(lab.docker(i, &["inspect", "-f", "{{.State.Pid}}", name]))?;
    let ns = format!("np{}-{name}", std::process::id());
    output(Command::new("ip").args(["netns", "attach", &ns, pid.trim()]))?;
    named.push(ns.clone());
    Ok(ns)
}

/// Whether host `i` has every other lab host as a peer in `mode`.
fn peers_in(lab: &Lab, i: usize, mode: &str) -> bool {
    let v = lab.netpath_json(i, &["peer", "list", "--json"]);
    let peers = v.as_array().cloned().unwrap_or_default();
    (0..lab.hosts.len()).filter(|&k| k != i).all(|k| {
        peers
            .iter()
            .any(|p| p["name"] == lab.hosts[k].name.as_str() && p["mode"] == mode)
    })
}

struct Path {
    name: String,
    ends: Ends,
    samples: Vec<Sample>,
}

/// `opts.reps` repetitions of every path, interleaved.
fn interleave(lab: &mut Lab, opts: &Options, paths: &mut [Path]) -> Result<()> {
    for rep in 0..opts.reps {
        for p in paths.iter_mut() {
            eprintln!("[bench] across: {} ({}/{})", p.name, rep + 1, opts.reps);
            let s = measure(lab, &p.ends, opts, false).with_context(|| p.name.clone())?;
            p.samples.push(s);
        }
    }
    Ok(())
}

fn measure_all(lab: &mut Lab, opts: &Options, named: &mut Vec<String>) -> Result<(String, Value)> {
    let endpoints = lab.etcd(1)?;
    lab.write_fleet_configs(&endpoints, 60)?;
    for i in 0..3 {
        lab.dockerd(i, &DockerOptions::default())?;
        lab.use_docker(i)?;
    }
    lab.start_all()?;
    create(lab, NETV, "vxlan")?;
    create(lab, NETD, "direct")?;

    // A client container on host 0 and a server on host 1 per network: Docker's default
    // network (the host's subnet) and both networks across hosts. One network each: a
    // container on several has its default route on one of them only (Docker chooses),
    // and networks are apart.
    let probe = netpath_tests::probe_bin().display().to_string();
    let mut ends = std::collections::HashMap::new();
    for net in ["bridge", NETV.0, NETD.0] {
        let mut ns = Vec::new();
        for (i, role) in [(0, "client"), (1, "server")] {
            let name = format!("{role}-{net}");
            output(
                lab.docker(
                    i,
                    &[
                        "run", "-d", "--name", &name, "--net", net, "np-probe", &probe,
                    ],
                )
                .args(["serve", "7000", "86400"]),
            )?;
            ns.push(attach(lab, i, &name, named)?);
        }
        crate::bench::reuse_ports(&ns[0])?;
        let to = lab.docker_addr(1, &format!("server-{net}"), net)?;
        ends.insert(net, (ns[0].clone(), ns[1].clone(), to));
    }
    let server = ends[NETV.0].1.clone();
    // The host subnets' pair against a network's, in `mode`.
    let pair = |mode: &str, net: &str| -> Vec<Path> {
        [("host subnets", "bridge"), ("network across hosts", net)]
            .map(|(what, net)| {
                let (client, server, to) = ends[net].clone();
                Path {
                    name: format!("{what}, {mode}"),
                    ends: Ends { client, server, to },
                    samples: Vec::new(),
                }
            })
            .into()
    };
    let mut paths = pair("vxlan", NETV.0);
    until(Duration::from_secs(20), "peers in vxlan", || {
        peers_in(lab, 0, "vxlan")
    })?;
    interleave(lab, opts, &mut paths)?;
    // Direct between host subnets: cluster settings in direct mode, agents restarted so
    // that they register again.
    let c0 = config(lab, 0);
    output(lab.netpath(0, &["cluster", "init", "--config", &c0]).args([
        "--cidr",
        "10.244.0.0/18",
        "--mode",
        "direct",
    ]))?;
    for i in 0..3 {
        lab.kill_agent(i);
        lab.start(i)?;
    }
    until(Duration::from_secs(30), "peers in direct", || {
        (0..3).all(|i| peers_in(lab, i, "direct"))
    })?;
    let mut direct = pair("direct", NETD.0);
    interleave(lab, opts, &mut direct)?;
    paths.extend(direct);

    // The --ip of each run: none of the addresses the network's client and server were
    // given (at random, anywhere in the subnet).
    let taken = [
        lab.docker_addr(0, &format!("client-{}", NETV.0), NETV.0)?,
        lab.docker_addr(1, &format!("server-{}", NETV.0), NETV.0)?,
    ];
    let ips: Vec<String> = (100..250)
        .map(|h| format!("10.244.64.{h}"))
        .filter(|a| !taken.contains(a))
        .take(opts.across.latency_runs)
        .collect();
    let latency = run_to_ping(lab, &server, &ips)?;
    let at_once = at_once(lab, opts.across.per_host)?;
    let many = many_entries(lab, opts.across)?;
    Ok(report(opts, &paths, &latency, &at_once, &many))
}

/// (from docker run to the first answer, docker run alone), in seconds, per run.
fn run_to_ping(lab: &Lab, pinger: &str, ips: &[String]) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for (k, ip) in ips.iter().enumerate() {
        let name = format!("lat{k}");
        let t0 = SystemTime::now();
        output(lab.docker(
            0,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--net",
                NETV.0,
                "--ip",
                ip,
                "np-busybox",
                "sleep",
                "3600",
            ],
        ))?;
        let ran = t0.elapsed()?.as_secs_f64();
        let ping = Command::new("ip")
            .args(["netns", "exec", pinger, "ping", "-D", "-n", "-i", "0.01"])
            .args(["-c", "1", "-w", "4", ip])
            .output()?;
        let text = String::from_utf8_lossy(&ping.stdout);
        let first = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .find_map(|l| l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok())
            .with_context(|| format!("{ip} never answered: {text}"))?;
        let start = t0.duration_since(SystemTime::UNIX_EPOCH)?.as_secs_f64();
        out.push((first - start, ran));
        eprintln!(
            "[bench] across: docker run to a ping's answer from another host: {:.3} s (docker run {ran:.3} s)",
            first - start
        );
        output(lab.docker(0, &["rm", "-f", &name]))?;
    }
    Ok(out)
}

struct AtOnce {
    secs: f64,
    containers: usize,
    duplicates: usize,
}

/// `per_host` containers started on each host at the same time, no `--ip`.
fn at_once(lab: &Lab, per_host: usize) -> Result<AtOnce> {
    create(lab, BIG, "vxlan")?;
    let t = Instant::now();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let host = lab.docker_host(i);
            std::thread::spawn(move || -> Result<()> {
                for k in 0..per_host {
                    output(
                        Command::new("docker")
                            .args(["-H", &host, "run", "-d", "--net", BIG.0, "--name"])
                            .arg(format!("m{i}x{k}"))
                            .args(["np-busybox", "sleep", "3600"]),
                    )?;
                }
                Ok(())
            })
        })
        .collect();
    for r in runs {
        r.join()
            .map_err(|_| anyhow::anyhow!("a docker run thread panicked"))??;
    }
    let secs = t.elapsed().as_secs_f64();
    let mut all = std::collections::BTreeSet::new();
    let mut containers = 0;
    let mut duplicates = 0;
    for i in 0..3 {
        let f = "{{range .Containers}}{{.IPv4Address}} {{end}}";
        let out = output(lab.docker(i, &["network", "inspect", BIG.0, "-f", f]))?;
        for a in out.split_whitespace() {
            containers += 1;
            if !all.insert(a.split('/').next().unwrap_or(a).to_owned()) {
                duplicates += 1;
            }
        }
    }
    eprintln!(
        "[bench] across: {containers} containers on 3 hosts at once in {secs:.1} s, {duplicates} addresses given twice"
    );
    for i in 0..3 {
        let ids = output(lab.docker(i, &["ps", "-aq", "--filter", &format!("network={}", BIG.0)]))?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            output(lab.docker(i, &args))?;
        }
    }
    Ok(AtOnce {
        secs,
        containers,
        duplicates,
    })
}

struct Many {
    endpoints: usize,
    start_s: Vec<f64>,
    rss_mib: f64,
    peak_mib: f64,
}

/// Puts `kvs` into etcd in transactions of 128 (etcd's default limit), through its
/// JSON gateway, from inside etcd's namespace.
fn put_all(lab: &Lab, kvs: Vec<(String, String)>) -> Result<()> {
    let ops: Vec<Value> = kvs
        .iter()
        .map(|(k, v)| crate::fleet_bench::put(k, v))
        .collect();
    crate::fleet_bench::txns(
        lab,
        ops.chunks(128).map(|c| c.to_vec()).collect(),
        Duration::ZERO,
    )
}

/// The entries (10,000 in full), then host 0's agent started from empty maps,
/// `size.starts` times.
fn many_entries(lab: &mut Lab, size: Size) -> Result<Many> {
    create(lab, MANY, "vxlan")?;
    let mut kvs = Vec::new();
    for k in 0..size.entry_hosts {
        let host = format!("e{k}");
        kvs.push((
            format!("/netpath/subnets/10.200.{k}.0-24"),
            json!({"host": host, "underlay": format!("198.19.0.{}", k + 1), "mode": "vxlan",
                "vtep_mac": format!("02:4e:c6:13:00:{:02x}", k + 1), "vni": 42, "port": 4789,
                "version": "bench"})
            .to_string(),
        ));
        for j in 0..PER_ENTRY_HOST {
            // 10.64.0.0/18 from 10.64.1.0: no gateway, network or broadcast address.
            let n = 256 + k * PER_ENTRY_HOST + j;
            kvs.push((
                format!(
                    "/netpath/addresses/{}/10.64.{}.{}",
                    MANY.0,
                    n / 256,
                    n % 256
                ),
                json!({"host": host}).to_string(),
            ));
        }
    }
    let want = size.entry_hosts * PER_ENTRY_HOST;
    let t = Instant::now();
    put_all(lab, kvs)?;
    eprintln!(
        "[bench] across: {want} addresses of {} hosts written to etcd in {:.1} s",
        size.entry_hosts,
        t.elapsed().as_secs_f64()
    );
    let mut start_s = Vec::new();
    for _ in 0..size.starts {
        lab.kill_agent(0);
        netpath_tests::netpath_down(&lab.hosts[0].pin_dir)?;
        let t0 = SystemTime::now();
        lab.start(0)?;
        let mut at = None;
        until(Duration::from_secs(60), &format!("{want} routed"), || {
            at = routed_at(lab, t0, want);
            at.is_some()
        })?;
        let secs = at.context("routed")?;
        eprintln!(
            "[bench] across: agent start to {want} containers of other hosts routed: {secs:.3} s"
        );
        start_s.push(secs);
    }
    let pid = lab.agent_pid(0).context("host 0's agent")?;
    let mib =
        |field| Ok::<_, anyhow::Error>(netpath_tests::status_kib(pid, field)? as f64 / 1024.0);
    Ok(Many {
        endpoints: want,
        start_s,
        rss_mib: mib("VmRSS:")?,
        peak_mib: mib("VmHWM:")?,
    })
}

/// Seconds from `t0` to host 0's first log line since `t0` that says at least `want`
/// containers of other hosts are routed (`[2026-12-02T04:31:00.123Z INFO  across hosts:
/// N containers on other hosts routed; ...]`).
fn routed_at(lab: &Lab, t0: SystemTime, want: usize) -> Option<f64> {
    let log = std::fs::read_to_string(&lab.hosts[0].log).ok()?;
    log.lines().find_map(|l| {
        let n: usize = l
            .split("across hosts: ")
            .nth(1)?
            .split(" containers")
            .next()?
            .parse()
            .ok()?;
        let stamp = l.strip_prefix('[')?.split_whitespace().next()?;
        let t = humantime::parse_rfc3339(stamp).ok()?;
        (t >= t0 && n >= want).then(|| t.duration_since(t0).unwrap_or_default().as_secs_f64())
    })
}

fn report(
    opts: &Options,
    paths: &[Path],
    latency: &[(f64, f64)],
    at_once: &AtOnce,
    many: &Many,
) -> (String, Value) {
    let med = |v: Vec<f64>| spread(&v);
    let mut md = format!(
        "\n### Docker networks across hosts (3 Docker hosts, 1 etcd member, {} repetitions, interleaved per mode)\n\n| path | TCP Gbit/s | request/response /s | UDP packets/s | connections/s |\n|---|---|---|---|---|\n",
        opts.reps
    );
    let mut rows = Vec::new();
    for p in paths {
        let g = med(p.samples.iter().map(|s| s.gbps).collect());
        let rr = med(p.samples.iter().map(|s| s.rr_tps).collect());
        let udp = med(p.samples.iter().map(|s| s.udp_pps).collect());
        let conn = med(p.samples.iter().map(|s| s.conns_per_sec).collect());
        let _ = writeln!(
            md,
            "| {} | {:.2} ({:.2}-{:.2}) | {:.0} | {:.0} | {:.0} |",
            p.name, g.0, g.1, g.2, rr.0, udp.0, conn.0
        );
        rows.push(
            json!({"path": p.name, "gbps": p.samples.iter().map(|s| s.gbps).collect::<Vec<_>>(),
            "rr_tps": p.samples.iter().map(|s| s.rr_tps).collect::<Vec<_>>(),
            "udp_pps": p.samples.iter().map(|s| s.udp_pps).collect::<Vec<_>>(),
            "conns_per_sec": p.samples.iter().map(|s| s.conns_per_sec).collect::<Vec<_>>()}),
        );
    }
    // Each network against the host subnets of its mode, paired by repetition.
    let mut ratios = Vec::new();
    for pair in paths.chunks(2) {
        let [host, net] = pair else { continue };
        let r = |get: fn(&Sample) -> f64| {
            let v: Vec<f64> = host
                .samples
                .iter()
                .zip(&net.samples)
                .map(|(h, n)| get(n) / get(h))
                .collect();
            spread(&v).0
        };
        let (g, rr, udp, conn) = (
            r(|s| s.gbps),
            r(|s| s.rr_tps),
            r(|s| s.udp_pps),
            r(|s| s.conns_per_sec),
        );
        let _ = writeln!(
            md,
            "| {} / {} | {g:.2}x | {rr:.2}x | {udp:.2}x | {conn:.2}x |",
            net.name, host.name
        );
        ratios.push(json!({"network": net.name, "host_subnets": host.name, "gbps": g, "rr_tps": rr, "udp_pps": udp, "conns_per_sec": conn}));
    }
    let total: Vec<f64> = latency.iter().map(|l| l.0).collect();
    let ran: Vec<f64> = latency.iter().map(|l| l.1).collect();
    let mut sorted = total.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let p50 = sorted[sorted.len() / 2];
    let p99 = sorted[sorted.len() - 1];
    let start = spread(&many.start_s);
    let _ = writeln!(
        md,
        "\n| measure | result | goal |\n|---|---|---|\n| `docker run` on one host until the container answers a ping from another ({} runs) | p50 {p50:.3} s, p99 {p99:.3} s (docker run alone: median {:.3} s) | <= 1 s |\n| {} containers started at once on 3 hosts (`docker run` one after the other on each), no `--ip` | {:.1} s, {} addresses given twice | none twice |\n| agent start (empty maps) to {} containers of other hosts routed | {:.3} s ({:.3}-{:.3}) | <= 2 s |\n| agent resident memory then (peak) | {:.1} MiB ({:.1}) | <= 64 MiB |",
        latency.len(),
        spread(&ran).0,
        at_once.containers,
        at_once.secs,
        at_once.duplicates,
        many.endpoints,
        start.0,
        start.1,
        start.2,
        many.rss_mib,
        many.peak_mib
    );
    md += "\nThe networks' rows are against Docker's default network (the host subnets, netpath's peer routes) in the same mode, paired by repetition; each network has its own client container on host 1 and server on host 2, on that network alone. The p99 of 20 runs is their largest (of fewer, it is too). The clock of a ping starts before `docker run` and the pings (every 10 ms) when it returns. The containers of other hosts are entries in etcd of hosts that exist only as entries, 100 each; the time is to the agent's log line that reports them routed.\n";
    let json = json!({"reps": opts.reps, "paths": rows, "ratios": ratios,
        "run_to_ping_s": {"samples": total, "p50": p50, "p99": p99, "docker_run_s": ran},
        "at_once": {"containers": at_once.containers, "secs": at_once.secs, "duplicates": at_once.duplicates},
        "many": {"endpoints": many.endpoints, "start_to_routed_s": many.start_s, "rss_mib": many.rss_mib, "rss_peak_mib": many.peak_mib}});
    (md, json)
}
