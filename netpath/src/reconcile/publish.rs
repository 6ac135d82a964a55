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

/// `NP_PUBLISH` as it is.
pub(crate) type Entries = HashMap<PublishKey, PublishValue>;

pub(crate) fn entries(maps: &Maps) -> Result<Entries> {
    let mut out = Entries::new();
    for item in maps.publish.iter() {
        let (k, v) = item?;
        out.insert(k, v);
    }
    Ok(out)
}

/// Every published port with its origin, by protocol and port.
pub fn observe(maps: &Maps) -> Result<Vec<Owned<Publish>>> {
    Ok(owned(&entries(maps)?))
}

pub(crate) fn owned(e: &Entries) -> Vec<Owned<Publish>> {
    let mut out: Vec<Owned<Publish>> = e.iter().filter_map(|(k, v)| publish_from(k, v)).collect();
    out.sort_by_key(|p| (p.item.proto.number(), p.item.host_port));
    out
}

/// A port as the changes and errors name it: "tcp/8080".
fn port_name(k: &PublishKey) -> String {
    format!(
        "{}/{}",
        Proto::from_number(k.proto).map_or_else(|| k.proto.to_string(), |p| p.to_string()),
        u16::from_be(k.host_port)
    )
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
    let have = entries(maps)?;
    reconcile_from(maps, desired, &have)
}

/// [`reconcile`] with `NP_PUBLISH` already read (under the same lock).
pub(crate) fn reconcile_from(
    maps: &mut Maps,
    desired: &[Owned<Publish>],
    have: &Entries,
) -> Result<PublishChanges> {
    let mut changes = PublishChanges::default();
    let mut puts = Vec::new();
    let mut want = std::collections::HashSet::new();
    for p in desired {
        let key = publish_key(p.item.proto, p.item.host_port);
        let value = value_of(p);
        want.insert(key);
        let name = port_name(&key);
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
    changes.removed = gone.iter().map(|(k, _)| port_name(k)).collect();
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
    let have = entries(maps)?;
    let mut desired = owned(&have);
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
    reconcile_from(maps, &desired, &have)
}

/// `netpath publish del`: unpublishes a port and cuts its flows.
pub fn del(maps: &mut Maps, proto: Proto, host_port: u16) -> Result<PublishChanges> {
    let have = entries(maps)?;
    let installed = owned(&have);
    let is = |p: &Owned<Publish>| p.item.proto == proto && p.item.host_port == host_port;
    if !installed.iter().any(is) {
        let known: Vec<String> = installed
            .iter()
            .map(|p| port_name(&publish_key(p.item.proto, p.item.host_port)))
            .collect();
        anyhow::bail!(
            "{proto}/{host_port} is not published; published: {}",
            crate::state::listed(&known)
        );
    }
    let desired: Vec<Owned<Publish>> = installed.into_iter().filter(|p| !is(p)).collect();
    reconcile_from(maps, &desired, &have)
}
