//! The conntrack collector: the agent expires idle flows and removes the half of a flow
//! that the LRU left alone when it evicted the other.

use std::collections::HashSet;

use anyhow::Result;
use netpath_common::{CT_KIND_POLICY, CtInfo, CtKey, NatKey};

use crate::maps::{
    Maps,
    flows::{flows, monotonic_ns, nat_key, remove_flow, timeout},
};

#[derive(Debug, Default, Clone, Copy)]
pub struct Gc {
    pub expired: u64,
    pub orphans: u64,
    pub ct_entries: u32,
    pub nat_entries: u32,
}

/// Removes expired flows and orphaned halves; records the figures in `NP_CT_INFO`.
pub fn gc(maps: &mut Maps) -> Result<Gc> {
    let info = maps.ct_info.get(&0, 0)?;
    let now = monotonic_ns();
    let mut g = Gc::default();
    let mut live: HashSet<NatKey> = HashSet::new();
    for (k, e) in flows(maps)? {
        let idle = now.saturating_sub(e.last_seen_ns) / 1_000_000_000;
        let nk = nat_key(&k, &e);
        if idle > timeout(&info, &k, &e) as u64 {
            remove_flow(maps, &k, &e);
            g.expired += 1;
        } else if e.kind == CT_KIND_POLICY {
            // Policy's own record of a flow: it has no NAT half.
            g.ct_entries += 1;
        } else if maps.nat.get(&nk, 0).is_err() {
            // Its way back was evicted: the flow cannot work any more.
            let _ = maps.ct.remove(&k);
            g.orphans += 1;
        } else {
            live.insert(nk);
            g.ct_entries += 1;
        }
    }
    let mut stale = Vec::new();
    for item in maps.nat.iter() {
        let Ok((nk, v)) = item else { continue };
        if live.contains(&nk) {
            g.nat_entries += 1;
            continue;
        }
        // A reservation made after the walk above started has its CT half by now (the
        // datapath inserts NAT first, CT right after): check again before removing.
        let ck = CtKey {
            container: v.container,
            remote: nk.remote,
            container_port: v.container_port,
            remote_port: nk.remote_port,
            proto: nk.proto,
            _pad: [0; 3],
        };
        if maps.ct.get(&ck, 0).is_ok() {
            g.nat_entries += 1;
        } else {
            stale.push(nk);
        }
    }
    for nk in stale {
        if maps.nat.remove(&nk).is_ok() {
            g.orphans += 1;
        }
    }
    let info = CtInfo {
        last_gc_at: crate::maps::now(),
        expired: info.expired + g.expired,
        orphans: info.orphans + g.orphans,
        ct_entries: g.ct_entries,
        nat_entries: g.nat_entries,
        ..info
    };
    maps.ct_info.set(0, info, 0)?;
    Ok(g)
}
