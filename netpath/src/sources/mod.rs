//! Sources of the desired state. Each produces its part of one state::Desired:
//! - [`file`]: the config file (the host, and its peers, ports and policy);
//! - [`neigh`]: the local containers (endpoints), from the bridge's neighbours;
//! - [`cli`]: what `netpath peer|publish|policy add` added to the running datapath,
//!   read back from the pinned maps, where each entry carries its origin;
//! - [`etcd`]: the other hosts of the fleet, registered in etcd (`[etcd]`): from the
//!   pinned maps until etcd answers, then from etcd's listing and watch;
//! - [`docker`]: the host's bridge networks, and the ports Docker publishes for its
//!   running containers (`[docker]`): from the pinned maps until the engine answers,
//!   then from its listings.
//!
//! [`desired`] merges them. Where two sources say something of the same thing, the rule
//! is this, and only here:
//! - **the config file wins** over a CLI entry of the same identity: a peer of the same
//!   name, a port of the same protocol and number, a rule that matches the same packets.
//!   The CLI entry is replaced (counted in [`Merge::replaced_cli`]);
//! - a CLI entry that does not fit beside the config otherwise (a peer whose subnet or
//!   underlay another peer now has, a port whose container left the subnet, a rule naming
//!   a group the config no longer defines) is an error that names the entry and how to
//!   remove it: nothing is changed until the operator decides;
//! - **etcd comes last**: a peer from etcd whose name, subnet or underlay the config or a
//!   CLI entry (or an earlier etcd entry) already has is skipped and logged, never an
//!   error: another host's registration cannot stop this one;
//! - **Docker's ports come after the config's and the CLI's**: a port of the same
//!   protocol and number as one of theirs (or of an earlier container), or one whose
//!   container is not on a network of this host, is refused for that container and
//!   logged, never an error: the others are served;
//! - **the networks**: the `[host].bridge` is always the first; Docker's network on that
//!   bridge (docker0's "bridge") lends it its name and options; another network whose
//!   bridge or subnet an earlier one has is skipped and logged.

pub mod cli;
pub mod docker;
pub mod etcd;
pub mod file;
pub mod fleetnet;
pub mod neigh;

use std::collections::HashSet;

use anyhow::{Result, bail};

use crate::state::{
    Desired, DesiredPeers, DesiredPolicy, DesiredRule, Origin, Owned, Peer, Publish, check_publish,
    policy::{Endpoint, Rule},
};
use file::Config;

/// What a source says: peers, published ports, policy rules (with the id each must keep,
/// where it has one).
#[derive(Debug, Default, Clone)]
pub struct Part {
    pub peers: Vec<Peer>,
    pub publish: Vec<Publish>,
    pub rules: Vec<(Option<u32>, Rule)>,
}

/// Counts of peers, ports and rules.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub peers: usize,
    pub publish: usize,
    pub rules: usize,
}

/// How the CLI's and etcd's entries fared in a merge, for the agent's log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Merge {
    /// CLI entries in the desired state.
    pub kept_cli: Counts,
    /// CLI entries the config now defines (the config's replace them).
    pub replaced_cli: Counts,
    /// Peers from etcd in the desired state.
    pub kept_etcd: usize,
    /// Peers from etcd left out, each with why (a name, subnet or underlay that the
    /// config, a CLI entry or another etcd entry has): another host's registration never
    /// stops this one, it is logged and skipped.
    pub skipped_etcd: Vec<String>,
    /// Docker's ports in the desired state.
    pub kept_docker: usize,
    /// Docker's ports refused, each with why.
    pub skipped_docker: Vec<String>,
    /// Docker's networks left out, each with why.
    pub skipped_networks: Vec<String>,
}

/// The host's networks: the `[host].bridge` first (with the name and options of the
/// Docker network on it), then Docker's others (`docker`, sorted); one whose bridge or
/// subnet an earlier network has is skipped with why.
pub fn networks(
    h: &crate::state::Host,
    docker: &[crate::state::Network],
) -> (Vec<crate::state::Network>, Vec<String>) {
    let mut own = crate::state::Network::of_host(h);
    let mut out: Vec<crate::state::Network> = Vec::new();
    let mut skipped = Vec::new();
    for n in docker {
        if n.bridge_ifindex == own.bridge_ifindex {
            own.name = n.name.clone();
            own.docker_id = n.docker_id.clone();
            own.masquerade = n.masquerade;
            continue;
        }
        if let Some(o) = std::iter::once(&own)
            .chain(&out)
            .find(|o| o.subnet == n.subnet || o.bridge_ifindex == n.bridge_ifindex)
        {
            skipped.push(format!(
                "network {} ({} on {}): network {} has that subnet or bridge",
                n.name, n.subnet, n.bridge, o.name
            ));
            continue;
        }
        out.push(n.clone());
    }
    out.insert(0, own);
    (out, skipped)
}

/// The desired state: the config file `cfg` with the live CLI entries `cli`, the other
/// hosts registered in etcd and the ports Docker publishes (see the module's precedence
/// rule).
pub fn desired(
    cfg: &Config,
    cli: &Part,
    etcd: &[Peer],
    docker: &[docker::DockerPort],
    docker_networks: &[crate::state::Network],
    fleet: &fleetnet::View,
) -> Result<(Desired, Merge)> {
    merge_all(cfg, cli, etcd, docker, docker_networks, fleet, true)
}

/// [`desired`] or [`desired_docker`]: a merge of the config, the CLI's entries, etcd's
/// peers, Docker's ports and networks, and the networks across hosts.
pub type Merger<T> = fn(
    &Config,
    &Part,
    &[Peer],
    &[docker::DockerPort],
    &[crate::state::Network],
    &fleetnet::View,
) -> Result<(T, Merge)>;

/// The desired state but its policy, as a Docker event changes it (Docker's networks,
/// containers and ports; never the policy): what [`desired`] makes, without the policy's
/// merge (100,000 rules cost milliseconds) or its checks.
pub fn desired_docker(
    cfg: &Config,
    cli: &Part,
    etcd: &[Peer],
    docker: &[docker::DockerPort],
    docker_networks: &[crate::state::Network],
    fleet: &fleetnet::View,
) -> Result<(crate::state::DesiredNoPolicy, Merge)> {
    let (d, merge) = merge_all(cfg, cli, etcd, docker, docker_networks, fleet, false)?;
    Ok((crate::state::DesiredNoPolicy(d), merge))
}

/// [`desired`]; without `policy`, its policy is left empty (not merged, not checked).
fn merge_all(
    cfg: &Config,
    cli: &Part,
    etcd: &[Peer],
    docker: &[docker::DockerPort],
    docker_networks: &[crate::state::Network],
    fleet: &fleetnet::View,
    policy: bool,
) -> Result<(Desired, Merge)> {
    let mut merge = Merge::default();
    let mut problems = Vec::new();
    let h = &cfg.host;
    let (mut nets, skipped) = networks(h, docker_networks);
    merge.skipped_networks = skipped;
    spans(&mut nets, fleet, &mut merge.skipped_networks);

    let peers = merge_peers(cfg, cli, etcd, fleet, &mut merge, &mut problems);

    let mut publish: Vec<Publish> = cfg.publish.clone();
    let mut cli_publish = Vec::new();
    for p in &cli.publish {
        if cfg
            .publish
            .iter()
            .any(|c| c.proto == p.proto && c.host_port == p.host_port)
        {
            merge.replaced_cli.publish += 1;
            continue;
        }
        let field = format!(
            "port {}/{} (added with `netpath publish add`)",
            p.proto, p.host_port
        );
        let found = check_publish(&field, p, h.subnet, h.gateway, h.vxlan_port, &publish);
        if found.is_empty() {
            publish.push(*p);
            cli_publish.push(*p);
        } else {
            problems.push(format!(
                "{}\nremove it with `netpath publish del {} {}` or change the config",
                found.join("\n"),
                p.proto,
                p.host_port
            ));
        }
    }

    let p = &cfg.policy;
    let cli_rules: &[_] = if policy { &cli.rules } else { &[] };
    // Only built when there are CLI rules to compare (100,000 config rules cost ms).
    let config_matches: HashSet<_> = if cli_rules.is_empty() {
        HashSet::new()
    } else {
        p.rules.iter().map(Rule::match_key).collect()
    };
    let mut rules: Vec<DesiredRule> = Vec::new();
    for (id, r) in cli_rules {
        let undefined: Vec<&String> = [&r.from, &r.to]
            .into_iter()
            .filter_map(|e| match e {
                Endpoint::Group(g) if !p.groups.contains_key(g) => Some(g),
                _ => None,
            })
            .collect();
        let name = id.map_or("a rule".to_owned(), |i| format!("policy rule {i}"));
        if let Some(g) = undefined.first() {
            problems.push(format!(
                "{name} ({r}, added with `netpath policy add`) names group {g:?}, which the config no longer defines: define it again, or remove the rule with `netpath policy del {}`",
                id.unwrap_or(0)
            ));
            continue;
        }
        if config_matches.contains(&r.match_key()) {
            merge.replaced_cli.rules += 1;
            continue;
        }
        rules.push(DesiredRule {
            rule: r.clone(),
            origin: Origin::Cli,
            id: *id,
        });
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let mut docker_publish = Vec::new();
    for d in docker {
        let p = &d.publish;
        let field = format!(
            "container {} ({}/{} -> {}:{}, published by Docker)",
            d.container, p.proto, p.host_port, p.container, p.port
        );
        // Checked against the container's network (the host's subnet without one, which
        // refuses it).
        let net = crate::state::network_of(&nets, p.container);
        let (subnet, gateway) = net.map_or((h.subnet, h.gateway), |n| (n.subnet, n.gateway));
        let mut found = check_publish(&field, p, subnet, gateway, h.vxlan_port, &publish);
        if net.is_none() {
            found.push(format!(
                "{field}: {} is on no network of this host",
                p.container
            ));
        }
        if found.is_empty() {
            publish.push(*p);
            docker_publish.push(*p);
        } else {
            merge.skipped_docker.push(found.join("; "));
        }
    }
    merge.kept_docker = docker_publish.len();
    merge.kept_cli.publish = cli_publish.len();
    merge.kept_cli.rules = rules.len();
    if policy {
        rules.extend(p.rules.iter().map(|r| DesiredRule {
            rule: r.clone(),
            origin: Origin::Config,
            id: None,
        }));
    }
    let mut desired_publish: Vec<Owned<Publish>> = cfg
        .publish
        .iter()
        .map(|&item| Owned {
            item,
            origin: Origin::Config,
        })
        .collect();
    desired_publish.extend(cli_publish.into_iter().map(|item| Owned {
        item,
        origin: Origin::Cli,
    }));
    desired_publish.extend(docker_publish.into_iter().map(|item| Owned {
        item,
        origin: Origin::Docker,
    }));
    Ok((
        Desired {
            host: cfg.host.clone(),
            conntrack: cfg.conntrack,
            monitor: cfg.monitor,
            peers: peers.peers,
            publish: desired_publish,
            policy: DesiredPolicy {
                // Without the policy, `rules` is empty too.
                groups: if policy {
                    p.groups.clone()
                } else {
                    Default::default()
                },
                rules,
                default: p.default,
                reject_rate: p.reject_rate,
            },
            remote: peers.remote,
            networks: nets,
        },
        merge,
    ))
}

/// Marks each network of this host that is one across hosts (`fleet`'s, by name) with its
/// VNI and mode. One whose subnet is not etcd's stays a network of this host only, with
/// why in `skipped`.
pub fn spans(
    nets: &mut [crate::state::Network],
    fleet: &fleetnet::View,
    skipped: &mut Vec<String>,
) {
    for n in nets.iter_mut() {
        let Some(f) = fleet.networks.iter().find(|f| f.name == n.name) else {
            continue;
        };
        if f.subnet != n.subnet || n.gateway != Some(f.gateway) {
            skipped.push(format!(
                "network {} across hosts: this host's Docker network of that name has subnet {} (gateway {}), etcd says {} (gateway {}): it stays this host's only; remove it (`docker network rm {}`) and the agent makes it again",
                n.name,
                n.subnet,
                n.gateway.map_or("none".to_owned(), |g| g.to_string()),
                f.subnet,
                f.gateway,
                n.name
            ));
            continue;
        }
        n.span = Some(crate::state::Span {
            vni: f.vni,
            mode: f.mode,
        });
    }
}

/// The containers of networks across hosts that live on the peers `peers` (the hosts of
/// the fleet): every held address but this host's.
pub fn remote(
    h: &crate::state::Host,
    fleet: &fleetnet::View,
    peers: &foldhash::HashSet<&str>,
) -> Vec<crate::state::Remote> {
    fleet
        .held
        .iter()
        .filter(|a| a.host != h.name && peers.contains(a.host.as_str()))
        .filter_map(|a| {
            let f = fleet.networks.iter().find(|f| f.name == a.network)?;
            f.holds_container(a.addr).then(|| crate::state::Remote {
                addr: a.addr,
                network: a.network.clone(),
                host: a.host.clone(),
                mode: f.mode,
            })
        })
        .collect()
}

/// The peers of the desired state: the config's, the CLI's that fit beside them (a CLI
/// peer that does not is a problem, in `problems`), etcd's that fit beside both (one that
/// does not is skipped, in `merge`); and the routes of their containers of networks
/// across hosts. The same merge for a whole desired state ([`desired`]) and for an etcd
/// event's ([`desired_peers`]).
fn merge_peers(
    cfg: &Config,
    cli: &Part,
    etcd: &[Peer],
    fleet: &fleetnet::View,
    merge: &mut Merge,
    problems: &mut Vec<String>,
) -> DesiredPeers {
    let h = &cfg.host;
    let n = cfg.peers.len() + cli.peers.len() + etcd.len();
    let mut index = crate::state::PeerIndex::with_capacity(n);
    let mut origins = Vec::with_capacity(n);
    for p in &cfg.peers {
        index.insert(p);
        origins.push(Origin::Config);
    }
    for p in &cli.peers {
        if cfg.peers.iter().any(|c| c.name == p.name) {
            merge.replaced_cli.peers += 1;
            continue;
        }
        let field = format_args!("peer {:?} (added with `netpath peer add`)", p.name);
        let found = index.admit(&field, p, h.subnet, h.address);
        if found.is_empty() {
            origins.push(Origin::Cli);
            merge.kept_cli.peers += 1;
        } else {
            problems.push(format!(
                "{}\nremove it with `netpath peer del {}` or change the config",
                found.join("\n"),
                p.name
            ));
        }
    }
    let mut etcd_names: foldhash::HashSet<&str> = foldhash::HashSetExt::with_capacity(etcd.len());
    for p in etcd {
        // check_peer refuses a name, subnet or underlay that an earlier peer has.
        let found = index.admit(
            &format_args!("peer {:?} (from etcd)", p.name),
            p,
            h.subnet,
            h.address,
        );
        if found.is_empty() {
            etcd_names.insert(p.name.as_str());
            origins.push(Origin::Etcd);
        } else {
            merge.skipped_etcd.push(found.join("; "));
        }
    }
    merge.kept_etcd = etcd_names.len();
    DesiredPeers {
        remote: remote(h, fleet, &etcd_names),
        peers: index
            .into_peers()
            .into_iter()
            .zip(origins)
            .map(|(p, origin)| Owned {
                item: p.clone(),
                origin,
            })
            .collect(),
    }
}

/// The peers' part of the desired state, all that an etcd registration's change touches
/// (reconcile::peers_from): merged as [`desired`] merges them, without the published
/// ports and the policy (at 100,000 rules those are most of a merge's cost).
pub fn desired_peers(
    cfg: &Config,
    cli: &Part,
    etcd: &[Peer],
    fleet: &fleetnet::View,
) -> Result<(DesiredPeers, Merge)> {
    let mut merge = Merge::default();
    let mut problems = Vec::new();
    let peers = merge_peers(cfg, cli, etcd, fleet, &mut merge, &mut problems);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok((peers, merge))
}

/// The desired state of a fresh datapath (no CLI entry yet): the config alone.
pub fn from_config(cfg: &Config) -> Desired {
    desired(
        cfg,
        &Part::default(),
        &[],
        &[],
        &[],
        &fleetnet::View::default(),
    )
    .expect("a valid config merges with no CLI entry")
    .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Network, Origin};

    /// A host whose subnet is a /20 and whose bridge (ifindex 3) has the first /24's
    /// first address, as dockerd gives docker0 from `bip`.
    fn host() -> crate::state::Host {
        let sys = crate::iface::fake::Fake::new()
            .with("eth0", 2, &["198.18.0.11/24"])
            .with("br0", 3, &["10.244.16.1/24"]);
        let text = "[host]\nname = \"a\"\nuplink = \"eth0\"\nbridge = \"br0\"\nsubnet = \"10.244.16.0/20\"\nvni = 42\n";
        Config::parse(text, &sys).unwrap().host
    }

    fn docker_net(name: &str, subnet: &str, ifindex: u32) -> Network {
        Network {
            name: name.into(),
            docker_id: format!("{name:0<12}"),
            bridge: format!("br-{name}"),
            bridge_ifindex: ifindex,
            bridge_mac: [2, 0, 0, 0, 0, 9],
            subnet: subnet.parse().unwrap(),
            gateway: None,
            internal: false,
            masquerade: false,
            origin: Origin::Docker,
            span: None,
        }
    }

    #[test]
    fn the_hosts_bridge_comes_first_with_dockers_name_and_clashes_are_skipped() {
        let h = host();
        let (nets, skipped) = networks(
            &h,
            &[
                docker_net("app", "10.244.17.0/24", 10),
                // Docker's network on the [host].bridge: its name and options, the
                // bridge's own subnet.
                docker_net("bridge", "10.244.16.0/24", 3),
                docker_net("again", "10.244.17.0/24", 11),
                docker_net("samebridge", "10.244.18.0/24", 10),
            ],
        );
        let got: Vec<String> = nets
            .iter()
            .map(|n| format!("{} {} {} {}", n.name, n.subnet, n.origin, n.masquerade))
            .collect();
        assert_eq!(
            got,
            [
                "bridge 10.244.16.0/24 config false",
                "app 10.244.17.0/24 docker false"
            ]
        );
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].starts_with("network again (10.244.17.0/24 on br-again): network app has"),
            "{skipped:?}"
        );
        // Without Docker: the bridge alone, named after itself.
        let (nets, skipped) = networks(&h, &[]);
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].name, h.bridge);
        assert!(nets[0].masquerade && skipped.is_empty());
    }
}
