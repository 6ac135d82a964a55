//! The endpoints reconciler: `NP_ENDPOINTS`, the local containers netpath delivers to
//! straight (address -> host-side veth, MAC). The desired set comes from the bridge's
//! neighbours (sources::neigh), not from the config: every entry the map holds is the
//! kernel's, and one that the kernel no longer shows goes.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;
use netpath_common::addr_to_be;

use super::{Undo, fault};
use crate::{
    maps::{Maps, addr_of},
    state::Endpoint,
};

/// What a reconcile of the endpoints changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EndpointChanges {
    pub added: Vec<Ipv4Addr>,
    pub updated: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

impl EndpointChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// The endpoints in `NP_ENDPOINTS`, by address.
pub fn observe(maps: &Maps) -> Result<BTreeMap<Ipv4Addr, Endpoint>> {
    let mut out = BTreeMap::new();
    for item in maps.endpoints.iter() {
        let (addr, v) = item?;
        let addr = addr_of(addr);
        out.insert(
            addr,
            Endpoint {
                addr,
                ifindex: v.ifindex,
                mac: v.mac,
            },
        );
    }
    Ok(out)
}

fn value(e: &Endpoint) -> netpath_common::Endpoint {
    netpath_common::Endpoint {
        ifindex: e.ifindex,
        mac: e.mac,
        _pad: [0; 2],
    }
}

/// Makes `NP_ENDPOINTS` hold exactly `desired` (`installed`: what it holds, from
/// [`observe`]). Adds and updates before it removes; a failed write undoes the ones
/// before it.
pub fn reconcile(
    maps: &mut Maps,
    installed: &BTreeMap<Ipv4Addr, Endpoint>,
    desired: &[Endpoint],
) -> Result<EndpointChanges> {
    let mut changes = EndpointChanges::default();
    let mut undo = Undo::default();
    let want: BTreeMap<Ipv4Addr, &Endpoint> = desired.iter().map(|e| (e.addr, e)).collect();
    let result = (|| -> Result<()> {
        for (addr, e) in &want {
            let old = installed.get(addr);
            if old == Some(*e) {
                continue;
            }
            let key = addr_to_be(addr.octets());
            fault::write()?;
            maps.endpoints.insert(key, value(e), 0)?;
            undo.endpoint(key, old.map(value));
            match old {
                Some(_) => changes.updated.push(*addr),
                None => changes.added.push(*addr),
            }
        }
        for (addr, old) in installed {
            if want.contains_key(addr) {
                continue;
            }
            let key = addr_to_be(addr.octets());
            fault::write()?;
            maps.endpoints.remove(&key)?;
            undo.endpoint(key, Some(value(old)));
            changes.removed.push(*addr);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(changes),
        Err(e) => {
            undo.run(maps);
            Err(e)
        }
    }
}
