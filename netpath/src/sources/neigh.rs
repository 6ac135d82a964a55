//! The kernel as a source: the local containers netpath delivers to straight
//! (`NP_ENDPOINTS`), learned from the bridge, with no per-container config. A container's
//! address and MAC come from the bridge's neighbour table (the host learns them from the
//! container's ARP for its gateway, or resolves them itself when it first forwards to
//! it), its port from the bridge's forwarding database (where the bridge learned that
//! MAC). The agent rereads both on every link or neighbour event.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use rtnetlink::packet_route::{
    AddressFamily,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};

use crate::state::{Endpoint, Network};

/// What the kernel says about the bridge: its neighbours (address, MAC, whether the entry
/// is usable) and forwarding database (MAC, port).
#[derive(Debug, Default, Clone)]
pub struct Bridge {
    /// Its ports' ifindexes.
    pub ports: Vec<u32>,
    /// IPv4 neighbours on the bridge: address, MAC (None while unresolved), usable.
    pub neighbours: Vec<(Ipv4Addr, Option<[u8; 6]>, bool)>,
    /// Learned (not local) forwarding entries: MAC, port.
    pub fdb: Vec<([u8; 6], u32)>,
}

/// Reads the bridge `bridge`'s neighbours and forwarding database (`ports`: its ports).
pub async fn read(handle: &rtnetlink::Handle, bridge: u32, ports: Vec<u32>) -> Result<Bridge> {
    let mut out = Bridge {
        ports,
        ..Bridge::default()
    };
    let mut neigh = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Some(m) = neigh.try_next().await.context("listing neighbours")? {
        if m.header.ifindex != bridge {
            continue;
        }
        let Some(addr) = m
            .attributes
            .iter()
            .find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(a),
                _ => None,
            })
            .copied()
        else {
            continue;
        };
        let usable = matches!(
            m.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        out.neighbours.push((addr, lladdr(&m), usable));
    }
    let mut fdb = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(m) = fdb
        .try_next()
        .await
        .context("listing the bridge's forwarding database")?
    {
        let on_bridge = m
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::Controller(c) if *c == bridge));
        if !on_bridge || m.header.state == NeighbourState::Permanent {
            // Another bridge's, or a port's own address.
            continue;
        }
        if let Some(mac) = lladdr(&m) {
            out.fdb.push((mac, m.header.ifindex));
        }
    }
    Ok(out)
}

fn lladdr(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => b.as_slice().try_into().ok(),
        _ => None,
    })
}

/// The local containers as the kernel shows them: every usable neighbour of the bridge
/// with a container address of the bridge's network `net` and a unicast MAC, on the port where the
/// bridge learned that MAC. The bridge forgets a MAC it no longer sees (300 s), and
/// traffic that netpath delivers straight never passes it: an endpoint in `known` (the
/// map now) keeps its port while that port exists and the neighbour still has that MAC.
/// A neighbour that failed, or that has another MAC, ends it.
pub fn endpoints(net: &Network, b: &Bridge, known: &BTreeMap<Ipv4Addr, Endpoint>) -> Vec<Endpoint> {
    let container = |a: Ipv4Addr| net.holds_container(a);
    // Indexed once: with 5,000 containers a walk of the ports and the fdb per neighbour
    // was 50 million comparisons per event.
    let ports: foldhash::HashSet<u32> = b.ports.iter().copied().collect();
    let mut port_of: foldhash::HashMap<[u8; 6], u32> = Default::default();
    for (m, port) in &b.fdb {
        if ports.contains(port) {
            // The first entry of a MAC on a port wins, as the walk had it.
            port_of.entry(*m).or_insert(*port);
        }
    }
    let mut out = BTreeMap::new();
    for &(addr, mac, usable) in &b.neighbours {
        let Some(mac) = mac else { continue };
        if !usable || !container(addr) || mac[0] & 1 != 0 || mac == [0; 6] {
            continue;
        }
        let learned = port_of.get(&mac).copied();
        let kept = known
            .get(&addr)
            .filter(|e| e.mac == mac && ports.contains(&e.ifindex))
            .map(|e| e.ifindex);
        if let Some(ifindex) = learned.or(kept) {
            out.insert(addr, Endpoint { addr, ifindex, mac });
        }
    }
    // A known endpoint whose neighbour entry the kernel dropped (it collects unused ones
    // once it holds many) stays while its port does.
    let seen: foldhash::HashSet<Ipv4Addr> = b.neighbours.iter().map(|(a, _, _)| *a).collect();
    for (addr, e) in known {
        if !seen.contains(addr) && container(*addr) && ports.contains(&e.ifindex) {
            out.entry(*addr).or_insert(*e);
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Host;

    fn host() -> Host {
        Host {
            name: "h".into(),
            uplink: "up".into(),
            uplink_ifindex: 1,
            bridge: "br".into(),
            bridge_ifindex: 2,
            subnet: "10.244.1.0/24".parse().unwrap(),
            address: "198.18.0.10".parse().unwrap(),
            gateway: Some("10.244.1.1".parse().unwrap()),
            bridge_subnet: "10.244.1.0/24".parse().unwrap(),
            vni: 42,
            xdp: crate::state::XdpMode::Off,
            vxlan_port: 4789,
            vtep_mac: [2, 0, 0, 0, 0, 9],
            uplink_mtu: 1500,
            bridge_mac: [2, 0, 0, 0, 0, 2],
            masquerade: false,
            masquerade_ports: (32768, 60999),
        }
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ep(addr: &str, ifindex: u32, mac: [u8; 6]) -> Endpoint {
        Endpoint {
            addr: ip(addr),
            ifindex,
            mac,
        }
    }

    #[test]
    fn a_neighbour_is_an_endpoint_on_the_port_that_learned_its_mac() {
        let b = Bridge {
            ports: vec![10, 11],
            neighbours: vec![
                (ip("10.244.1.2"), Some(A), true),
                (ip("10.244.1.3"), Some(B), true),
                // Unresolved, failed, outside the subnet, the gateway, multicast: none.
                (ip("10.244.1.4"), None, false),
                (ip("10.244.1.5"), Some([2, 0, 0, 0, 0, 5]), false),
                (ip("10.244.2.2"), Some(A), true),
                (ip("10.244.1.1"), Some(A), true),
                (ip("10.244.1.6"), Some([1, 0, 0x5e, 0, 0, 1]), true),
                // No forwarding entry and not known: its port is unknown.
                (ip("10.244.1.7"), Some([2, 0, 0, 0, 0, 7]), true),
            ],
            fdb: vec![(A, 10), (B, 11), ([2, 0, 0, 0, 0, 5], 11)],
        };
        assert_eq!(
            endpoints(&Network::of_host(&host()), &b, &BTreeMap::new()),
            vec![ep("10.244.1.2", 10, A), ep("10.244.1.3", 11, B)]
        );
    }

    #[test]
    fn a_known_endpoint_outlives_the_bridge_forgetting_its_mac_but_not_its_port() {
        let known: BTreeMap<_, _> = [ep("10.244.1.2", 10, A), ep("10.244.1.3", 11, B)]
            .into_iter()
            .map(|e| (e.addr, e))
            .collect();
        // The forwarding entries aged out; port 11 is gone.
        let b = Bridge {
            ports: vec![10],
            neighbours: vec![
                (ip("10.244.1.2"), Some(A), true),
                (ip("10.244.1.3"), Some(B), true),
            ],
            fdb: vec![],
        };
        assert_eq!(
            endpoints(&Network::of_host(&host()), &b, &known),
            vec![ep("10.244.1.2", 10, A)]
        );
        // The neighbour entry was collected: the endpoint stays while its port does.
        let b = Bridge {
            ports: vec![10, 11],
            neighbours: vec![],
            fdb: vec![],
        };
        assert_eq!(endpoints(&Network::of_host(&host()), &b, &known).len(), 2);
        // A failed neighbour, or the address now at another MAC (a new container), ends it.
        let b = Bridge {
            ports: vec![10, 11],
            neighbours: vec![
                (ip("10.244.1.2"), Some(A), false),
                (ip("10.244.1.3"), Some(A), true),
            ],
            fdb: vec![(A, 10)],
        };
        assert_eq!(
            endpoints(&Network::of_host(&host()), &b, &known),
            vec![ep("10.244.1.3", 10, A)]
        );
    }

    #[test]
    fn a_macs_first_forwarding_entry_on_a_port_is_its_port() {
        // A on the uplink (not a port) first, then on 11, then on 10: 11. B only on a
        // port that left: not learned.
        let b = Bridge {
            ports: vec![10, 11],
            neighbours: vec![
                (ip("10.244.1.2"), Some(A), true),
                (ip("10.244.1.3"), Some(B), true),
            ],
            fdb: vec![(A, 1), (A, 11), (A, 10), (B, 12)],
        };
        assert_eq!(
            endpoints(&Network::of_host(&host()), &b, &BTreeMap::new()),
            vec![ep("10.244.1.2", 11, A)]
        );
    }
}
