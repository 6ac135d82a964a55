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

use std::collections::HashSet;

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
    let mut now = read(maps)?;
    reconcile_from(maps, desired, &mut now)
}

/// What the peers' maps hold: the slots of `NP_PEER_INFO` in use, the routes of
/// `NP_PEERS` (the peers' and those of containers of networks across hosts) and
/// `NP_UNDERLAY`. Read from the maps ([`read`]), or the agent's copy of what it last left
/// there (reconcile::Mirror).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Installed {
    /// By slot.
    pub infos: Vec<(u32, PeerInfo)>,
    /// The peers' routes, by (prefix length, network).
    pub routes: Routes,
    /// The routes of containers on other hosts, by address (network byte order).
    pub remote: Fast<u32, PeerValue>,
    /// By underlay address (network byte order).
    pub underlay: Fast<u32, PeerValue>,
}

/// Reads the peers' maps: the slots and the underlay entries in batches, `NP_PEERS` in one
/// walk (an LPM trie has no batched lookup).
pub fn read(maps: &Maps) -> Result<Installed> {
    let (routes, remote) = routes(maps)?;
    Ok(Installed {
        infos: maps.peer_infos()?,
        underlay: crate::maps::batch::lookup_all(aya::maps::IterableMap::map(&maps.underlay))?
            .into_iter()
            .collect(),
        routes,
        remote,
    })
}

/// `NP_PEERS` in one walk: the peers' routes by (prefix length, network), the routes of
/// containers of networks across hosts by address.
pub(crate) fn routes(maps: &Maps) -> Result<(Routes, Fast<u32, PeerValue>)> {
    let (mut routes, mut remote) = (Fast::default(), Fast::default());
    for k in maps.peers.keys() {
        let k = k?;
        let v = maps.peers.get(&k, 0)?;
        // A peer's container of a network across hosts: reconcile/remote.rs keeps those.
        if v.flags & PEER_F_ENDPOINT == 0 {
            routes.insert((k.prefix_len(), k.data()), v);
        } else if k.prefix_len() == 32 {
            remote.insert(k.data(), v);
        }
    }
    Ok((routes, remote))
}

/// [`reconcile`] from what the peers' maps hold `now` (read under the same lock, or the
/// agent's copy of it). On success `now` holds what the maps hold after (its routes of
/// remote containers are reconcile/remote.rs's, untouched here); on an error nothing has
/// changed in the maps and `now` is to be thrown away.
///
/// What it costs: one pass over the desired peers and one over each of `now`'s families,
/// with no allocation per peer but the names' index; `now` is then updated by what
/// changed, not made again (10,000 peers: about a millisecond, `netpath bench`).
pub(crate) fn reconcile_from(
    maps: &mut Maps,
    desired: &[Owned<Peer>],
    now: &mut Installed,
) -> Result<PeerChanges> {
    let (infos, routes_now, underlay_now) = (&now.infos, &now.routes, &now.underlay);
    let by_name: Fast<&str, (u32, &PeerInfo)> = infos
        .iter()
        .map(|(id, i)| (name_str(&i.name), (*id, i)))
        .collect();
    let slots = MAX_PEERS as usize;
    let mut used = vec![false; slots];
    for (id, _) in infos {
        used[*id as usize] = true;
    }
    let mut next = 0;
    let mut changes = PeerChanges::default();
    // Every slot a desired peer ends in, with the info it must hold: `want`, and each
    // slot's place in it (NONE: no desired peer's).
    const NONE: u32 = u32::MAX;
    let mut want: Vec<(u32, PeerInfo)> = Vec::with_capacity(desired.len());
    let mut place = vec![NONE; slots];
    let mut puts = Vec::new();
    for d in desired {
        let info = info_of(&d.item, d.origin);
        let id = match by_name.get(d.item.name.as_str()) {
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
                *id
            }
            None => {
                let id = (next..MAX_PEERS)
                    .find(|id| !used[*id as usize])
                    .with_context(|| {
                        format!("all {MAX_PEERS} peer slots are in use: remove peers first")
                    })?;
                next = id + 1;
                used[id as usize] = true;
                changes.added.push(d.item.name.clone());
                puts.push((id, info, true));
                id
            }
        };
        place[id as usize] = want.len() as u32;
        want.push((id, info));
    }
    let wanted = |id: u32| -> Option<&PeerInfo> {
        let i = *place.get(id as usize)?;
        (i != NONE).then(|| &want[i as usize].1)
    };
    let gone: Vec<(u32, PeerInfo)> = infos
        .iter()
        .filter(|(id, _)| wanted(*id).is_none())
        .copied()
        .collect();
    changes
        .removed
        .extend(gone.iter().map(|(_, i)| name_str(&i.name).to_owned()));
    // Keys that no desired peer has once the puts are done: the removed peers' and strays
    // of earlier, interrupted changes. A key stays if the peer its entry names still
    // wants it, or if a put writes it (a peer that took another's subnet or underlay).
    let put_routes: HashSet<(u32, u32)> = puts
        .iter()
        .map(|(_, i, _)| (i.prefix_len as u32, i.subnet))
        .collect();
    let put_underlay: HashSet<u32> = puts.iter().map(|(_, i, _)| i.underlay).collect();
    let stale_routes: Vec<((u32, u32), PeerValue)> = routes_now
        .iter()
        .filter(|(k, v)| {
            let kept = wanted(v.id).is_some_and(|i| (i.prefix_len as u32, i.subnet) == **k);
            !kept && !put_routes.contains(k)
        })
        .map(|(k, v)| (*k, *v))
        .collect();
    let stale_underlay: Vec<(u32, PeerValue)> = underlay_now
        .iter()
        .filter(|(k, v)| {
            let kept = wanted(v.id).is_some_and(|i| i.underlay == **k);
            !kept && !put_underlay.contains(k)
        })
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
        take_out(maps, &mut undo, &stale_routes, &stale_underlay, &gone)
    })();
    if let Err(e) = result {
        undo.run(maps);
        return Err(e.context("updating the peers (the previous peers are restored)"));
    }
    // What the maps hold now: `now` with this change's writes.
    for (k, _) in &stale_routes {
        now.routes.remove(k);
    }
    for (k, _) in &stale_underlay {
        now.underlay.remove(k);
    }
    for (id, info, _) in &puts {
        let v = value_of(*id, info);
        now.routes.insert((info.prefix_len as u32, info.subnet), v);
        now.underlay.insert(info.underlay, v);
    }
    // The slots, kept in slot order: the removed ones out, each put in its place.
    if !gone.is_empty() {
        now.infos.retain(|(id, _)| wanted(*id).is_some());
    }
    for (id, info, _) in &puts {
        match now.infos.binary_search_by_key(id, |(i, _)| *i) {
            Ok(at) => now.infos[at].1 = *info,
            Err(at) => now.infos.insert(at, (*id, *info)),
        }
    }
    Ok(changes)
}

/// A hash map for what is keyed by the peers' names and addresses (foldhash: the map's
/// own keys, not an attacker's, so no need for SipHash's cost).
pub type Fast<K, V> = foldhash::HashMap<K, V>;

/// Routes of `NP_PEERS` by (prefix length, network).
pub type Routes = Fast<(u32, u32), PeerValue>;

/// Removes `routes` and `underlay` entries, then empties the `slots` (each with the value
/// it held, for `undo`): keys first, so a packet never finds a route to an empty slot.
fn take_out(
    maps: &mut Maps,
    undo: &mut Undo,
    routes: &[((u32, u32), PeerValue)],
    underlay: &[(u32, PeerValue)],
    slots: &[(u32, PeerInfo)],
) -> Result<()> {
    for ((len, net), old) in routes {
        let key = Key::new(*len, *net);
        fault::write()?;
        undo.route(key, Some(*old));
        maps.peers.remove(&key)?;
    }
    for (k, old) in underlay {
        fault::write()?;
        undo.underlay(*k, Some(*old));
        maps.underlay.remove(k)?;
    }
    for (id, old) in slots {
        fault::write()?;
        undo.peer_info(*id, *old);
        maps.peer_info
            .set(*id, <PeerInfo as bytemuck::Zeroable>::zeroed(), 0)?;
    }
    Ok(())
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

/// `netpath peer add`: adds `p` (origin `cli`) to the running datapath, checked like a
/// config peer against the running host and the installed peers. Reads the slots alone
/// (not the routes: a live edit writes its own peer's entries, and the agent's repair
/// puts right what else a hand changed).
pub fn add(maps: &mut Maps, p: &Peer) -> Result<PeerChanges> {
    let host = super::running_host(maps)?;
    let infos = maps.peer_infos()?;
    let installed = owned(&infos);
    let problems = crate::state::check_peer(
        &format_args!("peer {:?}", p.name),
        p,
        host.subnet,
        host.address,
        installed.iter().map(|(_, o)| &o.item),
    );
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    let used: HashSet<u32> = infos.iter().map(|(id, _)| *id).collect();
    let id = (0..MAX_PEERS)
        .find(|id| !used.contains(id))
        .with_context(|| format!("all {MAX_PEERS} peer slots are in use: remove peers first"))?;
    let info = info_of(p, Origin::Cli);
    edited(maps, id)?;
    let mut undo = Undo::default();
    if let Err(e) = put(maps, &mut undo, id, &info, true) {
        undo.run(maps);
        return Err(e.context("adding the peer (nothing was changed)"));
    }
    Ok(PeerChanges {
        added: vec![p.name.clone()],
        ..Default::default()
    })
}

/// Tells a running agent that its copy of the peers' maps no longer stands for `slot`
/// (an edit of it follows, under the same lock, and may fail halfway):
/// `AgentInfo::peer_edits` counts one more and names the slot ([`follow_edit`]).
fn edited(maps: &mut Maps, slot: u32) -> Result<()> {
    let mut a = maps.agent()?;
    a.peer_edits = netpath_common::peer_edit(a.peer_edits, slot);
    maps.agent.set(0, a, 0)?;
    Ok(())
}

/// Brings `now` (the agent's copy of the peers' maps) up to date after one live edit of
/// `slot` ([`add`] or [`del`], which touch nothing but the slot, its peer's route and its
/// underlay entry): the slot read, then the route and underlay keys of the peer it held
/// in the copy and of the one it holds now. Four or five map reads, where reading
/// everything is 65,536 slots and a walk of `NP_PEERS`. False when the maps are not as
/// such an edit leaves them (one cut short, or another hand): `now` is then to be thrown
/// away and the maps read.
pub(crate) fn follow_edit(maps: &Maps, now: &mut Installed, slot: u32) -> Result<bool> {
    let at = now.infos.binary_search_by_key(&slot, |(id, _)| *id);
    let old = at.ok().map(|i| now.infos[i].1);
    let new = Some(maps.peer_info.get(&slot, 0)?).filter(|i| i.origin != 0);
    let route_key = |i: &PeerInfo| (i.prefix_len as u32, i.subnet);
    // The underlay is a hash map: what a lookup says is the entry.
    for i in old.iter().chain(&new) {
        match maps.underlay.get(&i.underlay, 0) {
            Ok(v) => now.underlay.insert(i.underlay, v),
            Err(aya::maps::MapError::KeyNotFound) => now.underlay.remove(&i.underlay),
            Err(e) => return Err(e.into()),
        };
    }
    // NP_PEERS is an LPM trie: a lookup of a key that is gone finds a shorter route that
    // covers it, if any. So an entry is taken as there when the lookup finds the value
    // the edit wrote, and as gone when this slot's entry no longer shows.
    let found = |k: (u32, u32)| match maps.peers.get(&Key::new(k.0, k.1), 0) {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    };
    if let Some(o) = &old {
        let k = route_key(o);
        let ours = now.routes.get(&k).is_some_and(|v| v.id == slot);
        if new.map(|n| route_key(&n)) != Some(k) && ours {
            if found(k)?.is_some_and(|v| v.id == slot && v.flags & PEER_F_ENDPOINT == 0) {
                return Ok(false);
            }
            now.routes.remove(&k);
        }
    }
    if let Some(n) = &new {
        let v = value_of(slot, n);
        if found(route_key(n))? != Some(v) || now.underlay.get(&n.underlay) != Some(&v) {
            return Ok(false);
        }
        now.routes.insert(route_key(n), v);
    }
    match (at, new) {
        (Ok(i), Some(n)) => now.infos[i].1 = n,
        (Ok(i), None) => {
            now.infos.remove(i);
        }
        (Err(i), Some(n)) => now.infos.insert(i, (slot, n)),
        (Err(_), None) => {}
    }
    Ok(true)
}

/// `netpath peer del`: removes the peer `name` (its route and underlay entry where they
/// are its own, then its slot); an error names the known peers. A config peer comes back
/// at the next agent start (a warning says so).
pub fn del(maps: &mut Maps, name: &str) -> Result<PeerChanges> {
    let infos = maps.peer_infos()?;
    let Some((id, info)) = infos.iter().find(|(_, i)| name_str(&i.name) == name) else {
        const SHOWN: usize = 20;
        let mut known: Vec<&str> = infos
            .iter()
            .take(SHOWN)
            .map(|(_, i)| name_str(&i.name))
            .collect();
        let more = format!("and {} more", infos.len().saturating_sub(SHOWN));
        if infos.len() > SHOWN {
            known.push(&more);
        }
        anyhow::bail!("no peer named {name:?}; known peers: {}", known.join(", "));
    };
    if Origin::from_map(info.origin) == Origin::Config {
        log::warn!("peer {name:?} comes from the config: the next agent start will add it again");
    }
    edited(maps, *id)?;
    let key = Key::new(info.prefix_len as u32, info.subnet);
    let mut undo = Undo::default();
    // Its route and underlay entry where they are its own (another peer may hold them now).
    let own = |v: &PeerValue| v.id == *id && v.flags & PEER_F_ENDPOINT == 0;
    let route: Vec<_> = maps
        .peers
        .get(&key, 0)
        .ok()
        .filter(own)
        .map(|v| ((key.prefix_len(), key.data()), v))
        .into_iter()
        .collect();
    let underlay: Vec<_> = maps
        .underlay
        .get(&info.underlay, 0)
        .ok()
        .filter(own)
        .map(|v| (info.underlay, v))
        .into_iter()
        .collect();
    let result = take_out(maps, &mut undo, &route, &underlay, &[(*id, *info)]);
    if let Err(e) = result {
        undo.run(maps);
        return Err(e.context("removing the peer (it is restored)"));
    }
    Ok(PeerChanges {
        removed: vec![name.to_owned()],
        ..Default::default()
    })
}
