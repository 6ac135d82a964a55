//! The local containers' part of `cargo xtask bench`: what one container's arrival and
//! departure cost the agent on a host that already has N of them (5,000 by default)
//! against an empty host. One lab host runs a dockerd with five bridge networks (a Linux
//! bridge takes at most 1,024 ports, so 5,000 containers need five); the containers are
//! veths on those bridges whose other ends share one namespace, each with its neighbour
//! entry (permanent: the kernel's neighbour table collects other entries above
//! `gc_thresh3`, 1,024 by default) and its forwarding entry, as a container that has sent
//! one packet leaves them (IPv6 off, as Docker has it on an IPv4 network). Measured for each arrival: the agent's CPU (its threads'
//! time on a CPU from /proc, over the events and 300 ms after the endpoint is in the map)
//! and the time until the agent wrote it (its log's stamp); the same for a departure (the veth deleted);
//! and the agent's idle CPU over a window that holds its periodic full reading.

use std::{
    fmt::Write as _,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use netpath_tests::{Lab, PeerMode, docker::DockerOptions, ip, output};
use serde_json::{Value, json};

/// Networks the containers are spread over, and the most containers each holds (a /22
/// each, below a bridge's 1,024 ports).
const NETWORKS: usize = 5;
const PER_NETWORK: usize = 1000;
/// Milliseconds of each quiet window (see `measure`).
const QUIET_MS: u64 = 400;
/// The most arrivals: the first network's addresses after its containers (.2 onwards, a
/// /22's broadcast address left out).
pub const MAX_ARRIVALS: usize = 1024 - 3 - PER_NETWORK;
/// The most containers the bench puts on the host.
pub const MAX_CONTAINERS: usize = NETWORKS * PER_NETWORK;

/// What the bench measures with.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Containers already on the host in the large case.
    pub containers: usize,
    /// Containers that arrive (and leave again) in each case.
    pub arrivals: usize,
    /// Seconds of the idle window (the periodic reading every 10 s falls in it).
    pub idle_secs: u64,
}

impl Size {
    pub const QUICK: Size = Size {
        containers: 50,
        arrivals: 2,
        idle_secs: 1,
    };
}

/// Network `j`'s subnet: 10.244.(68 + 4j).0/22, inside the host's 10.244.64.0/18.
fn subnet(j: usize) -> String {
    format!("10.244.{}.0/22", 68 + 4 * j)
}

/// Container `k` of network `j`: its address (the network's .2 onwards) and MAC.
fn container(j: usize, k: usize) -> (String, String) {
    let a = 2 + k;
    let addr = format!("10.244.{}.{}", 68 + 4 * j + a / 256, a % 256);
    let mac = format!("02:ce:{j:02x}:00:{:02x}:{:02x}", k / 256, k % 256);
    (addr, mac)
}

/// Measures on an empty host and on one of `size.containers`; returns the report's
/// section and its JSON.
pub fn run(size: Size) -> Result<(String, Value)> {
    let n = size.containers.min(MAX_CONTAINERS);
    let mut cases = Vec::new();
    for containers in [0, n] {
        eprintln!("[bench]   {containers} containers on the host");
        cases.push(crate::bench::in_lab(1, |lab| {
            measure(lab, containers, size)
        })?);
    }
    let mut md = format!(
        "\n## Local containers: one arriving and leaving on a host of {n} (`NP_ENDPOINTS`)\n\n\
         | containers on the host | arrival: agent CPU, ms | arrival: in the map, ms | departure: agent CPU, ms | departure: out of the map, ms | quiet: agent CPU, ms/s | idle: agent CPU, ms/s |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for c in &cases {
        let cell = |k: &str| {
            let (m, lo, hi) = crate::bench::spread(&samples(&c[k]));
            format!("{m:.2} ({lo:.2}-{hi:.2})")
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.2} |",
            c["containers"],
            cell("arrival_cpu_ms"),
            cell("arrival_ms"),
            cell("departure_cpu_ms"),
            cell("departure_ms"),
            cell("quiet_cpu_ms_per_s"),
            c["idle_cpu_ms_per_s"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    let ratio = |k: &str| {
        crate::bench::spread(&samples(&cases[1][k])).0
            / crate::bench::spread(&samples(&cases[0][k])).0
    };
    let (ra, rd) = (ratio("arrival_cpu_ms"), ratio("departure_cpu_ms"));
    writeln!(
        md,
        "\nAt {n} containers one arrival costs the agent {ra:.2}x its CPU on an empty host, one departure {rd:.2}x \
         (medians over {} of each; the agent's CPU from its threads' run time, the events and 300 ms after the map says it; \
         in/out of the map: from the first command to the agent's log line that says it wrote the entry). \
         Quiet: the agent's CPU per second over the {QUIET_MS} ms before each arrival and departure, when nothing happens. \
         Idle: the agent's CPU per second over {} s, its full reading every `gc_interval` (10 s) in it.",
        size.arrivals, size.idle_secs
    )?;
    let value = json!({"containers": n, "arrivals": size.arrivals, "cases": cases,
        "arrival_cpu_ratio": ra, "departure_cpu_ratio": rd});
    Ok((md, value))
}

fn samples(v: &Value) -> Vec<f64> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_f64())
        .collect()
}

/// One case: `containers` on the lab's host, then `size.arrivals` arrivals and departures.
fn measure(lab: &mut Lab, containers: usize, size: Size) -> Result<Value> {
    {
        let h = &mut lab.hosts[0];
        h.subnet = "10.244.64.0/18".to_owned();
        h.gateway = "10.244.64.1".to_owned();
    }
    lab.write_configs(|_, _| PeerMode::Direct)?;
    let opts = DockerOptions {
        daemon: json!({"bip": "10.244.64.1/24"}),
        ..DockerOptions::default()
    };
    lab.dockerd(0, &opts)?;
    lab.use_docker(0)?;
    let host = lab.hosts[0].ns.clone();
    let ctr = lab.namespace("ctr")?;
    // As Docker leaves a container of an IPv4 network: no IPv6 on its interfaces (their
    // multicast, flooded to every port of a bridge of 1,000, would be a storm).
    for ns in [&host, &ctr] {
        for key in ["all", "default"] {
            netpath_tests::sysctl(ns, &format!("net.ipv6.conf.{key}.disable_ipv6"), "1")?;
        }
    }
    let mut bridges = Vec::new();
    for j in 0..NETWORKS {
        let name = format!("bench{j}");
        let id = output(lab.docker(0, &["network", "create", "--subnet", &subnet(j), &name]))?;
        bridges.push(format!("br-{}", &id.trim()[..12]));
    }
    // The containers there before the agent: veths, neighbours, forwarding entries.
    let (mut links, mut ups, mut neighs, mut fdb) =
        (String::new(), String::new(), String::new(), String::new());
    for c in 0..containers {
        let (j, k) = (c / PER_NETWORK, c % PER_NETWORK);
        let (addr, mac) = container(j, k);
        let br = &bridges[j];
        writeln!(
            links,
            "link add v{j}x{k} type veth peer name e{j}x{k} netns {ctr}"
        )?;
        writeln!(links, "link set v{j}x{k} master {br} up")?;
        writeln!(ups, "link set e{j}x{k} up")?;
        writeln!(
            neighs,
            "neigh replace {addr} lladdr {mac} dev {br} nud permanent"
        )?;
        writeln!(fdb, "fdb replace {mac} dev v{j}x{k} master static")?;
    }
    let batch = |ns: &str, tool: &str, text: &str| -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let path = lab.dir.join(format!("{tool}-{ns}.batch"));
        std::fs::write(&path, text)?;
        let cmd = format!("{tool} -batch {}", path.display());
        netpath_tests::run(netpath_tests::in_ns(ns, &cmd))
            .with_context(|| format!("{tool} -batch in {ns}"))
    };
    batch(&host, "ip", &links)?;
    batch(&ctr, "ip", &ups)?;
    batch(&host, "ip", &neighs)?;
    batch(&host, "bridge", &fdb)?;

    lab.attach_secs = 300;
    let t0 = Instant::now();
    lab.start(0)?;
    let attached_s = t0.elapsed().as_secs_f64();
    let pid = lab.agent_pid(0).context("the agent's pid")?;
    let until = Instant::now() + Duration::from_secs(600);
    while count(lab)? < containers {
        if Instant::now() > until {
            bail!(
                "the agent holds {} of {containers} endpoints after 600 s",
                count(lab)?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let learned_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let idle0 = cpu_ns(pid)?;
    std::thread::sleep(Duration::from_secs(size.idle_secs));
    let idle = (cpu_ns(pid)? - idle0) as f64 / 1e6 / size.idle_secs as f64;

    let (mut arrival_cpu, mut arrival_ms, mut departure_cpu, mut departure_ms) =
        (vec![], vec![], vec![], vec![]);
    // The agent's CPU per second while nothing happens, just before each arrival and
    // departure (its background on this host: what the window of an event holds besides it).
    let mut quiet = vec![];
    let quiet_window = |quiet: &mut Vec<f64>| -> Result<()> {
        let (t, c) = (Instant::now(), cpu_ns(pid)?);
        std::thread::sleep(Duration::from_millis(QUIET_MS));
        quiet.push((cpu_ns(pid)? - c) as f64 / 1e6 / t.elapsed().as_secs_f64());
        Ok(())
    };
    // NP_BENCH_PERF=<file>: `perf record` on the agent over the arrivals, to <file>.<N> for
    // the case of N containers (how measured.md's profiles were taken).
    let perf = match std::env::var("NP_BENCH_PERF") {
        Ok(out) => {
            let (pid, out) = (pid.to_string(), format!("{out}.{containers}"));
            let p = std::process::Command::new("perf")
                .args(["record", "-F", "4999", "-g", "-p", &pid, "-o", &out])
                .spawn()
                .context("starting perf record (NP_BENCH_PERF)")?;
            std::thread::sleep(Duration::from_millis(500));
            Some(Perf(p))
        }
        _ => None,
    };
    for a in 0..size.arrivals {
        // On the first network, after the containers there (each holds fewer than 1,000).
        let k = PER_NETWORK + a;
        let (addr, mac) = container(0, k);
        let (br, v) = (&bridges[0], format!("v0x{k}"));
        let script = format!(
            "ip link add {v} type veth peer name e0x{k} netns {ctr} && ip link set {v} master {br} up && \
             ip -n {ctr} link set e0x{k} up && ip neigh replace {addr} lladdr {mac} dev {br} nud permanent && \
             bridge fdb replace {mac} dev {v} master static"
        );
        quiet_window(&mut quiet)?;
        let (t0, c0) = (SystemTime::now(), cpu_ns(pid)?);
        let mut sh = std::process::Command::new("ip");
        sh.args(["netns", "exec", &host, "sh", "-c", &script]);
        netpath_tests::run(sh)?;
        wait_until(lab, &addr, true)?;
        arrival_ms.push(in_log(lab, t0, &format!("1 added ({addr})"))?);
        std::thread::sleep(Duration::from_millis(300));
        arrival_cpu.push((cpu_ns(pid)? - c0) as f64 / 1e6);

        quiet_window(&mut quiet)?;
        let (t0, c0) = (SystemTime::now(), cpu_ns(pid)?);
        netpath_tests::run(ip(&host, &format!("link del {v}")))?;
        wait_until(lab, &addr, false)?;
        departure_ms.push(in_log(lab, t0, &format!("1 removed ({addr})"))?);
        std::thread::sleep(Duration::from_millis(300));
        departure_cpu.push((cpu_ns(pid)? - c0) as f64 / 1e6);
        netpath_tests::run(ip(&host, &format!("neigh del {addr} dev {br}")))?;
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(perf);
    if count(lab)? != containers {
        bail!(
            "the agent holds {} endpoints, not {containers}, after the arrivals left",
            count(lab)?
        );
    }
    Ok(
        json!({"containers": containers, "arrival_cpu_ms": arrival_cpu, "arrival_ms": arrival_ms,
        "departure_cpu_ms": departure_cpu, "departure_ms": departure_ms,
        "idle_cpu_ms_per_s": idle, "idle_secs": size.idle_secs, "quiet_cpu_ms_per_s": quiet,
        "start_to_attached_s": attached_s, "start_to_all_endpoints_s": learned_s}),
    )
}

/// A `perf record` (NP_BENCH_PERF), stopped (SIGINT: it writes its file) when dropped,
/// also when an arrival fails.
struct Perf(std::process::Child);

impl Drop for Perf {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}

/// The endpoints host 0's agent holds.
fn count(lab: &Lab) -> Result<usize> {
    Ok(lab.endpoints(0).len())
}

/// Milliseconds from `t0` to the agent's log line that says `what` (its stamps have
/// milliseconds).
fn in_log(lab: &Lab, t0: SystemTime, what: &str) -> Result<f64> {
    // Whole milliseconds: a line of t0's own millisecond is after it.
    let from = t0 - Duration::from_millis(1);
    let t = crate::fleet_bench::logged(lab, 0, from, |l| l.contains(what))?;
    Ok(t.duration_since(t0).unwrap_or_default().as_secs_f64() * 1e3)
}

/// Waits until `addr` is (or, with `present` false, is no longer) in host 0's endpoints.
fn wait_until(lab: &Lab, addr: &str, present: bool) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if lab.endpoints(0).contains_key(addr) == present {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "{addr} still {} the endpoints after 20 s",
                if present { "not in" } else { "in" }
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Nanoseconds process `pid`'s threads have run on a CPU (/proc/PID/task/*/schedstat).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(t?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(cidr: &str) -> (u32, u32) {
        let (a, len) = cidr.split_once('/').unwrap();
        let a = u32::from(a.parse::<std::net::Ipv4Addr>().unwrap());
        let size = 1u32 << (32 - len.parse::<u32>().unwrap());
        (a, a + size - 1)
    }

    #[test]
    fn containers_stay_inside_their_networks_and_the_hosts_subnet() {
        let host = range("10.244.64.0/18");
        for j in 0..NETWORKS {
            let net = range(&subnet(j));
            assert!(host.0 <= net.0 && net.1 <= host.1, "{}", subnet(j));
            // The arrivals come after the network's containers, before its broadcast.
            for k in [0, PER_NETWORK - 1, PER_NETWORK + 19] {
                let a = u32::from(container(j, k).0.parse::<std::net::Ipv4Addr>().unwrap());
                assert!(
                    net.0 + 1 < a && a < net.1,
                    "{} in {}",
                    container(j, k).0,
                    subnet(j)
                );
            }
        }
        assert_ne!(container(0, 5).1, container(1, 5).1);
        assert_ne!(container(0, 5).1, container(0, 261).1);
    }
}
