//! Networks across hosts on this host's Docker: every network etcd has becomes a Docker
//! bridge network of the same name, subnet and gateway, with netpath as its IPAM driver
//! (agent/ipam.rs) and the label `netpath.network`; one that etcd no longer has is removed
//! once no container is on it. So a `netpath network create` on one host is a `docker
//! network ls` line on every host.
//!
//! A task of its own, away from the plugin's handlers: creating a network makes Docker
//! call the plugin, which answers from etcd. It runs on every new view of etcd's networks
//! and every [`CHECK_EVERY`] (a dockerd restarted, a network removed by hand).
//!
//! It also starts the containers that Docker could not start without netpath: a dockerd
//! that boots before the agent tries each restart-policy container on a network across
//! hosts once, fails to reach the plugin, and never tries again. The agent starts those
//! (`--restart always` or `unless-stopped`, not running, Docker's last error naming the
//! plugin).

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result};
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use tokio::sync::watch;

use crate::{
    sources::{
        docker::connect,
        fleetnet::{FleetNet, IPAM_OPT_NETWORK, LABEL_NETWORK, disagrees},
    },
    state::{Docker, Mode},
};

pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Starts the task: `nets` is etcd's latest word on the networks across hosts (None: not
/// heard yet, nothing is done). `mtu`: the containers' MTU in a vxlan network.
pub fn spawn(d: Docker, nets: watch::Receiver<Option<Vec<FleetNet>>>, vxlan_mtu: u32) {
    tokio::spawn(run(d, nets, vxlan_mtu));
}

async fn run(d: Docker, mut nets: watch::Receiver<Option<Vec<FleetNet>>>, vxlan_mtu: u32) {
    // What was last said of each network, so that a problem is logged once, not every pass.
    let mut said: HashMap<String, String> = HashMap::new();
    loop {
        let want = nets.borrow_and_update().clone();
        if let Some(want) = want {
            match connect(&d).await {
                Ok(docker) => {
                    if let Err(e) = ensure(&docker, &d, &want, vxlan_mtu, &mut said).await {
                        log::warn!("docker: making the networks across hosts: {e:#}");
                    }
                    if let Err(e) = revive(&docker, &d.plugin).await {
                        log::warn!("docker: starting the containers Docker could not: {e:#}");
                    }
                }
                Err(e) => log::debug!("docker: {e:#}; the networks across hosts wait"),
            }
        }
        tokio::select! {
            changed = nets.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// The request that makes `f` on this host.
pub fn request(f: &FleetNet, plugin: &str, vxlan_mtu: u32) -> NetworkCreateRequest {
    let mut options = HashMap::from([(
        "com.docker.network.bridge.enable_ip_masquerade".to_owned(),
        f.masquerade.to_string(),
    )]);
    if f.mode == Mode::Vxlan {
        options.insert(
            "com.docker.network.driver.mtu".to_owned(),
            vxlan_mtu.to_string(),
        );
    }
    NetworkCreateRequest {
        name: f.name.clone(),
        driver: Some("bridge".to_owned()),
        internal: Some(f.internal),
        ipam: Some(Ipam {
            driver: Some(plugin.to_owned()),
            config: Some(vec![IpamConfig {
                subnet: Some(f.subnet.to_string()),
                gateway: Some(f.gateway.to_string()),
                ..Default::default()
            }]),
            options: Some(HashMap::from([(
                IPAM_OPT_NETWORK.to_owned(),
                f.name.clone(),
            )])),
        }),
        options: Some(options),
        labels: Some(HashMap::from([(LABEL_NETWORK.to_owned(), f.name.clone())])),
        ..Default::default()
    }
}

async fn ensure(
    docker: &bollard::Docker,
    d: &Docker,
    want: &[FleetNet],
    vxlan_mtu: u32,
    said: &mut HashMap<String, String>,
) -> Result<()> {
    let have = docker
        .list_networks(None)
        .await
        .context("listing the networks")?;
    let mut say = |name: &str, what: String, warn: bool| {
        if said.get(name) != Some(&what) {
            if what.is_empty() {
                // All is well again: nothing to say, but the next problem is said.
            } else if warn {
                log::warn!("docker: {what}");
            } else {
                log::info!("docker: {what}");
            }
            said.insert(name.to_owned(), what);
        }
    };
    for f in want {
        let Some(n) = have
            .iter()
            .find(|n| n.name.as_deref() == Some(f.name.as_str()))
        else {
            match docker
                .create_network(request(f, &d.plugin, vxlan_mtu))
                .await
            {
                Ok(r) => say(
                    &f.name,
                    format!(
                        "made network {} ({}, {}) across hosts: id {}",
                        f.name,
                        f.subnet,
                        f.mode,
                        &r.id[..r.id.len().min(12)]
                    ),
                    false,
                ),
                Err(e) => say(
                    &f.name,
                    format!("cannot make network {} across hosts: {e}", f.name),
                    true,
                ),
            }
            continue;
        };
        let ours = n
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_NETWORK))
            .is_some_and(|v| v == &f.name);
        if !ours {
            say(
                &f.name,
                format!(
                    "a network named {} exists that netpath did not make: it is not the network across hosts of that name (remove it with `docker network rm {}`)",
                    f.name, f.name
                ),
                true,
            );
        } else if let Some(why) = disagrees(f, n, &d.plugin) {
            say(&f.name, why, true);
        } else {
            say(&f.name, String::new(), false);
        }
    }
    for n in &have {
        let Some(name) = n.labels.as_ref().and_then(|l| l.get(LABEL_NETWORK)) else {
            continue;
        };
        if want.iter().any(|f| &f.name == name) {
            continue;
        }
        let id = n.id.clone().unwrap_or_default();
        match docker.remove_network(&id).await {
            Ok(()) => log::info!("docker: removed network {name}: etcd no longer has it"),
            Err(e) => say(
                name,
                format!("network {name} is gone from etcd but stays here: {e}"),
                true,
            ),
        }
    }
    Ok(())
}

/// Starts the restart-policy containers that Docker gave up on because the plugin was
/// not there (see the module comment). Returns how many it started.
async fn revive(docker: &bollard::Docker, plugin: &str) -> Result<usize> {
    use bollard::query_parameters::ListContainersOptions;
    let filters = HashMap::from([(
        "status".to_owned(),
        vec!["exited".to_owned(), "created".to_owned()],
    )]);
    let stopped = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .context("listing the stopped containers")?;
    let mut started = 0;
    for c in stopped {
        let Some(id) = c.id else { continue };
        let Ok(info) = docker.inspect_container(&id, None).await else {
            continue;
        };
        let policy = info
            .host_config
            .as_ref()
            .and_then(|h| h.restart_policy.as_ref())
            .and_then(|p| p.name)
            .map(|n| n.to_string())
            .unwrap_or_default();
        let error = info
            .state
            .as_ref()
            .and_then(|s| s.error.clone())
            .unwrap_or_default();
        if !matches!(policy.as_str(), "always" | "unless-stopped")
            || !error.contains(&format!("{plugin}.sock"))
        {
            continue;
        }
        let name = info.name.unwrap_or_default();
        match docker.start_container(&id, None).await {
            Ok(()) => {
                started += 1;
                log::info!(
                    "docker: started container {} (--restart {policy}), which Docker could not start without netpath's plugin",
                    name.trim_start_matches('/')
                );
            }
            Err(e) => log::warn!(
                "docker: starting container {}: {e}",
                name.trim_start_matches('/')
            ),
        }
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net1() -> FleetNet {
        FleetNet {
            name: "net1".to_owned(),
            subnet: "10.10.10.0/24".parse().unwrap(),
            gateway: "10.10.10.1".parse().unwrap(),
            mode: Mode::Vxlan,
            vni: 4096,
            masquerade: true,
            internal: false,
        }
    }

    /// Docker's network as the agent's own request makes it.
    fn made(f: &FleetNet) -> bollard::models::Network {
        let r = request(f, "netpath", 1450);
        bollard::models::Network {
            name: Some(r.name),
            driver: r.driver,
            ipam: r.ipam,
            labels: r.labels,
            ..Default::default()
        }
    }

    #[test]
    fn the_network_the_agent_makes_agrees_and_every_difference_is_named() {
        let f = net1();
        assert_eq!(disagrees(&f, &made(&f), "netpath"), None);
        let r = request(&f, "netpath", 1450);
        assert_eq!(
            r.options.unwrap()["com.docker.network.driver.mtu"],
            "1450",
            "vxlan: the overhead left out of the MTU"
        );
        // Docker reports the gateway without a prefix; some versions with one.
        let mut n = made(&f);
        n.ipam.as_mut().unwrap().config.as_mut().unwrap()[0].gateway =
            Some("10.10.10.1/24".to_owned());
        assert_eq!(disagrees(&f, &n, "netpath"), None);

        let mut n = made(&f);
        n.labels = None;
        n.driver = Some("macvlan".to_owned());
        n.ipam = Some(Ipam {
            driver: Some("default".to_owned()),
            config: Some(vec![IpamConfig {
                subnet: Some("10.10.20.0/24".to_owned()),
                gateway: Some("10.10.20.1".to_owned()),
                ..Default::default()
            }]),
            options: None,
        });
        let why = disagrees(&f, &n, "netpath").unwrap();
        for part in [
            "label netpath.network=(none)",
            "driver macvlan, not bridge",
            "IPAM driver default, not netpath",
            "subnet 10.10.20.0/24, etcd's is 10.10.10.0/24",
            "gateway 10.10.20.1, etcd's is 10.10.10.1",
            "docker network rm net1",
        ] {
            assert!(why.contains(part), "{part}: {why}");
        }
        // Another plugin name in the config: not this agent's network.
        assert!(
            disagrees(&f, &made(&f), "other")
                .unwrap()
                .contains("IPAM driver netpath, not other")
        );
        // Nothing at all from Docker: said, never a panic.
        let why = disagrees(&f, &bollard::models::Network::default(), "netpath").unwrap();
        assert!(why.contains("subnet (none), etcd's"), "{why}");
    }
}
