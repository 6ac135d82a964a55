//! Early VXLAN decap in XDP on the uplink (`xdp = "native" | "generic"`).
//!
//! Tunnel packets are checked here with the same code as in TC (vxlan::check); forged ones
//! are dropped before the stack allocates anything for them, good ones are stripped of
//! their outer headers and handed on with XDP metadata naming the sending peer. The TC
//! program on the uplink finishes the job (TTL, MSS clamp, delivery) and counts it as
//! `fwd-vxlan-decap-xdp`. Everything else passes untouched and uncounted, so that TC
//! counts each packet once. When the driver has no room for metadata, the packet passes
//! whole and TC decapsulates it.
//!
//! Some kernels refuse `bpf_xdp_adjust_meta` to XDP programs altogether (the verifier:
//! "program of this type cannot use helper"). For them the object has a second entry,
//! np_xdp_check: the same checks and drops, no metadata and no decap; every good tunnel
//! packet passes whole and TC decapsulates it (the agent loads it when the first is
//! refused, and says so).

use crate::{counters::count, debug, events, maps, parse, vxlan};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_adjust_meta,
    programs::{TcContext, XdpContext},
};
use netpath_common::PROG_XDP_UPLINK;

/// The metadata XDP puts in front of a packet it decapsulated.
#[repr(C)]
struct Meta {
    magic: u32,
    peer_id: u32,
}

/// "NPXD": set by this program only (only XDP programs write metadata).
const MAGIC: u32 = 0x4e50_5844;
const META_LEN: i32 = core::mem::size_of::<Meta>() as i32;

/// The XDP program; `DECAP`: strip good tunnel packets and name their peer in the
/// metadata (np_xdp_uplink), or leave them whole (np_xdp_check).
#[inline(always)]
pub fn from_uplink<const DECAP: bool>(ctx: &XdpContext) -> u32 {
    let Ok(cfg) = maps::config() else {
        return XDP_PASS;
    };
    let Ok(ip) = parse::ipv4(ctx) else {
        // TC sees it next and counts it.
        return XDP_PASS;
    };
    if !vxlan::is_tunnel(ctx, cfg, &ip) {
        return XDP_PASS;
    }
    let peer_id = match vxlan::check(ctx, cfg, &ip) {
        Ok(id) => id,
        Err(reason) => {
            count(reason, parse::Packet::len(ctx));
            // SAFETY: reading a field of the program's own xdp_md.
            let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
            events::dropped(ctx, reason, ifindex, true);
            // Logged only when dropped: what XDP passes, np_from_uplink logs.
            let seen = debug::start(ctx);
            debug::decided(ctx, seen, PROG_XDP_UPLINK, reason, XDP_DROP as i32);
            return XDP_DROP;
        }
    };
    if !DECAP {
        return XDP_PASS;
    }
    // SAFETY: helper on the program's own xdp_buff.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -META_LEN) } != 0 {
        return XDP_PASS;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + META_LEN as usize > data {
        return XDP_PASS;
    }
    // SAFETY: bounds checked against data just above.
    unsafe {
        *(meta as *mut Meta) = Meta {
            magic: MAGIC,
            peer_id,
        };
    }
    if vxlan::strip_xdp(ctx).is_err() {
        // Nothing stripped: take the metadata back, TC decapsulates.
        // SAFETY: as above.
        unsafe { bpf_xdp_adjust_meta(ctx.ctx, META_LEN) };
    }
    XDP_PASS
}

/// In TC: the peer that sent this packet, if XDP decapsulated it.
#[inline(always)]
pub fn decapped(ctx: &TcContext) -> Option<u32> {
    // SAFETY: reading a field of the program's own skb.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    if meta + META_LEN as usize > ctx.data() {
        return None;
    }
    // SAFETY: bounds checked against data just above.
    let m = unsafe { &*(meta as *const Meta) };
    (m.magic == MAGIC).then_some(m.peer_id)
}
