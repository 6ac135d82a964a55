//! The decision log (`netpath debug on [--match CIDR]`): each program's verdict on each
//! packet, through aya-log's ring buffer, read by `netpath monitor --debug`.
//! Off, it costs one read of `NP_DEBUG` per packet ([`start`]); on, a matching packet's
//! input tuple is kept and, at the program's exit, logged with the reason, the action,
//! the output tuple, the peer and the policy rule of its flow ([`decided`]).
//!
//! The record is a `DebugRecord` written as hex bytes (one aya-log argument: the
//! programs' stack has little room); netpath's reader decodes it and names the program,
//! reason, action, peer and rule.

use aya_ebpf::{EbpfContext, maps::lpm_trie::Key};
use aya_log_ebpf::info;
use netpath_common::{DEBUG_F_ON, DebugRecord, Reason};

use crate::{
    ct,
    maps::{CT, DEBUG, PEERS, UNDERLAY},
    parse::{self, Packet, Tuple},
};

/// At a program's entry: the input tuple when the log is on and the packet matches.
#[inline(always)]
pub fn start<P: Packet>(ctx: &P) -> Option<Tuple> {
    let d = DEBUG.get(0)?;
    if d.flags & DEBUG_F_ON == 0 {
        return None;
    }
    let t = parse::tuple(ctx)?;
    if d.match_mask != 0
        && t.src & d.match_mask != d.match_addr
        && t.dst & d.match_mask != d.match_addr
    {
        return None;
    }
    Some(t)
}

/// At a program's exit: logs what it decided about the packet `start` kept.
#[inline(always)]
pub fn decided<C: EbpfContext + Packet>(
    ctx: &C,
    seen: Option<Tuple>,
    prog: u8,
    reason: Reason,
    action: i32,
) {
    let Some(t) = seen else {
        return;
    };
    let out = parse::tuple(ctx).unwrap_or_default();
    // The peer: the one routed to, or the one it came from.
    let peer = match PEERS.get(Key::new(32, t.dst)) {
        Some(p) => p.id,
        // SAFETY: a hash map lookup; the value is copied out at once.
        None => unsafe { UNDERLAY.get(t.src) }.map_or(u32::MAX, |p| p.id),
    };
    // The rule of its flow, in either direction.
    let rule = [
        (t.src, t.dst, t.sport, t.dport),
        (t.dst, t.src, t.dport, t.sport),
    ]
    .iter()
    .find_map(|&(c, r, cp, rp)| {
        // SAFETY: a hash map lookup; the value is copied out at once.
        unsafe { CT.get(ct::ct_key(c, r, cp, rp, t.proto)) }.map(|e| e.rule)
    })
    .unwrap_or(u32::MAX);
    let rec = DebugRecord {
        prog,
        reason: reason as u8,
        proto: t.proto,
        action,
        src: t.src,
        dst: t.dst,
        sport: t.sport,
        dport: t.dport,
        out_src: out.src,
        out_dst: out.dst,
        out_sport: out.sport,
        out_dport: out.dport,
        peer,
        rule,
        ..DebugRecord::default()
    };
    info!(ctx, "np {:x}", bytemuck::bytes_of(&rec));
}
