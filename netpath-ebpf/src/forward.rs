//! Routing between container subnets of different hosts, unencapsulated ("direct",
//! host-gw) or through the VXLAN tunnel (see vxlan.rs), and delivery to local containers
//! straight into their namespaces (`deliver`, from `NP_ENDPOINTS`).
//! Each function returns the TC action; the one exit (`finish`) counts the outcome and
//! logs it when the decision log is on (debug.rs).

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netpath_common::{
    Config, MODE_DIRECT, MODE_VXLAN, NET_F_INTERNAL, Network, PEER_F_ENDPOINT, PROG_FROM_BRIDGE,
    PROG_FROM_CONTAINER, PROG_FROM_UPLINK, PeerValue, Reason, reason::Verdict,
};

use crate::{
    arp,
    counters::{self, PeerDir, count, count_peer},
    ct, debug, events, icmp,
    maps::{self, CT, ENDPOINTS, PEERS},
    mtu, nat,
    parse::{self, Tuple},
    policy::{self, Decision},
    vxlan, xdp,
};

const AF_INET: u32 = 2;

/// Counts `outcome` (and logs it with `seen`, the input tuple, when the decision log
/// keeps this packet) and turns it into a TC action. `Err` reasons pass the packet on
/// unchanged (TC_ACT_UNSPEC, so later TC programs still run) or drop it.
#[inline(always)]
fn finish(
    ctx: &TcContext,
    outcome: Result<(i32, Reason), Reason>,
    seen: Option<Tuple>,
    prog: u8,
) -> i32 {
    let (action, reason) = match outcome {
        Ok(done) => done,
        Err(reason) => match reason.verdict() {
            Verdict::Drop => (TC_ACT_SHOT, reason),
            _ => (TC_ACT_UNSPEC, reason),
        },
    };
    count(reason, ctx.len());
    if reason.verdict() == Verdict::Drop {
        // SAFETY: reading a field of the program's own skb.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        events::dropped(ctx, reason, ifindex, false);
    }
    debug::decided(ctx, seen, prog, reason, action);
    action
}

pub fn from_bridge(ctx: &TcContext) -> i32 {
    let seen = debug::start(ctx);
    finish(ctx, try_from_bridge(ctx), seen, PROG_FROM_BRIDGE)
}

/// A container's packet to be routed (on the bridge of any of the host's networks). Local
/// destinations (the host, its subnet, its networks) are the stack's; a peer's subnet is
/// routed to the uplink with the peer's underlay address as next hop, wrapped in VXLAN
/// for a vxlan peer; anything else goes out of the uplink
/// masqueraded (with `masquerade = true`) or is the stack's. A packet of a known flow
/// passes policy without a lookup and is translated if the flow is (a reply on a
/// published port, a masqueraded flow; nat.rs); the first packet of a new flow is
/// decided by policy (policy.rs) before anything is recorded or allocated for it.
#[inline(always)]
fn try_from_bridge(ctx: &TcContext) -> Result<(i32, Reason), Reason> {
    let cfg = maps::config()?;
    let ip = parse::ipv4(ctx)?;
    if ip.dst & cfg.subnet_mask == cfg.subnet_addr
        || ip.dst == cfg.host_addr
        || maps::network(ip.dst).is_some()
    {
        return Err(Reason::PassLocal);
    }
    let net = maps::network(ip.src);
    route(ctx, cfg, ip, net, ingress_ifindex(ctx))
}

/// The interface the packet came in on.
#[inline(always)]
fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own skb.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Routes a container's packet for anything but this host and its networks (see
/// `try_from_bridge`). `net` is the local network of its source (None: none); `came_in`
/// is the interface it came in on, where answers to it go. A container of an internal
/// network goes nowhere; only containers of a network inside
/// the host's subnet go to peers (no peer routes another network back).
#[inline(always)]
fn route(
    ctx: &TcContext,
    cfg: &Config,
    ip: parse::Ipv4,
    net: Option<&Network>,
    came_in: u32,
) -> Result<(i32, Reason), Reason> {
    let peer = PEERS.get(Key::new(32, ip.dst));
    if let Some(n) = net
        && n.flags & NET_F_INTERNAL != 0
    {
        return Err(Reason::DropNetworkInternal);
    }
    if peer.is_some() {
        match net {
            // Not one of this host's containers: a peer would take it for this host's.
            None => return Err(Reason::DropForeignSrc),
            Some(n) if ip.src == n.gateway_addr => return Err(Reason::DropForeignSrc),
            Some(n) if !n.spans() && !cfg.is_container(ip.src) => {
                return Err(Reason::DropOutsideRange);
            }
            Some(_) => {}
        }
    }
    if let Some(p) = peer
        && !apart_ok(p, net, ip.dst)
    {
        return Err(Reason::DropNetworkIsolated);
    }
    let l4 = parse::l4(ctx, &ip)?;
    let key = ct::ct_key(ip.src, ip.dst, l4.sport, l4.dport, l4.proto);
    let known = if ct::trackable(&l4) {
        CT.get_ptr_mut(key)
    } else {
        None
    };
    let translated = match known {
        Some(e) => nat::egress_known(ctx, cfg, &ip, &l4, e)?,
        None => {
            if peer.is_none() {
                // Only what netpath forwards is its policy's business.
                nat::masqueradable(cfg, net, &ip, &l4)?;
            }
            let rule = match policy::live() {
                None => 0,
                Some(st) => match policy::decide(ctx, st, ip.src, ip.dst, &l4) {
                    Decision::Allow(rule) => {
                        if peer.is_some() {
                            policy::track(&key, &l4, rule, true)?;
                        }
                        rule
                    }
                    Decision::Refuse(reason, answer) => {
                        return refuse(ctx, &ip, &l4, reason, answer, Back::Out(came_in));
                    }
                },
            };
            match peer {
                Some(_) => None,
                None => Some(nat::masquerade(ctx, cfg, &ip, &l4, &key, rule)?),
            }
        }
    };
    let ip = match translated {
        Some(_) => parse::ipv4(ctx)?,
        None => ip,
    };
    let Some(peer) = peer else {
        // Translated to the outside (nothing else gets here without a peer).
        let reason = translated.ok_or(Reason::PassUnknownDst)?;
        let mut ip = ip;
        decrement_ttl(&mut ip)?;
        return Ok((redirect(cfg.uplink_ifindex, None), reason));
    };
    let reason = match peer.mode {
        MODE_DIRECT => Reason::FwdDirect,
        MODE_VXLAN => Reason::FwdVxlanEncap,
        _ => return Err(Reason::PassUnsupportedMode),
    };
    if peer.mode == MODE_VXLAN && ip.hdr.ttl > 1 && icmp::too_big(ctx, cfg, &ip) {
        // A router answers DF packets with the MTU and fragments the others; netpath
        // answers both (Linux lowers its path MTU on either and fragments from then on).
        let gateway = net.map_or(cfg.gateway_addr, |n| n.gateway_addr);
        icmp::frag_needed(ctx, cfg, gateway, &ip)?;
        return Ok((bounce(came_in), Reason::DropFragNeeded));
    }
    let mut ip = ip;
    hop(ctx, &mut ip, peer.id, PeerDir::Tx)?;
    if peer.mode == MODE_VXLAN {
        mtu::clamp_mss(ctx, &ip, cfg.tunnel_mss);
        let ports = (!l4.fragment).then_some((l4.sport, l4.dport, l4.proto));
        let flow = vxlan::flow_hash(ip.src, ip.dst, ports);
        vxlan::encap(ctx, cfg, peer, vni_of(cfg, net), flow, true)?;
    }
    Ok((redirect(cfg.uplink_ifindex, Some(peer.underlay)), reason))
}

/// Whether a container of `net` (None: of no local network) may exchange packets with
/// `other`, an address that `peer` routes: a network across hosts only with its own
/// containers on other hosts, every other network only with peers' subnets.
#[inline(always)]
fn apart_ok(peer: &PeerValue, net: Option<&Network>, other: u32) -> bool {
    match net {
        Some(n) if n.spans() => peer.flags & PEER_F_ENDPOINT != 0 && n.holds(other),
        _ => peer.flags & PEER_F_ENDPOINT == 0,
    }
}

/// The VNI of what a container of `net` sends in VXLAN: its network's for a network
/// across hosts, the host's for every other.
#[inline(always)]
fn vni_of(cfg: &Config, net: Option<&Network>) -> u32 {
    match net {
        Some(n) if n.spans() => n.vni(),
        _ => cfg.vni,
    }
}

/// Where the answer to a refused packet goes.
#[derive(Clone, Copy)]
enum Back {
    /// Out of this interface, to the MAC the packet came from.
    Out(u32),
    /// Back into the VXLAN tunnel, to the peer of the answer's destination.
    Tunnel,
}

/// Drops a packet that policy refused (`reason`), or with `answer`, turns it into its
/// answer (policy::answer) and sends that back the way the packet came.
#[inline(always)]
fn refuse(
    ctx: &TcContext,
    ip: &parse::Ipv4,
    l4: &parse::L4,
    reason: Reason,
    answer: bool,
    back: Back,
) -> Result<(i32, Reason), Reason> {
    if !answer {
        return Err(reason);
    }
    if policy::answer(ctx, ip, l4).is_err() {
        return Err(Reason::DropRejectUnanswered);
    }
    let action = match back {
        Back::Out(ifindex) => bounce(ifindex),
        Back::Tunnel => {
            let cfg = maps::config()?;
            let ip = parse::ipv4(ctx).map_err(|_| Reason::DropRejectUnanswered)?;
            let peer = PEERS
                .get(Key::new(32, ip.dst))
                .ok_or(Reason::DropRejectUnanswered)?;
            if peer.mode != MODE_VXLAN {
                return Err(Reason::DropRejectUnanswered);
            }
            let vni = vni_of(cfg, maps::network(ip.src));
            let flow = vxlan::flow_hash(ip.src, ip.dst, None);
            vxlan::encap(ctx, cfg, peer, vni, flow, false)
                .map_err(|_| Reason::DropRejectUnanswered)?;
            redirect(cfg.uplink_ifindex, Some(peer.underlay))
        }
    };
    Ok((action, reason))
}

/// Policy for a packet that a peer sends to a local container (`ip`, after any decap): a
/// packet of a known flow passes (and is counted under its rule); the first packet of a
/// new flow is decided, and recorded if allowed. `Some` is the outcome of a refused
/// packet, answered through `back`.
#[inline(always)]
fn admit(ctx: &TcContext, ip: &parse::Ipv4, back: Back) -> Result<Option<(i32, Reason)>, Reason> {
    let Some(st) = policy::live() else {
        return Ok(None);
    };
    let l4 = parse::l4(ctx, ip)?;
    let key = ct::ct_key(ip.dst, ip.src, l4.dport, l4.sport, l4.proto);
    if ct::trackable(&l4)
        && let Some(e) = CT.get_ptr_mut(key)
    {
        ct::touch(e, &l4, false);
        // SAFETY: a value of an LRU hash map; any value of the field is valid.
        counters::count_rule(unsafe { (*e).rule }, ctx.len());
        return Ok(None);
    }
    match policy::decide(ctx, st, ip.src, ip.dst, &l4) {
        Decision::Allow(rule) => {
            policy::track(&key, &l4, rule, false)?;
            Ok(None)
        }
        Decision::Refuse(reason, answer) => refuse(ctx, ip, &l4, reason, answer, back).map(Some),
    }
}

pub fn from_uplink(ctx: &TcContext) -> i32 {
    let seen = debug::start(ctx);
    finish(ctx, try_from_uplink(ctx), seen, PROG_FROM_UPLINK)
}

/// A packet from the underlay. Tunnel traffic is checked and decapsulated (vxlan.rs).
/// Traffic for the host's address is translated to a container when it belongs to a
/// masqueraded flow or a published port (nat.rs), else it is the host's. What a direct
/// peer's container sends to a local container is routed into the bridge (the kernel's
/// FIB lookup finds the container on it); anything else addressed to a container is
/// dropped: from outside, containers are reached through published ports only.
#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<(i32, Reason), Reason> {
    let cfg = maps::config()?;
    if let Some(peer_id) = xdp::decapped(ctx) {
        // XDP checked and decapsulated it (xdp.rs).
        let mut inner = parse::ipv4(ctx)?;
        if let Some(refused) = admit(ctx, &inner, Back::Tunnel)? {
            return Ok(refused);
        }
        hop(ctx, &mut inner, peer_id, PeerDir::Rx)?;
        mtu::clamp_mss(ctx, &inner, cfg.tunnel_mss);
        let net = maps::network(inner.dst);
        return deliver(ctx, cfg, inner.dst, net, Reason::FwdVxlanDecapXdp);
    }
    let ip = parse::ipv4(ctx)?;
    let ip = if ip.hdr.proto == netpath_common::IPPROTO_UDP
        && ip.dst == cfg.host_addr
        && vxlan::pull(ctx)
    {
        parse::ipv4(ctx)?
    } else {
        ip
    };
    if vxlan::is_tunnel(ctx, cfg, &ip) {
        let (peer_id, mut inner) = vxlan::decap(ctx, cfg, ip)?;
        if let Some(refused) = admit(ctx, &inner, Back::Tunnel)? {
            return Ok(refused);
        }
        // An inner TTL that would expire leaves the decapsulated packet to the stack.
        hop(ctx, &mut inner, peer_id, PeerDir::Rx)?;
        // The other end may be a Linux vxlan host that clamps nothing.
        mtu::clamp_mss(ctx, &inner, cfg.tunnel_mss);
        let net = maps::network(inner.dst);
        return deliver(ctx, cfg, inner.dst, net, Reason::FwdVxlanDecap);
    }
    if ip.dst == cfg.host_addr {
        let reason = match nat::ingress(ctx, cfg, &ip)? {
            nat::Ingress::Deliver(reason) => reason,
            nat::Ingress::Refused(reason, answer, l4) => {
                let back = Back::Out(cfg.uplink_ifindex);
                return refuse(ctx, &ip, &l4, reason, answer, back);
            }
        };
        let mut ip = parse::ipv4(ctx)?;
        decrement_ttl(&mut ip)?;
        return deliver(ctx, cfg, ip.dst, maps::network(ip.dst), reason);
    }
    let net = maps::network(ip.dst);
    let spans = net.is_some_and(|n| n.spans());
    if !spans && !cfg.is_container(ip.dst) {
        return Err(Reason::PassNotForUs);
    }
    if let Some(n) = net
        && ip.dst == n.gateway_addr
    {
        // Another network's bridge: an address of the host.
        return Err(Reason::PassNotForUs);
    }
    let peer = PEERS
        .get(Key::new(32, ip.src))
        .ok_or(Reason::DropNotPublished)?;
    if peer.mode != MODE_DIRECT {
        // A tunnel peer's traffic must arrive in the tunnel, never in the clear.
        return Err(Reason::DropNotPublished);
    }
    if !apart_ok(peer, net.filter(|_| spans), ip.src) {
        return Err(Reason::DropNetworkIsolated);
    }
    if let Some(refused) = admit(ctx, &ip, Back::Out(cfg.uplink_ifindex))? {
        return Ok(refused);
    }
    let mut ip = parse::ipv4(ctx)?;
    hop(ctx, &mut ip, peer.id, PeerDir::Rx)?;
    deliver(ctx, cfg, ip.dst, net, Reason::FwdDeliver)
}

/// Delivers a routed packet to the local container `dst` (network byte order; `net` its
/// network, from [`maps::network`]): straight
/// into its namespace (bpf_redirect_peer from TC ingress, skipping the bridge), its MACs
/// written as its network's bridge, its gateway, would have sent it. A container whose
/// endpoint the agent has not learned yet is reached through its network's bridge
/// (docker0's for an address of no network), counted as `fwd-via-bridge` instead of
/// `reason`. Nothing from outside the host reaches a container of an internal network.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    cfg: &Config,
    dst: u32,
    net: Option<&Network>,
    reason: Reason,
) -> Result<(i32, Reason), Reason> {
    let (bridge, bridge_mac) = match net {
        Some(n) if n.flags & NET_F_INTERNAL != 0 => return Err(Reason::DropNetworkInternal),
        Some(n) => (n.bridge_ifindex, n.bridge_mac),
        None => (cfg.bridge_ifindex, cfg.bridge_mac),
    };
    // SAFETY: a value of a hash map; it is copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(dst) }).copied() else {
        return Ok((redirect(bridge, None), Reason::FwdViaBridge));
    };
    // In place: every caller parsed the Ethernet header out of the linear data.
    let eth: *mut [u8; 12] = parse::ptr_at(ctx, 0).ok_or(Reason::DropMalformed)?;
    // SAFETY: ptr_at checked the bounds; the program owns the packet while it runs.
    let eth = unsafe { &mut *eth };
    eth[..6].copy_from_slice(&ep.mac);
    eth[6..].copy_from_slice(&bridge_mac);
    Ok((peer(ep.ifindex), reason))
}

/// Sends the packet into the namespace of the veth `ifindex`'s peer: it is received
/// there as if it had come in on that device, without a pass through the host's stack
/// or a backlog. Only valid from TC ingress.
#[inline(always)]
fn peer(ifindex: u32) -> i32 {
    // SAFETY: helper call with scalar arguments (flags must be 0).
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

pub fn from_container(ctx: &TcContext) -> i32 {
    let seen = debug::start(ctx);
    match try_from_container(ctx) {
        Some(outcome) => finish(ctx, outcome, seen, PROG_FROM_CONTAINER),
        // The host's own, or nothing netpath routes: the bridge (and its program, which
        // counts it) sees it as before.
        None => TC_ACT_UNSPEC,
    }
}

/// A packet a container sends, seen on its veth before the bridge. Traffic to another
/// container of its network is decided by policy (the bridge would forward it at layer 2,
/// where no other program sees it) and delivered straight into that container; traffic
/// to a container of another network of this host is dropped (Docker's isolation).
/// Traffic that netpath routes (to peers, masqueraded to the outside, replies on
/// published ports) is routed here, so the bridge and the host's netfilter are not on its
/// path. The rest (`None`: for the host, not from a container of a local network, a TTL
/// that expires, what netpath leaves to the stack) goes on to the bridge unchanged and
/// uncounted.
#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Option<Result<(i32, Reason), Reason>> {
    let cfg = maps::config().ok()?;
    let ip = match parse::ipv4(ctx) {
        Ok(ip) => ip,
        Err(_) => return arp::answer(ctx, ingress_ifindex(ctx)),
    };
    let net = maps::network(ip.src)?;
    if ip.dst == cfg.host_addr {
        return None;
    }
    if let Some(to) = maps::network(ip.dst) {
        if !(to.spans() && elsewhere(ip.dst)) {
            return local(ctx, &ip, net, to);
        }
        if to.bridge_ifindex != net.bridge_ifindex {
            return Some(Err(Reason::DropNetworkIsolated));
        }
        // A container of its network on another host: routed there, below.
    } else if ip.dst & cfg.subnet_mask == cfg.subnet_addr {
        // In the host's subnet but on no network of it: the stack's.
        return None;
    }
    if ip.hdr.ttl <= 1 {
        // The stack answers with time-exceeded, from the gateway's address.
        return None;
    }
    match route(ctx, cfg, ip, Some(net), ingress_ifindex(ctx)) {
        // Nothing was changed: the bridge program sees it and decides it again.
        Err(reason) if reason.verdict() == Verdict::Pass => None,
        outcome => Some(outcome),
    }
}

/// Whether `dst`, an address of a network across hosts, is a container of another host:
/// not one of this host's, and routed to its host.
#[inline(always)]
fn elsewhere(dst: u32) -> bool {
    // SAFETY: a value of a hash map, only tested for presence.
    if unsafe { ENDPOINTS.get(dst) }.is_some() {
        return false;
    }
    PEERS
        .get(Key::new(32, dst))
        .is_some_and(|p| p.flags & PEER_F_ENDPOINT != 0)
}

/// A container's packet (from network `from`) for an address of network `to` of this
/// host: the same network's containers are the business of [`same_host`]; its gateway,
/// broadcast and the container itself are the stack's (None), as is the gateway (the
/// host's address) of another network; another network's containers are isolated.
#[inline(always)]
fn local(
    ctx: &TcContext,
    ip: &parse::Ipv4,
    from: &Network,
    to: &Network,
) -> Option<Result<(i32, Reason), Reason>> {
    if ip.dst == to.gateway_addr || to.is_broadcast(ip.dst) || ip.src == ip.dst {
        return None;
    }
    if to.bridge_ifindex != from.bridge_ifindex {
        return Some(Err(Reason::DropNetworkIsolated));
    }
    Some(same_host(ctx, ip, to.spans()))
}

/// Policy and delivery between two containers of one network of this host. `spans`: a
/// network across hosts, whose containers may have learned the bridge's MAC for this
/// address (when it was on another host): the destination MAC is written.
#[inline(always)]
fn same_host(ctx: &TcContext, ip: &parse::Ipv4, spans: bool) -> Result<(i32, Reason), Reason> {
    if let Some(st) = policy::live() {
        let l4 = parse::l4(ctx, ip)?;
        // Both ends are local: the lower address is the "container" end of the key, so both
        // directions find the same entry.
        let first = u32::from_be(ip.src) < u32::from_be(ip.dst);
        let key = if first {
            ct::ct_key(ip.src, ip.dst, l4.sport, l4.dport, l4.proto)
        } else {
            ct::ct_key(ip.dst, ip.src, l4.dport, l4.sport, l4.proto)
        };
        if ct::trackable(&l4)
            && let Some(e) = CT.get_ptr_mut(key)
        {
            ct::touch(e, &l4, first);
            // SAFETY: a value of an LRU hash map; any value of the field is valid.
            counters::count_rule(unsafe { (*e).rule }, ctx.len());
        } else {
            match policy::decide(ctx, st, ip.src, ip.dst, &l4) {
                Decision::Allow(rule) => policy::track(&key, &l4, rule, first)?,
                Decision::Refuse(reason, answer) => {
                    // SAFETY: reading a field of the program's own skb.
                    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
                    return refuse(ctx, ip, &l4, reason, answer, Back::Out(ifindex));
                }
            }
        }
    }
    // Bridged, not routed: the frame already carries both containers' MACs and its TTL.
    // SAFETY: a value of a hash map; it is copied out at once.
    match (unsafe { ENDPOINTS.get(ip.dst) }).copied() {
        Some(ep) => {
            if spans {
                ctx.store(0, &ep.mac, 0)
                    .map_err(|_| Reason::DropMalformed)?;
            }
            Ok((peer(ep.ifindex), Reason::FwdSameHost))
        }
        None => Ok((TC_ACT_UNSPEC, Reason::FwdViaBridge)),
    }
}

/// Does what a router does with `ip` once it knows where it goes, up to the way out: a
/// packet whose TTL would expire is left to the stack unchanged (the stack owns ICMP
/// time-exceeded); otherwise TTL-1 with the checksum patched, and the peer's counter.
#[inline(always)]
fn hop(ctx: &TcContext, ip: &mut parse::Ipv4, peer_id: u32, dir: PeerDir) -> Result<(), Reason> {
    decrement_ttl(ip)?;
    count_peer(peer_id, dir, ctx.len());
    Ok(())
}

/// TTL-1 with the checksum patched; a packet whose TTL would expire is the stack's.
#[inline(always)]
fn decrement_ttl(ip: &mut parse::Ipv4) -> Result<(), Reason> {
    if ip.hdr.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    parse::decrement_ttl(ip.hdr);
    Ok(())
}

/// Sends an answer that netpath made of a packet (its MACs swapped) back out of
/// `ifindex`, the interface the packet came in on.
#[inline(always)]
fn bounce(ifindex: u32) -> i32 {
    // SAFETY: helper call with scalar arguments.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Redirects out of `ifindex`. With `nexthop` (an underlay address, network byte order)
/// the kernel resolves that neighbour; without, it does a FIB lookup on the destination.
/// bpf_redirect_neigh fills both MACs, queueing the packet while ARP resolves.
#[inline(always)]
fn redirect(ifindex: u32, nexthop: Option<u32>) -> i32 {
    let action = match nexthop {
        Some(addr) => {
            let mut nh = bpf_redir_neigh {
                nh_family: AF_INET,
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: addr },
            };
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: helper call with a valid pointer to a stack struct of that size.
            unsafe { bpf_redirect_neigh(ifindex, &mut nh, size, 0) }
        }
        // SAFETY: helper call; null params ask the kernel for a FIB lookup.
        None => unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) },
    };
    action as i32
}
