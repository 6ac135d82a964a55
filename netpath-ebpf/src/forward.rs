//! Routing between container subnets of different hosts, unencapsulated ("direct",
//! host-gw) or through the VXLAN tunnel (see vxlan.rs).
//! Each function returns the TC action; the one exit (`finish`) counts the outcome.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netpath_common::{CONFIG_F_READY, Config, MODE_DIRECT, MODE_VXLAN, Reason, reason::Verdict};

use crate::{
    counters::{PeerDir, count, count_peer},
    icmp,
    maps::{CONFIG, PEERS},
    mtu, nat, parse, vxlan, xdp,
};

const AF_INET: u32 = 2;

/// Counts `outcome` and turns it into a TC action. `Err` reasons pass the packet on
/// unchanged (TC_ACT_UNSPEC, so later TC programs still run) or drop it.
#[inline(always)]
fn finish(ctx: &TcContext, outcome: Result<(i32, Reason), Reason>) -> i32 {
    let (action, reason) = match outcome {
        Ok(done) => done,
        Err(reason) => match reason.verdict() {
            Verdict::Drop => (TC_ACT_SHOT as i32, reason),
            _ => (TC_ACT_UNSPEC, reason),
        },
    };
    count(reason, ctx.len());
    action
}

#[inline(always)]
pub fn config() -> Result<&'static Config, Reason> {
    match CONFIG.get(0) {
        Some(c) if c.flags & CONFIG_F_READY != 0 => Ok(c),
        _ => Err(Reason::PassNoConfig),
    }
}

pub fn from_bridge(ctx: &TcContext) -> i32 {
    finish(ctx, try_from_bridge(ctx))
}

/// A container's packet to be routed. Local destinations (the host, its own subnet) are
/// the stack's; a peer's subnet is routed to the uplink with the peer's underlay address as
/// next hop, wrapped in VXLAN for a vxlan peer; anything else goes out of the uplink
/// masqueraded (with `masquerade = true`) or is the stack's. A packet of a translated
/// flow (a reply on a published port) is translated first, wherever it goes (nat.rs).
#[inline(always)]
fn try_from_bridge(ctx: &TcContext) -> Result<(i32, Reason), Reason> {
    let cfg = config()?;
    let ip = parse::ipv4(ctx)?;
    if ip.dst & cfg.subnet_mask == cfg.subnet_addr || ip.dst == cfg.host_addr {
        return Err(Reason::PassLocal);
    }
    let peer = PEERS.get(Key::new(32, ip.dst));
    let translated = nat::egress(ctx, cfg, &ip, peer.is_some())?;
    let ip = match translated {
        Some(_) => parse::ipv4(ctx)?,
        None => ip,
    };
    let Some(peer) = peer else {
        // Translated to the outside (egress leaves no other way here).
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
        icmp::frag_needed(ctx, cfg, &ip)?;
        // Back out of the bridge, to the sender's MAC.
        // SAFETY: helper call with scalar arguments.
        let action = unsafe { bpf_redirect(cfg.bridge_ifindex, 0) } as i32;
        return Ok((action, Reason::DropFragNeeded));
    }
    let mut ip = ip;
    hop(ctx, &mut ip, peer.id, PeerDir::Tx)?;
    if peer.mode == MODE_VXLAN {
        mtu::clamp_mss(ctx, &ip, cfg.tunnel_mss);
        vxlan::encap(ctx, cfg, peer)?;
    }
    Ok((redirect(cfg.uplink_ifindex, Some(peer.underlay)), reason))
}

pub fn from_uplink(ctx: &TcContext) -> i32 {
    finish(ctx, try_from_uplink(ctx))
}

/// A packet from the underlay. Tunnel traffic is checked and decapsulated (vxlan.rs).
/// Traffic for the host's address is translated to a container when it belongs to a
/// masqueraded flow or a published port (nat.rs), else it is the host's. What a direct
/// peer's container sends to a local container is routed into the bridge (the kernel's
/// FIB lookup finds the container on it); anything else addressed to a container is
/// dropped: from outside, containers are reached through published ports only.
#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<(i32, Reason), Reason> {
    let cfg = config()?;
    if let Some(peer_id) = xdp::decapped(ctx) {
        // XDP checked and decapsulated it (xdp.rs).
        let mut inner = parse::ipv4(ctx)?;
        hop(ctx, &mut inner, peer_id, PeerDir::Rx)?;
        mtu::clamp_mss(ctx, &inner, cfg.tunnel_mss);
        return Ok((redirect(cfg.bridge_ifindex, None), Reason::FwdVxlanDecapXdp));
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
        // An inner TTL that would expire leaves the decapsulated packet to the stack.
        hop(ctx, &mut inner, peer_id, PeerDir::Rx)?;
        // The other end may be a Linux vxlan host that clamps nothing.
        mtu::clamp_mss(ctx, &inner, cfg.tunnel_mss);
        return Ok((redirect(cfg.bridge_ifindex, None), Reason::FwdVxlanDecap));
    }
    if ip.dst == cfg.host_addr {
        let reason = nat::ingress(ctx, cfg, &ip)?;
        let mut ip = parse::ipv4(ctx)?;
        decrement_ttl(&mut ip)?;
        return Ok((redirect(cfg.bridge_ifindex, None), reason));
    }
    if ip.dst & cfg.subnet_mask != cfg.subnet_addr || ip.dst == cfg.gateway_addr {
        return Err(Reason::PassNotForUs);
    }
    let peer = PEERS
        .get(Key::new(32, ip.src))
        .ok_or(Reason::DropNotPublished)?;
    if peer.mode != MODE_DIRECT {
        // A tunnel peer's traffic must arrive in the tunnel, never in the clear.
        return Err(Reason::DropNotPublished);
    }
    let mut ip = ip;
    hop(ctx, &mut ip, peer.id, PeerDir::Rx)?;
    Ok((redirect(cfg.bridge_ifindex, None), Reason::FwdDeliver))
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
