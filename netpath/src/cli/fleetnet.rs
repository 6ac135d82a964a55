//! `netpath network create|rm|show`: networks across hosts, as etcd holds them (through the
//! `[etcd]` section of a config). The agents make each one on their Docker
//! (agent/dockernet.rs) and hand out its addresses (agent/ipam.rs).

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    maps::Maps,
    pin::PinDir,
    sources::fleetnet::{self, Create, FleetNet},
    state::Etcd,
};

fn etcd_of(config: &Path) -> Result<(String, Etcd)> {
    use crate::sources::file::{Config, Parsed};
    let (name, etcd) = match Config::load_leasing(config)? {
        Parsed::Ready(cfg) => (cfg.host.name, cfg.etcd),
        Parsed::Unleased(u) => (u.host.name, Some(u.etcd)),
    };
    let etcd = etcd.with_context(|| {
        format!(
            "{} has no [etcd] section: networks across hosts live in etcd",
            config.display()
        )
    })?;
    Ok((name, etcd))
}

/// `network create`.
pub fn create(config: &Path, c: Create) -> Result<()> {
    let (_, e) = etcd_of(config)?;
    let n = super::runtime()?.block_on(async {
        let mut client = crate::sources::etcd::connect(&e).await?;
        fleetnet::create(&mut client, &e.prefix, &c).await
    })?;
    println!(
        "network {} across hosts: subnet {}, gateway {}, {}, vni {}{}{}; every host's agent makes it on its Docker (`docker network ls`), then `docker run --net {}`",
        n.name,
        n.subnet,
        n.gateway,
        n.mode,
        n.vni,
        if n.masquerade { ", masqueraded" } else { "" },
        if n.internal { ", internal" } else { "" },
        n.name
    );
    Ok(())
}

/// `network rm`.
pub fn remove(config: &Path, name: &str) -> Result<()> {
    let (_, e) = etcd_of(config)?;
    let n = super::runtime()?.block_on(async {
        let mut client = crate::sources::etcd::connect(&e).await?;
        fleetnet::remove(&mut client, &e.prefix, name).await
    })?;
    println!(
        "network {} ({}) removed from etcd; every host's agent removes it from its Docker",
        n.name, n.subnet
    );
    Ok(())
}

#[derive(Serialize)]
struct Show {
    #[serde(flatten)]
    network: FleetNet,
    /// Addresses held, by host.
    hosts: BTreeMap<String, Vec<std::net::Ipv4Addr>>,
    /// Whether this host's datapath has the network (None: no datapath here).
    here: Option<bool>,
    /// Containers of it on other hosts that this host routes to.
    routed_here: Option<usize>,
}

/// `network show`.
pub fn show(config: &Path, pins: &PinDir, name: &str, json: bool) -> Result<()> {
    let (_, e) = etcd_of(config)?;
    let listing = super::runtime()?.block_on(async {
        let mut client = crate::sources::etcd::connect(&e).await?;
        fleetnet::list(&mut client, &e.prefix, 0).await
    })?;
    let network = listing
        .networks
        .values()
        .find(|n| n.name == name)
        .cloned()
        .with_context(|| {
            let known: Vec<&str> = listing.networks.values().map(|n| n.name.as_str()).collect();
            format!(
                "no network across hosts named {name:?}; known: {}",
                if known.is_empty() {
                    "none (`netpath network create`)".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })?;
    let mut hosts: BTreeMap<String, Vec<std::net::Ipv4Addr>> = BTreeMap::new();
    for h in listing.held.values().filter(|h| h.network == name) {
        hosts.entry(h.host.clone()).or_default().push(h.addr);
    }
    for v in hosts.values_mut() {
        v.sort();
    }
    let (here, routed_here) = match Maps::open(pins) {
        Ok(maps) => {
            let nets = crate::reconcile::networks::observe(&maps)?;
            let remote = crate::reconcile::remote::installed(&maps)?;
            let has = nets
                .iter()
                .any(|n| n.name == name && n.span.is_some() && n.subnet == network.subnet);
            let routed = remote
                .keys()
                .filter(|a| network.subnet.contains(&crate::maps::addr_of(**a)))
                .count();
            (Some(has), Some(routed))
        }
        Err(_) => (None, None),
    };
    let s = Show {
        network,
        hosts,
        here,
        routed_here,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let n = &s.network;
    println!(
        "network {}: subnet {}, gateway {}, {} (vni {}), {}{}",
        n.name,
        n.subnet,
        n.gateway,
        n.mode,
        n.vni,
        if n.masquerade {
            "masqueraded to the outside"
        } else {
            "not masqueraded"
        },
        if n.internal { ", internal" } else { "" }
    );
    match (s.here, s.routed_here) {
        (Some(true), Some(r)) => {
            println!("this host: has it; routes to {r} of its containers on other hosts")
        }
        (Some(false), _) => {
            println!("this host: does not have it yet (is the agent running with [docker]?)")
        }
        _ => println!("this host: no datapath here"),
    }
    println!("{:<24} {:>10}  ADDRESSES", "HOST", "CONTAINERS");
    for (h, addrs) in &s.hosts {
        let list: Vec<String> = addrs.iter().take(8).map(|a| a.to_string()).collect();
        let more = if addrs.len() > 8 { " ..." } else { "" };
        println!("{h:<24} {:>10}  {}{more}", addrs.len(), list.join(" "));
    }
    Ok(())
}
