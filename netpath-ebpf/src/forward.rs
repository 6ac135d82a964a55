//! Routing between container subnets of different hosts: the host-gw ("direct") mode.
//! Each function returns the TC action; the one exit (`finish`) counts the outcome.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_redir_neigh},
    helpers::bpf_redirect_neigh,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netpath_common::{CONFIG_F_READY, Config, MODE_DIRECT, Reason, reason::Verdict};

use crate::{
    counters::{PeerDir, count, count_peer},
    maps::{CONFIG, PEERS},
    parse,
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
fn config() -> Result<&'static Config, Reason> {
    match CONFIG.get(0) {
        Some(c) if c.flags & CONFIG_F_READY != 0 => Ok(c),
        _ => Err(Reason::PassNoConfig),
    }
}

pub fn from_bridge(ctx: &TcContext) -> i32 {
    finish(ctx, try_from_bridge(ctx))
}

/// A container's packet to be routed. Local destinations (the host, its own subnet) and
/// unknown ones are the stack's; a direct peer's subnet is routed to the peer's underlay
/// address, the next hop's MAC filled in by the kernel's neighbour table
/// (bpf_redirect_neigh, which queues the packet while ARP resolves).
#[inline(always)]
fn try_from_bridge(ctx: &TcContext) -> Result<(i32, Reason), Reason> {
    let cfg = config()?;
    let ip = parse::ipv4(ctx)?;
    if ip.dst & cfg.subnet_mask == cfg.subnet_addr || ip.dst == cfg.host_addr {
        return Err(Reason::PassLocal);
    }
    let peer = PEERS
        .get(Key::new(32, ip.dst))
        .ok_or(Reason::PassUnknownDst)?;
    if peer.mode != MODE_DIRECT {
        return Err(Reason::PassUnsupportedMode);
    }
    if ip.hdr.ttl <= 1 {
        // The stack answers with time-exceeded if it forwards at all; we do not route it.
        return Err(Reason::PassTtlExpired);
    }
    parse::decrement_ttl(ip.hdr);
    count_peer(peer.id, PeerDir::Tx, ctx.len());
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: peer.underlay,
        },
    };
    // SAFETY: helper call with a valid pointer to a stack struct of the size passed.
    let action = unsafe {
        bpf_redirect_neigh(
            cfg.uplink_ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    Ok((action as i32, Reason::FwdDirect))
}

pub fn from_uplink(ctx: &TcContext) -> i32 {
    finish(ctx, try_from_uplink(ctx))
}

/// A packet from the underlay. Only what a direct peer's container sends to a local
/// container is ours: it is routed into the bridge (the kernel's FIB lookup and
/// neighbour table find the container's MAC). Everything else is the stack's.
#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<(i32, Reason), Reason> {
    let cfg = config()?;
    let ip = parse::ipv4(ctx)?;
    if ip.dst & cfg.subnet_mask != cfg.subnet_addr || ip.dst == cfg.gateway_addr {
        return Err(Reason::PassNotForUs);
    }
    let peer = PEERS
        .get(Key::new(32, ip.src))
        .ok_or(Reason::PassUnknownSrc)?;
    if peer.mode != MODE_DIRECT {
        // A tunnel peer's traffic must arrive in the tunnel, never in the clear.
        return Err(Reason::PassUnknownSrc);
    }
    if ip.hdr.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    parse::decrement_ttl(ip.hdr);
    count_peer(peer.id, PeerDir::Rx, ctx.len());
    // SAFETY: helper call; a null params pointer asks the kernel to do the FIB lookup.
    let action = unsafe { bpf_redirect_neigh(cfg.bridge_ifindex, core::ptr::null_mut(), 0, 0) };
    Ok((action as i32, Reason::FwdDeliver))
}
