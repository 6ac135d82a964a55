//! The published-ports reconciler: makes `NP_PUBLISH` say exactly what the desired
//! ports say. A port that goes cuts its flows: a client that was connected must not keep
//! a way in. A port that now leads elsewhere keeps its flows (conntrack holds where each
//! one goes); new flows go to the new target.

use std::collections::HashMap;

use anyhow::Result;
use netpath_common::{CT_KIND_PUBLISHED, PublishKey, PublishValue, addr_to_be};

use super::{Undo, fault};
use crate::{
    maps::{
        Maps, addr_of,
        flows::{flows, remove_flow},
    },
    state::{Origin, Owned, Proto, Publish},
};

pub fn publish_key(proto: Proto, host_port: u16) -> PublishKey {
    PublishKey {
        host_port: host_port.to_be(),
        proto: proto.number(),
        _pad: 0,
    }
}

fn publish_from(k: &PublishKey, v: &PublishValue) -> Option<Owned<Publish>> {
    Some(Owned {
        item: Publish {
            proto: Proto::from_number(k.proto)?,
            host_port: u16::from_be(k.host_port),
            container: addr_of(v.container),
            port: u16::from_be(v.container_port),
        },
        origin: Origin::from_map(v.origin),
    })
}

fn value_of(p: &Owned<Publish>) -> PublishValue {
    PublishValue {
        container: addr_to_be(p.item.container.octets()),
        container_port: p.item.port.to_be(),
        origin: p.origin.to_map(),
        _pad: 0,
    }
}

/// Every published port with its origin, by protocol and port.
pub fn observe(maps: &Maps) -> Result<Vec<Owned<Publish>>> {
    let mut out = Vec::new();
    for item in maps.publish.iter() {
        let (k, v) = item?;
        out.extend(publish_from(&k, &v));
    }
    out.sort_by_key(|p| (p.item.proto.number(), p.item.host_port));
    Ok(out)
}

/// What a reconcile changed, as "tcp/8080".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishChanges {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    /// Flows cut because their port went.
    pub flows_cut: usize,
}

impl PublishChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// Makes `NP_PUBLISH` say exactly `desired` (one entry per protocol and port; sources/
/// checks that). On an error nothing has changed.
pub fn reconcile(maps: &mut Maps, desired: &[Owned<Publish>]) -> Result<PublishChanges> {
    let mut have: HashMap<PublishKey, PublishValue> = HashMap::new();
    for item in maps.publish.iter() {
        let (k, v) = item?;
        have.insert(k, v);
    }
    let mut changes = PublishChanges::default();
    let mut puts = Vec::new();
    let mut want = std::collections::HashSet::new();
    for p in desired {
        let key = publish_key(p.item.proto, p.item.host_port);
        let value = value_of(p);
        want.insert(key);
        let name = format!("{}/{}", p.item.proto, p.item.host_port);
        match have.get(&key) {
            Some(v) if *v == value => {}
            Some(v) => {
                changes.updated.push(name);
                puts.push((key, value, Some(*v)));
            }
            None => {
                changes.added.push(name);
                puts.push((key, value, None));
            }
        }
    }
    let gone: Vec<(PublishKey, PublishValue)> = have
        .iter()
        .filter(|(k, _)| !want.contains(*k))
        .map(|(k, v)| (*k, *v))
        .collect();
    let mut undo = Undo::default();
    let result = (|| -> Result<()> {
        for (k, v, old) in &puts {
            fault::write()?;
            undo.publish(*k, *old);
            maps.publish.insert(k, v, 0)?;
        }
        for (k, old) in &gone {
            fault::write()?;
            undo.publish(*k, Some(*old));
            maps.publish.remove(k)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        undo.run(maps);
        return Err(e.context("updating the published ports (the previous ports are restored)"));
    }
    for (k, _) in &gone {
        changes.removed.push(format!(
            "{}/{}",
            Proto::from_number(k.proto).map_or("?".into(), |p| p.to_string()),
            u16::from_be(k.host_port)
        ));
    }
    // The ports are as desired; now the flows of those that went are cut.
    let cut: Vec<PublishKey> = gone.iter().map(|(k, _)| *k).collect();
    if !cut.is_empty() {
        changes.flows_cut = cut_flows(maps, &cut)?;
    }
    Ok(changes)
}

/// Removes the flows that came in through any of `ports`. Returns how many.
fn cut_flows(maps: &mut Maps, ports: &[PublishKey]) -> Result<usize> {
    let mut cut = 0;
    for (k, e) in flows(maps)? {
        if e.kind == CT_KIND_PUBLISHED
            && ports
                .iter()
                .any(|p| p.proto == k.proto && p.host_port == e.nat_port)
        {
            remove_flow(maps, &k, &e);
            cut += 1;
        }
    }
    Ok(cut)
}

/// `netpath publish add`: publishes `p` (origin `cli`), checked like a config entry
/// against the running host's subnet and the ports already published.
pub fn add(maps: &mut Maps, p: &Publish) -> Result<PublishChanges> {
    let host = super::running_host(maps)?;
    let mut desired = observe(maps)?;
    let others: Vec<Publish> = desired.iter().map(|o| o.item).collect();
    let problems = crate::state::check_publish(
        "publish",
        p,
        host.subnet,
        host.gateway,
        host.vxlan_port,
        &others,
    );
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    desired.push(Owned {
        item: *p,
        origin: Origin::Cli,
    });
    reconcile(maps, &desired)
}

/// `netpath publish del`: unpublishes a port and cuts its flows.
pub fn del(maps: &mut Maps, proto: Proto, host_port: u16) -> Result<PublishChanges> {
    let installed = observe(maps)?;
    let is = |p: &Owned<Publish>| p.item.proto == proto && p.item.host_port == host_port;
    if !installed.iter().any(is) {
        let known: Vec<String> = installed
            .iter()
            .map(|p| format!("{}/{}", p.item.proto, p.item.host_port))
            .collect();
        anyhow::bail!(
            "{proto}/{host_port} is not published; published: {}",
            crate::state::listed(&known)
        );
    }
    let desired: Vec<Owned<Publish>> = installed.into_iter().filter(|p| !is(p)).collect();
    reconcile(maps, &desired)
}
