//! Drop events for `netpath monitor`: every drop is counted (counters.rs); on top, up to
//! `NP_MONITOR.rate` drops per second and CPU are reported in the `NP_EVENTS` ring
//! buffer with their 5-tuple. Past the rate a drop costs one per-CPU increment
//! (`suppressed`), so a flood of bad packets cannot turn into a flood of events; a full
//! ring buffer (nobody reading) costs the same (`lost`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netpath_common::{DropEvent, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Reason};

use crate::{
    maps::{EVENT_LIMIT, EVENTS, MONITOR},
    parse::{ETH_LEN, ETH_P_IP_BE, Packet, ptr_at},
};

const NS_PER_S: u64 = 1_000_000_000;

/// Reports a drop of `reason` on interface `ifindex` (within the rate).
#[inline(always)]
pub fn dropped<P: Packet>(ctx: &P, reason: Reason, ifindex: u32, xdp: bool) {
    let Some(rate) = MONITOR.get(0).map(|m| m.rate) else {
        return;
    };
    let Some(limit) = EVENT_LIMIT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, no concurrent writer on this CPU while the program runs.
    let limit = unsafe { &mut *limit };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(limit.window_ns) >= NS_PER_S {
        limit.window_ns = now;
        limit.sent = 0;
    }
    if limit.sent >= rate {
        limit.suppressed += 1;
        return;
    }
    limit.sent += 1;
    let mut ev = DropEvent {
        ts_ns: now,
        reason: reason as u32,
        ifindex,
        len: ctx.len(),
        xdp: xdp as u8,
        ..DropEvent::default()
    };
    tuple(ctx, &mut ev);
    if EVENTS.output::<DropEvent>(&ev, 0).is_ok() {
        limit.emitted += 1;
    } else {
        limit.lost += 1;
    }
}

/// Fills the 5-tuple from the packet's IPv4 header and ports, where the packet has them.
#[inline(always)]
fn tuple<P: Packet>(ctx: &P, ev: &mut DropEvent) {
    let Some(proto) = ptr_at::<u16, P>(ctx, 12) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { *proto } != ETH_P_IP_BE {
        return;
    }
    let Some(ip) = ptr_at::<[u8; 20], P>(ctx, ETH_LEN) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    ev.proto = ip[9];
    ev.src = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    ev.dst = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    // Later fragments carry no ports.
    if ip[6] & 0x1f != 0 || ip[7] != 0 || !(20..=60).contains(&ihl) {
        return;
    }
    if !matches!(ev.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
        return;
    }
    let Some(l4) = ptr_at::<[u8; 4], P>(ctx, ETH_LEN + ihl) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at.
    let l4 = unsafe { &*l4 };
    ev.sport = u16::from_ne_bytes([l4[0], l4[1]]);
    ev.dport = u16::from_ne_bytes([l4[2], l4[3]]);
}
