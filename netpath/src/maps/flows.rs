//! The flow tables (`NP_CT`, `NP_NAT`) read and edited entry by entry: a flow's two
//! halves, its state and its timeout. Shared by the publish reconciler (a removed port
//! cuts its flows), the collector and the reports.

use anyhow::Result;
use netpath_common::{
    CT_F_FIN_CONTAINER, CT_F_FIN_REMOTE, CT_F_RST, CT_F_SEEN_CONTAINER, CT_F_SEEN_REMOTE, CtEntry,
    CtInfo, CtKey, IPPROTO_TCP, IPPROTO_UDP, NatKey,
};

use super::Maps;

/// Nanoseconds of CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

pub fn nat_key(k: &CtKey, e: &CtEntry) -> NatKey {
    NatKey {
        remote: k.remote,
        remote_port: k.remote_port,
        nat_port: e.nat_port,
        proto: k.proto,
        _pad: [0; 3],
    }
}

/// Removes both halves of a flow (either may already be gone).
pub fn remove_flow(maps: &mut Maps, k: &CtKey, e: &CtEntry) {
    let _ = maps.ct.remove(k);
    let nk = nat_key(k, e);
    if maps
        .nat
        .get(&nk, 0)
        .is_ok_and(|v| v.container == k.container && v.container_port == k.container_port)
    {
        let _ = maps.nat.remove(&nk);
    }
}

/// Every flow of the conntrack table (a snapshot: the datapath keeps changing it).
pub fn flows(maps: &Maps) -> Result<Vec<(CtKey, CtEntry)>> {
    let mut out = Vec::new();
    for item in maps.ct.iter() {
        match item {
            Ok(kv) => out.push(kv),
            // An entry removed while we walked: skip it.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// A flow's state, as its timeout sees it.
pub fn state(k: &CtKey, e: &CtEntry) -> &'static str {
    match k.proto {
        IPPROTO_TCP if e.flags & (CT_F_FIN_CONTAINER | CT_F_FIN_REMOTE | CT_F_RST) != 0 => {
            "closing"
        }
        IPPROTO_TCP
            if e.flags & (CT_F_SEEN_CONTAINER | CT_F_SEEN_REMOTE)
                == CT_F_SEEN_CONTAINER | CT_F_SEEN_REMOTE =>
        {
            "established"
        }
        IPPROTO_TCP => "syn",
        _ if e.flags & (CT_F_SEEN_CONTAINER | CT_F_SEEN_REMOTE)
            == CT_F_SEEN_CONTAINER | CT_F_SEEN_REMOTE =>
        {
            "replied"
        }
        _ => "unreplied",
    }
}

/// Seconds a flow in this state may stay idle.
pub fn timeout(c: &CtInfo, k: &CtKey, e: &CtEntry) -> u32 {
    match (k.proto, state(k, e)) {
        (IPPROTO_TCP, "closing") => c.tcp_closing,
        (IPPROTO_TCP, "established") => c.tcp_established,
        (IPPROTO_TCP, _) => c.tcp_syn,
        (IPPROTO_UDP, _) => c.udp,
        _ => c.icmp,
    }
}
