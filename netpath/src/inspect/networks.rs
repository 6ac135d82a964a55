//! The host's container networks as the pinned maps hold them (`netpath network list`,
//! `dump networks`), and the network of a container address (`dump endpoints`, `status`,
//! `trace`, the metrics).

use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{maps::Maps, reconcile, state::Network};

/// A network of the host, for operators.
#[derive(Debug, Serialize)]
pub struct NetworkRow {
    pub network: String,
    pub bridge: String,
    pub subnet: String,
    pub gateway: Option<Ipv4Addr>,
    /// `config` (the `[host].bridge`) or `docker`.
    pub origin: &'static str,
    /// Docker's network id (12 hex digits), when Docker has the network.
    pub docker_id: Option<String>,
    pub internal: bool,
    /// Whether its containers' traffic to the outside is masqueraded: the network's
    /// option (Docker's `enable_ip_masquerade`) and the host's `masquerade` both on.
    pub masquerade: bool,
    /// Whether the subnet lies inside the host's (what peers route here): containers of
    /// a network outside it are not reachable from other hosts.
    pub reachable_from_peers: bool,
    /// Local containers netpath delivers to on it (its endpoints).
    pub containers: usize,
    /// A network across hosts (`netpath network create`): its mode and VNI.
    pub across_hosts: Option<Across>,
}

/// What a network across hosts adds to its row.
#[derive(Debug, Serialize)]
pub struct Across {
    pub mode: String,
    pub vni: u32,
    /// Its containers on other hosts that this host routes to.
    pub remote_containers: usize,
}

/// The networks of the running datapath, sorted by origin (the `[host].bridge` first),
/// then by name.
pub fn rows(maps: &Maps) -> Result<Vec<NetworkRow>> {
    let nets = reconcile::networks::observe(maps)?;
    let range = maps.subnet()?;
    let endpoints = reconcile::endpoints::observe(maps)?;
    let host_masquerades = maps.config()?.flags & netpath_common::CONFIG_F_MASQUERADE != 0;
    let remote = reconcile::remote::installed(maps)?;
    let mut rows: Vec<NetworkRow> = nets
        .iter()
        .map(|n| NetworkRow {
            network: n.name.clone(),
            bridge: n.bridge.clone(),
            subnet: n.subnet.to_string(),
            gateway: n.gateway,
            origin: n.origin.as_str(),
            docker_id: (!n.docker_id.is_empty()).then(|| n.docker_id.clone()),
            internal: n.internal,
            masquerade: n.masquerade && host_masquerades,
            reachable_from_peers: range.contains(&n.subnet) || n.span.is_some(),
            across_hosts: n.span.map(|s| Across {
                mode: s.mode.to_string(),
                vni: s.vni,
                remote_containers: remote
                    .keys()
                    .filter(|a| n.subnet.contains(&crate::maps::addr_of(**a)))
                    .count(),
            }),
            containers: endpoints
                .keys()
                .filter(|a| {
                    crate::state::network_of(&nets, **a).map(|m| m.subnet) == Some(n.subnet)
                })
                .count(),
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.origin != "config", &a.network).cmp(&(b.origin != "config", &b.network))
    });
    Ok(rows)
}

/// The table `network list` prints.
pub fn table(rows: &Vec<NetworkRow>) -> String {
    let mut out = format!(
        "{:<24} {:<16} {:<18} {:<8} {:<10} {:>10}  {}\n",
        "NETWORK", "BRIDGE", "SUBNET", "ORIGIN", "OUT", "CONTAINERS", "NOTE"
    );
    for r in rows {
        let out_way = if r.internal {
            "internal"
        } else if r.masquerade {
            "masq"
        } else {
            "routed"
        };
        let note = if let Some(a) = &r.across_hosts {
            format!(
                "across hosts ({}, vni {}): {} containers on other hosts",
                a.mode, a.vni, a.remote_containers
            )
        } else if r.reachable_from_peers {
            String::new()
        } else {
            "outside the host's subnet: not reachable from other hosts".to_owned()
        };
        let line = format!(
            "{:<24} {:<16} {:<18} {:<8} {:<10} {:>10}  {note}",
            r.network, r.bridge, r.subnet, r.origin, out_way, r.containers
        );
        out += line.trim_end();
        out += "\n";
    }
    out
}

/// The networks of the running datapath whose subnet lies outside the host's: each with
/// what to do (`status`, `doctor`).
pub fn outside(nets: &[Network], range: Ipv4Net) -> Vec<String> {
    nets.iter()
        .filter(|n| !range.contains(&n.subnet) && n.span.is_none())
        .map(|n| {
            format!(
                "network {} ({} on {}) lies outside this host's subnet {range}: its containers reach the outside and this host's other networks, but no other host routes to it. Recreate it inside the subnet (`docker network create --subnet` from `netpath subnet`'s pools, or let Docker pick from default-address-pools)",
                n.name, n.subnet, n.bridge
            )
        })
        .collect()
}

/// The name of the network `addr` is on, among `nets`.
pub fn name_of(nets: &[Network], addr: Ipv4Addr) -> Option<String> {
    crate::state::network_of(nets, addr).map(|n| n.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Origin;

    fn net(name: &str, subnet: &str) -> Network {
        Network {
            name: name.into(),
            docker_id: String::new(),
            bridge: format!("br-{name}"),
            bridge_ifindex: 1,
            bridge_mac: [2, 0, 0, 0, 0, 1],
            subnet: subnet.parse().unwrap(),
            gateway: None,
            internal: false,
            masquerade: true,
            origin: Origin::Docker,
            span: None,
        }
    }

    #[test]
    fn a_network_outside_the_hosts_subnet_is_named_with_the_fix() {
        let range: Ipv4Net = "10.244.16.0/20".parse().unwrap();
        let nets = [net("in", "10.244.17.0/24"), net("out", "172.30.0.0/16")];
        let found = outside(&nets, range);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("network out (172.30.0.0/16 on br-out)"),
            "{found:?}"
        );
        assert!(found[0].contains("no other host routes to it"), "{found:?}");
        assert_eq!(
            name_of(&nets, "10.244.17.9".parse().unwrap()).as_deref(),
            Some("in")
        );
        assert_eq!(name_of(&nets, "10.244.18.9".parse().unwrap()), None);
    }
}
