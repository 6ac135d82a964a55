//! Reconcilers: one per map family, each making the pinned maps say what the desired
//! state (state::Desired) says and returning what it changed.
//!
//! Every reconciler
//! - compares the desired state with what the maps hold now (not with what it wrote last
//!   time), so it is idempotent (a second run changes nothing) and a run after a crash
//!   halfway finishes the change;
//! - checks and computes everything before its first write;
//! - undoes its own writes when one fails, so the previous state stays whole (the policy
//!   needs no undo for the datapath: a new policy becomes live in one write).
//!
//! - [`host`]: `NP_CONFIG`, `NP_MONITOR`, `NP_CT_INFO`, `NP_BUILD`;
//! - [`peers`]: `NP_PEER_INFO`, `NP_UNDERLAY`, `NP_PEERS`;
//! - [`publish`]: `NP_PUBLISH` (and the flows of ports that go);
//! - [`policy`]: `NP_POLICY_INFO`, `NP_GROUPS`, the tries and `NP_POLICY_STATE`;
//! - [`networks`]: `NP_NETWORKS`, the host's container networks;
//! - [`endpoints`]: `NP_ENDPOINTS` (its desired state is the kernel's neighbours, not the
//!   config: the agent reconciles it on neighbour and link events);
//! - [`migrate`]: not a family but every map of an older layout, carried into this
//!   build's maps at an upgrade (its desired state is the old map).

pub mod endpoints;
pub mod fault;
pub mod host;
pub mod migrate;
pub mod networks;
pub mod peers;
pub mod policy;
pub mod publish;
pub mod remote;

use anyhow::{Context, Result};
use aya::{Ebpf, maps::lpm_trie::Key};
use netpath_common::{GroupMember, PeerInfo, PeerValue, PolicyRuleInfo, PublishKey, PublishValue};

use crate::{
    datapath,
    maps::Maps,
    state::{Desired, DesiredNoPolicy, DesiredPeers, Origin, Owned, Peer, Publish},
};

/// What reconciling a whole desired state changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub host: host::HostChanges,
    pub peers: peers::PeerChanges,
    pub publish: publish::PublishChanges,
    pub policy: policy::PolicyChanges,
    pub networks: networks::NetworkChanges,
    pub remote: remote::RemoteChanges,
}

impl Changes {
    /// Whether nothing at all was written.
    pub fn is_empty(&self) -> bool {
        !self.host.any()
            && self.networks.is_empty()
            && self.peers.is_empty()
            && self.remote.is_empty()
            && self.publish.is_empty()
            && !self.policy.applied
    }

    /// One line for the log: what each reconciler did.
    pub fn summary(&self) -> String {
        format!(
            "host settings {}; networks: {} added, {} updated, {} removed; peers: {} added, {} updated, {} removed, {} restored, {} stray entries removed; published ports: {} added, {} updated, {} removed ({} flows cut); policy {}",
            if self.host.any() {
                "written"
            } else {
                "unchanged"
            },
            self.networks.added.len(),
            self.networks.updated.len(),
            self.networks.removed.len(),
            self.peers.added.len(),
            self.peers.updated.len(),
            self.peers.removed.len(),
            self.peers.restored.len(),
            self.peers.orphans,
            self.publish.added.len(),
            self.publish.updated.len(),
            self.publish.removed.len(),
            self.publish.flows_cut,
            if self.policy.applied {
                "compiled and made live"
            } else {
                "unchanged"
            },
        )
    }
}

/// What the pinned maps the reconcilers own hold now, read once: the CLI's source
/// (sources::cli) and every reconciler start from the same reading.
pub struct Observed {
    /// The peers' maps (and the routes of containers on other hosts).
    pub(crate) peers: peers::Installed,
    pub(crate) publish: publish::Entries,
    pub policy: policy::Installed,
    /// `NP_NETWORKS`.
    pub networks: Vec<crate::state::Network>,
}

/// Reads what the reconcilers compare against.
pub fn observe(maps: &Maps) -> Result<Observed> {
    Ok(Observed {
        publish: publish::entries(maps)?,
        policy: policy::installed(maps)?,
        ..observe_peers(maps)?
    })
}

/// What [`peers_from`] compares against: the peers, their routes, the networks (the routes
/// of containers across hosts follow them); not the published ports nor the policy, which
/// stay empty here (at 100,000 rules, reading the policy is most of a full observation).
pub fn observe_peers(maps: &Maps) -> Result<Observed> {
    Ok(Observed {
        peers: peers::read(maps)?,
        publish: Default::default(),
        policy: Default::default(),
        networks: networks::observe(maps)?,
    })
}

/// Makes the peers and the routes of containers on other hosts say what `d` says,
/// starting from `o` ([`observe_peers`], [`observe`] or the agent's [`Mirror`], under the
/// same lock), and nothing else: what an etcd registration's change touches. On success
/// `o.peers` holds what the maps hold after.
pub fn peers_from(maps: &mut Maps, o: &mut Observed, d: &DesiredPeers) -> Result<Changes> {
    let (peers, remote) = peer_families(maps, &mut o.peers, &d.peers, &d.remote)?;
    Ok(Changes {
        peers,
        remote,
        ..Default::default()
    })
}

/// The peers, then the routes of their containers of networks across hosts (which take
/// the peers' slots), from what the maps hold `now`; `now` holds what they hold after.
fn peer_families(
    maps: &mut Maps,
    now: &mut peers::Installed,
    desired: &[Owned<Peer>],
    remote: &[crate::state::Remote],
) -> Result<(peers::PeerChanges, remote::RemoteChanges)> {
    let p = peers::reconcile_from(maps, desired, now)?;
    let r = remote::reconcile(maps, remote, &now.infos, &mut now.remote)?;
    Ok((p, r))
}

/// The agent's copy of the peers' maps as its last reconcile left them: an etcd event
/// reconciles against it instead of reading 65,536 slots and walking `NP_PEERS` again.
/// It stands while no live CLI edit of the peers came between (`AgentInfo::peer_edits`,
/// written under the pin lock by each; after one edit, the copy is brought up to date
/// from the slot it names) and no reconcile failed; the periodic repair reads
/// the maps themselves, puts right what was changed behind netpath's back (bpftool) and
/// starts a new copy from what it left.
#[derive(Default)]
pub struct Mirror {
    copy: Option<(u32, Observed)>,
    /// How many times the peers' maps were read for want of a copy that stands.
    reads: u64,
}

impl Mirror {
    /// What the peers' maps hold (as [`observe_peers`]): the copy if it stands, the copy
    /// brought up to date if one live CLI edit came since ([`peers::follow_edit`]: that
    /// slot and its keys read), else the maps read. Under the pin lock, as the reconcile
    /// that follows.
    fn observe_peers(&mut self, maps: &Maps) -> Result<Observed> {
        let edits = maps.agent()?.peer_edits;
        if let Some((e, mut o)) = self.copy.take() {
            if e == edits {
                return Ok(o);
            }
            if let Some(slot) = netpath_common::one_peer_edit(e, edits)
                && peers::follow_edit(maps, &mut o.peers, slot)?
            {
                return Ok(o);
            }
        }
        self.reads += 1;
        observe_peers(maps)
    }

    /// How many times the peers' maps were read instead of the copy used: each
    /// [`Mirror::reconcile_all`], and each event that found no copy standing (none yet, a
    /// failed reconcile, more than one live edit since, or an edit that left the maps
    /// otherwise than it should).
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Keeps `o`, what a reconcile that succeeded left in the maps ([`peers_from`] or
    /// [`all_from`]; the networks read again after the latter), as the copy; its published
    /// ports and policy are dropped (only the peers' are used).
    pub fn keep(&mut self, maps: &Maps, mut o: Observed) -> Result<()> {
        o.publish = Default::default();
        o.policy = Default::default();
        self.copy = Some((maps.agent()?.peer_edits, o));
        Ok(())
    }

    /// Reconciles the peers' families alone, as the agent does after an etcd
    /// registration's change ([`peers_from`]): from the copy, with the desired peers that
    /// `desired` makes of it. Keeps the copy on success; after a failed reconcile the
    /// next event reads the maps.
    pub fn reconcile_peers<M>(
        &mut self,
        maps: &mut Maps,
        desired: impl FnOnce(&Observed) -> Result<(DesiredPeers, M)>,
    ) -> Result<(Changes, M)> {
        let o = self.observe_peers(maps)?;
        self.reconcile_with(maps, o, desired, peers_from)
    }

    /// Reconciles every family but the policy ([`docker_from`]), as the agent does after a
    /// Docker event: the peers' from the copy, the published ports and networks read
    /// (a few entries each), the policy neither read nor written. Keeps the copy on
    /// success.
    pub fn reconcile_docker<M>(
        &mut self,
        maps: &mut Maps,
        desired: impl FnOnce(&Observed) -> Result<(DesiredNoPolicy, M)>,
    ) -> Result<(Changes, M)> {
        let mut o = self.observe_peers(maps)?;
        o.publish = publish::entries(maps)?;
        o.networks = networks::observe(maps)?;
        self.reconcile_with(maps, o, desired, docker_from)
    }

    /// Reconciles every family from the maps read afresh ([`all_from`]), as the agent
    /// does after other news and in its periodic repair; the copy starts again from what
    /// that left.
    pub fn reconcile_all<M>(
        &mut self,
        maps: &mut Maps,
        desired: impl FnOnce(&Observed) -> Result<(Desired, M)>,
    ) -> Result<(Changes, M)> {
        self.copy = None;
        self.reads += 1;
        let o = observe(maps)?;
        self.reconcile_with(maps, o, desired, all_from)
    }

    fn reconcile_with<D, M>(
        &mut self,
        maps: &mut Maps,
        mut o: Observed,
        desired: impl FnOnce(&Observed) -> Result<(D, M)>,
        reconcile: impl FnOnce(&mut Maps, &mut Observed, &D) -> Result<Changes>,
    ) -> Result<(Changes, M)> {
        let (d, m) = match desired(&o) {
            Ok(x) => x,
            Err(e) => {
                // Nothing was written: what was read still stands.
                self.keep(maps, o)?;
                return Err(e);
            }
        };
        let c = reconcile(maps, &mut o, &d)?;
        self.keep(maps, o)?;
        Ok((c, m))
    }

    /// The copy of the peers' maps, if there is one (tests hold it against the maps).
    pub fn copy(&self) -> Option<&peers::Installed> {
        self.copy.as_ref().map(|(_, o)| &o.peers)
    }
}

impl Observed {
    /// The installed peers with their slots and origins.
    pub fn peers(&self) -> Vec<(u32, Owned<Peer>)> {
        peers::owned(&self.peers.infos)
    }

    /// The installed peers of one origin (the others are not made into `Peer`s).
    pub fn peers_of(&self, origin: Origin) -> Vec<Peer> {
        self.peers
            .infos
            .iter()
            .filter(|(_, i)| Origin::from_map(i.origin) == origin)
            .map(|(_, i)| peers::peer_from_info(i))
            .collect()
    }

    /// The published ports with their origins.
    pub fn publish(&self) -> Vec<Owned<Publish>> {
        publish::owned(&self.publish)
    }
}

/// Makes every map family say what `d` says (see [`all_from`]).
pub fn all(maps: &mut Maps, d: &Desired) -> Result<Changes> {
    let mut o = observe(maps)?;
    all_from(maps, &mut o, d)
}

/// Makes every map family say what `d` says, starting from `o` (read under the same
/// lock): host settings first (the programs act on nothing before `NP_CONFIG` is ready),
/// then networks, peers, published ports and policy. A family that fails leaves its maps as they
/// were and stops the rest; a rerun goes on from there. On success `o.peers` and
/// `o.networks` hold what the maps hold after (the published ports and policy do not).
pub fn all_from(maps: &mut Maps, o: &mut Observed, d: &Desired) -> Result<Changes> {
    let mut c = all_but_policy(maps, o, d)?;
    c.policy = policy::reconcile_from(maps, &o.policy, &d.policy)?;
    Ok(c)
}

/// Every family but the policy, as [`all_from`] does them: what a Docker event touches
/// (its networks, containers and ports). `o` needs no policy ([`Mirror::reconcile_docker`]).
pub fn docker_from(maps: &mut Maps, o: &mut Observed, d: &DesiredNoPolicy) -> Result<Changes> {
    all_but_policy(maps, o, &d.0)
}

fn all_but_policy(maps: &mut Maps, o: &mut Observed, d: &Desired) -> Result<Changes> {
    let host = host::reconcile(maps, &d.host, &d.conntrack, &d.monitor)?;
    let networks = networks::reconcile(maps, &o.networks, &d.networks)?;
    if !networks.is_empty() {
        o.networks = networks::observe(maps)?;
    }
    let (peers, remote) = peer_families(maps, &mut o.peers, &d.peers, &d.remote)?;
    Ok(Changes {
        host,
        networks,
        peers,
        remote,
        publish: publish::reconcile_from(maps, &d.publish, &o.publish)?,
        ..Default::default()
    })
}

/// A private copy of the datapath (nothing attached, no map pinned) set up from `d` with
/// the agent's own reconcilers: for packet tests and `netpath bench`.
pub fn private(d: &Desired) -> Result<(Ebpf, Maps)> {
    let mut ebpf = datapath::load(None, netpath_common::DEFAULT_CT_SIZE)?;
    let mut maps = Maps::take(&mut ebpf)?;
    all(&mut maps, d)?;
    Ok((ebpf, maps))
}

/// Writes made by a reconcile so far, each with the value it replaced, undone in reverse
/// when a later write fails.
#[derive(Default)]
pub(crate) struct Undo(Vec<Step>);

enum Step {
    PeerInfo(u32, PeerInfo),
    Route(Key<u32>, Option<PeerValue>),
    Underlay(u32, Option<PeerValue>),
    Publish(PublishKey, Option<PublishValue>),
    PolicyInfo(u32, Option<PolicyRuleInfo>),
    Group(GroupMember, Option<u8>),
    Endpoint(u32, Option<netpath_common::Endpoint>),
    Network(Key<u32>, Option<netpath_common::Network>),
}

impl Undo {
    pub(crate) fn peer_info(&mut self, id: u32, old: PeerInfo) {
        self.0.push(Step::PeerInfo(id, old));
    }
    pub(crate) fn route(&mut self, key: Key<u32>, old: Option<PeerValue>) {
        self.0.push(Step::Route(key, old));
    }
    pub(crate) fn underlay(&mut self, key: u32, old: Option<PeerValue>) {
        self.0.push(Step::Underlay(key, old));
    }
    pub(crate) fn publish(&mut self, key: PublishKey, old: Option<PublishValue>) {
        self.0.push(Step::Publish(key, old));
    }
    pub(crate) fn policy_info(&mut self, id: u32, old: Option<PolicyRuleInfo>) {
        self.0.push(Step::PolicyInfo(id, old));
    }
    pub(crate) fn group(&mut self, key: GroupMember, old: Option<u8>) {
        self.0.push(Step::Group(key, old));
    }
    pub(crate) fn endpoint(&mut self, key: u32, old: Option<netpath_common::Endpoint>) {
        self.0.push(Step::Endpoint(key, old));
    }
    pub(crate) fn network(&mut self, key: Key<u32>, old: Option<netpath_common::Network>) {
        self.0.push(Step::Network(key, old));
    }

    /// Puts every value back, latest first. Best effort: the write that failed may fail
    /// again, and what cannot be put back is logged.
    pub(crate) fn run(self, maps: &mut Maps) {
        for step in self.0.into_iter().rev() {
            let r: Result<(), aya::maps::MapError> = match step {
                Step::PeerInfo(id, v) => maps.peer_info.set(id, v, 0),
                Step::Route(k, Some(v)) => maps.peers.insert(&k, v, 0),
                Step::Route(k, None) => maps.peers.remove(&k).or(Ok(())),
                Step::Underlay(k, Some(v)) => maps.underlay.insert(k, v, 0),
                Step::Underlay(k, None) => maps.underlay.remove(&k).or(Ok(())),
                Step::Publish(k, Some(v)) => maps.publish.insert(k, v, 0),
                Step::Publish(k, None) => maps.publish.remove(&k).or(Ok(())),
                Step::PolicyInfo(k, Some(v)) => maps.policy_info.insert(k, v, 0),
                Step::PolicyInfo(k, None) => maps.policy_info.remove(&k).or(Ok(())),
                Step::Group(k, Some(v)) => maps.groups.insert(k, v, 0),
                Step::Group(k, None) => maps.groups.remove(&k).or(Ok(())),
                Step::Endpoint(k, Some(v)) => maps.endpoints.insert(k, v, 0),
                Step::Endpoint(k, None) => maps.endpoints.remove(&k).or(Ok(())),
                Step::Network(k, Some(v)) => maps.networks.insert(&k, v, 0),
                Step::Network(k, None) => maps.networks.remove(&k).or(Ok(())),
            };
            if let Err(e) = r {
                log::error!("undoing a write after a failed change: {e}");
            }
        }
    }
}

/// What `peer add` and `publish add` are checked against: the running host's subnet,
/// underlay address, gateway and VXLAN port, from `NP_CONFIG`.
pub(crate) struct RunningHost {
    pub(crate) subnet: ipnet::Ipv4Net,
    pub(crate) address: std::net::Ipv4Addr,
    pub(crate) gateway: Option<std::net::Ipv4Addr>,
    pub(crate) vxlan_port: u16,
}

pub(crate) fn running_host(maps: &Maps) -> Result<RunningHost> {
    use crate::maps::addr_of;
    let c = maps.config()?;
    Ok(RunningHost {
        subnet: ipnet::Ipv4Net::with_netmask(addr_of(c.subnet_addr), addr_of(c.subnet_mask))
            .context("local subnet in NP_CONFIG")?,
        address: addr_of(c.host_addr),
        gateway: (c.gateway_addr != 0).then(|| addr_of(c.gateway_addr)),
        vxlan_port: u16::from_be(c.vxlan_port),
    })
}
