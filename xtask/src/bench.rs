//! `cargo xtask bench`: netpath's paths against the kernel's, in one run, on labs of two
//! hosts in network namespaces. Paths are interleaved (each repetition visits every path,
//! in a rotated order) and the figures are medians with their spread, also as ratios to
//! the kernel path they replace: the machine is noisy, a single run says little.
//!
//! Paths so far: plain kernel routing and netpath direct; the kernel's vxlan device and
//! netpath's tunnel with XDP off, generic and native; masquerade to an outside host by
//! iptables (Docker's rules: MASQUERADE, FORWARD with conntrack) and by netpath. Measures:
//! single-stream TCP throughput (iperf3) and ping RTT; through the masquerade paths also
//! new TCP connections per second and how many concurrent flows it holds.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use netpath_tests::{Lab, PeerMode, Spec, in_ns, output};
use serde_json::json;

pub struct Options {
    pub reps: usize,
    pub secs: u32,
    pub pings: u32,
    /// Concurrent TCP flows opened through the masquerade paths (half per container).
    pub flows: usize,
    pub out_dir: PathBuf,
    /// Only the paths whose name contains one of these (all when empty).
    pub only: Vec<String>,
}

impl Options {
    /// `--quick`: every path once, briefly (under a minute on the lab machine).
    pub fn quick(out_dir: PathBuf, only: Vec<String>) -> Options {
        Options {
            reps: 1,
            secs: 1,
            pings: 5,
            flows: 400,
            out_dir,
            only,
        }
    }
}

/// (received/sent, average RTT in ms) of `count` pings, 10 ms apart.
pub fn ping(ns: &str, to: &str, count: u32) -> Result<(String, f64)> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-i", "0.01", "-W", "1", "-c",
        ])
        .arg(count.to_string())
        .arg(to)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .map(|l| {
            let n: Vec<&str> = l
                .split(',')
                .map(|p| p.split_whitespace().next().unwrap_or("?"))
                .collect();
            format!("{}/{}", n.get(1).unwrap_or(&"?"), n.first().unwrap_or(&"?"))
        })
        .unwrap_or_else(|| "?".into());
    let rtt = text
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1)?.trim().split('/').nth(1)?.parse().ok())
        .unwrap_or(f64::NAN);
    Ok((summary, rtt))
}

/// Single-stream TCP throughput in Gbit/s from `from` to `to` (an iperf3 server there).
pub fn iperf(lab: &mut Lab, server_ns: &str, from: &str, to: &str, secs: u32) -> Result<f64> {
    iperf_retr(lab, server_ns, from, to, secs).map(|(g, _)| g)
}

/// Like [`iperf`], with the sender's TCP retransmissions.
pub fn iperf_retr(
    lab: &mut Lab,
    server_ns: &str,
    from: &str,
    to: &str,
    secs: u32,
) -> Result<(f64, u64)> {
    lab.spawn_in(server_ns, Path::new("iperf3"), &["-s", "-1"])?;
    std::thread::sleep(Duration::from_millis(300));
    let out = output(in_ns(from, &format!("iperf3 -J -t {secs} -c {to}")))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    Ok((
        gbps,
        v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    ))
}

/// CPU time counters of the whole machine: (steal, total), in ticks.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.get(7).copied().unwrap_or(0), v.iter().take(8).sum())
}

/// Which lab a path runs on, and how netpath is set up there.
#[derive(Clone, Copy)]
enum Setup {
    KernelRouting,
    KernelVxlan,
    Netpath(PeerMode, &'static str),
    /// Containers to the outside host through iptables MASQUERADE.
    IptablesMasquerade,
    /// Containers to the outside host through netpath's masquerade, with these
    /// `masquerade_ports`.
    NetpathMasquerade(&'static str),
}

struct BenchPath {
    name: &'static str,
    setup: Setup,
    /// The kernel path this one is compared with.
    baseline: &'static str,
}

const PATHS: &[BenchPath] = &[
    BenchPath {
        name: "kernel routing",
        setup: Setup::KernelRouting,
        baseline: "kernel routing",
    },
    BenchPath {
        name: "netpath direct",
        setup: Setup::Netpath(PeerMode::Direct, "off"),
        baseline: "kernel routing",
    },
    BenchPath {
        name: "kernel vxlan",
        setup: Setup::KernelVxlan,
        baseline: "kernel vxlan",
    },
    BenchPath {
        name: "netpath vxlan, xdp off",
        setup: Setup::Netpath(PeerMode::Vxlan, "off"),
        baseline: "kernel vxlan",
    },
    BenchPath {
        name: "netpath vxlan, xdp generic",
        setup: Setup::Netpath(PeerMode::Vxlan, "generic"),
        baseline: "kernel vxlan",
    },
    BenchPath {
        name: "netpath vxlan, xdp native",
        setup: Setup::Netpath(PeerMode::Vxlan, "native"),
        baseline: "kernel vxlan",
    },
    BenchPath {
        name: "iptables masquerade",
        setup: Setup::IptablesMasquerade,
        baseline: "iptables masquerade",
    },
    BenchPath {
        name: "netpath masquerade",
        setup: Setup::NetpathMasquerade(DEFAULT_PORTS),
        baseline: "iptables masquerade",
    },
    // MASQUERADE without --to-ports picks from 1024-65535; netpath's default range is
    // Linux's ephemeral one, half as big. This path gives netpath a range as wide.
    BenchPath {
        name: "netpath masquerade, ports 4790-65535",
        setup: Setup::NetpathMasquerade(WIDE_PORTS),
        baseline: "iptables masquerade",
    },
];

const DEFAULT_PORTS: &str = "32768-60999";
const WIDE_PORTS: &str = "4790-65535";

/// Port of the echo server on the outside host.
const ECHO_PORT: &str = "7000";

/// One host with two containers and an outside host running an echo server, for the
/// masquerade paths.
fn masquerade_lab() -> Result<Lab> {
    let mut lab = Lab::new(Spec {
        hosts: 1,
        containers: 2,
        locked_down: true,
        outside: true,
    })?;
    // Clients reuse ports in TIME_WAIT, so that thousands of short connections per second
    // do not run out of them (the same for both paths).
    for c in &lab.hosts[0].containers {
        netpath_tests::sysctl(&c.ns, "net.ipv4.tcp_tw_reuse", "1")?;
    }
    let out = lab.outside().ns.clone();
    lab.spawn_in(
        &out,
        &netpath_tests::probe_bin(),
        &["serve", ECHO_PORT, "86400"],
    )?;
    Ok(lab)
}

/// Docker's rules for its default bridge: forwarding on, FORWARD accepts what leaves the
/// bridge and what conntrack says belongs to it, MASQUERADE for the subnet.
fn iptables_masquerade(lab: &Lab) -> Result<()> {
    let h = &lab.hosts[0];
    netpath_tests::sysctl(&h.ns, "net.ipv4.ip_forward", "1")?;
    for rule in [
        "iptables -A FORWARD -i br0 ! -o br0 -j ACCEPT".to_owned(),
        "iptables -A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            .to_owned(),
        format!(
            "iptables -t nat -A POSTROUTING -s {} ! -o br0 -j MASQUERADE",
            h.subnet
        ),
    ] {
        netpath_tests::run(in_ns(&h.ns, &rule))?;
    }
    Ok(())
}

fn two_hosts() -> Result<Lab> {
    Lab::new(Spec {
        hosts: 2,
        containers: 1,
        locked_down: true,
        outside: false,
    })
}

struct Labs {
    routing: Lab,
    vxlan: Lab,
    netpath: Lab,
    masq_iptables: Lab,
    masq_netpath: Lab,
    /// The masquerade ports netpath runs with now.
    masq_ports: &'static str,
    /// What the netpath lab runs now.
    current: Option<(PeerMode, &'static str)>,
}

impl Labs {
    fn new() -> Result<Labs> {
        let routing = two_hosts()?;
        routing.kernel_routing()?;
        let vxlan = two_hosts()?;
        vxlan.kernel_vxlan(0)?;
        vxlan.kernel_vxlan(1)?;
        let masq_iptables = masquerade_lab()?;
        iptables_masquerade(&masq_iptables)?;
        let masq_netpath = masquerade_lab()?;
        masq_netpath.write_configs(|_, _| PeerMode::Direct)?;
        masq_netpath.set_host_option(0, "masquerade", "true")?;
        Ok(Labs {
            routing,
            vxlan,
            netpath: two_hosts()?,
            masq_iptables,
            masq_netpath,
            masq_ports: "",
            current: None,
        })
    }

    fn ids(&self) -> [String; 5] {
        [
            self.routing.id.clone(),
            self.vxlan.id.clone(),
            self.netpath.id.clone(),
            self.masq_iptables.id.clone(),
            self.masq_netpath.id.clone(),
        ]
    }

    /// The lab for `setup`, made ready (netpath reconfigured and restarted if needed).
    fn ready(&mut self, setup: Setup) -> Result<&mut Lab> {
        match setup {
            Setup::KernelRouting => Ok(&mut self.routing),
            Setup::KernelVxlan => Ok(&mut self.vxlan),
            Setup::IptablesMasquerade => Ok(&mut self.masq_iptables),
            Setup::NetpathMasquerade(ports) => {
                let lab = &mut self.masq_netpath;
                if self.masq_ports != ports {
                    // A new range needs new tables: the old flows hold ports of the old one.
                    if !self.masq_ports.is_empty() {
                        lab.kill_agent(0);
                        output(lab.netpath(0, &["down"]))?;
                    }
                    lab.set_host_option(0, "masquerade_ports", &format!("\"{ports}\""))?;
                    lab.start(0)?;
                    self.masq_ports = ports;
                }
                Ok(lab)
            }
            Setup::Netpath(mode, xdp) => {
                if self.current != Some((mode, xdp)) {
                    let lab = &mut self.netpath;
                    lab.write_configs(|_, _| mode)?;
                    for i in 0..lab.hosts.len() {
                        lab.set_host_option(i, "xdp", &format!("\"{xdp}\""))?;
                        lab.kill_agent(i);
                        lab.start(i)?;
                    }
                    self.current = Some((mode, xdp));
                }
                Ok(&mut self.netpath)
            }
        }
    }

    fn teardown(mut self) -> Result<()> {
        self.routing.teardown()?;
        self.vxlan.teardown()?;
        self.masq_iptables.teardown()?;
        self.masq_netpath.teardown()?;
        self.netpath.teardown()
    }
}

#[derive(Default, Clone)]
struct Samples {
    gbps: Vec<f64>,
    rtt_ms: Vec<f64>,
    retransmits: Vec<f64>,
    /// Masquerade paths: new TCP connections per second, concurrent flows held.
    conns_per_sec: Vec<f64>,
    /// netpath masquerade: packets dropped for want of a free port while measuring.
    no_port_drops: Vec<f64>,
    flows_held: Vec<f64>,
    /// Share of CPU time the hypervisor took while measuring (steal), in %.
    steal_pct: Vec<f64>,
}

/// One measurement of one path.
struct Sample {
    gbps: f64,
    rtt_ms: f64,
    retransmits: u64,
    steal_pct: f64,
    conns_per_sec: Option<f64>,
    flows_held: Option<f64>,
    no_port_drops: Option<f64>,
}

/// netpath's `drop-nat-no-port` count on `lab`'s first host; None where netpath does not
/// run.
fn no_port_drops(lab: &Lab) -> Option<f64> {
    if !lab.hosts[0].pin_dir.exists() {
        return None;
    }
    let out = output(lab.netpath(0, &["dump", "counters", "--json"])).ok()?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
    rows.iter()
        .find(|r| r["reason"] == "drop-nat-no-port")
        .and_then(|r| r["packets"].as_f64())
}

/// Median, min and max.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (mid, s[0], s[s.len() - 1])
}

/// New TCP connections per second through `lab`'s host to the outside echo server: both
/// containers open, use and close connections one after the other for `secs`, at once.
fn conn_rate(lab: &Lab, secs: u32) -> Result<f64> {
    let to = lab.outside().addr.clone();
    let runs: Vec<_> = lab.hosts[0]
        .containers
        .iter()
        .map(|c| {
            let cmd = format!(
                "{} connrate {to} {ECHO_PORT} {secs}",
                netpath_tests::probe_bin().display()
            );
            let ns = c.ns.clone();
            std::thread::spawn(move || output(in_ns(&ns, &cmd)))
        })
        .collect();
    let mut total = 0.0;
    for r in runs {
        let out = r.join().map_err(|_| anyhow::anyhow!("connrate thread"))??;
        total += out
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .with_context(|| format!("np-probe connrate said {out:?}"))?;
    }
    Ok(total)
}

/// How many of `n` concurrent TCP flows (half from each container) to the outside echo
/// server each got their own message back.
fn flows_held(lab: &Lab, n: usize) -> Result<f64> {
    let to = lab.outside().addr.clone();
    let each = n / lab.hosts[0].containers.len();
    let runs: Vec<_> = lab.hosts[0]
        .containers
        .iter()
        .map(|c| {
            let cmd = format!(
                "{} flows tcp {to} {ECHO_PORT} {each}",
                netpath_tests::probe_bin().display()
            );
            let ns = c.ns.clone();
            // Exits 1 when some flows failed; the count is on stdout either way.
            std::thread::spawn(move || {
                Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .args(cmd.split_whitespace())
                    .output()
            })
        })
        .collect();
    let mut held = 0.0;
    for r in runs {
        let out = r.join().map_err(|_| anyhow::anyhow!("flows thread"))??;
        let text = String::from_utf8_lossy(&out.stdout);
        held += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .with_context(|| format!("np-probe flows said {text:?}"))?;
    }
    Ok(held)
}

fn measure(lab: &mut Lab, opts: &Options, masquerade: bool) -> Result<Sample> {
    let from = lab.hosts[0].containers[0].ns.clone();
    let (server, to) = if masquerade {
        (lab.outside().ns.clone(), lab.outside().addr.clone())
    } else {
        (
            lab.hosts[1].containers[0].ns.clone(),
            lab.hosts[1].containers[0].ip.clone(),
        )
    };
    // Warm-up: neighbours resolved, caches filled, before anything is timed.
    ping(&from, &to, 5)?;
    let (got, rtt) = ping(&from, &to, opts.pings)?;
    let sent = opts.pings.to_string();
    if got != format!("{sent}/{sent}") {
        bail!("ping lost packets ({got})");
    }
    let (steal0, total0) = cpu_ticks();
    let (gbps, retransmits) = iperf_retr(lab, &server, &from, &to, opts.secs)?;
    let (steal1, total1) = cpu_ticks();
    if gbps <= 0.0 {
        bail!("no TCP traffic crossed (iperf3 measured 0 bit/s)");
    }
    let steal_pct = 100.0 * (steal1 - steal0) as f64 / (total1 - total0).max(1) as f64;
    let (conns_per_sec, flows, drops) = if masquerade {
        let before = no_port_drops(lab);
        let rate = conn_rate(lab, opts.secs)?;
        if rate <= 0.0 {
            bail!("no TCP connection crossed the NAT");
        }
        let held = flows_held(lab, opts.flows)?;
        let drops = no_port_drops(lab).zip(before).map(|(a, b)| a - b);
        (Some(rate), Some(held), drops)
    } else {
        (None, None, None)
    };
    Ok(Sample {
        gbps,
        rtt_ms: rtt,
        retransmits,
        steal_pct,
        conns_per_sec,
        flows_held: flows,
        no_port_drops: drops,
    })
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    format!("Linux {}, {cpus} CPUs ({model})", kernel.trim())
}

fn date() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn run(opts: Options) -> Result<()> {
    let chosen: Vec<usize> = (0..PATHS.len())
        .filter(|&i| {
            opts.only.is_empty() || opts.only.iter().any(|o| PATHS[i].name.contains(o.as_str()))
        })
        .collect();
    if chosen.is_empty() {
        bail!(
            "--only matches no path; paths: {}",
            PATHS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        );
    }
    eprintln!(
        "[bench] {} paths x {} repetitions, iperf3 {} s and {} pings each",
        chosen.len(),
        opts.reps,
        opts.secs,
        opts.pings
    );
    let mut labs = Labs::new()?;
    let ids = labs.ids();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: removing the labs");
        for id in &ids {
            netpath_tests::remove_lab(id);
        }
        std::process::exit(130);
    })?;
    let mut samples = vec![Samples::default(); PATHS.len()];
    for rep in 0..opts.reps {
        for k in 0..chosen.len() {
            let i = chosen[(k + rep) % chosen.len()];
            let p = &PATHS[i];
            let lab = labs.ready(p.setup)?;
            let masq = matches!(
                p.setup,
                Setup::IptablesMasquerade | Setup::NetpathMasquerade(_)
            );
            // One retry: on this kind of machine a measurement can fail for reasons that
            // have nothing to do with the path (an iperf3 server slow to start).
            let m = match measure(lab, &opts, masq) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("[bench] {}: {e:#}; measuring again", p.name);
                    measure(lab, &opts, masq).with_context(|| p.name)?
                }
            };
            eprintln!(
                "[bench] rep {}/{} {:<28} {:>6.2} Gbit/s {:>6} retr {:>7.3} ms  (steal {:.0}%)",
                rep + 1,
                opts.reps,
                p.name,
                m.gbps,
                m.retransmits,
                m.rtt_ms,
                m.steal_pct
            );
            let s = &mut samples[i];
            s.gbps.push(m.gbps);
            s.rtt_ms.push(m.rtt_ms);
            s.retransmits.push(m.retransmits as f64);
            s.steal_pct.push(m.steal_pct);
            if let (Some(c), Some(f)) = (m.conns_per_sec, m.flows_held) {
                eprintln!(
                    "[bench]            {:.0} new connections/s, {f:.0} of {} concurrent flows held",
                    c, opts.flows
                );
                s.conns_per_sec.push(c);
                s.flows_held.push(f);
                if let Some(d) = m.no_port_drops {
                    eprintln!(
                        "[bench]            netpath dropped {d:.0} packets for want of a free port"
                    );
                    s.no_port_drops.push(d);
                }
            }
        }
    }
    labs.teardown()?;

    let base = |name: &str| {
        let i = PATHS.iter().position(|p| p.name == name).unwrap_or(0);
        (spread(&samples[i].gbps).0, spread(&samples[i].rtt_ms).0)
    };
    let (machine, date) = (machine(), date());
    let mut md = format!(
        "netpath bench, {date}, {machine}; {} repetitions, interleaved; median (min-max)\n\n",
        opts.reps
    );
    md += "| path | TCP 1 stream, Gbit/s | vs baseline | TCP retransmits | ping RTT, ms | vs baseline | CPU steal |\n";
    md += "|---|---|---|---|---|---|---|\n";
    let mut rows = Vec::new();
    for (p, s) in PATHS
        .iter()
        .zip(&samples)
        .filter(|(_, s)| !s.gbps.is_empty())
    {
        let (g, gmin, gmax) = spread(&s.gbps);
        let (r, rmin, rmax) = spread(&s.rtt_ms);
        let (retr, _, _) = spread(&s.retransmits);
        let (steal, _, steal_max) = spread(&s.steal_pct);
        let (bg, br) = base(p.baseline);
        let _ = writeln!(
            md,
            "| {} | {g:.2} ({gmin:.2}-{gmax:.2}) | {:.2}x {} | {retr:.0} | {r:.3} ({rmin:.3}-{rmax:.3}) | {:.2}x | {steal:.0}% (max {steal_max:.0}%) |",
            p.name,
            g / bg,
            p.baseline,
            r / br
        );
        rows.push(json!({
            "path": p.name,
            "baseline": p.baseline,
            "tcp_gbps": {"median": g, "min": gmin, "max": gmax, "samples": s.gbps},
            "rtt_ms": {"median": r, "min": rmin, "max": rmax, "samples": s.rtt_ms},
            "retransmits": {"median": retr, "samples": s.retransmits},
            "steal_pct": {"median": steal, "max": steal_max, "samples": s.steal_pct},
            "tcp_vs_baseline": g / bg,
            "rtt_vs_baseline": r / br,
        }));
    }
    let masq: Vec<(&BenchPath, &Samples)> = PATHS
        .iter()
        .zip(&samples)
        .filter(|(_, s)| !s.conns_per_sec.is_empty())
        .collect();
    if !masq.is_empty() {
        let _ = writeln!(
            md,
            "\nMasquerade to an outside host ({} concurrent TCP flows offered):\n",
            opts.flows
        );
        md += "| path | new TCP connections/s | vs iptables | concurrent flows held | drop-nat-no-port (median) |\n|---|---|---|---|---|\n";
        let bi = PATHS
            .iter()
            .position(|p| p.name == "iptables masquerade")
            .unwrap_or(0);
        let base_rate = spread(&samples[bi].conns_per_sec).0;
        for (p, s) in masq {
            let (c, cmin, cmax) = spread(&s.conns_per_sec);
            let (f, fmin, _) = spread(&s.flows_held);
            let drops = if s.no_port_drops.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", spread(&s.no_port_drops).0)
            };
            let _ = writeln!(
                md,
                "| {} | {c:.0} ({cmin:.0}-{cmax:.0}) | {:.2}x | {f:.0} of {} (min {fmin:.0}) | {drops} |",
                p.name,
                c / base_rate,
                opts.flows
            );
            if let Some(row) = rows.iter_mut().find(|r| r["path"] == p.name) {
                row["conns_per_sec"] =
                    json!({"median": c, "min": cmin, "max": cmax, "samples": s.conns_per_sec});
                row["flows_held"] = json!({"median": f, "min": fmin, "offered": opts.flows, "samples": s.flows_held});
            }
        }
    }
    std::fs::create_dir_all(&opts.out_dir)?;
    let md_path = opts.out_dir.join("results.md");
    let json_path = opts.out_dir.join("results.json");
    std::fs::write(&md_path, &md)?;
    let doc = json!({"date": date, "machine": machine, "reps": opts.reps,
        "iperf_secs": opts.secs, "pings": opts.pings, "paths": rows});
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    println!("{md}");
    eprintln!(
        "[bench] written to {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}
