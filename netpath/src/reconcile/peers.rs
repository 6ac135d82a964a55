//! The peers reconciler: makes `NP_PEER_INFO`, `NP_UNDERLAY` and the routes of
//! `NP_PEERS` say exactly what the desired peers say.
//!
//! Level-triggered: it compares the desired peers with every entry of the three maps, not
//! with a record of what it wrote last, so a run after a crash halfway finishes the
//! change, and a route or underlay entry that no desired peer owns is removed. Adds and
//! updates come before removals, so a peer that stays is never missing for a packet; a
//! peer's info is written before its routes (a packet that finds a route always finds a
//! counted, named peer) and removed after them. A write that fails undoes the writes
//! before it: the previous peers stay whole.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key;
use ipnet::Ipv4Net;
use netpath_common::{
    MAX_PEERS, PEER_F_ENDPOINT, PeerInfo, PeerValue, addr_to_be, name_bytes, name_str,
};

use super::{Undo, fault};
use crate::{
    maps::{Maps, addr_of, zeroed_per_cpu},
    state::{Mode, Origin, Owned, Peer},
};

/// A peer as its `NP_PEER_INFO` slot records it.
pub fn peer_from_info(info: &PeerInfo) -> Peer {
    Peer {
        name: name_str(&info.name).to_owned(),
        subnet: Ipv4Net::new(addr_of(info.subnet), info.prefix_len).unwrap_or_default(),
        underlay: addr_of(info.underlay),
        mode: Mode::from_map(info.mode).unwrap_or(Mode::Direct),
        vtep_mac: (info.vtep_mac_set != 0).then_some(info.vtep_mac),
    }
}

fn info_of(p: &Peer, origin: Origin) -> PeerInfo {
    PeerInfo {
        name: name_bytes(&p.name),
        subnet: addr_to_be(p.subnet.network().octets()),
        underlay: addr_to_be(p.underlay.octets()),
        prefix_len: p.subnet.prefix_len(),
        mode: p.mode.to_map(),
        origin: origin.to_map(),
        vtep_mac_set: p.vtep_mac.is_some() as u8,
        vtep_mac: p.vtep_mac(),
        _pad: [0; 2],
    }
}

pub(crate) fn value_of(id: u32, info: &PeerInfo) -> PeerValue {
    PeerValue {
        underlay: info.underlay,
        id,
        mode: info.mode,
        flags: 0,
        vtep_mac: info.vtep_mac,
    }
}

/// The installed peers with their slots and origins, by slot.
pub fn observe(maps: &Maps) -> Result<Vec<(u32, Owned<Peer>)>> {
    Ok(owned(&maps.peer_infos()?))
}

pub(crate) fn owned(infos: &[(u32, PeerInfo)]) -> Vec<(u32, Owned<Peer>)> {
    infos
        .iter()
        .map(|(id, i)| {
            (
                *id,
                Owned {
                    item: peer_from_info(i),
                    origin: Origin::from_map(i.origin),
                },
            )
        })
        .collect()
}

/// What a reconcile changed, by peer name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    /// Peers whose info was right but whose route or underlay entry was missing or
    /// another's (a change cut short, or an entry deleted by hand): written back.
    pub restored: Vec<String>,
    /// Route and underlay entries that no peer owned (left by a crash), removed.
    pub orphans: usize,
    /// Every desired peer's slot and info once done, by name (for the routes of their
    /// containers of networks across hosts, reconcile/remote.rs).
    pub slots: HashMap<String, (u32, PeerInfo)>,
}

impl PeerChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.restored.is_empty()
            && self.orphans == 0
    }
}

/// Makes the peer maps say exactly `desired` (valid as a whole: unique names, subnets and
/// underlay addresses; sources/ checks that). Returns what changed; on an error nothing
/// has changed.
pub fn reconcile(maps: &mut Maps, desired: &[Owned<Peer>]) -> Result<PeerChanges> {
    let infos = maps.peer_infos()?;
    reconcile_from(maps, desired, infos, routes(maps)?.peers)
}

/// `NP_PEERS` as it is, read in one walk (an LPM trie has no batched lookup): the peers'
/// routes by (prefix length, network), the routes of containers of networks across hosts
/// by address.
pub struct Routes {
    pub peers: HashMap<(u32, u32), PeerValue>,
    pub remote: HashMap<u32, PeerValue>,
}

pub fn routes(maps: &Maps) -> Result<Routes> {
    let mut r = Routes {
        peers: HashMap::new(),
        remote: HashMap::new(),
    };
    for k in maps.peers.keys() {
        let k = k?;
        let v = maps.peers.get(&k, 0)?;
        // A peer's container of a network across hosts: reconcile/remote.rs keeps those.
        if v.flags & PEER_F_ENDPOINT == 0 {
            r.peers.insert((k.prefix_len(), k.data()), v);
        } else if k.prefix_len() == 32 {
            r.remote.insert(k.data(), v);
        }
    }
    Ok(r)
}

/// [`reconcile`] with the slots in use (`Maps::peer_infos`) and the peers' routes
/// ([`routes`]) already read, under the same lock: each is read once per change, by
/// whoever observes first.
pub(crate) fn reconcile_from(
    maps: &mut Maps,
    desired: &[Owned<Peer>],
    infos: Vec<(u32, PeerInfo)>,
    routes_now: HashMap<(u32, u32), PeerValue>,
) -> Result<PeerChanges> {
    let by_name: HashMap<&str, (u32, &PeerInfo)> = infos
        .iter()
        .map(|(id, i)| (name_str(&i.name), (*id, i)))
        .collect();
    // The underlay entries as they are, read once (the routes came with `routes_now`).
    let underlay_now: HashMap<u32, PeerValue> =
        crate::maps::batch::lookup_all(aya::maps::IterableMap::map(&maps.underlay))?
            .into_iter()
            .collect();
    let mut used: HashSet<u32> = infos.iter().map(|(id, _)| *id).collect();
    let mut next = 0;
    let mut changes = PeerChanges::default();
    // Every slot a desired peer ends in, with the info it must hold.
    let mut want: HashMap<u32, PeerInfo> = HashMap::new();
    let mut puts = Vec::new();
    for d in desired {
        let info = info_of(&d.item, d.origin);
        match by_name.get(d.item.name.as_str()) {
            Some((id, old)) => {
                let v = value_of(*id, &info);
                let in_place = routes_now.get(&(info.prefix_len as u32, info.subnet)) == Some(&v)
                    && underlay_now.get(&info.underlay) == Some(&v);
                if **old != info {
                    changes.updated.push(d.item.name.clone());
                    puts.push((*id, info, false));
                } else if !in_place {
                    // Its info is right but a route or underlay entry is missing or
                    // another's: a change was cut short, or a hand deleted it.
                    changes.restored.push(d.item.name.clone());
                    puts.push((*id, info, false));
                }
                want.insert(*id, info);
            }
            None => {
                let id = (next..MAX_PEERS)
                    .find(|id| !used.contains(id))
                    .with_context(|| {
                        format!("all {MAX_PEERS} peer slots are in use: remove peers first")
                    })?;
                next = id + 1;
                used.insert(id);
                changes.added.push(d.item.name.clone());
                puts.push((id, info, true));
                want.insert(id, info);
            }
        }
    }
    let gone: Vec<(u32, PeerInfo)> = infos
        .iter()
        .filter(|(id, _)| !want.contains_key(id))
        .copied()
        .collect();
    changes
        .removed
        .extend(gone.iter().map(|(_, i)| name_str(&i.name).to_owned()));
    // Keys that no desired peer has once the puts are done (each put leaves its keys as
    // `want` says): the removed peers' and strays of earlier, interrupted changes.
    let route_keys: HashSet<(u32, u32)> = want
        .values()
        .map(|i| (i.prefix_len as u32, i.subnet))
        .collect();
    let underlay_keys: HashSet<u32> = want.values().map(|i| i.underlay).collect();
    let stale_routes: Vec<((u32, u32), PeerValue)> = routes_now
        .iter()
        .filter(|(k, _)| !route_keys.contains(k))
        .map(|(k, v)| (*k, *v))
        .collect();
    let stale_underlay: Vec<(u32, PeerValue)> = underlay_now
        .iter()
        .filter(|(k, _)| !underlay_keys.contains(k))
        .map(|(k, v)| (*k, *v))
        .collect();
    let gone_ids: HashSet<u32> = gone.iter().map(|(id, _)| *id).collect();
    let stray = |v: &PeerValue| !gone_ids.contains(&v.id);
    changes.orphans = stale_routes.iter().filter(|(_, v)| stray(v)).count()
        + stale_underlay.iter().filter(|(_, v)| stray(v)).count();

    let mut undo = Undo::default();
    let result = (|| -> Result<()> {
        for (id, info, fresh) in &puts {
            put(maps, &mut undo, *id, info, *fresh)?;
        }
        // Then what no desired peer owns: keys first, the removed peers' infos last.
        for ((len, net), old) in &stale_routes {
            let key = Key::new(*len, *net);
            fault::write()?;
            undo.route(key, Some(*old));
            maps.peers.remove(&key)?;
        }
        for (k, old) in &stale_underlay {
            fault::write()?;
            undo.underlay(*k, Some(*old));
            maps.underlay.remove(k)?;
        }
        for (id, old) in &gone {
            fault::write()?;
            undo.peer_info(*id, *old);
            maps.peer_info
                .set(*id, <PeerInfo as bytemuck::Zeroable>::zeroed(), 0)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        undo.run(maps);
        return Err(e.context("updating the peers (the previous peers are restored)"));
    }
    changes.slots = want
        .into_iter()
        .map(|(id, i)| (name_str(&i.name).to_owned(), (id, i)))
        .collect();
    Ok(changes)
}

/// Installs one peer in slot `id`: counters (for a new peer), info, underlay entry, route.
fn put(maps: &mut Maps, undo: &mut Undo, id: u32, info: &PeerInfo, fresh: bool) -> Result<()> {
    if fresh {
        fault::write()?;
        maps.peer_stats.set(id, zeroed_per_cpu()?, 0)?;
    }
    fault::write()?;
    undo.peer_info(id, maps.peer_info.get(&id, 0)?);
    maps.peer_info.set(id, *info, 0)?;
    let value = value_of(id, info);
    fault::write()?;
    undo.underlay(info.underlay, maps.underlay.get(&info.underlay, 0).ok());
    maps.underlay.insert(info.underlay, value, 0)?;
    let key = Key::new(info.prefix_len as u32, info.subnet);
    fault::write()?;
    undo.route(key, maps.peers.get(&key, 0).ok());
    maps.peers.insert(&key, value, 0)?;
    Ok(())
}

/// The desired peers that leave the installed ones as they are but for `change`: the
/// live CLI edits (`peer add|del`) go through the reconciler like any other change.
pub fn with_change(
    installed: &[(u32, Owned<Peer>)],
    add: Option<Owned<Peer>>,
    remove: Option<&str>,
) -> Vec<Owned<Peer>> {
    let mut out: Vec<Owned<Peer>> = installed
        .iter()
        .filter(|(_, p)| Some(p.item.name.as_str()) != remove)
        .map(|(_, p)| p.clone())
        .collect();
    out.extend(add);
    out
}

/// `netpath peer add`: adds `p` (origin `cli`) to the running datapath, checked like a
/// config peer against the running host and the installed peers.
pub fn add(maps: &mut Maps, p: &Peer) -> Result<PeerChanges> {
    let host = super::running_host(maps)?;
    let infos = maps.peer_infos()?;
    let installed = owned(&infos);
    let others: Vec<Peer> = installed.iter().map(|(_, o)| o.item.clone()).collect();
    let problems = crate::state::check_peer(
        &format!("peer {:?}", p.name),
        p,
        host.subnet,
        host.address,
        &others,
    );
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    let add = Owned {
        item: p.clone(),
        origin: Origin::Cli,
    };
    let routes = routes(maps)?.peers;
    reconcile_from(
        maps,
        &with_change(&installed, Some(add), None),
        infos,
        routes,
    )
}

/// `netpath peer del`: removes the peer `name`; an error names the known peers. A config
/// peer comes back at the next agent start (a warning says so).
pub fn del(maps: &mut Maps, name: &str) -> Result<PeerChanges> {
    let infos = maps.peer_infos()?;
    let installed = owned(&infos);
    let Some((_, p)) = installed.iter().find(|(_, p)| p.item.name == name) else {
        let known: Vec<&str> = installed
            .iter()
            .map(|(_, p)| p.item.name.as_str())
            .collect();
        anyhow::bail!("no peer named {name:?}; known peers: {}", known.join(", "));
    };
    if p.origin == Origin::Config {
        log::warn!("peer {name:?} comes from the config: the next agent start will add it again");
    }
    let routes = routes(maps)?.peers;
    reconcile_from(
        maps,
        &with_change(&installed, None, Some(name)),
        infos,
        routes,
    )
}
