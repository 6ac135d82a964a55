//! `cargo xtask bench`: netpath's paths against the kernel's, in one run, on labs in
//! network namespaces (shared/notes/design.md).
//!
//! Paths: the ceiling (two namespaces joined by one veth), the iptables path (routes,
//! ip_forward, Docker's chains, MASQUERADE with a RETURN for the container range), the
//! kernel's vxlan overlay, netpath direct, netpath vxlan with XDP off, generic and native,
//! masquerade to an outside host by iptables and by netpath, and two containers of one
//! host through Docker's bridge (ICC rules, br_netfilter on) and through netpath (policy
//! off and with 1,000 rules). Measures on each: TCP throughput (iperf3, one stream), TCP
//! request/response (1 byte each way: rate, p50, p99; and on many connections at once),
//! small UDP packets per second delivered, new TCP connections per second (on the
//! masquerade paths from both containers at once, to one server port). Then the
//! scale test: request/response rate with extra FORWARD rules on the iptables path and
//! with policy rules and peers on netpath. Then each program's ns per packet
//! (`netpath bench`, BPF_PROG_TEST_RUN).
//!
//! Paths are interleaved (each repetition visits every path, in a rotated order) and the
//! figures are medians with their spread, also as ratios to the iptables path and to the
//! ceiling: the machine is noisy, one run says little.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netpath_tests::{Container, Lab, PeerMode, Spec, in_ns, output};
use serde_json::{Value, json};

pub struct Options {
    pub reps: usize,
    /// Seconds of iperf3 per measurement (whole seconds: iperf3 takes no less).
    pub secs: u32,
    /// Seconds of each other measure (request/response, UDP, connections).
    pub probe_secs: f64,
    /// Concurrent TCP flows opened through the masquerade paths.
    pub flows: usize,
    /// Connections of the many-flows request/response measure (every path).
    pub connections: usize,
    /// Policy rule counts of the scale test (the iptables path takes those up to 10,000).
    pub scale: Vec<usize>,
    /// BPF_PROG_TEST_RUN runs per program case.
    pub prog_repeat: u32,
    pub out_dir: PathBuf,
    /// Only the paths whose name contains one of these (all when empty); "fleet": only
    /// the fleet's measurements.
    pub only: Vec<String>,
    /// Host registrations in etcd for the fleet's measurements (also a tenth of them).
    pub fleet_hosts: usize,
    /// How long the fleet's churn of registrations lasts.
    pub fleet_churn_secs: u64,
    /// Simulated hosts of etcd's side, and the seconds of each case's steady window.
    pub etcd_agents: usize,
    pub etcd_secs: u64,
    /// etcd's side as one short case (the smoke test).
    pub etcd_smoke: bool,
    /// How big the measurements of networks across hosts are.
    pub across: crate::across_bench::Size,
    /// How big the local containers' measurements are.
    pub endpoints: crate::endpoint_bench::Size,
    /// How many samples policy's cost after a flow's first packet takes.
    pub policy: crate::policy_bench::Size,
}

impl Options {
    /// `--quick`: every path once, briefly; a smoke test of the benchmark itself.
    pub fn quick(out_dir: PathBuf, only: Vec<String>) -> Options {
        Options {
            reps: 1,
            secs: 1,
            probe_secs: 0.5,
            flows: 200,
            connections: 100,
            scale: SCALE.to_vec(),
            prog_repeat: 2000,
            out_dir,
            only,
            fleet_hosts: 20,
            fleet_churn_secs: 2,
            etcd_agents: 20,
            etcd_secs: 2,
            etcd_smoke: true,
            across: crate::across_bench::Size::QUICK,
            endpoints: crate::endpoint_bench::Size::QUICK,
            policy: crate::policy_bench::Size::QUICK,
        }
    }
}

/// The scale test's rule counts.
pub const SCALE: &[usize] = &[0, 1000, 10_000, 100_000];
/// The most extra FORWARD rules the iptables path is measured with.
const IPTABLES_MAX_RULES: usize = 10_000;
/// Peers configured besides the real one in the scale test: at most this many (every
/// peer needs its own underlay address, and the lab's are one /24).
const SCALE_PEERS: usize = 200;

/// Echo server port (TCP and UDP) in every server namespace; UDP sink port.
const ECHO_PORT: &str = "7000";
const SINK_PORT: &str = "7001";
/// UDP payload of the packets-per-second test (a 60-byte frame).
const UDP_SIZE: &str = "18";

const CEILING: &str = "ceiling (one veth)";
const IPTABLES: &str = "iptables path";
const IPTABLES_MASQ: &str = "iptables masquerade";
const KERNEL_VXLAN: &str = "kernel vxlan";
const DOCKER_SAME_HOST: &str = "docker bridge, same host";
const NETPATH_DIRECT: &str = "netpath direct";

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
    let v: Value = serde_json::from_str(&out).context("iperf3 JSON")?;
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

/// Which lab a path runs on, and how it is set up there.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Setup {
    Ceiling,
    /// The iptables path with this many extra FORWARD rules.
    Iptables(usize),
    KernelVxlan,
    /// netpath between two hosts: peer mode, xdp mode, policy rules (and up to
    /// [`SCALE_PEERS`] more peers).
    Netpath(PeerMode, &'static str, usize),
    /// Containers to the outside host through iptables MASQUERADE.
    IptablesMasquerade,
    /// Containers to the outside host through netpath's masquerade, with these
    /// `masquerade_ports`.
    NetpathMasquerade(&'static str),
    /// Two containers of one host through the bridge, with Docker's rules (ICC accept)
    /// and br_netfilter on, as Docker leaves a host.
    SameHostDocker,
    /// The same pair with netpath on that host (Docker's rules still there), with this
    /// many policy rules.
    SameHostNetpath(usize),
}

impl Setup {
    fn masquerade(self) -> bool {
        matches!(
            self,
            Setup::IptablesMasquerade | Setup::NetpathMasquerade(_)
        )
    }

    fn same_host(self) -> bool {
        matches!(self, Setup::SameHostDocker | Setup::SameHostNetpath(_))
    }
}

struct BenchPath {
    name: &'static str,
    setup: Setup,
    /// The kernel path this one replaces, where that is not the iptables one.
    kernel: Option<&'static str>,
}

const PATHS: &[BenchPath] = &[
    BenchPath {
        name: CEILING,
        setup: Setup::Ceiling,
        kernel: None,
    },
    BenchPath {
        name: IPTABLES,
        setup: Setup::Iptables(0),
        kernel: None,
    },
    BenchPath {
        name: KERNEL_VXLAN,
        setup: Setup::KernelVxlan,
        kernel: None,
    },
    BenchPath {
        name: NETPATH_DIRECT,
        setup: Setup::Netpath(PeerMode::Direct, "off", 0),
        kernel: None,
    },
    BenchPath {
        name: "netpath vxlan, xdp off",
        setup: Setup::Netpath(PeerMode::Vxlan, "off", 0),
        kernel: Some(KERNEL_VXLAN),
    },
    BenchPath {
        name: "netpath vxlan, xdp generic",
        setup: Setup::Netpath(PeerMode::Vxlan, "generic", 0),
        kernel: Some(KERNEL_VXLAN),
    },
    BenchPath {
        name: "netpath vxlan, xdp native",
        setup: Setup::Netpath(PeerMode::Vxlan, "native", 0),
        kernel: Some(KERNEL_VXLAN),
    },
    BenchPath {
        name: IPTABLES_MASQ,
        setup: Setup::IptablesMasquerade,
        kernel: None,
    },
    BenchPath {
        name: "netpath masquerade",
        setup: Setup::NetpathMasquerade(DEFAULT_PORTS),
        kernel: None,
    },
    // MASQUERADE without --to-ports picks from 1024-65535; netpath's default range is
    // Linux's ephemeral one, half as big. This path gives netpath a range as wide.
    BenchPath {
        name: "netpath masquerade, ports 4790-65535",
        setup: Setup::NetpathMasquerade(WIDE_PORTS),
        kernel: None,
    },
    BenchPath {
        name: DOCKER_SAME_HOST,
        setup: Setup::SameHostDocker,
        kernel: None,
    },
    BenchPath {
        name: "netpath same host",
        setup: Setup::SameHostNetpath(0),
        kernel: Some(DOCKER_SAME_HOST),
    },
    BenchPath {
        name: "netpath same host, 1000 rules",
        setup: Setup::SameHostNetpath(1000),
        kernel: Some(DOCKER_SAME_HOST),
    },
];

const DEFAULT_PORTS: &str = "32768-60999";
const WIDE_PORTS: &str = "4790-65535";

impl BenchPath {
    /// The iptables figure this path is compared with.
    fn iptables(&self) -> &'static str {
        if self.setup.masquerade() {
            IPTABLES_MASQ
        } else if self.setup.same_host() {
            DOCKER_SAME_HOST
        } else {
            IPTABLES
        }
    }
}

/// Where a measurement goes: client namespace, server namespace, server address.
#[derive(Clone)]
pub(crate) struct Ends {
    pub(crate) client: String,
    pub(crate) server: String,
    pub(crate) to: String,
}

/// Starts the echo server in `ns` and lets `client` reuse ports in TIME_WAIT, so that
/// thousands of short connections per second do not run out of them (on every path).
fn serve(lab: &mut Lab, client: &str, ns: &str) -> Result<()> {
    reuse_ports(client)?;
    lab.spawn_in(
        ns,
        &netpath_tests::probe_bin(),
        &["serve", ECHO_PORT, "86400"],
    )
}

pub(crate) fn reuse_ports(client: &str) -> Result<()> {
    netpath_tests::sysctl(client, "net.ipv4.tcp_tw_reuse", "1")
}

/// A lab of two hosts with one container each; the echo server on the second.
pub(crate) fn two_hosts() -> Result<(Lab, Ends)> {
    let mut lab = Lab::new(Spec {
        hosts: 2,
        containers: 1,
        locked_down: true,
        outside: false,
    })?;
    let (a, b) = (
        lab.hosts[0].containers[0].clone(),
        lab.hosts[1].containers[0].clone(),
    );
    serve(&mut lab, &a.ns, &b.ns)?;
    Ok((lab, ends(&a, &b)))
}

fn ends(a: &Container, b: &Container) -> Ends {
    Ends {
        client: a.ns.clone(),
        server: b.ns.clone(),
        to: b.ip.clone(),
    }
}

/// One host with two containers and an outside host running the echo server, for the
/// masquerade paths.
fn masquerade_lab() -> Result<(Lab, Ends)> {
    let mut lab = Lab::new(Spec {
        hosts: 1,
        containers: 2,
        locked_down: true,
        outside: true,
    })?;
    let out = lab.outside().ns.clone();
    let clients: Vec<String> = lab.hosts[0]
        .containers
        .iter()
        .map(|c| c.ns.clone())
        .collect();
    // Both containers open connections in the flows test.
    reuse_ports(&clients[1])?;
    serve(&mut lab, &clients[0], &out)?;
    let to = lab.outside().addr.clone();
    Ok((
        lab,
        Ends {
            client: clients[0].clone(),
            server: out,
            to,
        },
    ))
}

/// One host with two containers, the echo server in the second, Docker's rules for its
/// bridge and br_netfilter on (what Docker leaves), for the same-host paths.
pub(crate) fn same_host_lab() -> Result<(Lab, Ends)> {
    let mut lab = Lab::new(Spec {
        hosts: 1,
        containers: 2,
        locked_down: true,
        outside: false,
    })?;
    lab.iptables_path()?;
    netpath_tests::sysctl(&lab.hosts[0].ns, "net.bridge.bridge-nf-call-iptables", "1")?;
    let (a, b) = (
        lab.hosts[0].containers[0].clone(),
        lab.hosts[0].containers[1].clone(),
    );
    serve(&mut lab, &a.ns, &b.ns)?;
    Ok((lab, ends(&a, &b)))
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

/// netpath's config for the scale test: `n` policy rules that match nothing the lab
/// sends (the iptables path gets the same ones as FORWARD rules) and up to
/// [`SCALE_PEERS`] more direct peers no traffic goes to.
fn scale_config(n: usize) -> String {
    let mut t = String::with_capacity(n * 110);
    for k in 0..n.min(SCALE_PEERS) {
        let _ = write!(
            t,
            "\n[[peer]]\nname = \"scale{k}\"\nsubnet = \"10.244.{}.0/24\"\nunderlay = \"198.18.0.{}\"\nmode = \"direct\"\n",
            20 + k,
            20 + k
        );
    }
    t + &rules_config(n)
}

/// `n` policy rules (deny, each from a /32 of its own to 10.244.192.0/19 on a port), none
/// matching any lab traffic, as config text.
pub(crate) fn rules_config(n: usize) -> String {
    let mut t = String::with_capacity(n * 90);
    for (from, port) in netpath_tests::unmatched(n) {
        let _ = write!(
            t,
            "\n[[policy]]\nfrom = \"{from}\"\nto = \"10.244.192.0/19\"\nproto = \"tcp\"\nport = {port}\naction = \"deny\"\n"
        );
    }
    t
}

struct Labs {
    ceiling: (Lab, Ends),
    iptables: (Lab, Ends),
    vxlan: (Lab, Ends),
    netpath: (Lab, Ends),
    masq_iptables: (Lab, Ends),
    masq_netpath: (Lab, Ends),
    same_host: (Lab, Ends),
    /// The rules netpath runs with on the same-host lab; None: netpath is down there.
    same_host_rules: Option<usize>,
    /// Extra FORWARD rules the iptables path has now.
    iptables_rules: usize,
    /// The masquerade ports netpath runs with now.
    masq_ports: &'static str,
    /// What the netpath lab runs now.
    current: Option<Setup>,
}

impl Labs {
    fn new() -> Result<Labs> {
        let mut ceiling = Lab::new(Spec {
            hosts: 0,
            containers: 0,
            locked_down: false,
            outside: false,
        })?;
        let (a, b) = ceiling.veth_pair()?;
        serve(&mut ceiling, &a.ns, &b.ns)?;
        let iptables = two_hosts()?;
        iptables.0.iptables_path()?;
        let vxlan = two_hosts()?;
        vxlan.0.kernel_vxlan(0)?;
        vxlan.0.kernel_vxlan(1)?;
        let masq_iptables = masquerade_lab()?;
        iptables_masquerade(&masq_iptables.0)?;
        let masq_netpath = masquerade_lab()?;
        masq_netpath.0.write_configs(|_, _| PeerMode::Direct)?;
        masq_netpath.0.set_host_option(0, "masquerade", "true")?;
        Ok(Labs {
            ceiling: (ceiling, ends(&a, &b)),
            iptables,
            vxlan,
            netpath: two_hosts()?,
            masq_iptables,
            masq_netpath,
            same_host: same_host_lab()?,
            same_host_rules: None,
            iptables_rules: 0,
            masq_ports: "",
            current: None,
        })
    }

    fn all(&mut self) -> [&mut Lab; 7] {
        [
            &mut self.ceiling.0,
            &mut self.iptables.0,
            &mut self.vxlan.0,
            &mut self.netpath.0,
            &mut self.masq_iptables.0,
            &mut self.masq_netpath.0,
            &mut self.same_host.0,
        ]
    }

    /// The lab for `setup`, made ready (rules changed, netpath reconfigured and restarted
    /// where needed), and where to measure on it.
    fn ready(&mut self, setup: Setup) -> Result<(&mut Lab, Ends)> {
        match setup {
            Setup::Iptables(n) if self.iptables_rules != n => {
                self.iptables.0.iptables_extra_rules(n)?;
                self.iptables_rules = n;
            }
            Setup::NetpathMasquerade(ports) if self.masq_ports != ports => {
                let lab = &mut self.masq_netpath.0;
                // A new range needs new tables: the old flows hold ports of the old one.
                if !self.masq_ports.is_empty() {
                    lab.kill_agent(0);
                    output(lab.netpath(0, &["down"]))?;
                }
                lab.set_host_option(0, "masquerade_ports", &format!("\"{ports}\""))?;
                lab.start(0)?;
                self.masq_ports = ports;
            }
            Setup::Netpath(mode, xdp, rules) if self.current != Some(setup) => {
                let lab = &mut self.netpath.0;
                lab.write_configs(|_, _| mode)?;
                let extra = scale_config(rules);
                for i in 0..lab.hosts.len() {
                    lab.set_host_option(i, "xdp", &format!("\"{xdp}\""))?;
                    if rules > 0 {
                        lab.append_config(i, &extra)?;
                    }
                    lab.kill_agent(i);
                    lab.start(i)?;
                }
                self.current = Some(setup);
            }
            Setup::SameHostDocker if self.same_host_rules.is_some() => {
                let lab = &mut self.same_host.0;
                lab.kill_agent(0);
                output(lab.netpath(0, &["down"]))?;
                self.same_host_rules = None;
            }
            Setup::SameHostNetpath(rules) if self.same_host_rules != Some(rules) => {
                let lab = &mut self.same_host.0;
                if self.same_host_rules.is_some() {
                    lab.kill_agent(0);
                }
                lab.write_configs(|_, _| PeerMode::Direct)?;
                if rules > 0 {
                    lab.append_config(0, &scale_config(rules))?;
                }
                lab.start(0)?;
                // Containers that only talk to each other are not in the host's
                // neighbour table: one ping to their gateway each, as a container's
                // first DNS query or outside connection would.
                for c in lab.hosts[0].containers.clone() {
                    lab.learn(0, &c)?;
                }
                self.same_host_rules = Some(rules);
            }
            _ => {}
        }
        let (lab, ends) = match setup {
            Setup::Ceiling => &mut self.ceiling,
            Setup::Iptables(_) => &mut self.iptables,
            Setup::KernelVxlan => &mut self.vxlan,
            Setup::Netpath(..) => &mut self.netpath,
            Setup::IptablesMasquerade => &mut self.masq_iptables,
            Setup::NetpathMasquerade(_) => &mut self.masq_netpath,
            Setup::SameHostDocker | Setup::SameHostNetpath(_) => &mut self.same_host,
        };
        Ok((lab, ends.clone()))
    }

    fn teardown(mut self) -> Result<()> {
        let mut errors = Vec::new();
        for lab in self.all() {
            if let Err(e) = lab.teardown() {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }
}

/// One measurement of one path.
#[derive(Default, Clone)]
pub(crate) struct Sample {
    pub(crate) gbps: f64,
    pub(crate) retransmits: f64,
    pub(crate) rr_tps: f64,
    pub(crate) rr_p50_us: f64,
    pub(crate) rr_p99_us: f64,
    /// Request/response over many connections at once: transactions/s, p50 µs.
    pub(crate) many_tps: f64,
    pub(crate) many_p50_us: f64,
    pub(crate) udp_pps: f64,
    pub(crate) udp_sent_pps: f64,
    pub(crate) conns_per_sec: f64,
    /// Masquerade paths: concurrent flows held; netpath: drops for want of a port.
    pub(crate) flows_held: Option<f64>,
    pub(crate) no_port_drops: Option<f64>,
    /// Share of CPU time the hypervisor took while measuring (steal), in %.
    pub(crate) steal_pct: f64,
}

/// The measures, as (JSON key, heading, unit, how a figure is read off a sample, whether
/// more is better).
type Measure = (&'static str, &'static str, fn(&Sample) -> f64, bool);
const MEASURES: &[Measure] = &[
    (
        "tcp_gbps",
        "TCP throughput, 1 stream, Gbit/s",
        |s| s.gbps,
        true,
    ),
    (
        "rr_per_sec",
        "TCP request/response, transactions/s",
        |s| s.rr_tps,
        true,
    ),
    (
        "rr_p50_us",
        "request/response latency p50, µs",
        |s| s.rr_p50_us,
        false,
    ),
    (
        "rr_p99_us",
        "request/response latency p99, µs",
        |s| s.rr_p99_us,
        false,
    ),
    (
        "rr_many_per_sec",
        "TCP request/response on many connections at once, transactions/s",
        |s| s.many_tps,
        true,
    ),
    (
        "rr_many_p50_us",
        "request/response on many connections, latency p50, µs",
        |s| s.many_p50_us,
        false,
    ),
    (
        "udp_pps",
        "small UDP packets delivered, packets/s",
        |s| s.udp_pps,
        true,
    ),
    (
        "conns_per_sec",
        "new TCP connections/s (masquerade paths: both containers at once)",
        |s| s.conns_per_sec,
        true,
    ),
];

/// netpath's `drop-nat-no-port` count on `lab`'s first host; None where netpath does not
/// run.
fn no_port_drops(lab: &Lab) -> Option<f64> {
    if lab.hosts.is_empty() || !lab.hosts[0].pin_dir.exists() {
        return None;
    }
    let out = output(lab.netpath(0, &["dump", "counters", "--json"])).ok()?;
    let rows: Vec<Value> = serde_json::from_str(&out).ok()?;
    rows.iter()
        .find(|r| r["reason"] == "drop-nat-no-port")
        .and_then(|r| r["packets"].as_f64())
}

/// Median, min and max.
pub(crate) fn spread(v: &[f64]) -> (f64, f64, f64) {
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

/// The first line of np-probe's output, as numbers.
fn probe(ns: &str, args: &str) -> Result<Vec<f64>> {
    let cmd = format!("{} {args}", netpath_tests::probe_bin().display());
    let out = output(in_ns(ns, &cmd)).with_context(|| format!("np-probe {args}"))?;
    numbers(&out)
}

fn numbers(out: &str) -> Result<Vec<f64>> {
    let first = out.lines().next().unwrap_or("");
    let v: Vec<f64> = first
        .split_whitespace()
        .map_while(|w| w.parse().ok())
        .collect();
    if v.is_empty() {
        bail!("np-probe said {out:?}");
    }
    Ok(v)
}

/// Request/response on one connection: (transactions/s, p50 µs, p99 µs).
pub(crate) fn rr(e: &Ends, secs: f64) -> Result<(f64, f64, f64)> {
    let v = probe(&e.client, &format!("rr {} {ECHO_PORT} {secs}", e.to))?;
    if v.len() < 4 || v[3] < 1.0 {
        bail!("no request/response completed");
    }
    Ok((v[0], v[1], v[2]))
}

/// Request/response on `n` connections at once, each a request in flight (conntrack and
/// NAT at the size of a busy host): (transactions/s over all, p50 µs).
fn rr_many(e: &Ends, secs: f64, n: usize) -> Result<(f64, f64)> {
    let v = probe(
        &e.client,
        &format!("rrmany {} {ECHO_PORT} {secs} {n}", e.to),
    )?;
    if v.len() < 5 || v[4] < n as f64 {
        bail!(
            "request/response on {n} connections: only {:?} opened",
            v.get(4)
        );
    }
    Ok((v[0], v[1]))
}

/// Small UDP datagrams for `secs`: (delivered per second, sent per second).
pub(crate) fn udp_pps(e: &Ends, secs: f64) -> Result<(f64, f64)> {
    let mut sink = Command::new("ip")
        .args(["netns", "exec", &e.server])
        .arg(netpath_tests::probe_bin())
        .args(["udpsink", SINK_PORT, &format!("{}", secs + 3.0)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("np-probe udpsink")?;
    std::thread::sleep(Duration::from_millis(200));
    let sent = probe(
        &e.client,
        &format!("udpflood {} {SINK_PORT} {secs} {UDP_SIZE}", e.to),
    );
    let status = sink.wait()?;
    let mut out = String::new();
    sink.stdout
        .take()
        .context("udpsink stdout")?
        .read_to_string(&mut out)?;
    let sent = sent?;
    if !status.success() {
        bail!("no UDP datagram crossed ({} sent)", sent[0]);
    }
    Ok((numbers(&out)?[1], sent[1]))
}

/// New TCP connections per second from the client to the echo server, one at a time.
fn conn_rate(e: &Ends, secs: f64) -> Result<f64> {
    let v = probe(&e.client, &format!("connrate {} {ECHO_PORT} {secs}", e.to))?;
    if v[0] <= 0.0 {
        bail!("no TCP connection completed");
    }
    Ok(v[0])
}

/// New TCP connections per second from every container of `lab`'s first host at once (each
/// one at a time) to the server of `e`, summed: the masquerade paths' churn, several
/// clients to one server port.
fn conn_rate_all(lab: &Lab, e: &Ends, secs: f64) -> Result<f64> {
    let runs: Vec<_> = lab.hosts[0]
        .containers
        .iter()
        .map(|c| {
            let ends = Ends {
                client: c.ns.clone(),
                ..e.clone()
            };
            std::thread::spawn(move || conn_rate(&ends, secs))
        })
        .collect();
    let mut total = 0.0;
    for r in runs {
        total += r.join().map_err(|_| anyhow::anyhow!("connrate thread"))??;
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
        held += numbers(&String::from_utf8_lossy(&out.stdout))?[0];
    }
    Ok(held)
}

pub(crate) fn measure(lab: &mut Lab, e: &Ends, opts: &Options, masquerade: bool) -> Result<Sample> {
    // Warm-up and a check that the path works: neighbours resolved, caches filled.
    let (got, _) = ping(&e.client, &e.to, 5)?;
    if got != "5/5" {
        bail!("ping lost packets ({got})");
    }
    let (steal0, total0) = cpu_ticks();
    let (gbps, retransmits) = iperf_retr(lab, &e.server, &e.client, &e.to, opts.secs)?;
    if gbps <= 0.0 {
        bail!("no TCP traffic crossed (iperf3 measured 0 bit/s)");
    }
    let (rr_tps, rr_p50_us, rr_p99_us) = rr(e, opts.probe_secs).context("request/response")?;
    let (many_tps, many_p50_us) = rr_many(e, opts.probe_secs, opts.connections)
        .with_context(|| format!("request/response on {} connections", opts.connections))?;
    let (udp_pps, udp_sent_pps) = udp_pps(e, opts.probe_secs).context("UDP packets/s")?;
    let before = no_port_drops(lab);
    let conns_per_sec = if masquerade {
        conn_rate_all(lab, e, opts.probe_secs)
    } else {
        conn_rate(e, opts.probe_secs)
    }
    .context("connections/s")?;
    let flows = if masquerade {
        Some(flows_held(lab, opts.flows)?)
    } else {
        None
    };
    let drops = no_port_drops(lab).zip(before).map(|(a, b)| a - b);
    let (steal1, total1) = cpu_ticks();
    Ok(Sample {
        gbps,
        retransmits: retransmits as f64,
        rr_tps,
        rr_p50_us,
        rr_p99_us,
        many_tps,
        many_p50_us,
        udp_pps,
        udp_sent_pps,
        conns_per_sec,
        flows_held: flows,
        no_port_drops: drops,
        steal_pct: 100.0 * (steal1 - steal0) as f64 / (total1 - total0).max(1) as f64,
    })
}

/// Runs `f` once more when it fails: on this kind of machine a measurement can fail for
/// reasons that have nothing to do with the path (an iperf3 server slow to start).
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    f().or_else(|e| {
        eprintln!("[bench] {what}: {e:#}; measuring again");
        f().with_context(|| what.to_owned())
    })
}

pub(crate) fn machine() -> String {
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

pub(crate) fn date() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A figure with a sensible number of digits.
fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}x")
    } else {
        "-".into()
    }
}

/// The median over repetitions of a / b, each pair from the same repetition: noise that
/// comes and goes over minutes (the hypervisor's steal) cancels out of the ratio.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    spread(&r).0
}

/// `s` (a path's samples) against the path named `base`, paired by repetition.
fn vs(samples: &[Vec<Sample>], s: &[Sample], base: &str, get: fn(&Sample) -> f64) -> f64 {
    match PATHS.iter().position(|p| p.name == base) {
        Some(b) => paired(
            &s.iter().map(get).collect::<Vec<_>>(),
            &samples[b].iter().map(get).collect::<Vec<_>>(),
        ),
        None => f64::NAN,
    }
}

/// A scale test point: the path and its rule count.
struct Point {
    name: &'static str,
    rules: usize,
    setup: Setup,
}

fn scale_points(counts: &[usize]) -> Vec<Point> {
    let mut v = Vec::new();
    for &n in counts {
        if n <= IPTABLES_MAX_RULES {
            v.push(Point {
                name: IPTABLES,
                rules: n,
                setup: Setup::Iptables(n),
            });
        }
        v.push(Point {
            name: NETPATH_DIRECT,
            rules: n,
            setup: Setup::Netpath(PeerMode::Direct, "off", n),
        });
    }
    v
}

pub fn run(opts: Options) -> Result<()> {
    if !opts.only.is_empty() && opts.only.iter().all(|o| o == "fleet") {
        return part_only(&opts, "fleet", || {
            crate::fleet_bench::run(opts.fleet_hosts, opts.reps, opts.fleet_churn_secs)
        });
    }
    if !opts.only.is_empty() && opts.only.iter().all(|o| o == "etcd") {
        return part_only(&opts, "etcd", || {
            crate::etcd_bench::run(opts.etcd_agents, opts.etcd_secs, opts.etcd_smoke)
        });
    }
    if !opts.only.is_empty() && opts.only.iter().all(|o| o == "endpoints") {
        return part_only(&opts, "endpoints", || {
            crate::endpoint_bench::run(opts.endpoints)
        });
    }
    if !opts.only.is_empty() && opts.only.iter().all(|o| o == "across") {
        return part_only(&opts, "across", || crate::across_bench::run(&opts));
    }
    if !opts.only.is_empty() && opts.only.iter().all(|o| o == "policy") {
        return part_only(&opts, "policy", || crate::policy_bench::run(opts.policy));
    }
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
    let points = if opts.only.is_empty() {
        scale_points(&opts.scale)
    } else {
        Vec::new()
    };
    let steps = opts.reps * (chosen.len() + points.len());
    eprintln!(
        "[bench] {} paths and {} scale points x {} repetitions ({steps} measurements), then the programs' cost",
        chosen.len(),
        points.len(),
        opts.reps,
    );
    let started = Instant::now();
    let mut labs = Labs::new()?;
    let ids: Vec<String> = labs.all().iter().map(|l| l.id.clone()).collect();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: removing the labs");
        for id in &ids {
            netpath_tests::remove_lab(id);
        }
        std::process::exit(130);
    })?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); PATHS.len()];
    let mut scale: Vec<Vec<(f64, f64, f64)>> = (0..points.len()).map(|_| Vec::new()).collect();
    let mut step = 0;
    let progress = |step: usize, what: &str| {
        eprintln!(
            "[bench] {step}/{steps} ({:.0} s) {what}",
            started.elapsed().as_secs_f64()
        );
    };
    for rep in 0..opts.reps {
        for k in 0..chosen.len() {
            let i = chosen[(k + rep) % chosen.len()];
            let p = &PATHS[i];
            let (lab, ends) = labs.ready(p.setup)?;
            let m = retry(p.name, || measure(lab, &ends, &opts, p.setup.masquerade()))?;
            step += 1;
            progress(
                step,
                &format!(
                    "{:<38} {:>6.2} Gbit/s, rr {:>6.0}/s p50 {:>5.0} µs p99 {:>6.0} µs, {} at once {:>7.0}/s p50 {:>5.0} µs, udp {:>7.0}/s, {:>5.0} conn/s (steal {:.0}%)",
                    p.name,
                    m.gbps,
                    m.rr_tps,
                    m.rr_p50_us,
                    m.rr_p99_us,
                    opts.connections,
                    m.many_tps,
                    m.many_p50_us,
                    m.udp_pps,
                    m.conns_per_sec,
                    m.steal_pct
                ),
            );
            if let Some(f) = m.flows_held {
                eprintln!(
                    "[bench]     {f:.0} of {} concurrent flows held{}",
                    opts.flows,
                    m.no_port_drops
                        .map(|d| format!(", {d:.0} packets dropped for want of a free port"))
                        .unwrap_or_default()
                );
            }
            samples[i].push(m);
        }
        for k in 0..points.len() {
            let i = (k + rep) % points.len();
            let pt = &points[i];
            let (_, ends) = labs.ready(pt.setup)?;
            let what = format!("{} with {} rules", pt.name, pt.rules);
            let m = retry(&what, || rr(&ends, opts.probe_secs))?;
            step += 1;
            progress(
                step,
                &format!(
                    "scale: {what:<34} rr {:>6.0}/s p50 {:>5.0} µs p99 {:>6.0} µs",
                    m.0, m.1, m.2
                ),
            );
            scale[i].push(m);
        }
    }
    labs.teardown()?;
    // The parts of their own, in the whole bench only.
    let part = |what: String, measure: &dyn Fn() -> Result<(String, Value)>| {
        if !opts.only.is_empty() {
            return Ok(None);
        }
        eprintln!("[bench] {what}");
        measure().map(Some)
    };
    let fleet = part(
        format!("the fleet on etcd ({} registrations)", opts.fleet_hosts),
        &|| crate::fleet_bench::run(opts.fleet_hosts, opts.reps, opts.fleet_churn_secs),
    )?;
    let etcd = part(
        format!(
            "etcd's side ({} simulated hosts, 3 members)",
            opts.etcd_agents
        ),
        &|| crate::etcd_bench::run(opts.etcd_agents, opts.etcd_secs, opts.etcd_smoke),
    )?;
    let endpoints = part(
        format!(
            "local containers: one arriving on a host of {}",
            opts.endpoints.containers
        ),
        &|| crate::endpoint_bench::run(opts.endpoints),
    )?;
    let across = part(
        "Docker networks across hosts (3 Docker hosts on etcd)".to_owned(),
        &|| crate::across_bench::run(&opts),
    )?;
    let policy = part(
        "policy after a flow's first packet (two labs of each kind at once)".to_owned(),
        &|| crate::policy_bench::run(opts.policy),
    )?;
    eprintln!("[bench] the programs' cost per packet (netpath bench, BPF_PROG_TEST_RUN)");
    let programs = program_costs(&opts)?;

    let (machine, date) = (machine(), date());
    let mut md = format!(
        "netpath bench, {date}, {machine}; {} repetitions, interleaved; median (min-max); ratios paired by repetition\n",
        opts.reps
    );
    let mut rows = Vec::new();
    md += &summary_table(&samples);
    for &(key, heading, get, more) in MEASURES {
        md += &measure_table(heading, &samples, get, more);
        for (p, s) in PATHS.iter().zip(&samples).filter(|(_, s)| !s.is_empty()) {
            let v: Vec<f64> = s.iter().map(get).collect();
            let (m, lo, hi) = spread(&v);
            let row = match rows.iter().position(|r: &Value| r["path"] == p.name) {
                Some(i) => &mut rows[i],
                None => {
                    rows.push(json!({"path": p.name}));
                    rows.last_mut().expect("pushed")
                }
            };
            row[key] = json!({"median": m, "min": lo, "max": hi, "samples": v,
                "vs_iptables": vs(&samples, s, p.iptables(), get),
                "vs_ceiling": vs(&samples, s, CEILING, get)});
        }
    }
    md += &masquerade_table(&samples, opts.flows, &mut rows);
    for (p, s) in PATHS.iter().zip(&samples).filter(|(_, s)| !s.is_empty()) {
        if let Some(row) = rows.iter_mut().find(|r| r["path"] == p.name) {
            let steal: Vec<f64> = s.iter().map(|x| x.steal_pct).collect();
            let sent: Vec<f64> = s.iter().map(|x| x.udp_sent_pps).collect();
            let retr: Vec<f64> = s.iter().map(|x| x.retransmits).collect();
            row["steal_pct"] =
                json!({"median": spread(&steal).0, "max": spread(&steal).2, "samples": steal});
            row["udp_sent_pps"] = json!({"median": spread(&sent).0, "samples": sent});
            row["tcp_retransmits"] = json!({"median": spread(&retr).0, "samples": retr});
        }
    }
    let (scale_md, scale_json) = scale_table(&points, &scale);
    md += &scale_md;
    if let Some((fleet_md, _)) = &fleet {
        md += fleet_md;
    }
    if let Some((etcd_md, _)) = &etcd {
        md += etcd_md;
    }
    if let Some((endpoints_md, _)) = &endpoints {
        md += endpoints_md;
    }
    if let Some((across_md, _)) = &across {
        md += across_md;
    }
    if let Some((policy_md, _)) = &policy {
        md += policy_md;
    }
    md += &programs_table(&programs);
    md += "\nRatios: \"x iptables\" against the iptables path (iptables masquerade for the masquerade paths), \"x ceiling\" against one veth between the two namespaces; each the median of the ratios within one repetition (paths of a repetition run minutes apart at most, so slow swings of the machine cancel out); for latency lower is better.\n";

    std::fs::create_dir_all(&opts.out_dir)?;
    let md_path = opts.out_dir.join("results.md");
    let json_path = opts.out_dir.join("results.json");
    let png_path = opts.out_dir.join("scale.png");
    if !points.is_empty() {
        chart(&png_path, &points, &scale, &machine, &date)?;
    }
    std::fs::write(&md_path, &md)?;
    let doc = json!({"date": date, "machine": machine, "reps": opts.reps,
        "iperf_secs": opts.secs, "probe_secs": opts.probe_secs, "paths": rows,
        "scale": scale_json, "programs": programs,
        "fleet": fleet.map(|f| f.1), "etcd": etcd.map(|e| e.1), "endpoints": endpoints.map(|e| e.1),
        "across": across.map(|a| a.1), "policy": policy.map(|p| p.1)});
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    println!("{md}");
    eprintln!(
        "[bench] done in {:.0} s; written to {}, {}{}",
        started.elapsed().as_secs_f64(),
        md_path.display(),
        json_path.display(),
        if points.is_empty() {
            String::new()
        } else {
            format!(" and {}", png_path.display())
        }
    );
    Ok(())
}

/// `--only fleet` or `--only across`: that part's measurements alone, into
/// `<part>.{md,json}`.
fn part_only(
    opts: &Options,
    part: &str,
    measure: impl FnOnce() -> Result<(String, Value)>,
) -> Result<()> {
    let (md, value) = measure()?;
    let (machine, date) = (machine(), date());
    let md = format!("netpath bench ({part} only), {date}, {machine}\n{md}");
    std::fs::create_dir_all(&opts.out_dir)?;
    let md_path = opts.out_dir.join(format!("{part}.md"));
    let json_path = opts.out_dir.join(format!("{part}.json"));
    std::fs::write(&md_path, &md)?;
    let doc = json!({"date": date, "machine": machine, part: value});
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    println!("{md}");
    eprintln!(
        "[bench] written to {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

/// Every path's medians, each with its ratio to the iptables path.
fn summary_table(samples: &[Vec<Sample>]) -> String {
    let mut md = String::from("\n| path |");
    for (_, heading, _, _) in MEASURES {
        let _ = write!(md, " {heading} |");
    }
    md += " CPU steal |\n|---|";
    md += &"---|".repeat(MEASURES.len() + 1);
    md += "\n";
    for (p, s) in PATHS.iter().zip(samples).filter(|(_, s)| !s.is_empty()) {
        let _ = write!(md, "| {} |", p.name);
        for &(_, _, get, _) in MEASURES {
            let m = spread(&s.iter().map(get).collect::<Vec<_>>()).0;
            let r = vs(samples, s, p.iptables(), get);
            let _ = write!(md, " {} ({}) |", fmt(m), ratio(r));
        }
        let steal: Vec<f64> = s.iter().map(|x| x.steal_pct).collect();
        let (st, _, st_max) = spread(&steal);
        let _ = writeln!(md, " {st:.0}% (max {st_max:.0}%) |");
    }
    md + "\n(in parentheses: against the iptables path, or iptables masquerade; CPU steal: the share of CPU time the hypervisor took while measuring)\n"
}

fn measure_table(
    heading: &str,
    samples: &[Vec<Sample>],
    get: fn(&Sample) -> f64,
    more: bool,
) -> String {
    let mut md = format!(
        "\n### {heading} ({} is better)\n\n| path | median (min-max) | x iptables | x ceiling | x the kernel path it replaces |\n|---|---|---|---|---|\n",
        if more { "more" } else { "less" }
    );
    for (p, s) in PATHS.iter().zip(samples).filter(|(_, s)| !s.is_empty()) {
        let (m, lo, hi) = spread(&s.iter().map(get).collect::<Vec<_>>());
        let kernel = p
            .kernel
            .map(|k| format!("{} {k}", ratio(vs(samples, s, k, get))))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {} | {} ({}-{}) | {} | {} | {kernel} |",
            p.name,
            fmt(m),
            fmt(lo),
            fmt(hi),
            ratio(vs(samples, s, p.iptables(), get)),
            ratio(vs(samples, s, CEILING, get)),
        );
    }
    md
}

fn masquerade_table(samples: &[Vec<Sample>], offered: usize, rows: &mut [Value]) -> String {
    let masq: Vec<(&BenchPath, &Vec<Sample>)> = PATHS
        .iter()
        .zip(samples)
        .filter(|(p, s)| p.setup.masquerade() && !s.is_empty())
        .collect();
    if masq.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\n### Masquerade: concurrent flows held ({offered} TCP flows offered at once)\n\n| path | flows held, median (min) | drop-nat-no-port while measuring (median) |\n|---|---|---|\n"
    );
    for (p, s) in masq {
        let held: Vec<f64> = s.iter().filter_map(|x| x.flows_held).collect();
        let drops: Vec<f64> = s.iter().filter_map(|x| x.no_port_drops).collect();
        let (f, fmin, _) = spread(&held);
        let d = if drops.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0}", spread(&drops).0)
        };
        let _ = writeln!(
            md,
            "| {} | {f:.0} of {offered} (min {fmin:.0}) | {d} |",
            p.name
        );
        if let Some(row) = rows.iter_mut().find(|r| r["path"] == p.name) {
            row["flows_held"] =
                json!({"median": f, "min": fmin, "offered": offered, "samples": held});
        }
    }
    md
}

fn scale_table(points: &[Point], scale: &[Vec<(f64, f64, f64)>]) -> (String, Value) {
    if points.is_empty() {
        return (String::new(), json!([]));
    }
    let mut md = format!(
        "\n### Scale: TCP request/response with N rules (iptables: extra FORWARD rules in DOCKER-USER; netpath: policy rules and min(N, {SCALE_PEERS}) more peers)\n\n| path | rules | transactions/s, median (min-max) | x same path, 0 rules | p50 µs | p99 µs |\n|---|---|---|---|---|---|\n"
    );
    let mut out = Vec::new();
    for (pt, s) in points.iter().zip(scale) {
        let tps: Vec<f64> = s.iter().map(|x| x.0).collect();
        let (m, lo, hi) = spread(&tps);
        let p50 = spread(&s.iter().map(|x| x.1).collect::<Vec<_>>()).0;
        let p99 = spread(&s.iter().map(|x| x.2).collect::<Vec<_>>()).0;
        let zero = points
            .iter()
            .zip(scale)
            .find(|(q, _)| q.name == pt.name && q.rules == 0)
            .map(|(_, z)| paired(&tps, &z.iter().map(|x| x.0).collect::<Vec<_>>()))
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "| {} | {} | {} ({}-{}) | {} | {} | {} |",
            pt.name,
            pt.rules,
            fmt(m),
            fmt(lo),
            fmt(hi),
            ratio(zero),
            fmt(p50),
            fmt(p99)
        );
        out.push(json!({"path": pt.name, "rules": pt.rules,
            "peers": if pt.name == NETPATH_DIRECT { 1 + pt.rules.min(SCALE_PEERS) } else { 1 },
            "rr_per_sec": {"median": m, "min": lo, "max": hi, "samples": tps},
            "rr_p50_us": p50, "rr_p99_us": p99, "vs_zero_rules": zero}));
    }
    (md, Value::Array(out))
}

/// `netpath bench --json` (a private datapath, BPF_PROG_TEST_RUN), up to three times;
/// medians per case.
fn program_costs(opts: &Options) -> Result<Value> {
    let runs = opts.reps.clamp(1, 3);
    let rules = opts
        .scale
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut all: Vec<Value> = Vec::new();
    for _ in 0..runs {
        let out = output(Command::new(netpath_tests::netpath_bin()).args([
            "bench",
            "--json",
            "--repeat",
            &opts.prog_repeat.to_string(),
            "--rules",
            &rules,
        ]))?;
        all.push(serde_json::from_str(&out).context("netpath bench --json")?);
    }
    let median = |section: &str, i: usize, key: &str| {
        spread(
            &all.iter()
                .filter_map(|r| r[section][i][key].as_f64())
                .collect::<Vec<_>>(),
        )
        .0
    };
    let first = &all[0];
    let programs: Vec<Value> = (0..first["programs"].as_array().map_or(0, |a| a.len()))
        .map(|i| {
            json!({"case": first["programs"][i]["case"], "program": first["programs"][i]["program"],
                "ns_per_packet": median("programs", i, "ns_per_packet")})
        })
        .collect();
    let policy: Vec<Value> = (0..first["policy"].as_array().map_or(0, |a| a.len()))
        .map(|i| {
            json!({"rules": first["policy"][i]["rules"], "entries": first["policy"][i]["entries"],
                "load_ms": median("policy", i, "load_ms"),
                "ns_per_packet": median("policy", i, "ns_per_packet")})
        })
        .collect();
    let agent: Vec<Value> = (0..first["agent"].as_array().map_or(0, |a| a.len()))
        .map(|i| {
            json!({"case": first["agent"][i]["case"], "peers": first["agent"][i]["peers"],
                "rules": first["agent"][i]["rules"], "writes": first["agent"][i]["writes"],
                "bpf_calls": first["agent"][i]["bpf_calls"],
                "ms": median("agent", i, "ms"), "cpu_ms": median("agent", i, "cpu_ms")})
        })
        .collect();
    Ok(
        json!({"runs": runs, "repeat": opts.prog_repeat, "paths": programs, "policy": policy, "agent": agent}),
    )
}

fn programs_table(p: &Value) -> String {
    let mut md = format!(
        "\n### Per-program cost (BPF_PROG_TEST_RUN, {} runs per case, median of {})\n\n| case | program | ns/packet |\n|---|---|---|\n",
        p["repeat"], p["runs"]
    );
    for r in p["paths"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} |",
            r["case"].as_str().unwrap_or("?"),
            r["program"].as_str().unwrap_or("?"),
            r["ns_per_packet"].as_f64().unwrap_or(f64::NAN)
        );
    }
    md += "\n| policy lookup, new flow: rules | trie entries | load, ms | ns/packet |\n|---|---|---|---|\n";
    for r in p["policy"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} |",
            r["rules"],
            r["entries"],
            r["load_ms"].as_f64().unwrap_or(f64::NAN),
            r["ns_per_packet"].as_f64().unwrap_or(f64::NAN)
        );
    }
    md += "\n| agent reconcile (private datapath) | peers | rules | ms | CPU ms | map writes | bpf(2) calls |\n|---|---|---|---|---|---|---|\n";
    for r in p["agent"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} |",
            r["case"].as_str().unwrap_or("?"),
            r["peers"],
            r["rules"],
            r["ms"].as_f64().unwrap_or(f64::NAN),
            r["cpu_ms"].as_f64().unwrap_or(f64::NAN),
            r["writes"],
            r["bpf_calls"]
                .as_u64()
                .map_or("?".into(), |n| n.to_string())
        );
    }
    md
}

/// The scale test as a PNG: request/response rate against the rule count, one line per
/// path.
fn chart(
    path: &Path,
    points: &[Point],
    scale: &[Vec<(f64, f64, f64)>],
    machine: &str,
    date: &str,
) -> Result<()> {
    use plotters::prelude::*;
    let font: &'static [u8] = Box::leak(
        std::fs::read(crate::setup::FONT)
            .with_context(|| format!("reading the chart's font {}", crate::setup::FONT))?
            .into_boxed_slice(),
    );
    // Registering twice (a second run in one process) is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, font);
    let counts: Vec<usize> = {
        let mut c: Vec<usize> = points.iter().map(|p| p.rules).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let series: Vec<(&str, Vec<(f64, f64)>)> = [IPTABLES, NETPATH_DIRECT]
        .iter()
        .map(|&name| {
            let pts = points
                .iter()
                .zip(scale)
                .filter(|(p, _)| p.name == name)
                .filter_map(|(p, s)| {
                    let x = counts.iter().position(|&c| c == p.rules)? as f64;
                    Some((x, spread(&s.iter().map(|v| v.0).collect::<Vec<_>>()).0))
                })
                .collect();
            (name, pts)
        })
        .collect();
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(0.0, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let mut c = ChartBuilder::on(&root)
        .caption(
            format!("TCP request/response rate against rule count ({date})"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.3f64..(counts.len() as f64 - 0.7), 0.0..ymax.max(1.0))
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    c.configure_mesh()
        .x_labels(counts.len())
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            if (x - x.round()).abs() < 0.01 && i < counts.len() {
                counts[i].to_string()
            } else {
                String::new()
            }
        })
        .x_desc(format!("rules (FORWARD rules for iptables; policy rules + up to {SCALE_PEERS} peers for netpath) — {machine}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("transactions/s (median)")
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    for (k, (name, pts)) in series.iter().enumerate() {
        let color = if k == 0 { RED } else { BLUE };
        c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(3)))
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    Ok(())
}

/// A lab of `hosts` hosts without containers, locked down, for `measure`; torn down
/// afterwards whatever `measure` did (its error first).
pub(crate) fn in_lab<T>(hosts: usize, measure: impl FnOnce(&mut Lab) -> Result<T>) -> Result<T> {
    let mut lab = Lab::new(Spec {
        hosts,
        containers: 0,
        locked_down: true,
        outside: false,
    })?;
    let result = measure(&mut lab);
    let down = lab.teardown();
    let r = result?;
    down?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max_of_finite_figures() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, f64::NAN, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(spread(&[]).0.is_nan());
    }

    #[test]
    fn paired_ratios_cancel_a_slow_machine() {
        // The machine is 8x slower in some repetitions than in others; path a is twice
        // as fast as b within every one, whatever the medians do.
        let a = [40.0, 5.0, 40.0, 5.0, 5.0];
        let b = [20.0, 2.5, 20.0, 2.5, 2.5];
        assert_eq!(paired(&a, &b), 2.0);
        // A repetition without a baseline figure is left out, not divided by zero.
        assert_eq!(paired(&[1.0, 3.0], &[0.0, 1.5]), 2.0);
    }

    #[test]
    fn scale_config_is_a_config_netpath_reads() {
        let t = scale_config(300);
        assert_eq!(t.matches("[[peer]]").count(), SCALE_PEERS);
        assert_eq!(t.matches("[[policy]]").count(), 300);
        let v: toml::Value = t.parse().expect("TOML");
        assert_eq!(v["policy"][0]["from"].as_str(), Some("10.244.224.0"));
        assert_eq!(v["peer"][199]["underlay"].as_str(), Some("198.18.0.219"));
    }
}
