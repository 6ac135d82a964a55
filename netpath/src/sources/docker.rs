//! Docker as a source (`[docker]`): the host's bridge networks (docker0 and every
//! user-defined one, `br-<id>`: compose's project networks among them), the containers
//! on them, and the ports Docker publishes for its running containers (`docker run -p
//! [IP:]HOST:CONTAINER[/tcp|udp]`), served by netpath in BPF (origin `docker`), so that
//! they answer with `"userland-proxy": false` and a flushed nat table.
//!
//! The engine is read, never written: a full listing of the networks and the running
//! containers at every connection and after every container or network event (start,
//! die, destroy, create, connect, disconnect, ...), so a restart of dockerd or of the
//! agent resyncs from a listing and leaves nothing stale. While the engine does not
//! answer, the networks and ports the pinned maps hold stand ([`live`]).
//!
//! Docker reports every field as optional (bollard's models): a network without an IPv4
//! subnet or whose bridge is not in this network namespace, a container without an
//! address on a served network, a port without a host port, or one bound to an address
//! that is neither 0.0.0.0 nor this host's underlay address is skipped with why.

use std::{collections::HashMap, net::Ipv4Addr};

use bollard::{
    models::{ContainerSummary, PortSummaryTypeEnum},
    query_parameters::{EventsOptions, ListContainersOptions, ListNetworksOptions},
};

use crate::{
    reconcile::Observed,
    state::{Docker, Endpoint, Network, Origin, Proto, Publish},
};

/// The name of Docker's default bridge network (docker0).
pub const DEFAULT_NETWORK: &str = "bridge";
/// Docker's options of a bridge network that netpath follows.
const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";

/// A port Docker publishes, with the container it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerPort {
    /// The container's name (without Docker's leading `/`), or its short id.
    pub container: String,
    pub publish: Publish,
}

/// What a listing of the engine says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    /// Running containers.
    pub containers: usize,
    pub ports: Vec<DockerPort>,
    /// Networks and ports left out, each with why.
    pub skipped: Vec<String>,
    /// The containers on the served networks as endpoints (one per network a container
    /// is on): address and MAC as Docker gave them, the host side of their veth (see
    /// [`veth_of`]).
    pub endpoints: Vec<Endpoint>,
    /// Docker's bridge networks whose bridge is in this network namespace, by name.
    pub networks: Vec<Network>,
}

/// An interface of this host as [`networks`] needs it: ifindex and MAC of a bridge, and
/// its IPv4 addresses.
pub type Resolve<'a> = &'a dyn Fn(&str) -> Option<(u32, [u8; 6], Vec<ipnet::Ipv4Net>)>;

/// Docker's bridge networks of `list` as netpath serves them, each resolved to its bridge
/// with `resolve`; the others are skipped with why (other drivers than `host` and `null`
/// are named, those two have no subnet at all). Sorted by name.
pub fn networks(
    list: &[bollard::models::Network],
    resolve: Resolve,
) -> (Vec<Network>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for n in list {
        let (Some(name), Some(id)) = (n.name.as_deref(), n.id.as_deref()) else {
            skipped.push("a network without a name or id: skipped".to_owned());
            continue;
        };
        match n.driver.as_deref() {
            Some("bridge") => {}
            Some("host" | "null") => continue,
            d => {
                skipped.push(format!(
                    "network {name}: driver {}: netpath serves bridge networks",
                    d.unwrap_or("(none)")
                ));
                continue;
            }
        }
        let short: String = id.chars().take(12).collect();
        let opts = n.options.clone().unwrap_or_default();
        let bridge = opts
            .get(OPT_BRIDGE_NAME)
            .cloned()
            .unwrap_or_else(|| format!("br-{short}"));
        let ipam = n
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .into_iter()
            .flatten()
            .find_map(|c| {
                let subnet = c.subnet.as_deref()?.parse::<ipnet::Ipv4Net>().ok()?;
                let gateway = c
                    .gateway
                    .as_deref()
                    .and_then(|g| g.split('/').next())
                    .and_then(|g| g.parse().ok());
                Some((subnet.trunc(), gateway))
            });
        let Some((subnet, gateway)) = ipam else {
            skipped.push(format!(
                "network {name}: no IPv4 subnet in its IPAM config: netpath serves IPv4 networks"
            ));
            continue;
        };
        let Some((ifindex, mac, addrs)) = resolve(&bridge) else {
            skipped.push(format!(
                "network {name}: its bridge {bridge} is not in this network namespace"
            ));
            continue;
        };
        // Docker leaves the gateway out of the default network's IPAM config: the
        // bridge's address in the subnet is it.
        let gateway =
            gateway.or_else(|| addrs.iter().map(|a| a.addr()).find(|a| subnet.contains(a)));
        out.push(Network {
            name: name.to_owned(),
            docker_id: short,
            bridge,
            bridge_ifindex: ifindex,
            bridge_mac: mac,
            subnet,
            gateway,
            internal: n.internal.unwrap_or(false),
            masquerade: opts.get(OPT_MASQUERADE).map(String::as_str) != Some("false"),
            origin: Origin::Docker,
            span: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, skipped)
}

/// The address of `c` its published ports lead to: on Docker's default network if it is
/// on it, else on the first (by name) of the served networks it is on that is not
/// internal (the one that gives it a way out). None when it is on none of them; `Err`
/// names the internal network it is on only.
fn port_address(c: &ContainerSummary, nets: &[Network]) -> Result<Option<Ipv4Addr>, String> {
    let Some(on) = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
    else {
        return Ok(None);
    };
    let mut names: Vec<&String> = on.keys().collect();
    names.sort_by_key(|n| (n.as_str() != DEFAULT_NETWORK, n.as_str()));
    let mut internal = None;
    for name in names {
        let Some(net) = nets.iter().find(|n| &n.name == name) else {
            continue;
        };
        let Some(addr) = on[name].ip_address.as_deref().and_then(|a| a.parse().ok()) else {
            continue;
        };
        if net.internal {
            internal.get_or_insert(name.clone());
            continue;
        }
        return Ok(Some(addr));
    }
    match internal {
        Some(n) => Err(n),
        None => Ok(None),
    }
}

/// The name Docker shows for `c`.
fn name_of(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_owned())
        .or_else(|| c.id.as_ref().map(|i| i.chars().take(12).collect()))
        .unwrap_or_else(|| "(unnamed)".to_owned())
}

/// The published ports of the running containers `list` on the networks `nets`, for a
/// host whose underlay address is `underlay`. Pure: the listing is Docker's, the checks
/// against the config and the networks are the merge's (sources::desired).
pub fn view(list: &[ContainerSummary], nets: &[Network], underlay: Ipv4Addr) -> View {
    let mut v = View {
        networks: nets.to_vec(),
        ..View::default()
    };
    for c in list {
        let name = name_of(c);
        v.containers += 1;
        let ports = c.ports.as_deref().unwrap_or_default();
        if !ports.iter().any(|p| p.public_port.is_some()) {
            continue;
        }
        let container = match port_address(c, nets) {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                v.skipped.push(format!(
                    "container {name}: its ports are not served (no address on a bridge network netpath serves)"
                ));
                continue;
            }
            Err(internal) => {
                v.skipped.push(format!(
                    "container {name}: its ports are not served (its only network, {internal}, is internal)"
                ));
                continue;
            }
        };
        let mut seen = Vec::new();
        for p in ports {
            let Some(host_port) = p.public_port else {
                continue;
            };
            let proto = match p.typ {
                Some(PortSummaryTypeEnum::TCP) | None => Proto::Tcp,
                Some(PortSummaryTypeEnum::UDP) => Proto::Udp,
                Some(t) => {
                    v.skipped.push(format!(
                        "container {name}: {t}/{host_port}: netpath serves tcp and udp only"
                    ));
                    continue;
                }
            };
            let bound = p.ip.as_deref().unwrap_or("");
            match bound.parse::<std::net::IpAddr>() {
                // Docker lists a port bound to every address twice (0.0.0.0 and ::).
                Ok(std::net::IpAddr::V6(_)) => continue,
                Ok(std::net::IpAddr::V4(a)) if a.is_unspecified() || a == underlay => {}
                Err(_) if bound.is_empty() => {}
                _ => {
                    v.skipped.push(format!(
                        "container {name}: {proto}/{host_port} is bound to {bound}: netpath serves ports on 0.0.0.0 or this host's address ({underlay}); Docker keeps this one"
                    ));
                    continue;
                }
            }
            let publish = Publish {
                proto,
                host_port,
                container,
                port: p.private_port,
            };
            if seen.contains(&publish) {
                continue;
            }
            seen.push(publish);
            v.ports.push(DockerPort {
                container: name.clone(),
                publish,
            });
        }
    }
    v.ports
        .sort_by_key(|p| (p.publish.proto as u8, p.publish.host_port));
    v
}

/// The container's address and MAC on each network of `nets` it is on.
fn on_networks(c: &ContainerSummary, nets: &[Network]) -> Vec<(Ipv4Addr, [u8; 6])> {
    let Some(on) = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
    else {
        return Vec::new();
    };
    on.iter()
        .filter(|(name, _)| nets.iter().any(|n| &n.name == *name))
        .filter_map(|(_, e)| {
            let addr = e.ip_address.as_deref()?.parse().ok()?;
            let mac = crate::state::parse_mac("", e.mac_address.as_deref()?).ok()?;
            Some((addr, mac))
        })
        .collect()
}

/// The host-side ifindex of the veth whose container side has `mac`, in the network
/// namespace of process `pid`: the container's /sys (Docker mounts one in every
/// container, for its own namespace) names each interface's peer (`iflink`).
pub fn veth_of(pid: u32, mac: [u8; 6]) -> Option<u32> {
    let net = std::path::PathBuf::from(format!("/proc/{pid}/root/sys/class/net"));
    let want = crate::state::format_mac(mac);
    std::fs::read_dir(&net).ok()?.flatten().find_map(|i| {
        let addr = std::fs::read_to_string(i.path().join("address")).ok()?;
        if addr.trim() != want {
            return None;
        }
        std::fs::read_to_string(i.path().join("iflink"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// The endpoints of the running containers `list` on the networks `nets` (their
/// processes from `docker inspect`).
async fn endpoints(
    docker: &bollard::Docker,
    list: &[ContainerSummary],
    nets: &[Network],
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for c in list {
        let on = on_networks(c, nets);
        let Some(id) = c.id.as_deref().filter(|_| !on.is_empty()) else {
            continue;
        };
        let pid = docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        let Some(pid) = pid else { continue };
        for (addr, mac) in on {
            if let Some(ifindex) = veth_of(pid, mac) {
                out.push(Endpoint { addr, ifindex, mac });
            }
        }
    }
    out
}

/// A bridge of this network namespace, for [`networks`].
fn resolve_bridge(name: &str) -> Option<(u32, [u8; 6], Vec<ipnet::Ipv4Net>)> {
    use crate::iface::Interfaces;
    let sys = crate::iface::System;
    let ifindex = sys.ifindex(name).ok()?;
    Some((ifindex, sys.mac(name)?, sys.ipv4_addrs(name)))
}

/// A listing: the networks, the view of the running containers on them, their endpoints.
async fn listing(docker: &bollard::Docker, underlay: Ipv4Addr) -> anyhow::Result<View> {
    use anyhow::Context;
    let nets = docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .context("listing the networks")?;
    let (nets, skipped) = networks(&nets, &resolve_bridge);
    let list = list(docker).await?;
    let mut v = view(&list, &nets, underlay);
    v.skipped.splice(0..0, skipped);
    v.endpoints = endpoints(docker, &list, &nets).await;
    Ok(v)
}

/// The Docker ports in the pinned maps: this source until the engine answers.
pub fn live(o: &Observed) -> Vec<DockerPort> {
    o.publish()
        .into_iter()
        .filter(|p| p.origin == Origin::Docker)
        .map(|p| DockerPort {
            container: format!("{}:{}", p.item.container, p.item.port),
            publish: p.item,
        })
        .collect()
}

/// The Docker networks in the pinned maps: this source until the engine answers.
pub fn live_networks(o: &Observed) -> Vec<Network> {
    o.networks
        .iter()
        .filter(|n| n.origin == Origin::Docker)
        .cloned()
        .collect()
}

/// Connects to the engine at `d.socket` and asks it to answer.
pub async fn connect(d: &Docker) -> anyhow::Result<bollard::Docker> {
    use anyhow::Context;
    let socket = d.socket.display().to_string();
    let docker = bollard::Docker::connect_with_unix(&socket, 10, bollard::API_DEFAULT_VERSION)
        .with_context(|| format!("[docker].socket {socket}"))?;
    docker
        .ping()
        .await
        .with_context(|| format!("the Docker engine at {socket} does not answer"))?;
    Ok(docker)
}

/// Lists the running containers.
async fn list(docker: &bollard::Docker) -> anyhow::Result<Vec<ContainerSummary>> {
    use anyhow::Context;
    docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .context("listing the containers")
}

/// What the Docker task tells the agent's loop.
#[derive(Debug)]
pub enum Update {
    /// A new listing.
    View(View),
    /// The engine stopped answering (why).
    Away(String),
}

/// The longest wait between two attempts to reach the engine.
const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts the Docker task: a listing at every connection and after each container event;
/// every new view, and every loss of the engine, arrives on the channel.
pub fn spawn(d: Docker, underlay: Ipv4Addr) -> tokio::sync::mpsc::Receiver<Update> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_secs(1);
        loop {
            match session(&d, underlay, &tx, &mut backoff).await {
                Ok(()) => return, // the agent is gone
                Err(e) => {
                    let why = format!("{e:#}");
                    log::warn!(
                        "docker: {why}; its ports stay as they are; trying again in {} s",
                        backoff.as_secs()
                    );
                    if tx.send(Update::Away(why)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
    rx
}

/// One connection to the engine, until it fails. Ok only when the agent has gone.
async fn session(
    d: &Docker,
    underlay: Ipv4Addr,
    tx: &tokio::sync::mpsc::Sender<Update>,
    backoff: &mut std::time::Duration,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let docker = connect(d).await?;
    // The events since a second before the listing (the stream's request goes out when
    // it is first polled, after the listing; `since` replays what happened between):
    // nothing between the two is missed, at worst one listing too many.
    let since = crate::maps::now().saturating_sub(1).to_string();
    let filters = HashMap::from([(
        "type".to_owned(),
        vec!["container".to_owned(), "network".to_owned()],
    )]);
    let mut events = docker.events(Some(EventsOptions {
        since: Some(since),
        filters: Some(filters),
        ..Default::default()
    }));
    let mut last = listing(&docker, underlay).await?;
    log::info!(
        "docker: {} bridge networks ({}), {} running containers ({} endpoints on them), {} published ports (engine at {})",
        last.networks.len(),
        last.networks
            .iter()
            .map(|n| format!("{} {} on {}", n.name, n.subnet, n.bridge))
            .collect::<Vec<_>>()
            .join(", "),
        last.containers,
        last.endpoints.len(),
        last.ports.len(),
        d.socket.display()
    );
    *backoff = std::time::Duration::from_secs(1);
    if tx.send(Update::View(last.clone())).await.is_err() {
        return Ok(());
    }
    loop {
        let ev = events
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the engine closed its event stream"))?;
        let ev = ev.map_err(|e| anyhow::anyhow!("following the engine's events: {e}"))?;
        let action = ev.action.as_deref().unwrap_or("");
        // Only what changes the networks, the running set or its ports.
        if !matches!(
            action,
            "start"
                | "die"
                | "stop"
                | "kill"
                | "destroy"
                | "pause"
                | "unpause"
                | "restart"
                | "create"
                | "connect"
                | "disconnect"
        ) {
            continue;
        }
        // Coalesce a burst (a stop is kill, die, stop).
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(20), events.next()).await
        {
        }
        let now = listing(&docker, underlay).await?;
        if now != last {
            last = now.clone();
            if tx.send(Update::View(now)).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerSummaryNetworkSettings, EndpointSettings, PortSummary};

    fn container(name: &str, ip: Option<&str>, ports: Vec<PortSummary>) -> ContainerSummary {
        on(
            name,
            ip.map(|ip| vec![("bridge", ip)]).unwrap_or_default(),
            ports,
        )
    }

    /// A container on the networks `nets` (name, address).
    fn on(name: &str, nets: Vec<(&str, &str)>, ports: Vec<PortSummary>) -> ContainerSummary {
        ContainerSummary {
            id: Some(format!("{name}0123456789abcdef")),
            names: Some(vec![format!("/{name}")]),
            ports: Some(ports),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: (!nets.is_empty()).then(|| {
                    nets.into_iter()
                        .map(|(n, ip)| {
                            let e = EndpointSettings {
                                ip_address: Some(ip.to_owned()),
                                ..Default::default()
                            };
                            (n.to_owned(), e)
                        })
                        .collect()
                }),
            }),
            ..Default::default()
        }
    }

    /// Docker's listing of a network.
    fn net(
        name: &str,
        driver: &str,
        subnet: Option<&str>,
        opts: &[(&str, &str)],
        internal: bool,
    ) -> bollard::models::Network {
        bollard::models::Network {
            name: Some(name.to_owned()),
            id: Some(format!("{:0<64}", name.len())),
            driver: Some(driver.to_owned()),
            internal: Some(internal),
            options: Some(
                opts.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ipam: Some(bollard::models::Ipam {
                config: subnet.map(|s| {
                    vec![bollard::models::IpamConfig {
                        subnet: Some(s.to_owned()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The bridges of a host: docker0 (10.244.11.1/24) and br-<id> of each network.
    fn resolve(name: &str) -> Option<(u32, [u8; 6], Vec<ipnet::Ipv4Net>)> {
        match name {
            "docker0" => Some((
                3,
                [2, 0, 0, 0, 0, 3],
                vec!["10.244.11.1/24".parse().unwrap()],
            )),
            "gone" => None,
            n => Some((n.len() as u32 + 100, [2, 0, 0, 0, 0, 4], vec![])),
        }
    }

    /// Docker's default network, on docker0.
    fn docker0() -> bollard::models::Network {
        let opts = [(OPT_BRIDGE_NAME, "docker0")];
        net("bridge", "bridge", Some("10.244.11.0/24"), &opts, false)
    }

    fn served() -> Vec<Network> {
        let list = vec![
            docker0(),
            net("app", "bridge", Some("10.244.12.0/24"), &[], false),
            net("back", "bridge", Some("10.244.13.0/24"), &[], true),
        ];
        networks(&list, &resolve).0
    }

    #[test]
    fn bridge_networks_are_served_and_the_others_skipped_with_why() {
        let list = vec![
            docker0(),
            net("host", "host", None, &[], false),
            net("none", "null", None, &[], false),
            net(
                "quiet",
                "bridge",
                Some("10.244.12.0/24"),
                &[(OPT_MASQUERADE, "false")],
                false,
            ),
            net("sealed", "bridge", Some("10.244.13.0/24"), &[], true),
            net("v6only", "bridge", Some("fd00:1::/64"), &[], false),
            net(
                "elsewhere",
                "bridge",
                Some("10.250.0.0/24"),
                &[(OPT_BRIDGE_NAME, "gone")],
                false,
            ),
            net("ov", "overlay", Some("10.0.9.0/24"), &[], false),
        ];
        let (nets, skipped) = networks(&list, &resolve);
        let got: Vec<String> = nets
            .iter()
            .map(|n| {
                format!(
                    "{} {} {} gw {:?} masquerade {} internal {}",
                    n.name, n.bridge, n.subnet, n.gateway, n.masquerade, n.internal
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "bridge docker0 10.244.11.0/24 gw Some(10.244.11.1) masquerade true internal false",
                "quiet br-500000000000 10.244.12.0/24 gw None masquerade false internal false",
                "sealed br-600000000000 10.244.13.0/24 gw None masquerade true internal true",
            ]
        );
        assert_eq!(nets[0].bridge_ifindex, 3);
        let skipped = skipped.join("\n");
        assert!(
            skipped.contains("network v6only: no IPv4 subnet"),
            "{skipped}"
        );
        assert!(
            skipped.contains("network elsewhere: its bridge gone is not in this network namespace"),
            "{skipped}"
        );
        assert!(skipped.contains("network ov: driver overlay"), "{skipped}");
        assert_eq!(skipped.lines().count(), 3, "{skipped}");
    }

    #[test]
    fn ports_lead_to_the_address_on_the_network_with_a_way_out() {
        use PortSummaryTypeEnum::*;
        let p = || vec![port("0.0.0.0", 80, Some(8080), TCP)];
        let nets = served();
        let cases = [
            (vec![("app", "10.244.12.2")], Some("10.244.12.2")),
            (
                vec![("app", "10.244.12.2"), ("bridge", "10.244.11.2")],
                Some("10.244.11.2"),
            ),
            (
                vec![("back", "10.244.13.2"), ("app", "10.244.12.2")],
                Some("10.244.12.2"),
            ),
            (vec![("back", "10.244.13.2")], None),
            (vec![("unknown", "10.9.9.9")], None),
        ];
        for (on_nets, want) in cases {
            let label = format!("{on_nets:?}");
            let v = view(&[on("c", on_nets, p())], &nets, Ipv4Addr::UNSPECIFIED);
            let got = v.ports.first().map(|p| p.publish.container.to_string());
            assert_eq!(got.as_deref(), want, "{label}");
            if want.is_none() {
                assert_eq!(v.skipped.len(), 1, "{label}");
            }
        }
        let v = view(
            &[on("db", vec![("back", "10.244.13.2")], p())],
            &nets,
            Ipv4Addr::UNSPECIFIED,
        );
        assert!(
            v.skipped[0].contains("its only network, back, is internal"),
            "{:?}",
            v.skipped
        );
    }

    fn port(ip: &str, private: u16, public: Option<u16>, t: PortSummaryTypeEnum) -> PortSummary {
        PortSummary {
            ip: Some(ip.to_owned()),
            private_port: private,
            public_port: public,
            typ: Some(t),
        }
    }

    #[test]
    fn published_ports_become_ports_and_the_rest_is_skipped_with_why() {
        use PortSummaryTypeEnum::*;
        let underlay: Ipv4Addr = "198.18.0.11".parse().unwrap();
        let list = vec![
            container(
                "web",
                Some("10.244.11.2"),
                vec![
                    port("0.0.0.0", 80, Some(8080), TCP),
                    port("::", 80, Some(8080), TCP),
                    port("198.18.0.11", 53, Some(5353), UDP),
                    port("127.0.0.1", 22, Some(2222), TCP),
                    port("", 9000, None, TCP),
                    port("0.0.0.0", 7, Some(7007), SCTP),
                ],
            ),
            container("quiet", Some("10.244.11.3"), vec![]),
            container(
                "other-net",
                None,
                vec![port("0.0.0.0", 80, Some(8081), TCP)],
            ),
        ];
        let v = view(&list, &served(), underlay);
        assert_eq!(v.containers, 3);
        let got: Vec<(String, Proto, u16, String, u16)> = v
            .ports
            .iter()
            .map(|p| {
                (
                    p.container.clone(),
                    p.publish.proto,
                    p.publish.host_port,
                    p.publish.container.to_string(),
                    p.publish.port,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("web".into(), Proto::Tcp, 8080, "10.244.11.2".into(), 80),
                ("web".into(), Proto::Udp, 5353, "10.244.11.2".into(), 53),
            ]
        );
        let skipped = v.skipped.join("\n");
        assert!(
            skipped.contains("tcp/2222 is bound to 127.0.0.1"),
            "{skipped}"
        );
        assert!(skipped.contains("sctp/7007"), "{skipped}");
        assert!(skipped.contains("container other-net"), "{skipped}");
        assert!(
            skipped.contains("no address on a bridge network netpath serves"),
            "{skipped}"
        );
        assert_eq!(v.skipped.len(), 3, "{skipped}");
    }

    #[test]
    fn a_listing_of_garbage_is_skipped_not_trusted() {
        // Every field missing: counted, nothing served, no panic.
        let v = view(
            &[ContainerSummary::default()],
            &served(),
            Ipv4Addr::UNSPECIFIED,
        );
        assert_eq!(v.containers, 1);
        assert!(v.ports.is_empty());
    }
}
