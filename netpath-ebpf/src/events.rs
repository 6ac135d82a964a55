//! Drop events for `netpath monitor`: every drop is counted (counters.rs); on top, up to
//! `NP_MONITOR.rate` drops per second and CPU are reported in the `NP_EVENTS` ring
//! buffer with their 5-tuple. Past the rate a drop costs one per-CPU increment
//! (`suppressed`), so a flood of bad packets cannot turn into a flood of events; a full
//! ring buffer (nobody reading) costs the same (`lost`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netpath_common::{DropEvent, Reason};

use crate::{
    maps::{EVENT_LIMIT, EVENTS, MONITOR},
    parse::{self, Packet},
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
    let Some(t) = parse::tuple(ctx) else {
        return;
    };
    ev.proto = t.proto;
    ev.src = t.src;
    ev.dst = t.dst;
    ev.sport = t.sport;
    ev.dport = t.dport;
}
