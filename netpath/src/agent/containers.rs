//! The agent's side of the local containers: np_from_bridge on the bridge of each network
//! but the `[host].bridge` (attached at start), np_from_container on each port of the
//! networks' bridges, the containers' gateway in `NP_CONFIG`, and `NP_ENDPOINTS` made to
//! say what the kernel's neighbours and Docker say (sources::neigh).
//!
//! [`sync`] reads everything: every link, neighbour and forwarding entry, and the map (at
//! the start, on the collector's tick as the repair, and when only a full reading can
//! tell). Between two, [`follow`] takes each rtnetlink event and [`follow_docker`] each
//! Docker view as what they are: a port that came or went, a neighbour or forwarding entry
//! of one address; only the endpoints of the addresses they touch are decided again and
//! written, so that one container more costs the same on a host of 5,000 as on an empty
//! one.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use netpath_common::prog_names;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::{Done, News, Views, apply};
use crate::{
    datapath::attach,
    maps::Maps,
    pin::PinDir,
    reconcile::{self, endpoints::EndpointChanges},
    sources::{
        file::Config,
        neigh::{self, Endpoints, Kernel, Touched},
    },
    state::Endpoint,
};

/// A burst of more events than this is taken as a full reading (see the agent's loop).
pub(super) const STORM: usize = 2000;

/// What the agent knows of the local containers since its last full reading: the
/// kernel's word, followed since by each event, and what it left in `NP_ENDPOINTS`.
#[derive(Debug, Default)]
pub(super) struct Containers {
    kernel: Kernel,
    endpoints: Endpoints,
}

/// The whole reading (see the module's doc). Logs what changed; a failure is logged, and
/// the next event reads everything again.
pub(super) async fn sync(
    ebpf: &mut aya::Ebpf,
    maps: &mut Maps,
    pins: &PinDir,
    handle: &rtnetlink::Handle,
    cfg: &mut Config,
    done: &mut Done,
    views: &Views,
) {
    done.containers = None;
    if follow_gateway(maps, cfg) {
        // The [host].bridge's network follows its address.
        apply(maps, &mut done.mirror, pins, cfg, views, News::Gateway);
    }
    let nets = match reconcile::networks::observe(maps) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("reading the networks: {e:#}");
            return;
        }
    };
    let t0 = std::time::Instant::now();
    let mut by_bridge = match neigh::bridge_ports(handle).await {
        Ok(p) => p,
        Err(e) => {
            log::warn!("listing the bridges' ports: {e:#}");
            return;
        }
    };
    let bridges: Vec<(u32, String)> = nets
        .iter()
        .filter(|n| n.bridge_ifindex != cfg.host.bridge_ifindex)
        .map(|n| (n.bridge_ifindex, n.bridge.clone()))
        .collect();
    let mut ports: HashMap<u32, (u32, String)> = HashMap::new();
    for n in &nets {
        for (i, name) in by_bridge.remove(&n.bridge_ifindex).unwrap_or_default() {
            ports.insert(i, (n.bridge_ifindex, name));
        }
    }
    let port_list: Vec<(u32, String)> = ports.iter().map(|(i, (_, n))| (*i, n.clone())).collect();
    for (prog, ifaces, done, what) in [
        (
            prog_names::FROM_BRIDGE,
            &bridges,
            &mut done.bridges,
            "network bridges",
        ),
        (
            prog_names::FROM_CONTAINER,
            &port_list,
            &mut done.ports,
            "container ports",
        ),
    ] {
        let (changes, errors) = attach::sync_iface_links(ebpf, pins, prog, ifaces, done);
        log_ports(prog, what, &changes, errors);
    }
    let attached = t0.elapsed();
    let result = async {
        let installed = reconcile::endpoints::observe(maps)?;
        let on: Vec<u32> = nets.iter().map(|n| n.bridge_ifindex).collect();
        let is_port = |i: u32| ports.contains_key(&i);
        let bridges = neigh::read(handle, &on, &is_port).await?;
        let mut kernel = Kernel {
            nets,
            bridges,
            ports,
            docker: Endpoints::default(),
        };
        kernel.set_docker(docker(views));
        let desired = kernel.endpoints(&installed);
        let changes = reconcile::endpoints::reconcile(maps, &installed, &desired)?;
        let endpoints = desired.into_iter().collect();
        anyhow::Ok((Containers { kernel, endpoints }, changes))
    };
    match result.await {
        Ok((c, changes)) => {
            log::debug!(
                "containers: read every link, neighbour and forwarding entry: {} ports, {} endpoints, in {} ms ({} ms for the links and the programs)",
                c.kernel.ports.len(),
                c.endpoints.len(),
                t0.elapsed().as_millis(),
                attached.as_millis()
            );
            log_endpoints(&changes);
            done.containers = Some(c);
        }
        Err(e) => log::warn!("updating the endpoints: {e:#}"),
    }
}

/// Follows a burst of rtnetlink events `msgs` (see the module's doc). What they cannot
/// say alone (a network's bridge gone, the networks changed, events lost, no reading yet)
/// makes a whole reading.
#[allow(clippy::too_many_arguments)]
pub(super) async fn follow(
    ebpf: &mut aya::Ebpf,
    maps: &mut Maps,
    pins: &PinDir,
    handle: &rtnetlink::Handle,
    cfg: &mut Config,
    done: &mut Done,
    views: &Views,
    msgs: &[NetlinkMessage<RouteNetlinkMessage>],
) {
    let mut events = Vec::with_capacity(msgs.len());
    for m in msgs {
        match &m.payload {
            NetlinkPayload::InnerMessage(r) => events.push(neigh::event(r)),
            // The socket overran: events were lost.
            NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_) => done.containers = None,
            _ => {}
        }
    }
    if events.contains(&neigh::Event::Address) && follow_gateway(maps, cfg) {
        apply(maps, &mut done.mirror, pins, cfg, views, News::Gateway);
    }
    if !still_valid(maps, done) {
        return sync(ebpf, maps, pins, handle, cfg, done, views).await;
    }
    let Some(c) = done.containers.as_mut() else {
        return;
    };
    let mut t = Touched::default();
    for e in &events {
        c.kernel.apply(e, &c.endpoints, &mut t);
    }
    if t.reread {
        return sync(ebpf, maps, pins, handle, cfg, done, views).await;
    }
    let prog = prog_names::FROM_CONTAINER;
    let (mut changes, errors) =
        attach::attach_ifaces(ebpf, pins, prog, &t.new_ports, &mut done.ports);
    for i in &t.gone_ports {
        changes.removed += attach::detach_iface(pins, prog, *i, &mut done.ports) as usize;
    }
    log_ports(prog, "container ports", &changes, errors);
    log::debug!(
        "containers: followed {} events: {} ports came, {} went, {} addresses decided again",
        events.len(),
        t.new_ports.len(),
        t.gone_ports.len(),
        t.addrs.len()
    );
    decide(maps, done, &t.addrs);
}

/// Follows Docker's new view in `views` (its containers' addresses, MACs and veths),
/// after its networks were reconciled: a whole reading if they changed.
pub(super) async fn follow_docker(
    ebpf: &mut aya::Ebpf,
    maps: &mut Maps,
    pins: &PinDir,
    handle: &rtnetlink::Handle,
    cfg: &mut Config,
    done: &mut Done,
    views: &Views,
) {
    if !still_valid(maps, done) {
        return sync(ebpf, maps, pins, handle, cfg, done, views).await;
    }
    if let Some(c) = done.containers.as_mut() {
        let touched = c.kernel.set_docker(docker(views));
        decide(maps, done, &touched);
    }
}

/// Whether the last reading still holds: there is one, and `NP_NETWORKS` still says what
/// it was made for (a few entries: a network's change, or the gateway's, needs another).
fn still_valid(maps: &Maps, done: &mut Done) -> bool {
    let Some(c) = &done.containers else {
        return false;
    };
    match reconcile::networks::observe(maps) {
        Ok(nets) => nets == c.kernel.nets,
        Err(e) => {
            log::warn!("reading the networks: {e:#}");
            false
        }
    }
}

/// Decides the endpoints of `addrs` again and writes those that changed. A failure
/// (undone) is logged, and the next event reads everything again.
fn decide(maps: &mut Maps, done: &mut Done, addrs: &BTreeSet<Ipv4Addr>) {
    let Some(c) = done.containers.as_mut() else {
        return;
    };
    if addrs.is_empty() {
        return;
    }
    let installed: BTreeMap<Ipv4Addr, Endpoint> = addrs
        .iter()
        .filter_map(|a| c.endpoints.get(a).map(|e| (*a, *e)))
        .collect();
    let desired: Vec<Endpoint> = addrs
        .iter()
        .filter_map(|a| c.kernel.endpoint(*a, c.endpoints.get(a)))
        .collect();
    match reconcile::endpoints::reconcile(maps, &installed, &desired) {
        Ok(changes) => {
            for a in addrs {
                c.endpoints.remove(a);
            }
            for e in desired {
                c.endpoints.insert(e);
            }
            log_endpoints(&changes);
        }
        Err(e) => {
            log::warn!("updating the endpoints: {e:#}");
            done.containers = None;
        }
    }
}

/// Puts the bridge's address in the subnet, if it changed, in `NP_CONFIG` as the
/// containers' gateway. True when it changed (and was written).
fn follow_gateway(maps: &mut Maps, cfg: &mut Config) -> bool {
    let h = &mut cfg.host;
    let (now, net) = match crate::iface::System.try_ipv4_addrs(&h.bridge) {
        Ok(addrs) => crate::state::bridge_subnet(h.subnet, &addrs),
        Err(e) => {
            // Not the same as no address: the gateway stays; the next event tries again.
            log::warn!("reading {}'s addresses: {e}", h.bridge);
            return false;
        }
    };
    if now == h.gateway && net == h.bridge_subnet {
        return false;
    }
    let (was, was_net) = (h.gateway, h.bridge_subnet);
    h.gateway = now;
    h.bridge_subnet = net;
    match reconcile::host::reconcile(maps, h, &cfg.conntrack, &cfg.monitor) {
        Ok(_) => {
            log::info!(
                "gateway: {} has {} in {}, its network is {} (was {})",
                h.bridge,
                now.map_or("no address".to_owned(), |a| a.to_string()),
                h.subnet,
                h.bridge_subnet,
                was.map_or("none".to_owned(), |a| a.to_string())
            );
            true
        }
        Err(e) => {
            log::warn!("writing the bridge's new gateway address: {e:#}");
            // The next event tries again.
            h.gateway = was;
            h.bridge_subnet = was_net;
            false
        }
    }
}

/// Docker's containers, by address (the last of an address, should Docker give two).
fn docker(views: &Views) -> BTreeMap<Ipv4Addr, Endpoint> {
    views
        .docker
        .iter()
        .flat_map(|v| &v.endpoints)
        .map(|e| (e.addr, *e))
        .collect()
}

fn log_ports(prog: &str, what: &str, c: &attach::PortChanges, errors: Vec<String>) {
    if !c.attached.is_empty() || c.adopted > 0 || c.removed > 0 {
        log::info!(
            "{prog} on {what}: attached to {:?}, {} adopted, {} gone",
            c.attached,
            c.adopted,
            c.removed
        );
    }
    for e in errors {
        log::warn!("attaching {prog} to {e}");
    }
}

fn log_endpoints(c: &EndpointChanges) {
    if !c.is_empty() {
        log::info!(
            "endpoints: {}, {}, {}",
            addrs("added", &c.added),
            addrs("updated", &c.updated),
            addrs("removed", &c.removed)
        );
    }
}

/// "3 added (a, b, c)": a count and the first few addresses.
fn addrs(what: &str, v: &[Ipv4Addr]) -> String {
    const SHOWN: usize = 8;
    let mut s = format!("{} {what}", v.len());
    if !v.is_empty() {
        let list: Vec<String> = v.iter().take(SHOWN).map(|a| a.to_string()).collect();
        s += &format!(" ({}", list.join(", "));
        if v.len() > SHOWN {
            s += &format!(" and {} more", v.len() - SHOWN);
        }
        s += ")";
    }
    s
}
