//! Counting: every program run ends in exactly one `count` call (see forward.rs).

use netpath_common::{Counter, PeerStats, Reason};

use crate::maps::{COUNTERS, PEER_STATS, POLICY_STATS};

#[inline(always)]
fn add(c: *mut Counter, bytes: u32) {
    // SAFETY: per-CPU value, no concurrent writer on this CPU while the program runs.
    unsafe {
        (*c).packets += 1;
        (*c).bytes += bytes as u64;
    }
}

/// Counts one packet of `bytes` under `reason`.
#[inline(always)]
pub fn count(reason: Reason, bytes: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(reason as u32) {
        add(c, bytes);
    }
}

/// Direction of a packet relative to a peer.
#[derive(Clone, Copy)]
pub enum PeerDir {
    Tx,
    Rx,
}

/// Counts one packet sent to (`Tx`) or received from (`Rx`) the peer with index `id`.
#[inline(always)]
pub fn count_peer(id: u32, dir: PeerDir, bytes: u32) {
    if let Some(s) = PEER_STATS.get_ptr_mut(id) {
        let s: *mut PeerStats = s;
        // SAFETY: as in `add`; the field pointers stay inside the map value.
        unsafe {
            match dir {
                PeerDir::Tx => add(&raw mut (*s).tx, bytes),
                PeerDir::Rx => add(&raw mut (*s).rx, bytes),
            }
        }
    }
}

/// Counts one packet of `bytes` under policy rule `rule` (0: the default action).
#[inline(always)]
pub fn count_rule(rule: u32, bytes: u32) {
    if let Some(c) = POLICY_STATS.get_ptr_mut(rule) {
        add(c, bytes);
    }
}
