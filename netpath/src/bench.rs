//! `netpath bench`: what each of the datapath's paths costs per packet on this machine.
//! A private copy of the datapath (nothing attached, no map pinned) is set up with the
//! agent's own code for a host like the lab's first one, then BPF_PROG_TEST_RUN runs
//! each path's packet `repeat` times, each time afresh, and the kernel's timings are
//! averaged. Every run must give the verdict of the path it is meant to measure, so a
//! number is never that of an early drop (nor of a packet run again on its own output,
//! which the kernel's own repeat does: a forwarded packet's TTL runs out after 63 runs).

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{
    packet::{ETH_LEN, Frame},
    reconcile,
    sources::{self, file::Config},
    state::{
        self as config, Mode, Peer, Proto, Publish,
        policy::{Action, Endpoint, Rule, RuleProto},
    },
};
use netpath_common::prog_names;

pub(crate) const TC_ACT_SHOT: u32 = 2;
pub(crate) const TC_ACT_REDIRECT: u32 = 7;
pub(crate) const XDP_PASS: u32 = 2;

pub(crate) const HOST: [u8; 4] = [198, 18, 0, 11];
pub(crate) const CONTAINER: [u8; 4] = [10, 244, 11, 2];
const DIRECT_C: [u8; 4] = [10, 244, 12, 2];
pub(crate) const VXLAN_PEER: [u8; 4] = [198, 18, 0, 13];
const VXLAN_C: [u8; 4] = [10, 244, 13, 2];
pub(crate) const OUTSIDE: [u8; 4] = [198, 18, 0, 250];
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;

/// One measured case.
#[derive(Serialize)]
pub struct ProgRow {
    pub case: String,
    pub program: &'static str,
    pub ns_per_packet: f64,
}

/// The policy lookup at one rule count.
#[derive(Serialize)]
pub struct PolicyRow {
    pub rules: usize,
    /// Entries in the three tries.
    pub entries: usize,
    /// Compiling and writing the rules into a fresh datapath.
    pub load_ms: f64,
    /// np_from_bridge on a new flow's first packet that every rule misses, decided by the
    /// default action (deny: nothing is recorded, so every run does the full lookup).
    pub ns_per_packet: f64,
}

/// One step of the agent's reconcile, timed.
#[derive(Serialize)]
pub struct AgentRow {
    pub case: &'static str,
    pub peers: usize,
    pub rules: usize,
    pub ms: f64,
    /// CPU time of the thread that did it (user and system).
    pub cpu_ms: f64,
    /// Map entries written (counted by the fault hook's write counter).
    pub writes: u64,
    /// bpf(2) calls the thread made (map reads and writes; None where the kernel cannot
    /// count them, see sys::BpfCalls).
    pub bpf_calls: Option<u64>,
}

/// One program as the kernel holds it after the verifier (what a packet's path runs
/// through; docs/measured.md, "Where the nanoseconds go").
#[derive(Serialize)]
pub struct SizeRow {
    pub program: String,
    /// BPF instructions after the verifier's rewrites (xlated).
    pub xlated_insns: u32,
    /// Bytes of machine code the JIT made of them.
    pub jited_bytes: u32,
    /// Instructions the verifier went through to prove it safe (None: kernel too old).
    pub verified_insns: Option<u32>,
    /// Maps it uses.
    pub maps: usize,
}

#[derive(Serialize)]
pub struct Report {
    pub repeat: u32,
    pub programs: Vec<ProgRow>,
    pub sizes: Vec<SizeRow>,
    pub policy: Vec<PolicyRow>,
    pub agent: Vec<AgentRow>,
}

/// `paths`: only the program cases whose name contains it (all: None).
pub fn run(
    rules: &[usize],
    repeat: u32,
    agent: (usize, usize),
    paths: Option<&str>,
) -> Result<Report> {
    Ok(Report {
        repeat,
        programs: programs(repeat, paths)?,
        sizes: sizes()?,
        policy: policy(rules, repeat)?,
        agent: agent_reconcile(agent.0, agent.1)?,
    })
}

/// Most peers the agent bench makes (/24s of 10.1.0.0 to 10.243.255.0: 10.244.0.0/16 is
/// the lab's).
pub const MAX_AGENT_PEERS: usize = 60_000;

/// The agent's reconcile of a host with `peers` peers from etcd and `rules` rules, on a
/// private datapath: from a cold start (empty maps), a restart with nothing changed, then
/// what an etcd event costs (one host registered, one changed, one gone: the agent's merge
/// of its sources and its reconcile, as its loop does them), a live `peer add` and `peer
/// del` each followed by an etcd event, and a
/// Docker event (a container's port published), beside the same as a reconcile of
/// every family. The
/// peers are map entries only (no packet is sent): /24 subnets in 10.0.0.0/8 outside the
/// lab's 10.244.0.0/16, underlays in the benchmarking range 198.18.0.0/15.
pub fn agent_reconcile(peers: usize, rules: usize) -> Result<Vec<AgentRow>> {
    if peers > MAX_AGENT_PEERS {
        bail!("--agent-peers {peers}: at most {MAX_AGENT_PEERS}");
    }
    let mut cfg = host_config();
    cfg.peers.clear();
    let peer = |i: usize| Peer {
        name: format!("p{i}"),
        subnet: Ipv4Net::new(
            Ipv4Addr::new(10, 1 + (i / 256) as u8, (i % 256) as u8, 0),
            24,
        )
        .expect("/24"),
        underlay: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + i as u32),
        mode: if i.is_multiple_of(2) {
            Mode::Direct
        } else {
            Mode::Vxlan
        },
        vtep_mac: None,
    };
    let mut etcd: Vec<Peer> = (0..peers).map(peer).collect();
    cfg.policy.rules = scale_rules(rules);
    let mut ebpf = crate::datapath::load(None, netpath_common::DEFAULT_CT_SIZE)?;
    let mut maps = crate::maps::Maps::take(&mut ebpf)?;
    let mut out = Vec::new();
    // As the agent does it: a start reconciles every family from the maps, an etcd event
    // the peers' from the agent's copy of them (reconcile::Mirror).
    let mut mirror = reconcile::Mirror::default();
    let calls = crate::sys::BpfCalls::open();
    let count = || calls.as_ref().map(|c| c.count());
    // One row: what `f` (which says how many peers and rules the host then has) cost.
    let timed = |case: &'static str, f: &mut dyn FnMut() -> Result<(usize, usize)>| {
        reconcile::fault::take_writes();
        let (start, cpu, n) = (std::time::Instant::now(), thread_cpu(), count());
        let (peers, rules) = f()?;
        anyhow::Ok(AgentRow {
            case,
            peers,
            rules,
            ms: start.elapsed().as_secs_f64() * 1e3,
            cpu_ms: (thread_cpu() - cpu) * 1e3,
            writes: reconcile::fault::take_writes(),
            bpf_calls: count().zip(n).map(|(b, a)| b - a),
        })
    };
    // Docker's ports: a container's published port comes with the Docker cases.
    let ports = std::cell::RefCell::new(Vec::<sources::docker::DockerPort>::new());
    let step = |case: &'static str,
                etcd: &[Peer],
                maps: &mut crate::maps::Maps,
                mirror: &mut reconcile::Mirror|
     -> Result<AgentRow> {
        let ports = ports.borrow();
        // The merge as the agent's Views::merged does it (`merge`: the whole or Docker's).
        fn merged<T>(
            o: &reconcile::Observed,
            merge: sources::Merger<T>,
            (cfg, etcd, ports): (&Config, &[Peer], &[sources::docker::DockerPort]),
        ) -> Result<T> {
            let cli = sources::cli::live(o);
            merge(cfg, &cli, etcd, ports, &[], &Default::default()).map(|(d, _)| d)
        }
        let inputs = (&cfg, etcd, &ports[..]);
        timed(case, &mut || {
            let (_, counts) = if case.starts_with("docker:") {
                mirror.reconcile_docker(maps, |o| {
                    let d = merged(o, sources::desired_docker, inputs)?;
                    let counts = (d.0.peers.len(), cfg.policy.rules.len());
                    Ok((d, counts))
                })?
            } else if case.starts_with("etcd") {
                mirror.reconcile_peers(maps, |o| {
                    let fleet = Default::default();
                    let (d, _) =
                        sources::desired_peers(&cfg, &sources::cli::live_peers(o), etcd, &fleet)?;
                    let counts = (d.peers.len(), cfg.policy.rules.len());
                    Ok((d, counts))
                })?
            } else {
                mirror.reconcile_all(maps, |o| {
                    let d = merged(o, sources::desired, inputs)?;
                    let counts = (d.peers.len(), d.policy.rules.len());
                    Ok((d, counts))
                })?
            };
            Ok(counts)
        })
    };
    out.push(step("cold start", &etcd, &mut maps, &mut mirror)?);
    out.push(step(
        "restart, nothing changed",
        &etcd,
        &mut maps,
        &mut mirror,
    )?);
    etcd.push(peer(peers));
    out.push(step("etcd: one host added", &etcd, &mut maps, &mut mirror)?);
    etcd.last_mut().expect("one").underlay = Ipv4Addr::new(198, 19, 255, 1);
    out.push(step(
        "etcd: one host changed",
        &etcd,
        &mut maps,
        &mut mirror,
    )?);
    etcd.pop();
    out.push(step("etcd: one host gone", &etcd, &mut maps, &mut mirror)?);
    // The CLI's live edits, each followed by an etcd event: the agent brings its copy up
    // to date from the one slot the edit names, instead of reading the maps again.
    let cli = peer(peers + 1);
    out.push(timed("peer add (live)", &mut || {
        reconcile::peers::add(&mut maps, &cli).map(|_| (peers + 1, rules))
    })?);
    etcd.push(peer(peers + 2));
    out.push(step(
        "etcd: one host added, after a CLI add",
        &etcd,
        &mut maps,
        &mut mirror,
    )?);
    out.push(timed("peer del (live)", &mut || {
        reconcile::peers::del(&mut maps, &cli.name).map(|_| (peers + 1, rules))
    })?);
    etcd.pop();
    out.push(step(
        "etcd: one host gone, after a CLI del",
        &etcd,
        &mut maps,
        &mut mirror,
    )?);
    // A container with a published port started: Docker's event as the agent takes it
    // (every family but the policy), then the same as a reconcile of everything would.
    let port = |host_port: u16| sources::docker::DockerPort {
        container: format!("web{host_port}"),
        publish: Publish {
            proto: Proto::Tcp,
            host_port,
            container: Ipv4Addr::new(10, 244, 11, 3),
            port: 80,
        },
    };
    ports.borrow_mut().push(port(8081));
    out.push(step(
        "docker: one port published",
        &etcd,
        &mut maps,
        &mut mirror,
    )?);
    ports.borrow_mut().push(port(8082));
    out.push(step(
        "one port published, every family",
        &etcd,
        &mut maps,
        &mut mirror,
    )?);
    Ok(out)
}

/// This thread's CPU time so far, in seconds (user and system: the map syscalls count).
fn thread_cpu() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

/// A host like the lab's first (198.18.0.11, 10.244.11.0/24), masquerading, publishing
/// tcp 8080 to 10.244.11.2:80, with a direct peer (10.244.12.0/24 at 198.18.0.12) and a
/// vxlan peer (10.244.13.0/24 at 198.18.0.13).
pub(crate) fn host_config() -> Config {
    let address = Ipv4Addr::from(HOST);
    let peer = |name: &str, n: u8, mode| Peer {
        name: name.into(),
        subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24).expect("/24"),
        underlay: Ipv4Addr::new(198, 18, 0, n),
        mode,
        vtep_mac: None,
    };
    Config {
        host: config::Host {
            name: "bench".into(),
            uplink: "eth0".into(),
            uplink_ifindex: 2,
            bridge: "br0".into(),
            bridge_ifindex: 3,
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, 11, 0), 24).expect("/24"),
            address,
            gateway: Some(Ipv4Addr::new(10, 244, 11, 1)),
            bridge_subnet: "10.244.11.0/24".parse().unwrap(),
            vni: 42,
            xdp: config::XdpMode::Off,
            vxlan_port: netpath_common::VXLAN_PORT,
            vtep_mac: netpath_common::default_vtep_mac(HOST),
            uplink_mtu: 1500,
            bridge_mac: [2, 0, 0, 0, 0, 1],
            masquerade: true,
            masquerade_ports: config::MASQUERADE_PORTS,
        },
        peers: vec![peer("b", 12, Mode::Direct), peer("c", 13, Mode::Vxlan)],
        publish: vec![Publish {
            proto: Proto::Tcp,
            host_port: 8080,
            container: Ipv4Addr::from(CONTAINER),
            port: 80,
        }],
        conntrack: Default::default(),
        policy: Default::default(),
        monitor: Default::default(),
        metrics: None,
        etcd: None,
        docker: None,
    }
}

/// BPF_PROG_TEST_RUN of program `name` (TC or XDP) on `input`, `repeat` times.
fn test_run(
    ebpf: &mut Ebpf,
    name: &str,
    input: &[u8],
    repeat: u32,
) -> Result<(TestRunResult, Vec<u8>)> {
    let mut out = vec![0u8; input.len() + 512];
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    };
    let prog = ebpf
        .program_mut(crate::datapath::loaded_name(ebpf, name))
        .with_context(|| format!("program {name}"))?;
    let r = if name == prog_names::XDP_UPLINK {
        let p: &mut Xdp = prog.try_into()?;
        p.test_run(opts)?
    } else {
        let p: &mut SchedClassifier = prog.try_into()?;
        p.test_run(opts)?
    };
    out.truncate(r.data_size_out as usize);
    Ok((r, out))
}

/// The TCP source port of an output frame.
fn sport(frame: &[u8]) -> u16 {
    let at = ETH_LEN + 20;
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Each program path on a packet of an established flow (NAT entries made by a first
/// SYN), ns per packet; with `only`, the cases whose name contains it (a profiler's run
/// of one path).
pub fn programs(repeat: u32, only: Option<&str>) -> Result<Vec<ProgRow>> {
    let wanted = |case: &str| only.is_none_or(|o| case.contains(o));
    let (mut ebpf, mut maps) = reconcile::private(&sources::from_config(&host_config()))?;
    let tcp = |src, dst, sport, dport, flags| Frame::tcp(src, dst, sport, dport, flags).build();
    // Masquerade and published port: the SYN makes the entry, its output says the port.
    let (r, out) = test_run(
        &mut ebpf,
        prog_names::FROM_BRIDGE,
        &tcp(CONTAINER, OUTSIDE, 40000, 7000, SYN),
        1,
    )?;
    if r.return_value != TC_ACT_REDIRECT {
        bail!("masquerade SYN: verdict {} (want redirect)", r.return_value);
    }
    let masq_port = sport(&out);
    test_run(
        &mut ebpf,
        prog_names::FROM_UPLINK,
        &tcp(OUTSIDE, HOST, 50000, 8080, SYN),
        1,
    )?;
    let inner = tcp(VXLAN_C, CONTAINER, 80, 40000, ACK);
    // What a run costs before a program does anything: the kernel's timing of one run and
    // a frame that is not IPv4, passed at once. The other cases include it.
    let mut arp = tcp(CONTAINER, DIRECT_C, 40000, 80, ACK);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let cases: [(&str, &'static str, Vec<u8>, u32); 9] = [
        (
            "floor: a frame that is not IPv4, passed",
            prog_names::FROM_BRIDGE,
            arp,
            u32::MAX, // TC_ACT_UNSPEC (-1)
        ),
        (
            "forward to a direct peer",
            prog_names::FROM_BRIDGE,
            tcp(CONTAINER, DIRECT_C, 40000, 80, ACK),
            TC_ACT_REDIRECT,
        ),
        (
            "forward from a direct peer",
            prog_names::FROM_UPLINK,
            tcp(DIRECT_C, CONTAINER, 80, 40000, ACK),
            TC_ACT_REDIRECT,
        ),
        (
            "vxlan encap",
            prog_names::FROM_BRIDGE,
            tcp(CONTAINER, VXLAN_C, 40000, 80, ACK),
            TC_ACT_REDIRECT,
        ),
        (
            "vxlan decap (TC)",
            prog_names::FROM_UPLINK,
            crate::packet::vxlan(VXLAN_PEER, HOST, 42, 0x08, &inner),
            TC_ACT_REDIRECT,
        ),
        (
            "vxlan decap (XDP; TC then routes it)",
            prog_names::XDP_UPLINK,
            crate::packet::vxlan(VXLAN_PEER, HOST, 42, 0x08, &inner),
            XDP_PASS,
        ),
        (
            "masquerade out (SNAT)",
            prog_names::FROM_BRIDGE,
            tcp(CONTAINER, OUTSIDE, 40000, 7000, ACK),
            TC_ACT_REDIRECT,
        ),
        (
            "masquerade reply in (un-SNAT)",
            prog_names::FROM_UPLINK,
            tcp(OUTSIDE, HOST, 7000, masq_port, ACK),
            TC_ACT_REDIRECT,
        ),
        (
            "published port in (DNAT)",
            prog_names::FROM_UPLINK,
            tcp(OUTSIDE, HOST, 50000, 8080, ACK),
            TC_ACT_REDIRECT,
        ),
    ];
    let mut rows = Vec::new();
    for (case, program, input, want) in cases {
        if !wanted(case) {
            continue;
        }
        // Where the kernel refuses XDP metadata, np_xdp_check runs in np_xdp_uplink's place
        // (datapath::load_xdp): it checks and passes, and the row says so.
        let (case, shown) = match crate::datapath::loaded_name(&ebpf, program) {
            prog_names::XDP_CHECK => (
                "vxlan checks (XDP: np_xdp_check, this kernel refuses XDP metadata; TC decapsulates)",
                prog_names::XDP_CHECK,
            ),
            _ => (case, program),
        };
        rows.push(ProgRow {
            case: case.into(),
            program: shown,
            ns_per_packet: per_packet(&mut ebpf, case, program, &input, want, repeat)?,
        });
    }
    // The decision log (`netpath debug`): off, the first case costs one read of NP_DEBUG;
    // on, a packet it does not match costs the tuple read and the match; one it matches
    // the lookups of its peer and rule and the record (here the ring buffer fills at once,
    // nobody reading it, so from then on the record is refused, not written).
    use crate::inspect::decisions;
    for (case, state) in [
        (
            "forward to a direct peer, decision log on, not matching",
            decisions::state(true, Some(Ipv4Net::new(Ipv4Addr::new(10, 244, 99, 0), 24)?)),
        ),
        (
            "forward to a direct peer, decision log on, matching (ring buffer full)",
            decisions::state(true, None),
        ),
    ] {
        if !wanted(case) {
            continue;
        }
        maps.debug.set(0, state, 0)?;
        rows.push(to_direct_peer(&mut ebpf, case, repeat)?);
    }
    maps.debug.set(0, decisions::state(false, None), 0)?;
    // A host with Docker networks besides its bridge: its two NP_NETWORKS lookups walk a
    // trie of them (above, the trie holds the bridge's subnet only).
    let case = format!("forward to a direct peer, {BENCH_NETWORKS} Docker networks on the host");
    if wanted(&case) {
        let mut d = sources::from_config(&host_config());
        d.networks.extend((0..BENCH_NETWORKS).map(bench_network));
        let (mut ebpf, _maps) = reconcile::private(&d)?;
        rows.push(to_direct_peer(&mut ebpf, &case, repeat)?);
    }
    // Two containers of the bridge's network: np_from_container on the sender's veth
    // delivers straight into the other.
    let same_host = tcp(CONTAINER, SAME_HOST_C, 40000, 80, ACK);
    if wanted(SAME_HOST) {
        same_host_endpoint(&mut maps)?;
        rows.push(row(
            &mut ebpf,
            SAME_HOST,
            prog_names::FROM_CONTAINER,
            &same_host,
            TC_ACT_REDIRECT,
            repeat,
        )?);
    }
    rows.extend(established_with_rules(repeat, &wanted)?);
    Ok(rows)
}

/// The same host's case, and its name with policy on.
const SAME_HOST: &str = "same host, container to container";
/// Another container of the bench host's network.
const SAME_HOST_C: [u8; 4] = [10, 244, 11, 3];
/// Policy rules of the established-flow cases.
const BENCH_RULES: usize = 1000;

/// Makes [`SAME_HOST_C`] an endpoint of the bench host (a veth of its own).
fn same_host_endpoint(maps: &mut crate::maps::Maps) -> Result<()> {
    let ep = netpath_common::Endpoint {
        ifindex: 10,
        mac: [2, 0, 0, 0, 0, 3],
        _pad: [0; 2],
    };
    maps.endpoints
        .insert(u32::from_ne_bytes(SAME_HOST_C), ep, 0)
        .context("the same host's endpoint")
}

/// A row of `case`: `program` on `input`, which must give `want`.
fn row(
    ebpf: &mut Ebpf,
    case: &str,
    program: &'static str,
    input: &[u8],
    want: u32,
    repeat: u32,
) -> Result<ProgRow> {
    Ok(ProgRow {
        case: case.into(),
        program,
        ns_per_packet: per_packet(ebpf, case, program, input, want, repeat)?,
    })
}

/// Policy live with [`BENCH_RULES`] rules, none matching (the default allows): each
/// flow's first packet was looked up and recorded in `NP_CT`; measured are its later
/// packets, which find the flow and pass without a lookup. Their figures against the
/// same cases with policy off are what policy costs after a flow's first packet.
fn established_with_rules(repeat: u32, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<ProgRow>> {
    let tcp = |src, dst, sport, dport, flags| Frame::tcp(src, dst, sport, dport, flags).build();
    let cases = [
        (
            format!("forward to a direct peer, {BENCH_RULES} policy rules, established flow"),
            prog_names::FROM_BRIDGE,
            tcp(CONTAINER, DIRECT_C, 40000, 80, ACK),
        ),
        (
            format!("forward from a direct peer, {BENCH_RULES} policy rules, established flow"),
            prog_names::FROM_UPLINK,
            tcp(DIRECT_C, CONTAINER, 80, 40000, ACK),
        ),
        (
            format!("{SAME_HOST}, {BENCH_RULES} policy rules, established flow"),
            prog_names::FROM_CONTAINER,
            tcp(CONTAINER, SAME_HOST_C, 40000, 80, ACK),
        ),
    ];
    if !cases.iter().any(|c| wanted(&c.0)) {
        return Ok(Vec::new());
    }
    let mut cfg = host_config();
    cfg.policy.rules = scale_rules(BENCH_RULES);
    let (mut ebpf, mut maps) = reconcile::private(&sources::from_config(&cfg))?;
    same_host_endpoint(&mut maps)?;
    // The flows' first packets: to the peer, and to the other container.
    for (program, syn) in [
        (
            prog_names::FROM_BRIDGE,
            tcp(CONTAINER, DIRECT_C, 40000, 80, SYN),
        ),
        (
            prog_names::FROM_CONTAINER,
            tcp(CONTAINER, SAME_HOST_C, 40000, 80, SYN),
        ),
    ] {
        let (r, _) = test_run(&mut ebpf, program, &syn, 1)?;
        if r.return_value != TC_ACT_REDIRECT {
            bail!(
                "{program}: a first packet with policy on: verdict {} (want redirect)",
                r.return_value
            );
        }
    }
    let recorded = maps
        .ct
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(_, v)| v.kind == netpath_common::CT_KIND_POLICY)
        .count();
    if recorded != 2 {
        bail!("policy recorded {recorded} flows of the first packets (want 2)");
    }
    let mut rows = Vec::new();
    for (case, program, input) in cases {
        if wanted(&case) {
            rows.push(row(
                &mut ebpf,
                &case,
                program,
                &input,
                TC_ACT_REDIRECT,
                repeat,
            )?);
        }
    }
    Ok(rows)
}

/// The row of `case`: a container's packet of an established flow forwarded to the
/// direct peer by np_from_bridge of `ebpf`.
fn to_direct_peer(ebpf: &mut Ebpf, case: &str, repeat: u32) -> Result<ProgRow> {
    let input = Frame::tcp(CONTAINER, DIRECT_C, 40000, 80, ACK).build();
    row(
        ebpf,
        case,
        prog_names::FROM_BRIDGE,
        &input,
        TC_ACT_REDIRECT,
        repeat,
    )
}

/// Docker networks of the bench's host with networks.
const BENCH_NETWORKS: u8 = 16;

/// Docker network `i` of that host: a /24 of 10.245.0.0/16 (map entries only, no packet
/// is sent to it) on a bridge of its own.
fn bench_network(i: u8) -> config::Network {
    let subnet = Ipv4Net::new(Ipv4Addr::new(10, 245, i, 0), 24).expect("/24");
    config::Network {
        name: format!("net{i}"),
        docker_id: format!("{i:0>12}"),
        bridge: format!("br-net{i}"),
        bridge_ifindex: 100 + i as u32,
        bridge_mac: [2, 0, 0, 0, 1, i],
        subnet,
        gateway: subnet.hosts().next(),
        internal: false,
        masquerade: true,
        origin: config::Origin::Docker,
        span: None,
    }
}

/// Each program of a private datapath, as the kernel holds it (see [`SizeRow`]), by name.
pub fn sizes() -> Result<Vec<SizeRow>> {
    let (ebpf, _maps) = reconcile::private(&sources::from_config(&host_config()))?;
    let mut rows = Vec::new();
    for (name, prog) in ebpf.programs() {
        if prog.fd().is_err() {
            // Not loaded: np_xdp_uplink where the kernel refuses it (np_xdp_check runs).
            continue;
        }
        let info = prog
            .info()
            .with_context(|| format!("the kernel's information on {name}"))?;
        rows.push(SizeRow {
            program: name.to_owned(),
            xlated_insns: info.size_translated().unwrap_or(0) / 8,
            jited_bytes: info.size_jitted(),
            verified_insns: info.verified_instruction_count(),
            maps: info.map_ids()?.map_or(0, |m| m.len()),
        });
    }
    rows.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(rows)
}

/// The mean time of `program` on `input` over `runs` runs, each on a fresh copy of the
/// input (the kernel's repeat would run the program again on its own output: a forwarded
/// packet's TTL runs out, a decapsulated one is no longer a tunnel packet). Each run
/// must return `want`. The kernel times each run; the syscall is not in the figure.
fn per_packet(
    ebpf: &mut Ebpf,
    case: &str,
    program: &str,
    input: &[u8],
    want: u32,
    runs: u32,
) -> Result<f64> {
    let mut total = 0u128;
    for _ in 0..runs {
        let (r, _) = test_run(ebpf, program, input, 1)?;
        if r.return_value != want {
            bail!(
                "{case}: {program} returned {} (want {want}): the case does not take the path it is named for",
                r.return_value
            );
        }
        total += r.duration.as_nanos();
    }
    Ok(total as f64 / runs.max(1) as f64)
}

/// The policy lookup with `counts` rules each, in a fresh datapath every time: the rules
/// loaded with the agent's code, then a packet that goes through all three lookups. The
/// rules: one /16 -> /16 rule, the rest /32 -> /32 with a port each, none matching.
pub fn policy(counts: &[usize], repeat: u32) -> Result<Vec<PolicyRow>> {
    let mut out = Vec::new();
    for &n in counts {
        let mut cfg = host_config();
        cfg.host.masquerade = false;
        cfg.policy.default = Action::Deny;
        let (mut ebpf, mut maps) = reconcile::private(&sources::from_config(&cfg))?;
        cfg.policy.rules = scale_rules(n);
        let start = std::time::Instant::now();
        let changes = reconcile::policy::reconcile(&mut maps, &sources::from_config(&cfg).policy)?;
        let load_ms = start.elapsed().as_secs_f64() * 1000.0;
        let syn = Frame::tcp(CONTAINER, DIRECT_C, 40000, 80, SYN).build();
        let (r, _) = test_run(&mut ebpf, prog_names::FROM_BRIDGE, &syn, 1)?;
        if r.return_value != TC_ACT_SHOT {
            bail!(
                "policy with {n} rules: verdict {} (want the default deny)",
                r.return_value
            );
        }
        let (r, _) = test_run(&mut ebpf, prog_names::FROM_BRIDGE, &syn, repeat)?;
        out.push(PolicyRow {
            rules: n,
            entries: changes.entries,
            load_ms,
            ns_per_packet: r.duration.as_nanos() as f64,
        });
    }
    Ok(out)
}

/// `n` rules like the scale test's: one /16 -> /16 rule, the rest /32 -> /32 with a port
/// each, none matching the benchmark's packets.
fn scale_rules(n: usize) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            if i == 0 {
                return Rule {
                    from: Endpoint::Cidr("10.244.0.0/16".parse().expect("cidr")),
                    to: Endpoint::Cidr("10.244.0.0/16".parse().expect("cidr")),
                    proto: RuleProto::Tcp,
                    ports: Some((5, 5)),
                    action: Action::Allow,
                };
            }
            // Distinct (from, to) pairs: 32768 sources in 10.244.128.0/17, a destination
            // for each block of them.
            let from =
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 128, 0)) + (i % 32768) as u32);
            Rule {
                from: Endpoint::Cidr(Ipv4Net::new(from, 32).expect("/32")),
                to: Endpoint::Cidr(
                    Ipv4Net::new(Ipv4Addr::new(10, 244, 12, (i / 32768) as u8), 32).expect("/32"),
                ),
                proto: RuleProto::Tcp,
                ports: Some((1000 + (i % 1000) as u16, 1000 + (i % 1000) as u16)),
                action: Action::Allow,
            }
        })
        .collect()
}
