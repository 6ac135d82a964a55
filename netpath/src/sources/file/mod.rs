//! The config file: TOML, validated. Everything is checked before anything is attached
//! or any map is touched; every problem found is reported at once, each naming the field
//! and the fix. The file is one source of the desired state (see sources/).

use std::{collections::HashMap, net::Ipv4Addr, path::Path};

mod written;

use ipnet::Ipv4Net;
use written::{File, GroupFile, PeerFile, PolicyFile};

use super::etcd::{self, Unleased};
use crate::{
    iface,
    state::{
        Conntrack, EVENT_RATE_MAX, Host, MASQUERADE_PORTS, Mode, Monitor, Peer, Publish, VNI_MAX,
        check_conntrack, check_name, check_publish, parse_addr, parse_mac, parse_port_range,
        parse_subnet,
        policy::{Action, Groups, Rule},
    },
};

/// `[[group]]`, `[[policy]]` and the host's default action, validated.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub groups: Groups,
    pub rules: Vec<Rule>,
    /// For packets no rule matches.
    pub default: Action,
    /// Reject answers per second, per CPU.
    pub reject_rate: u32,
}

impl Default for PolicyConfig {
    /// No rules, allow everything: Docker's behaviour.
    fn default() -> PolicyConfig {
        PolicyConfig {
            groups: Groups::new(),
            rules: Vec::new(),
            default: Action::Allow,
            reject_rate: crate::state::policy::REJECT_RATE,
        }
    }
}

/// A validated config, with interfaces resolved on this host.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: Host,
    pub peers: Vec<Peer>,
    pub publish: Vec<Publish>,
    pub conntrack: Conntrack,
    pub policy: PolicyConfig,
    pub monitor: Monitor,
    /// Where the agent serves Prometheus metrics (`[metrics] listen`); None: nowhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// The fleet's store (`[etcd]`); None: the peers are the file's (and the CLI's).
    pub etcd: Option<crate::state::Etcd>,
    /// The Docker engine (`[docker]`) whose published ports netpath serves; None: off.
    pub docker: Option<crate::state::Docker>,
}

/// Every problem found in a config, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid config {path}:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub path: String,
    pub problems: Vec<String>,
}

impl ConfigError {
    fn of(path: &Path, problems: Vec<String>) -> ConfigError {
        ConfigError {
            path: path.display().to_string(),
            problems,
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::of(path, vec![format!("cannot read it: {e}")]))
}

impl Config {
    /// Reads and validates `path`, resolving interfaces in the current network namespace.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        Config::parse(&text, &iface::System).map_err(|p| ConfigError::of(path, p))
    }

    /// As [`Config::load`], for the agent: a host that leases its subnet and has not yet
    /// is [`Parsed::Unleased`], not an error.
    pub fn load_leasing(path: &Path) -> Result<Parsed, ConfigError> {
        let text = read(path)?;
        Config::parse_leasing(&text, &iface::System).map_err(|p| ConfigError::of(path, p))
    }

    /// Validates `text`; interface facts come from `sys` (a fake one in unit tests).
    pub fn parse(text: &str, sys: &dyn iface::Interfaces) -> Result<Config, Vec<String>> {
        match Config::parse_leasing(text, sys)? {
            Parsed::Ready(c) => Ok(c),
            Parsed::Unleased(u) => Err(vec![format!(
                "[host].subnet is not set and this host has not leased one yet ({} does not exist): `netpath run` leases one from etcd; or set [host].subnet",
                u.etcd.subnet_file.display()
            )]),
        }
    }

    /// Validates `text`, a host that has yet to lease its subnet included.
    pub fn parse_leasing(text: &str, sys: &dyn iface::Interfaces) -> Result<Parsed, Vec<String>> {
        let file: File = toml::from_str(text).map_err(|e| vec![e.to_string().trim().to_owned()])?;
        let mut problems = Vec::new();
        let h = file.host;

        if let Err(p) = check_name("[host].name", &h.name) {
            problems.push(p);
        }
        let uplink = sys.ifindex(&h.uplink).map_err(|_| {
            format!(
                "[host].uplink = {:?}: no such interface here (see `ip link`)",
                h.uplink
            )
        });
        let bridge = sys.ifindex(&h.bridge).map_err(|_| {
            format!(
                "[host].bridge = {:?}: no such interface here (see `ip link`)",
                h.bridge
            )
        });
        if h.uplink == h.bridge {
            problems.push("[host].uplink and [host].bridge name the same interface: the bridge is where containers attach, the uplink faces the other hosts".into());
        }
        let etcd = file.etcd.map(|e| {
            let prefix = e
                .prefix
                .unwrap_or_else(|| crate::state::ETCD_PREFIX.to_owned());
            let lease_ttl = e.lease_ttl.unwrap_or(crate::state::ETCD_LEASE_TTL);
            let address_grace = e
                .address_grace
                .unwrap_or(crate::state::ETCD_ADDRESS_GRACE);
            if !(1..=crate::state::ETCD_LEASE_TTL_MAX).contains(&address_grace) {
                problems.push(format!(
                    "[etcd].address_grace = {address_grace}: use 1 to {} seconds (how long the addresses of a host whose registration expired stay its own)",
                    crate::state::ETCD_LEASE_TTL_MAX
                ));
            }
            let peer_grace = e.peer_grace.unwrap_or(crate::state::ETCD_PEER_GRACE);
            if peer_grace > crate::state::ETCD_LEASE_TTL_MAX {
                problems.push(format!(
                    "[etcd].peer_grace = {peer_grace}: use 0 to {} seconds (how long a deleted registration's peer stays, in case it is put back)",
                    crate::state::ETCD_LEASE_TTL_MAX
                ));
            }
            problems.extend(crate::state::check_etcd(
                &e.endpoints,
                &prefix,
                lease_ttl,
                [e.ca.as_deref(), e.cert.as_deref(), e.key.as_deref()],
            ));
            crate::state::Etcd {
                endpoints: e.endpoints,
                prefix,
                lease_ttl,
                address_grace,
                peer_grace,
                ca: e.ca.map(Into::into),
                cert: e.cert.map(Into::into),
                key: e.key.map(Into::into),
                subnet_file: e
                    .subnet_file
                    .unwrap_or_else(|| crate::state::ETCD_SUBNET_FILE.to_owned())
                    .into(),
                leased: h.subnet.is_none(),
            }
        });
        // The subnet: as written, or the one this host leased from etcd and remembers.
        let mut pending = false;
        let subnet = match (&h.subnet, &etcd) {
            (Some(s), _) => parse_subnet("[host].subnet", s),
            (None, Some(e)) => match etcd::remembered(&e.subnet_file) {
                Ok(Some(net)) => Ok(net),
                Ok(None) => {
                    pending = true;
                    Ok(PENDING)
                }
                Err(p) => Err(p),
            },
            (None, None) => Err("[host].subnet is not set: write this host's container subnet, like \"10.244.1.0/24\", or add [etcd] to lease one from the fleet's range".to_owned()),
        };
        if h.vxlan_port == 0 {
            problems.push("[host].vxlan_port = 0: use a UDP port, 4789 by default".into());
        }
        let host_mac = match &h.vtep_mac {
            Some(m) => parse_mac("[host].vtep_mac", m)
                .map(Some)
                .unwrap_or_else(|e| {
                    problems.push(e);
                    None
                }),
            None => None,
        };
        if h.vni == 0 || h.vni > VNI_MAX {
            problems.push(format!(
                "[host].vni = {} is out of range: use 1 to {VNI_MAX}",
                h.vni
            ));
        }
        let masquerade_ports = match &h.masquerade_ports {
            Some(r) => parse_port_range("[host].masquerade_ports", r).unwrap_or_else(|e| {
                problems.push(e);
                MASQUERADE_PORTS
            }),
            None => MASQUERADE_PORTS,
        };
        if (masquerade_ports.0..=masquerade_ports.1).contains(&h.vxlan_port) {
            problems.push(format!(
                "[host].masquerade_ports = \"{}-{}\" holds the VXLAN port {}: replies to those flows would be taken for tunnel traffic; use a range without it",
                masquerade_ports.0, masquerade_ports.1, h.vxlan_port
            ));
        }
        problems.extend(check_conntrack(&file.conntrack));
        let policy = check_policy(
            &file.groups,
            &file.policies,
            h.default_action,
            h.reject_rate,
        )
        .map_err(|p| problems.extend(p))
        .ok();
        let address = match (&h.address, &uplink) {
            (Some(a), _) => parse_addr("[host].address", a).map(Some),
            (None, Ok(_)) => match sys.ipv4_addrs(&h.uplink).first() {
                Some(a) => Ok(Some(a.addr())),
                None => Err(format!(
                    "[host].address is not set and uplink {:?} has no IPv4 address: set it, or address the uplink",
                    h.uplink
                )),
            },
            (None, Err(_)) => Ok(None),
        };
        let (uplink, bridge, subnet, address) = match (uplink, bridge, subnet, address) {
            (Ok(u), Ok(b), Ok(s), Ok(a)) => (u, b, s, a),
            (u, b, s, a) => {
                problems.extend([u.err(), b.err(), s.err(), a.err()].into_iter().flatten());
                // Without these the peers can still be checked against each other.
                let local = h
                    .subnet
                    .as_deref()
                    .and_then(|s| parse_subnet("", s).ok())
                    .unwrap_or_default();
                check_peers(&file.peers, local, Ipv4Addr::UNSPECIFIED, &mut problems);
                return Err(problems);
            }
        };
        let address = address.expect("set when the uplink resolved");
        if subnet.contains(&address) {
            problems.push(format!(
                "[host].address = \"{address}\" is inside [host].subnet = \"{subnet}\": the underlay address is the host's address on the uplink"
            ));
        }
        let (gateway, bridge_subnet) =
            crate::state::bridge_subnet(subnet, &sys.ipv4_addrs(&h.bridge));
        let peers = check_peers(&file.peers, subnet, address, &mut problems);
        let mut publish: Vec<Publish> = Vec::new();
        // Published ports are checked against the subnet once it is leased.
        let written = if pending { &[][..] } else { &file.publish[..] };
        for (i, p) in written.iter().enumerate() {
            let field = format!("[[publish]] #{}", i + 1);
            let container = match parse_addr(&format!("{field}.container"), &p.container) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let p = Publish {
                proto: p.proto,
                host_port: p.host_port,
                container,
                port: p.port,
            };
            let found = check_publish(&field, &p, subnet, gateway, h.vxlan_port, &publish);
            if found.is_empty() {
                publish.push(p);
            }
            problems.extend(found);
        }
        if file.monitor.rate > EVENT_RATE_MAX {
            problems.push(format!(
                "monitor.rate: {} events per second is more than {EVENT_RATE_MAX}: events past a few thousand a second only load the CPU; counters count every drop anyway",
                file.monitor.rate
            ));
        }
        let metrics = match &file.metrics.listen {
            None => None,
            Some(l) => match l.parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!(
                        "metrics.listen: {l:?} is not ADDRESS:PORT: write it like \"127.0.0.1:9464\""
                    ));
                    None
                }
            },
        };
        let docker = file.docker.map(|d| {
            let socket = d
                .socket
                .unwrap_or_else(|| crate::state::DOCKER_SOCKET.to_owned());
            if !socket.starts_with('/') {
                problems.push(format!(
                    "[docker].socket = {socket:?}: write the engine's socket as an absolute path, like \"{}\"",
                    crate::state::DOCKER_SOCKET
                ));
            }
            let plugin = d
                .plugin
                .unwrap_or_else(|| crate::state::DOCKER_PLUGIN.to_owned());
            if crate::sources::fleetnet::check_name(&plugin).is_err() {
                problems.push(format!(
                    "[docker].plugin = {plugin:?}: a plugin name is letters, digits, '_', '.' or '-', like \"{}\"",
                    crate::state::DOCKER_PLUGIN
                ));
            }
            crate::state::Docker {
                socket: socket.into(),
                plugin,
            }
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        let uplink_mtu = sys.mtu(&h.uplink);
        let bridge_mac = sys.mac(&h.bridge).unwrap_or_default();
        let min = 68 + netpath_common::VXLAN_OVERHEAD;
        if uplink_mtu < min && peers.iter().any(|p| p.mode == Mode::Vxlan) {
            return Err(vec![format!(
                "host.uplink: {} has MTU {uplink_mtu}, too small for VXLAN: the tunnel needs {min} (68 for IPv4 + {} of headers); raise it with `ip link set {} mtu 1500`",
                h.uplink,
                netpath_common::VXLAN_OVERHEAD,
                h.uplink
            )]);
        }
        let cfg = Config {
            host: Host {
                name: h.name,
                uplink: h.uplink,
                uplink_ifindex: uplink,
                bridge: h.bridge,
                bridge_ifindex: bridge,
                subnet,
                address,
                gateway,
                bridge_subnet,
                vni: h.vni,
                xdp: h.xdp,
                vxlan_port: h.vxlan_port,
                vtep_mac: host_mac
                    .unwrap_or_else(|| netpath_common::default_vtep_mac(address.octets())),
                uplink_mtu,
                bridge_mac,
                masquerade: h.masquerade,
                masquerade_ports,
            },
            peers,
            publish,
            conntrack: file.conntrack,
            policy: policy.expect("no problems: the policy is valid"),
            monitor: file.monitor,
            etcd,
            docker,
            metrics,
        };
        Ok(match (pending, cfg.etcd.clone()) {
            (true, Some(etcd)) => Parsed::Unleased(Unleased {
                host: cfg.host,
                etcd,
            }),
            _ => Parsed::Ready(cfg),
        })
    }
}

/// The subnet of a host that has not leased one yet: matches no address.
const PENDING: Ipv4Net = match Ipv4Net::new(Ipv4Addr::BROADCAST, 32) {
    Ok(n) => n,
    Err(_) => unreachable!(),
};

/// What a config file says, for the agent: ready, or waiting for a subnet from etcd.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per start or command, never stored"
)]
pub enum Parsed {
    Ready(Config),
    Unleased(Unleased),
}

/// Validates groups and rules; an exact duplicate rule (same from, to, proto and ports)
/// is refused, whatever its action: only one of them could ever decide.
fn check_policy(
    groups: &[GroupFile],
    rules: &[PolicyFile],
    default: Action,
    reject_rate: u32,
) -> Result<PolicyConfig, Vec<String>> {
    let named: Vec<(String, Vec<String>)> = groups
        .iter()
        .map(|g| (g.name.clone(), g.cidrs.clone()))
        .collect();
    let (groups, mut problems) = crate::state::policy::check_groups(&named);
    let mut out: Vec<Rule> = Vec::new();
    // Rule number (from 1) by what it matches.
    let mut seen = std::collections::HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        let field = format!("[[policy]] #{}", i + 1);
        match crate::state::policy::parse_rule(
            &|k| format!("{field}.{k}"),
            &r.from,
            &r.to,
            r.proto,
            r.port.as_ref(),
            r.action,
            &groups,
        ) {
            Ok(rule) => {
                let key = (rule.from.clone(), rule.to.clone(), rule.proto, rule.ports);
                match seen.get(&key) {
                    Some(&j) => problems.push(format!(
                        "{field}: matches the same packets as [[policy]] #{j} ({}): keep one of them",
                        out.iter().find(|o| o.same_match(&rule)).expect("seen")
                    )),
                    None => {
                        seen.insert(key, i + 1);
                    }
                }
                out.push(rule);
            }
            Err(p) => problems.extend(p),
        }
    }
    if out.len() >= netpath_common::MAX_POLICY_RULES as usize {
        problems.push(format!(
            "{} [[policy]] rules: at most {} fit",
            out.len(),
            netpath_common::MAX_POLICY_RULES - 1
        ));
    }
    if reject_rate == 0 {
        problems.push("[host].reject_rate = 0: rejected packets would never be answered; use deny for that, or a rate like 100".into());
    }
    if problems.is_empty() {
        Ok(PolicyConfig {
            groups,
            rules: out,
            default,
            reject_rate,
        })
    } else {
        Err(problems)
    }
}

fn check_peers(
    files: &[PeerFile],
    local: Ipv4Net,
    host: Ipv4Addr,
    problems: &mut Vec<String>,
) -> Vec<Peer> {
    // Each entry parsed first (with its own problems), then checked against the ones
    // before it, in order: the index borrows the parsed peers.
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut parsed: Vec<(String, Vec<String>, Option<Peer>, bool)> = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let field = format!("[[peer]] #{} ({:?})", i + 1, p.name);
        let mut mine = Vec::new();
        let mut bad = false;
        if let Err(e) = check_name(&format!("{field}.name"), &p.name) {
            mine.push(e);
            bad = true;
        }
        if let Some(first) = names.insert(&p.name, i) {
            mine.push(format!(
                "{field}: duplicate peer name, already used by [[peer]] #{}: peer names must be unique",
                first + 1
            ));
            parsed.push((field, mine, None, bad));
            continue;
        }
        let subnet = parse_subnet(&format!("{field}.subnet"), &p.subnet);
        let underlay = parse_addr(&format!("{field}.underlay"), &p.underlay);
        let mac = match &p.vtep_mac {
            Some(m) => parse_mac(&format!("{field}.vtep_mac"), m).map(Some),
            None => Ok(None),
        };
        let peer = match (subnet, underlay, mac) {
            (Ok(subnet), Ok(underlay), Ok(vtep_mac)) => Some(Peer {
                name: p.name.clone(),
                subnet,
                underlay,
                mode: p.mode,
                vtep_mac,
            }),
            (s, u, m) => {
                mine.extend([s.err(), u.err(), m.err()].into_iter().flatten());
                None
            }
        };
        parsed.push((field, mine, peer, bad));
    }
    let mut index = crate::state::PeerIndex::with_capacity(parsed.len());
    for (field, mine, peer, bad) in &parsed {
        problems.extend(mine.iter().cloned());
        if let Some(peer) = peer {
            let found = index.check(field, peer, local, host);
            if found.is_empty() && !bad {
                index.insert(peer);
            }
            problems.extend(found);
        }
    }
    index.into_peers().into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iface::fake::Fake;
    use crate::state::{Proto, XdpMode};

    fn sys() -> Fake {
        Fake::new()
            .with("eth0", 2, &["198.18.0.11/24"])
            .with("br0", 3, &["10.244.11.1/24"])
    }

    const GOOD: &str = r#"
        [host]
        name = "a"
        uplink = "eth0"
        bridge = "br0"
        subnet = "10.244.11.0/24"
        vni = 42

        [[peer]]
        name = "b"
        subnet = "10.244.12.0/24"
        underlay = "198.18.0.12"
        mode = "direct"

        [[peer]]
        name = "c"
        subnet = "10.244.13.0/24"
        underlay = "198.18.0.13"
        mode = "vxlan"
    "#;

    fn problems(text: &str) -> String {
        Config::parse(text, &sys()).unwrap_err().join("\n")
    }

    #[test]
    fn good_config_resolves_interfaces_and_defaults() {
        let c = Config::parse(GOOD, &sys()).unwrap();
        assert_eq!(c.host.uplink_ifindex, 2);
        assert_eq!(c.host.bridge_ifindex, 3);
        assert_eq!(c.host.address, "198.18.0.11".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.host.gateway, Some("10.244.11.1".parse().unwrap()));
        assert_eq!(c.host.xdp, XdpMode::Off);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[1].mode, Mode::Vxlan);
    }

    #[test]
    fn a_subnet_left_out_is_leased_with_etcd_and_refused_without() {
        let without = GOOD.replace("subnet = \"10.244.11.0/24\"\n        vni", "vni");
        let p = problems(&without);
        assert!(p.contains("[host].subnet is not set: write"), "{p}");

        let dir = std::env::temp_dir().join(format!("np-lease-{}", std::process::id()));
        let file = dir.join("subnet.env");
        let leasing = format!(
            "{without}\n[etcd]\nendpoints = [\"http://198.18.0.2:2379\"]\nsubnet_file = {:?}\n",
            file.display().to_string()
        );
        // Not leased yet: the agent gets the host (everything else checked) to lease with;
        // every other command is told to start the agent first.
        let Ok(Parsed::Unleased(u)) = Config::parse_leasing(&leasing, &sys()) else {
            panic!("not unleased");
        };
        assert_eq!(u.host.name, "a");
        assert!(u.etcd.leased);
        assert_eq!(u.host.gateway, None);
        let p = problems(&leasing);
        assert!(p.contains("has not leased one yet"), "{p}");
        // A bad field is still found before any lease.
        let p = Config::parse_leasing(&leasing.replace("vni = 42", "vni = 0"), &sys())
            .unwrap_err()
            .join("\n");
        assert!(p.contains("[host].vni = 0"), "{p}");

        // Leased: the remembered subnet is the host's.
        crate::sources::etcd::remember(&file, "10.244.11.0/24".parse().unwrap()).unwrap();
        let c = Config::parse(&leasing, &sys()).unwrap();
        assert_eq!(c.host.subnet.to_string(), "10.244.11.0/24");
        assert_eq!(c.host.gateway, Some("10.244.11.1".parse().unwrap()));
        std::fs::write(&file, "garbage\n").unwrap();
        let p = problems(&leasing);
        assert!(p.contains("has no NETPATH_SUBNET= line"), "{p}");
        std::fs::write(&file, "NETPATH_SUBNET=10.244.11.7/24\n").unwrap();
        let p = problems(&leasing);
        assert!(p.contains("has host bits set"), "{p}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn explicit_address_wins() {
        let t = GOOD.replace("vni = 42", "vni = 42\naddress = \"198.18.0.99\"");
        let c = Config::parse(&t, &sys()).unwrap();
        assert_eq!(c.host.address, "198.18.0.99".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn unknown_interface_is_named() {
        let p = problems(&GOOD.replace("\"eth0\"", "\"eth9\""));
        assert!(
            p.contains("[host].uplink = \"eth9\": no such interface"),
            "{p}"
        );
    }

    #[test]
    fn malformed_cidr_is_named() {
        let p = problems(&GOOD.replace("10.244.12.0/24", "10.244.12.0/33"));
        assert!(
            p.contains("[[peer]] #1 (\"b\").subnet = \"10.244.12.0/33\" is not an IPv4 CIDR"),
            "{p}"
        );
        let p = problems(&GOOD.replace("10.244.11.0/24", "10.244.11.7/24"));
        assert!(p.contains("did you mean \"10.244.11.0/24\""), "{p}");
    }

    #[test]
    fn overlapping_subnets_are_refused() {
        let p = problems(&GOOD.replace("10.244.13.0/24", "10.244.12.128/25"));
        assert!(p.contains("overlaps peer \"b\""), "{p}");
        let p = problems(&GOOD.replace("10.244.12.0/24", "10.244.0.0/16"));
        assert!(p.contains("overlaps the local subnet"), "{p}");
    }

    #[test]
    fn duplicate_peer_is_refused() {
        let p = problems(&GOOD.replace("name = \"c\"", "name = \"b\""));
        assert!(p.contains("duplicate peer name"), "{p}");
        let p = problems(&GOOD.replace("198.18.0.13", "198.18.0.12"));
        assert!(p.contains("is also peer \"b\"'s"), "{p}");
    }

    #[test]
    fn a_peer_with_this_hosts_address_is_refused() {
        let p = problems(&GOOD.replace("198.18.0.12", "198.18.0.11"));
        assert!(
            p.contains("underlay = \"198.18.0.11\" is this host's own address"),
            "{p}"
        );
    }

    #[test]
    fn vni_out_of_range_is_refused() {
        for bad in ["0", "16777216"] {
            let p = problems(&GOOD.replace("vni = 42", &format!("vni = {bad}")));
            assert!(p.contains("[host].vni"), "{p}");
            assert!(p.contains("1 to 16777215"), "{p}");
        }
    }

    #[test]
    fn typos_and_bad_enums_are_refused() {
        let p = problems(&GOOD.replace("vni = 42", "vni = 42\nmasqurade = true"));
        assert!(p.contains("unknown field `masqurade`"), "{p}");
        let p = problems(&GOOD.replace("mode = \"vxlan\"", "mode = \"gre\""));
        assert!(p.contains("unknown variant `gre`"), "{p}");
        let p = problems(&GOOD.replace("vni = 42", "vni = 42\nxdp = \"fast\""));
        assert!(p.contains("unknown variant `fast`"), "{p}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let t = GOOD
            .replace("\"br0\"", "\"br9\"")
            .replace("10.244.13.0/24", "10.244.12.0/24");
        let p = Config::parse(&t, &sys()).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn vtep_macs_default_from_the_underlay_and_can_be_set() {
        let c = Config::parse(GOOD, &sys()).unwrap();
        assert_eq!(c.host.vtep_mac, [0x02, 0x4e, 198, 18, 0, 11]);
        assert_eq!(c.host.vxlan_port, 4789);
        assert_eq!(c.peers[1].vtep_mac(), [0x02, 0x4e, 198, 18, 0, 13]);
        let t = GOOD.replace(
            "mode = \"vxlan\"",
            "mode = \"vxlan\"\nvtep_mac = \"aa:bb:cc:dd:ee:f0\"",
        );
        let c = Config::parse(&t, &sys()).unwrap();
        assert_eq!(c.peers[1].vtep_mac(), [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xf0]);
        let t = GOOD.replace(
            "mode = \"vxlan\"",
            "mode = \"vxlan\"\nvtep_mac = \"aa:bb:cc:dd:ee\"",
        );
        assert!(problems(&t).contains(".vtep_mac = \"aa:bb:cc:dd:ee\" is not a MAC"));
        let t = GOOD.replace("vni = 42", "vni = 42\nvtep_mac = \"01:00:5e:00:00:01\"");
        assert!(problems(&t).contains("not a unicast MAC"));
        let t = GOOD.replace("vni = 42", "vni = 42\nvxlan_port = 0");
        assert!(problems(&t).contains("[host].vxlan_port = 0"));
    }

    #[test]
    fn address_missing_on_uplink_is_explained() {
        let s = Fake::new().with("eth0", 2, &[]).with("br0", 3, &[]);
        let p = Config::parse(GOOD, &s).unwrap_err().join("\n");
        assert!(p.contains("has no IPv4 address"), "{p}");
    }

    #[test]
    fn uplink_mtu_too_small_for_the_tunnel_is_refused() {
        let mut s = sys();
        s.1 = 117;
        let p = Config::parse(GOOD, &s).unwrap_err().join("\n");
        assert!(p.contains("MTU 117, too small for VXLAN"), "{p}");
        s.1 = 118;
        assert_eq!(Config::parse(GOOD, &s).unwrap().host.tunnel_mtu(), 68);
        // Without vxlan peers the uplink MTU is the kernel's business.
        s.1 = 100;
        let direct_only = GOOD.replace("mode = \"vxlan\"", "mode = \"direct\"");
        assert!(Config::parse(&direct_only, &s).is_ok());
    }

    #[test]
    fn masquerade_publish_and_conntrack_are_read_and_checked() {
        let c = Config::parse(GOOD, &sys()).unwrap();
        assert!(!c.host.masquerade);
        assert_eq!(c.host.masquerade_ports, (32768, 60999));
        assert_eq!(c.conntrack, Conntrack::default());
        let t = GOOD.replace(
            "vni = 42",
            "vni = 42\nmasquerade = true\nmasquerade_ports = \"40000-40999\"",
        ) + "\n[[publish]]\nproto = \"tcp\"\nhost_port = 8080\ncontainer = \"10.244.11.2\"\nport = 80\n\n[conntrack]\nsize = 4096\nudp = 5\n";
        let c = Config::parse(&t, &sys()).unwrap();
        assert!(c.host.masquerade);
        assert_eq!(c.host.masquerade_ports, (40000, 40999));
        assert_eq!(
            c.publish,
            vec![Publish {
                proto: Proto::Tcp,
                host_port: 8080,
                container: "10.244.11.2".parse().unwrap(),
                port: 80
            }]
        );
        assert_eq!(
            (c.conntrack.size, c.conntrack.udp, c.conntrack.icmp),
            (4096, 5, 30)
        );

        for (bad, want) in [
            ("masquerade_ports = \"60999-32768\"", "not above the last"),
            ("masquerade_ports = \"1-2-3\"", "is not a port range"),
            (
                "masquerade_ports = \"4000-5000\"",
                "holds the VXLAN port 4789",
            ),
        ] {
            let p = problems(&GOOD.replace("vni = 42", &format!("vni = 42\n{bad}")));
            assert!(p.contains(want), "{bad}: {p}");
        }
        let publish = |proto: &str, host_port: u32, container: &str, port: u32| {
            format!(
                "{GOOD}\n[[publish]]\nproto = \"{proto}\"\nhost_port = {host_port}\ncontainer = \"{container}\"\nport = {port}\n"
            )
        };
        for (t, want) in [
            (publish("tcp", 0, "10.244.11.2", 80), "host_port = 0"),
            (publish("tcp", 8080, "10.244.11.2", 0), "port = 0"),
            (
                publish("tcp", 8080, "10.244.12.2", 80),
                "not a container address of this host",
            ),
            (
                publish("tcp", 8080, "10.244.11.1", 80),
                "not a container address of this host",
            ),
            (publish("udp", 4789, "10.244.11.2", 80), "is the VXLAN port"),
            (
                publish("sctp", 8080, "10.244.11.2", 80),
                "unknown variant `sctp`",
            ),
            (publish("tcp", 70000, "10.244.11.2", 80), "invalid value"),
            (
                publish("tcp", 8080, "10.244.11.2", 80)
                    + "\n[[publish]]\nproto = \"tcp\"\nhost_port = 8080\ncontainer = \"10.244.11.3\"\nport = 80\n",
                "tcp/8080 is already published",
            ),
        ] {
            let p = problems(&t);
            assert!(p.contains(want), "want {want:?} in {p}");
        }
        let p = problems(&format!(
            "{GOOD}\n[conntrack]\nsize = 10\ntcp_closing = 0\n"
        ));
        assert!(p.contains("[conntrack].size = 10"), "{p}");
        assert!(p.contains("[conntrack].tcp_closing = 0"), "{p}");
    }
}
