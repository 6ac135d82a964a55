//! Docker as a source (`[docker]`): the ports Docker publishes for its running containers
//! (`docker run -p [IP:]HOST:CONTAINER[/tcp|udp]`), served by netpath in BPF (origin
//! `docker`), so that they answer with `"userland-proxy": false` and a flushed nat table.
//!
//! The engine is read, never written: a full listing of the running containers at every
//! connection and after every container event (start, die, destroy, ...), so a restart of
//! dockerd or of the agent resyncs from a listing and leaves nothing stale. While the
//! engine does not answer, the ports the pinned maps hold stand ([`live`]).
//!
//! Docker reports every field as optional (bollard's models): a container without an
//! address on the bridge network, a port without a host port, or one bound to an address
//! that is neither 0.0.0.0 nor this host's underlay address is skipped with why.

use std::{collections::HashMap, net::Ipv4Addr};

use bollard::{
    models::{ContainerSummary, PortSummaryTypeEnum},
    query_parameters::{EventsOptions, ListContainersOptions},
};

use crate::{
    reconcile::Observed,
    state::{Docker, Endpoint, Origin, Proto, Publish},
};

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
    /// Ports left out, each with why.
    pub skipped: Vec<String>,
    /// The containers on the default bridge network as endpoints: address and MAC as
    /// Docker gave them, the host side of their veth (see [`veth_of`]).
    pub endpoints: Vec<Endpoint>,
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

/// The published ports of the running containers `list`, for a host whose underlay
/// address is `underlay`. Pure: the listing is Docker's, the checks against the config
/// and the subnet are the merge's (sources::desired).
pub fn view(list: &[ContainerSummary], underlay: Ipv4Addr) -> View {
    let mut v = View::default();
    for c in list {
        let name = name_of(c);
        v.containers += 1;
        let ports = c.ports.as_deref().unwrap_or_default();
        if !ports.iter().any(|p| p.public_port.is_some()) {
            continue;
        }
        let addr = bridge_endpoint(c)
            .and_then(|e| e.ip_address.as_deref())
            .and_then(|a| a.parse::<Ipv4Addr>().ok());
        let Some(container) = addr else {
            v.skipped.push(format!(
                "container {name}: its ports are not served (no address on Docker's default bridge network)"
            ));
            continue;
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

/// The container's endpoint on Docker's default bridge network ("bridge", docker0): the
/// one netpath serves.
fn bridge_endpoint(c: &ContainerSummary) -> Option<&bollard::models::EndpointSettings> {
    c.network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get("bridge")
}

/// The container's address and MAC on Docker's default bridge network.
fn on_bridge(c: &ContainerSummary) -> Option<(Ipv4Addr, [u8; 6])> {
    let e = bridge_endpoint(c)?;
    let addr = e.ip_address.as_deref()?.parse().ok()?;
    let mac = crate::state::parse_mac("", e.mac_address.as_deref()?).ok()?;
    Some((addr, mac))
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

/// The endpoints of the running containers `list` (their processes from `docker inspect`).
async fn endpoints(docker: &bollard::Docker, list: &[ContainerSummary]) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for c in list {
        let (Some(id), Some((addr, mac))) = (c.id.as_deref(), on_bridge(c)) else {
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
        if let Some(ifindex) = pid.and_then(|p| veth_of(p, mac)) {
            out.push(Endpoint { addr, ifindex, mac });
        }
    }
    out
}

/// A listing: the view of `list`, with its endpoints.
async fn listing(docker: &bollard::Docker, underlay: Ipv4Addr) -> anyhow::Result<View> {
    let list = list(docker).await?;
    let mut v = view(&list, underlay);
    v.endpoints = endpoints(docker, &list).await;
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

/// Connects to the engine at `d.socket` and asks it to answer.
async fn connect(d: &Docker) -> anyhow::Result<bollard::Docker> {
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
    let filters = HashMap::from([("type".to_owned(), vec!["container".to_owned()])]);
    let mut events = docker.events(Some(EventsOptions {
        since: Some(since),
        filters: Some(filters),
        ..Default::default()
    }));
    let mut last = listing(&docker, underlay).await?;
    log::info!(
        "docker: {} running containers ({} on the default bridge network), {} published ports (engine at {})",
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
        // Only what changes the running set or its ports.
        if !matches!(
            action,
            "start" | "die" | "stop" | "kill" | "destroy" | "pause" | "unpause" | "restart"
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
        ContainerSummary {
            id: Some(format!("{name}0123456789abcdef")),
            names: Some(vec![format!("/{name}")]),
            ports: Some(ports),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: ip.map(|ip| {
                    HashMap::from([(
                        "bridge".to_owned(),
                        EndpointSettings {
                            ip_address: Some(ip.to_owned()),
                            ..Default::default()
                        },
                    )])
                }),
            }),
            ..Default::default()
        }
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
        let v = view(&list, underlay);
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
        assert_eq!(v.skipped.len(), 3, "{skipped}");
    }

    #[test]
    fn a_listing_of_garbage_is_skipped_not_trusted() {
        // Every field missing: counted, nothing served, no panic.
        let v = view(&[ContainerSummary::default()], Ipv4Addr::UNSPECIFIED);
        assert_eq!(v.containers, 1);
        assert!(v.ports.is_empty());
    }
}
