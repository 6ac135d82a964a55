//! The networks reconciler: `NP_NETWORKS`, the host's container networks by subnet (the
//! `[host].bridge` and Docker's other bridge networks), as the programs look them up for
//! isolation, delivery, internal networks and masquerade.

use anyhow::Result;
use aya::maps::lpm_trie::Key;
use netpath_common::{
    NET_F_INTERNAL, NET_F_MASQUERADE, NET_F_SPANS, NET_F_VXLAN, NET_VNI_SHIFT, addr_to_be,
    name_bytes, name_str,
};

use super::{Undo, fault};
use crate::{
    maps::{Maps, addr_of, net_key},
    state::{Mode, Network, Origin, Span},
};

/// What a reconcile of the networks changed (names).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetworkChanges {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
}

impl NetworkChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// The map's value for `n`.
pub fn value(n: &Network) -> netpath_common::Network {
    netpath_common::Network {
        bridge_ifindex: n.bridge_ifindex,
        gateway_addr: n.gateway.map_or(0, |g| addr_to_be(g.octets())),
        flags: if n.masquerade { NET_F_MASQUERADE } else { 0 }
            | if n.internal { NET_F_INTERNAL } else { 0 }
            | match n.span {
                None => 0,
                Some(s) => {
                    NET_F_SPANS
                        | (s.vni << NET_VNI_SHIFT)
                        | if s.mode == Mode::Vxlan {
                            NET_F_VXLAN
                        } else {
                            0
                        }
                }
            },
        bridge_mac: n.bridge_mac,
        origin: n.origin.to_map(),
        prefix_len: n.subnet.prefix_len(),
        name: name_bytes(&n.name),
        bridge: name_bytes(&n.bridge),
        docker_id: name_bytes(&n.docker_id),
    }
}

/// The network an entry of the map says (None for a key or value that is not one).
fn network(key: &Key<u32>, v: &netpath_common::Network) -> Option<Network> {
    let subnet = ipnet::Ipv4Net::new(addr_of(key.data()), key.prefix_len() as u8).ok()?;
    Some(Network {
        name: name_str(&v.name).to_owned(),
        docker_id: name_str(&v.docker_id).to_owned(),
        bridge: name_str(&v.bridge).to_owned(),
        bridge_ifindex: v.bridge_ifindex,
        bridge_mac: v.bridge_mac,
        subnet,
        gateway: (v.gateway_addr != 0).then(|| addr_of(v.gateway_addr)),
        internal: v.flags & NET_F_INTERNAL != 0,
        masquerade: v.flags & NET_F_MASQUERADE != 0,
        origin: Origin::from_map(v.origin),
        span: (v.flags & NET_F_SPANS != 0).then_some(Span {
            vni: v.flags >> NET_VNI_SHIFT,
            mode: if v.flags & NET_F_VXLAN != 0 {
                Mode::Vxlan
            } else {
                Mode::Direct
            },
        }),
    })
}

/// The networks in `NP_NETWORKS`, by subnet.
pub fn observe(maps: &Maps) -> Result<Vec<Network>> {
    let mut out = Vec::new();
    for item in maps.networks.iter() {
        let (k, v) = item?;
        out.extend(network(&k, &v));
    }
    out.sort_by_key(|n| (n.subnet.network(), n.subnet.prefix_len()));
    Ok(out)
}

/// Makes `NP_NETWORKS` hold exactly `desired` (`installed`: what it holds, from
/// [`observe`]). Adds and updates before it removes; a failed write undoes the ones
/// before it.
pub fn reconcile(
    maps: &mut Maps,
    installed: &[Network],
    desired: &[Network],
) -> Result<NetworkChanges> {
    let mut changes = NetworkChanges::default();
    let mut undo = Undo::default();
    let result = (|| -> Result<()> {
        for n in desired {
            let old = installed.iter().find(|o| o.subnet == n.subnet);
            if old == Some(n) {
                continue;
            }
            let key = net_key(n.subnet);
            fault::write()?;
            maps.networks.insert(&key, value(n), 0)?;
            undo.network(net_key(n.subnet), old.map(value));
            match old {
                Some(_) => changes.updated.push(n.name.clone()),
                None => changes.added.push(n.name.clone()),
            }
        }
        for o in installed {
            if desired.iter().any(|n| n.subnet == o.subnet) {
                continue;
            }
            fault::write()?;
            maps.networks.remove(&net_key(o.subnet))?;
            undo.network(net_key(o.subnet), Some(value(o)));
            changes.removed.push(o.name.clone());
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
