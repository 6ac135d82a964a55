//! The routes of containers of networks across hosts that live on peers: one /32 of
//! `NP_PEERS` each, marked `PEER_F_ENDPOINT`, with its host's underlay, slot and VTEP MAC
//! and the network's mode. The programs route a network's packets along them, answer its
//! containers' ARP for them, and keep every other network from them (forward.rs, arp.rs).
//!
//! Level-triggered like the peers' reconciler, whose slots it takes once that is done: a
//! route of a peer that is gone, or of a container that went, is removed; a write that
//! fails undoes the writes before it.

use std::collections::HashMap;

use anyhow::Result;
use aya::maps::lpm_trie::Key;
use netpath_common::{PEER_F_ENDPOINT, PeerInfo, PeerValue, addr_to_be};

use super::{Undo, fault, peers::value_of};
use crate::{maps::Maps, state::Remote};

/// What a reconcile of the remote containers' routes changed (counts).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoteChanges {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Desired routes whose host is no peer (yet): left out.
    pub unrouted: usize,
    /// Routes there are now (when the reconcile succeeded).
    pub routed: usize,
}

impl RemoteChanges {
    pub fn is_empty(&self) -> bool {
        self.added + self.updated + self.removed == 0
    }
}

/// The route a remote container `r` must have, given the peers' slots by name.
fn value(r: &Remote, slots: &HashMap<&str, (u32, &PeerInfo)>) -> Option<PeerValue> {
    let (id, info) = slots.get(r.host.as_str())?;
    Some(PeerValue {
        mode: r.mode.to_map(),
        flags: PEER_F_ENDPOINT,
        ..value_of(*id, info)
    })
}

/// The remote containers' routes in the map now, by address (network byte order).
pub fn installed(maps: &Maps) -> Result<super::peers::Fast<u32, PeerValue>> {
    Ok(super::peers::routes(maps)?.1)
}

/// Makes the remote containers' routes say `desired` (with the peers' `slots` as the
/// peers' reconcile left them), from the routes there are `now` (read with the
/// peers' routes, [`super::peers::read`], or the agent's copy). On success `now` holds the
/// routes there are after; on an error nothing has changed in the map.
pub fn reconcile(
    maps: &mut Maps,
    desired: &[Remote],
    slots: &[(u32, PeerInfo)],
    now: &mut super::peers::Fast<u32, PeerValue>,
) -> Result<RemoteChanges> {
    let mut changes = RemoteChanges::default();
    // Only made when there are containers to route (an etcd event of a fleet without
    // networks across hosts pays nothing for it).
    let slots: HashMap<&str, (u32, &PeerInfo)> = if desired.is_empty() {
        HashMap::new()
    } else {
        slots
            .iter()
            .map(|(id, i)| (netpath_common::name_str(&i.name), (*id, i)))
            .collect()
    };
    let mut want = super::peers::Fast::<u32, PeerValue>::default();
    for r in desired {
        match value(r, &slots) {
            Some(v) => {
                want.insert(addr_to_be(r.addr.octets()), v);
            }
            None => changes.unrouted += 1,
        }
    }
    let mut undo = Undo::default();
    let result = (|| -> Result<()> {
        for (addr, v) in &want {
            let old = now.get(addr);
            if old == Some(v) {
                continue;
            }
            if old.is_some() {
                changes.updated += 1;
            } else {
                changes.added += 1;
            }
            let key = Key::new(32, *addr);
            fault::write()?;
            undo.route(key, maps.peers.get(&key, 0).ok());
            maps.peers.insert(&key, *v, 0)?;
        }
        for (addr, old) in now.iter() {
            if want.contains_key(addr) {
                continue;
            }
            let key = Key::new(32, *addr);
            fault::write()?;
            undo.route(key, Some(*old));
            maps.peers.remove(&key)?;
            changes.removed += 1;
        }
        Ok(())
    })();
    if let Err(e) = result {
        undo.run(maps);
        return Err(e.context(
            "updating the routes of containers on other hosts (the previous ones are restored)",
        ));
    }
    changes.routed = want.len();
    *now = want;
    Ok(changes)
}
