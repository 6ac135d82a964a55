//! `netpath trace`: what the datapath would do with a packet, explained step by step.
//!
//! Nothing here re-implements the datapath's decisions. A crafted packet goes through
//! the loaded programs themselves (BPF_PROG_TEST_RUN) in a trace instance of the object
//! whose lookup maps ARE the live ones (config, peers, underlay index, published ports,
//! policy tries, opened through their pins) and whose state maps are private copies
//! (conntrack and NAT copied from the live ones; counters, per-peer and per-rule
//! counters, rate limits fresh). What the programs counted, recorded and wrote into the
//! packet is then read back and explained. Nothing is sent and no live counter or flow
//! changes.

use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use netpath_common::{
    Counter, CtEntry, CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, MAX_REASONS, NatKey, NatValue,
    PeerStats, Reason, map_names, prog_names,
};
use serde::Serialize;

use crate::{
    datapath,
    inspect::report,
    maps::{Maps, addr_of},
    packet::{ETH_LEN, Frame},
    pin::PinDir,
    state::Proto,
};

/// Maps the programs only read: the trace instance uses the live ones.
const SHARED: &[&str] = &[
    map_names::CONFIG,
    map_names::ENDPOINTS,
    map_names::NETWORKS,
    map_names::PEERS,
    map_names::UNDERLAY,
    map_names::PUBLISH,
    map_names::POLICY_STATE,
    map_names::POLICY_SRC,
    map_names::POLICY_DST,
    map_names::POLICY_RULES,
];

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const TC_ACT_UNSPEC: i32 = -1;

/// The packet to trace.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
    /// None: ICMP echo.
    pub proto: Option<Proto>,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Serialize, Debug)]
pub struct Trace {
    pub host: String,
    pub packet: String,
    /// The program that sees the packet first, and where.
    pub program: String,
    pub interface: String,
    pub steps: Vec<Step>,
    pub reason: String,
    pub verdict: String,
    /// forward, pass (to the host stack) or drop.
    pub outcome: &'static str,
    /// Interface the packet leaves by (forwarded, or answered), if it does.
    pub leaves_by: Option<String>,
    /// Policy rule that decided (0: the default action), if policy is on.
    pub rule: Option<u32>,
    pub peer: Option<String>,
    /// The packet as it leaves the program (after NAT, encapsulation, TTL).
    pub out_packet: Option<String>,
    /// A new conntrack entry the packet would create.
    pub new_flow: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct Step {
    pub what: &'static str,
    pub detail: String,
}

fn step(what: &'static str, detail: impl Into<String>) -> Step {
    Step {
        what,
        detail: detail.into(),
    }
}

fn proto_text(q: &Query) -> String {
    match q.proto {
        None => format!("icmp echo {} -> {}", q.from, q.to),
        Some(p) => format!("{p} {}:{} -> {}:{}", q.from, q.sport, q.to, q.dport),
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    Ok(ebpf
        .take_map(name)
        .with_context(|| format!("map {name}"))?
        .try_into()?)
}

/// Parses what a program made of the frame, for people: outer headers of a tunnel
/// packet, then the IP packet with its ports.
pub fn describe_frame(f: &[u8]) -> String {
    let ip = |at: usize| -> Option<String> {
        let h = f.get(at..at + 20)?;
        let (src, dst) = (
            Ipv4Addr::new(h[12], h[13], h[14], h[15]),
            Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        );
        let ihl = (h[0] & 0xf) as usize * 4;
        let l4 = f.get(at + ihl..at + ihl + 4);
        let port = |i: usize| l4.map(|p| u16::from_be_bytes([p[i], p[i + 1]]));
        Some(match h[9] {
            IPPROTO_TCP => format!("tcp {src}:{} -> {dst}:{} ttl {}", port(0)?, port(2)?, h[8]),
            IPPROTO_UDP => format!("udp {src}:{} -> {dst}:{} ttl {}", port(0)?, port(2)?, h[8]),
            IPPROTO_ICMP => format!(
                "icmp {src} -> {dst} type {} code {} ttl {}",
                l4?[0], l4?[1], h[8]
            ),
            p => format!("proto {p} {src} -> {dst} ttl {}", h[8]),
        })
    };
    let Some(outer) = ip(ETH_LEN) else {
        return format!("{} bytes, not IPv4", f.len());
    };
    // A VXLAN packet: UDP whose payload is VXLAN (8 bytes) and an inner Ethernet frame.
    let udp_at = ETH_LEN + 20;
    if f.get(ETH_LEN + 9) == Some(&IPPROTO_UDP) && f.len() > udp_at + 8 + 8 + ETH_LEN + 20 {
        let vx = &f[udp_at + 8..udp_at + 16];
        if vx[0] & 0x08 != 0 {
            let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
            if let Some(inner) = ip(udp_at + 16 + ETH_LEN) {
                return format!("vxlan [{outer}] vni {vni}: {inner}");
            }
        }
    }
    outer
}

/// Where a packet counted under `reason` goes, as the program's code routes it (see
/// forward.rs): out of the uplink, straight into a container (`endpoint`: its veth,
/// when netpath knows it), through the bridge, or back where it came from.
fn leaves_by(
    reason: Reason,
    uplink: &str,
    bridge: &str,
    ingress: &str,
    endpoint: Option<&str>,
) -> Option<String> {
    use Reason::*;
    let straight = || match endpoint {
        Some(veth) => format!("{veth}'s peer, straight into the container (bpf_redirect_peer)"),
        None => format!("{bridge} (to the container)"),
    };
    Some(match reason {
        FwdDirect | FwdVxlanEncap | FwdMasquerade | FwdPublishedReply => uplink.to_owned(),
        FwdDeliver | FwdVxlanDecap | FwdVxlanDecapXdp | FwdMasqueradeReply | FwdPublished
        | FwdNatIcmpError | FwdSameHost => straight(),
        FwdViaBridge => format!("{bridge} (to the container, whose endpoint is not learned yet)"),
        DropPolicyReject | DropDefaultReject | DropFragNeeded => {
            format!("{ingress} (the answer, back to the sender)")
        }
        _ => return None,
    })
}

fn per_cpu_sum(v: &PerCpuValues<Counter>) -> u64 {
    v.iter().map(|c| c.packets).sum()
}

pub fn trace(pins: &PinDir, q: &Query) -> Result<Trace> {
    let live = Maps::open(pins)?;
    let cfg = live.config()?;
    let agent = report::agent_row(&live)?;
    let host_addr = addr_of(cfg.host_addr);
    let nets = crate::reconcile::networks::observe(&live)?;
    let net_of = |a: Ipv4Addr| crate::state::network_of(&nets, a);
    // "network NAME (SUBNET) on BRIDGE" of a local address.
    let on = |a: Ipv4Addr| {
        net_of(a).map_or_else(
            || {
                format!(
                    "{} on {}",
                    live.subnet().map(|s| s.to_string()).unwrap_or_default(),
                    agent.bridge
                )
            },
            |n| format!("network {} ({}) on {}", n.name, n.subnet, n.bridge),
        )
    };
    let bridge_of = |a: Ipv4Addr| net_of(a).map_or(agent.bridge.clone(), |n| n.bridge.clone());
    let peers = report::peer_rows(&live)?;
    let peer_of = |a: Ipv4Addr| report::peer_of(&peers, a, false);
    let endpoint = crate::inspect::dump::endpoint(&live, q.to)?;
    let mut steps = Vec::new();
    if q.proto.is_some() && q.dport == 0 {
        bail!("--port is needed for tcp and udp");
    }
    // Containers of networks across hosts on other hosts: their /32 routes.
    let remote = crate::reconcile::remote::installed(&live)?;
    let remote_of = |a: Ipv4Addr| {
        let v = remote.get(&netpath_common::addr_to_be(a.octets()))?;
        Some((net_of(a)?, peers.iter().find(|p| p.id == v.id)?))
    };
    // "network NAME (SUBNET) across hosts in MODE" of a network across hosts.
    let across = |n: &crate::state::Network| {
        let how = match n.span {
            Some(s) if s.mode == crate::state::Mode::Vxlan => format!("vxlan, vni {}", s.vni),
            _ => "direct".to_owned(),
        };
        format!("network {} ({}) across hosts, {how}", n.name, n.subnet)
    };
    let same_net = |a: Ipv4Addr, b: Ipv4Addr| match (net_of(a), net_of(b)) {
        (Some(x), Some(y)) => x.name == y.name,
        _ => false,
    };

    // Where the packet enters netpath.
    let local =
        |a: Ipv4Addr| net_of(a).is_some_and(|n| n.holds_container(a)) && remote_of(a).is_none();
    let (program, iface) = if local(q.from) && local(q.to) {
        let (from, to) = (net_of(q.from), net_of(q.to));
        let how = if from.map(|n| n.bridge_ifindex) == to.map(|n| n.bridge_ifindex) {
            format!("both on {}", on(q.to))
        } else {
            format!(
                "{} is on {}, {} on {}: two networks, which Docker keeps apart",
                q.from,
                on(q.from),
                q.to,
                on(q.to)
            )
        };
        steps.push(step(
            "enters",
            format!(
                "np_from_container on the sender's veth: {} and {} are containers of this host, {how}",
                q.from, q.to
            ),
        ));
        (prog_names::FROM_CONTAINER, "the sender's veth".to_owned())
    } else if let (true, Some((net, host))) = (local(q.from), remote_of(q.to)) {
        steps.push(step(
            "enters",
            format!(
                "np_from_container on the sender's veth: {} is a container of this host ({}) sending to {}, a container of {} on host {}{}",
                q.from,
                on(q.from),
                q.to,
                across(net),
                host.name,
                if same_net(q.from, q.to) {
                    ": one LAN across hosts, reached without a gateway (netpath answers its ARP)"
                } else {
                    ": another network, which Docker keeps apart"
                }
            ),
        ));
        (prog_names::FROM_CONTAINER, "the sender's veth".to_owned())
    } else if local(q.from) && q.to != host_addr {
        steps.push(step(
            "enters",
            format!(
                "np_from_container on the sender's veth: {} is a container of this host ({}) sending to its gateway; netpath routes it there, the bridge is not on its path",
                q.from,
                on(q.from)
            ),
        ));
        (prog_names::FROM_CONTAINER, "the sender's veth".to_owned())
    } else if local(q.from) {
        steps.push(step(
            "enters",
            format!(
                "np_from_bridge on {}: {} is a container of this host ({}) sending to its gateway",
                bridge_of(q.from),
                q.from,
                on(q.from)
            ),
        ));
        (prog_names::FROM_BRIDGE, bridge_of(q.from))
    } else {
        let how = match (remote_of(q.from), peer_of(q.from)) {
            (Some((net, host)), _) => format!(
                "from a container of {} on host {} (underlay {})",
                across(net),
                host.name,
                host.underlay
            ),
            (None, Some(p)) => format!(
                "from peer {} ({}, {} mode, underlay {})",
                p.name, p.subnet, p.mode, p.underlay
            ),
            (None, None) => format!(
                "{} is neither this host's container nor a peer's: from outside",
                q.from
            ),
        };
        steps.push(step(
            "enters",
            format!("np_from_uplink on {}: {how}", agent.uplink),
        ));
        (prog_names::FROM_UPLINK, agent.uplink.clone())
    };
    if q.to == host_addr {
        steps.push(step(
            "destination",
            format!("{} is this host's own address", q.to),
        ));
    } else if local(q.to) {
        steps.push(step(
            "destination",
            format!("{} is a container of this host ({})", q.to, on(q.to)),
        ));
        steps.push(step(
            "endpoint",
            match &endpoint {
                Some(e) => format!(
                    "{} is at {} (ifindex {}), MAC {}: learned from {}'s neighbours",
                    q.to,
                    e.interface.as_deref().unwrap_or("an interface of another namespace"),
                    e.ifindex,
                    e.mac,
                    bridge_of(q.to)
                ),
                None => format!(
                    "{} is not in the endpoints (not learned yet from {}'s neighbours): reached through the bridge",
                    q.to,
                    bridge_of(q.to)
                ),
            },
        ));
    } else if let Some((net, host)) = remote_of(q.to) {
        steps.push(step(
            "destination",
            format!(
                "{} is a container of {} on host {} (underlay {}): a route of its own (/32) to that host",
                q.to,
                across(net),
                host.name,
                host.underlay
            ),
        ));
    } else if let Some(p) = peer_of(q.to) {
        steps.push(step(
            "destination",
            format!(
                "{} is in peer {}'s subnet {} ({}, underlay {})",
                q.to, p.name, p.subnet, p.mode, p.underlay
            ),
        ));
    } else {
        steps.push(step(
            "destination",
            format!(
                "{} is in no container subnet netpath knows: the outside",
                q.to
            ),
        ));
    }

    // The packet, as it would arrive.
    let (src, dst) = (q.from.octets(), q.to.octets());
    let frame = match q.proto {
        None => Frame::icmp(src, dst).ports(q.sport, 0),
        Some(Proto::Tcp) => Frame::tcp(src, dst, q.sport, q.dport, 0x02),
        Some(Proto::Udp) => Frame::udp(src, dst, q.sport, q.dport, b"netpath trace", true),
    }
    .build();
    // How the sender's host would send it: in the network's mode and VNI for a container
    // of a network across hosts, else in the peer's.
    let (tunnel_peer, vni) = match remote_of(q.from) {
        Some((net, host)) => match net.span {
            Some(s) if s.mode == crate::state::Mode::Vxlan => (Some(host), s.vni),
            _ => (None, cfg.vni),
        },
        None => (peer_of(q.from).filter(|p| p.mode == "vxlan"), cfg.vni),
    };
    let tunnel_peer = tunnel_peer.filter(|_| program == prog_names::FROM_UPLINK);
    let input = match tunnel_peer {
        Some(p) => {
            let underlay: Ipv4Addr = p.underlay.parse()?;
            let mut f = crate::packet::vxlan(
                underlay.octets(),
                cfg.host_addr.to_ne_bytes(),
                vni,
                0x08,
                &frame,
            );
            // This host's tunnel port and VTEP MAC, as a peer would send them.
            let udp = ETH_LEN + 20;
            f[udp + 2..udp + 4].copy_from_slice(&u16::from_be(cfg.vxlan_port).to_be_bytes());
            f[udp + 16..udp + 22].copy_from_slice(&cfg.vtep_mac);
            steps.push(step(
                "tunnel",
                format!(
                    "arrives in VXLAN from {} (vni {}, port {}), as peer {} sends it",
                    p.underlay,
                    vni,
                    u16::from_be(cfg.vxlan_port),
                    p.name
                ),
            ));
            f
        }
        None => frame,
    };

    // Known flow? (Read from the live table, both ways round.)
    let proto_num = match q.proto {
        None => IPPROTO_ICMP,
        Some(Proto::Tcp) => IPPROTO_TCP,
        Some(Proto::Udp) => IPPROTO_UDP,
    };
    let key = |a: Ipv4Addr, b: Ipv4Addr, pa: u16, pb: u16| CtKey {
        container: u32::from_ne_bytes(a.octets()),
        remote: u32::from_ne_bytes(b.octets()),
        container_port: pa.to_be(),
        remote_port: pb.to_be(),
        proto: proto_num,
        _pad: [0; 3],
    };
    let (dp, sp) = if q.proto.is_none() {
        (0, q.sport)
    } else {
        (q.dport, q.sport)
    };
    let known = [key(q.from, q.to, sp, dp), key(q.to, q.from, dp, sp)]
        .iter()
        .find_map(|k| live.ct.get(k, 0).ok());

    // Run it through the programs.
    let ct_size = aya::maps::IterableMap::map(&live.ct).info()?.max_entries();
    // The trace instance: live lookup maps, private state maps of the live sizes.
    let mut ebpf = datapath::load_with(|n| SHARED.contains(&n).then(|| pins.map_path(n)), ct_size)
        .context("loading a trace instance of the programs")?;
    let mut ct: HashMap<MapData, CtKey, CtEntry> = take(&mut ebpf, map_names::CT)?;
    let mut nat: HashMap<MapData, NatKey, NatValue> = take(&mut ebpf, map_names::NAT)?;
    for item in live.ct.iter() {
        let (k, v) = item?;
        let _ = ct.insert(k, v, 0);
    }
    for item in live.nat.iter() {
        let (k, v) = item?;
        let _ = nat.insert(k, v, 0);
    }
    let before: HashSet<CtKey> = ct.keys().flatten().collect();
    let counters: PerCpuArray<MapData, Counter> = take(&mut ebpf, map_names::COUNTERS)?;
    let mut run =
        |program: &str| -> Result<(aya::programs::TestRunResult, Vec<u8>, Option<Reason>)> {
            let mut out = vec![0u8; input.len() + 256];
            let opts = TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            };
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program}"))?
                .try_into()?;
            let r = prog
                .test_run(opts)
                .context("running the packet through the program")?;
            out.truncate(r.data_size_out as usize);
            let mut reason = None;
            for i in 0..MAX_REASONS {
                if per_cpu_sum(&counters.get(&i, 0)?) > 0 {
                    reason = Reason::from_u32(i);
                }
            }
            Ok((r, out, reason))
        };
    let (mut r, mut out, mut reason) = run(program)?;
    let (mut program, mut iface) = (program, iface);
    if reason.is_none() && program == prog_names::FROM_CONTAINER && !local(q.to) {
        // What netpath leaves to the stack goes on to the bridge, unchanged: the bridge
        // program sees it there.
        steps.push(step(
            "enters",
            format!(
                "np_from_bridge on {}: np_from_container leaves it to the bridge",
                bridge_of(q.from)
            ),
        ));
        (program, iface) = (prog_names::FROM_BRIDGE, bridge_of(q.from));
        (r, out, reason) = run(program)?;
    }
    let rule_stats: PerCpuArray<MapData, Counter> = take(&mut ebpf, map_names::POLICY_STATS)?;
    // The rules as installed, read once: their ids, their text, the default action.
    let policy = crate::inspect::policy::report(&live)?;
    let policy_on = policy.enabled;
    let mut rule = None;
    if policy_on {
        for id in policy.rules.iter().map(|r| r.id).chain([0]) {
            if per_cpu_sum(&rule_stats.get(&id, 0)?) > 0 {
                rule = Some(id);
            }
        }
    }
    let peer_stats: PerCpuArray<MapData, PeerStats> = take(&mut ebpf, map_names::PEER_STATS)?;
    let mut peer = None;
    for p in &peers {
        let s: PerCpuValues<PeerStats> = peer_stats.get(&p.id, 0)?;
        let (tx, rx) = s
            .iter()
            .fold((0, 0), |a, s| (a.0 + s.tx.packets, a.1 + s.rx.packets));
        if tx + rx > 0 {
            peer = Some((p.name.clone(), if tx > 0 { "to" } else { "from" }));
        }
    }
    let new_flow = ct
        .keys()
        .flatten()
        .find(|k| !before.contains(k))
        .and_then(|k| Some((k, ct.get(&k, 0).ok()?)));

    // Explain.
    let Some(reason) = reason else {
        // np_from_container leaves all but same-host traffic to the bridge program.
        bail!(
            "the program counted nothing for this packet (verdict {}): netpath does not handle it",
            r.return_value
        );
    };
    match known {
        Some(e) => steps.push(step(
            "conntrack",
            format!(
                "part of a known flow ({}, rule {}): policy is not consulted again",
                ct_kind(e.kind),
                e.rule
            ),
        )),
        None => steps.push(step(
            "conntrack",
            "no entry: the first packet of a new flow",
        )),
    }
    if !policy_on {
        steps.push(step(
            "policy",
            "off (no rules, default allow): not consulted",
        ));
    } else if known.is_none() {
        match rule {
            Some(0) => steps.push(step(
                "policy",
                format!(
                    "no rule matches: the default action ({}) decides",
                    policy.default_action
                ),
            )),
            Some(id) => steps.push(step(
                "policy",
                format!("decided by {}", rule_text(&policy, id)),
            )),
            None if matches!(
                reason,
                Reason::DropPolicyDeny
                    | Reason::DropPolicyReject
                    | Reason::DropDefaultDeny
                    | Reason::DropDefaultReject
            ) => {}
            None => steps.push(step("policy", "not consulted on this path")),
        }
    }
    if let Some((k, e)) = &new_flow {
        steps.push(step(
            "conntrack",
            format!(
                "records the flow: {} ({}, rule {}{})",
                flow_text(k),
                ct_kind(e.kind),
                e.rule,
                if e.nat_port != 0 {
                    format!(", host port {}", u16::from_be(e.nat_port))
                } else {
                    String::new()
                }
            ),
        ));
    }
    if let Some((name, dir)) = &peer {
        steps.push(step(
            "peer",
            format!("counted as traffic {dir} peer {name}"),
        ));
    }
    let outcome = report::verdict_name(reason.verdict());
    let out_packet =
        (!out.is_empty() && r.return_value as i32 != TC_ACT_SHOT).then(|| describe_frame(&out));
    let in_packet = describe_frame(&input);
    if let Some(o) = &out_packet {
        if outcome == "drop" {
            steps.push(step("answers", format!("with {o}")));
        } else if *o != in_packet {
            steps.push(step("rewrites", format!("{in_packet}  =>  {o}")));
        }
    }
    let veth = endpoint.as_ref().map(|e| {
        e.interface
            .clone()
            .unwrap_or_else(|| format!("ifindex {}", e.ifindex))
    });
    let leaves = leaves_by(
        reason,
        &agent.uplink,
        &bridge_of(q.to),
        &iface,
        veth.as_deref(),
    );
    let verdict = match r.return_value as i32 {
        TC_ACT_REDIRECT => "redirect".to_owned(),
        TC_ACT_SHOT => "drop".to_owned(),
        TC_ACT_OK | TC_ACT_UNSPEC => "continue".to_owned(),
        v => format!("tc action {v}"),
    };
    steps.push(step(
        "result",
        format!(
            "{} ({outcome}): {}{}",
            reason.name(),
            reason.description().trim(),
            match &leaves {
                Some(l) => format!(" Leaves by {l}."),
                None if outcome == "pass" => " The host's own stack handles it.".to_owned(),
                None => String::new(),
            }
        ),
    ));
    Ok(Trace {
        host: agent.host,
        packet: proto_text(q),
        program: program.to_owned(),
        interface: iface,
        steps,
        reason: reason.name().to_owned(),
        verdict,
        outcome,
        leaves_by: leaves,
        rule: if policy_on { rule } else { None },
        peer: peer.map(|p| p.0),
        out_packet,
        new_flow: new_flow.map(|(k, e)| format!("{} ({})", flow_text(&k), ct_kind(e.kind))),
    })
}

/// A conntrack key as people write a flow.
fn flow_text(k: &CtKey) -> String {
    format!(
        "{} {}:{} <-> {}:{}",
        crate::inspect::flows::proto_name(k.proto),
        addr_of(k.container),
        u16::from_be(k.container_port),
        addr_of(k.remote),
        u16::from_be(k.remote_port)
    )
}

fn ct_kind(k: u8) -> &'static str {
    match k {
        netpath_common::CT_KIND_MASQUERADE => "masquerade",
        netpath_common::CT_KIND_PUBLISHED => "published port",
        netpath_common::CT_KIND_POLICY => "allowed by policy",
        _ => "unknown kind",
    }
}

fn rule_text(r: &crate::inspect::policy::PolicyReport, id: u32) -> String {
    r.rules
        .iter()
        .find(|x| x.id == id)
        .map(|x| {
            format!(
                "rule {id}: {} -> {} {} {} ({})",
                x.from, x.to, x.proto, x.port, x.action
            )
        })
        .unwrap_or_else(|| format!("rule {id}"))
}

pub fn text(t: &Trace) -> String {
    let mut o = format!(
        "trace {} on host {} (through the loaded programs and the live maps; nothing is sent)\n",
        t.packet, t.host
    );
    for (i, s) in t.steps.iter().enumerate() {
        o += &format!("{:>2}. {:<12} {}\n", i + 1, s.what, s.detail);
    }
    o += &format!("verdict: {} ({})\n", t.outcome, t.reason);
    o
}
