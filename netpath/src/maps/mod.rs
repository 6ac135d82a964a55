//! Typed handles on the maps of a loaded or pinned datapath, and readers that sum per-CPU
//! values. This is the bottom layer: it knows the map layouts (netpath-common) and the pin
//! dir, no state type and no config.

pub mod batch;
pub mod flows;

use std::{
    net::Ipv4Addr,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
};
use ipnet::Ipv4Net;
use netpath_common::{
    AgentInfo, Counter, CtEntry, CtInfo, CtKey, GroupMember, MAX_PEERS, NatKey, NatValue, PeerInfo,
    PeerStats, PeerValue, PolicyRuleInfo, PolicyState, PolicyVerdict, PublishKey, PublishValue,
    addr_to_be, be_to_octets, map_names,
};

use crate::pin::PinDir;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn net_key(net: Ipv4Net) -> Key<u32> {
    Key::new(net.prefix_len() as u32, addr_to_be(net.network().octets()))
}

pub fn addr_of(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be_to_octets(be))
}

/// Typed handles on the maps of a loaded or pinned datapath.
pub struct Maps {
    pub config: Array<MapData, netpath_common::Config>,
    pub peers: LpmTrie<MapData, u32, PeerValue>,
    pub counters: PerCpuArray<MapData, Counter>,
    pub peer_stats: PerCpuArray<MapData, PeerStats>,
    pub peer_info: Array<MapData, PeerInfo>,
    pub underlay: HashMap<MapData, u32, PeerValue>,
    pub agent: Array<MapData, AgentInfo>,
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    pub nat: HashMap<MapData, NatKey, NatValue>,
    pub publish: HashMap<MapData, PublishKey, PublishValue>,
    pub ct_info: Array<MapData, CtInfo>,
    pub policy_state: Array<MapData, PolicyState>,
    pub policy_src: LpmTrie<MapData, [u8; 8], u32>,
    pub policy_dst: LpmTrie<MapData, [u8; 12], u32>,
    pub policy_rules: LpmTrie<MapData, [u8; 8], PolicyVerdict>,
    pub policy_stats: PerCpuArray<MapData, Counter>,
    pub policy_info: HashMap<MapData, u32, PolicyRuleInfo>,
    pub groups: HashMap<MapData, GroupMember, u8>,
    pub monitor: Array<MapData, netpath_common::MonitorState>,
    pub event_limit: PerCpuArray<MapData, netpath_common::EventLimit>,
    pub build: Array<MapData, netpath_common::BuildInfo>,
    pub reject_limit: PerCpuArray<MapData, netpath_common::RejectLimit>,
    pub endpoints: HashMap<MapData, u32, netpath_common::Endpoint>,
    pub fleet: Array<MapData, netpath_common::FleetInfo>,
    pub docker: Array<MapData, netpath_common::DockerInfo>,
    pub debug: Array<MapData, netpath_common::DebugState>,
    pub networks: LpmTrie<MapData, u32, netpath_common::Network>,
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps> {
        let mut take = |name: &str| -> Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        Ok(Maps {
            config: take(map_names::CONFIG)?.try_into()?,
            peers: take(map_names::PEERS)?.try_into()?,
            counters: take(map_names::COUNTERS)?.try_into()?,
            peer_stats: take(map_names::PEER_STATS)?.try_into()?,
            peer_info: take(map_names::PEER_INFO)?.try_into()?,
            underlay: take(map_names::UNDERLAY)?.try_into()?,
            agent: take(map_names::AGENT)?.try_into()?,
            ct: take(map_names::CT)?.try_into()?,
            nat: take(map_names::NAT)?.try_into()?,
            publish: take(map_names::PUBLISH)?.try_into()?,
            ct_info: take(map_names::CT_INFO)?.try_into()?,
            policy_state: take(map_names::POLICY_STATE)?.try_into()?,
            policy_src: take(map_names::POLICY_SRC)?.try_into()?,
            policy_dst: take(map_names::POLICY_DST)?.try_into()?,
            policy_rules: take(map_names::POLICY_RULES)?.try_into()?,
            policy_stats: take(map_names::POLICY_STATS)?.try_into()?,
            policy_info: take(map_names::POLICY_INFO)?.try_into()?,
            groups: take(map_names::GROUPS)?.try_into()?,
            monitor: take(map_names::MONITOR)?.try_into()?,
            event_limit: take(map_names::EVENT_LIMIT)?.try_into()?,
            build: take(map_names::BUILD)?.try_into()?,
            reject_limit: take(map_names::REJECT_LIMIT)?.try_into()?,
            endpoints: take(map_names::ENDPOINTS)?.try_into()?,
            fleet: take(map_names::FLEET)?.try_into()?,
            docker: take(map_names::DOCKER)?.try_into()?,
            debug: take(map_names::DEBUG)?.try_into()?,
            networks: take(map_names::NETWORKS)?.try_into()?,
        })
    }

    /// Opens the maps pinned in `pins`, from any process.
    pub fn open(pins: &PinDir) -> Result<Maps> {
        pins.check_layouts()?;
        Ok(Maps {
            config: pins.open(map_names::CONFIG)?.try_into()?,
            peers: pins.open(map_names::PEERS)?.try_into()?,
            counters: pins.open(map_names::COUNTERS)?.try_into()?,
            peer_stats: pins.open(map_names::PEER_STATS)?.try_into()?,
            peer_info: pins.open(map_names::PEER_INFO)?.try_into()?,
            underlay: pins.open(map_names::UNDERLAY)?.try_into()?,
            agent: pins.open(map_names::AGENT)?.try_into()?,
            ct: pins.open(map_names::CT)?.try_into()?,
            nat: pins.open(map_names::NAT)?.try_into()?,
            publish: pins.open(map_names::PUBLISH)?.try_into()?,
            ct_info: pins.open(map_names::CT_INFO)?.try_into()?,
            policy_state: pins.open(map_names::POLICY_STATE)?.try_into()?,
            policy_src: pins.open(map_names::POLICY_SRC)?.try_into()?,
            policy_dst: pins.open(map_names::POLICY_DST)?.try_into()?,
            policy_rules: pins.open(map_names::POLICY_RULES)?.try_into()?,
            policy_stats: pins.open(map_names::POLICY_STATS)?.try_into()?,
            policy_info: pins.open(map_names::POLICY_INFO)?.try_into()?,
            groups: pins.open(map_names::GROUPS)?.try_into()?,
            monitor: pins.open(map_names::MONITOR)?.try_into()?,
            event_limit: pins.open(map_names::EVENT_LIMIT)?.try_into()?,
            build: pins.open(map_names::BUILD)?.try_into()?,
            reject_limit: pins.open(map_names::REJECT_LIMIT)?.try_into()?,
            endpoints: pins.open(map_names::ENDPOINTS)?.try_into()?,
            fleet: pins.open(map_names::FLEET)?.try_into()?,
            docker: pins.open(map_names::DOCKER)?.try_into()?,
            debug: pins.open(map_names::DEBUG)?.try_into()?,
            networks: pins.open(map_names::NETWORKS)?.try_into()?,
        })
    }

    pub fn config(&self) -> Result<netpath_common::Config> {
        Ok(self.config.get(&0, 0)?)
    }

    /// The containers' subnet in `NP_CONFIG`.
    pub fn subnet(&self) -> Result<ipnet::Ipv4Net> {
        let c = self.config()?;
        Ok(ipnet::Ipv4Net::with_netmask(addr_of(c.subnet_addr), addr_of(c.subnet_mask))?.trunc())
    }

    pub fn agent(&self) -> Result<AgentInfo> {
        Ok(self.agent.get(&0, 0)?)
    }

    /// `NP_AGENT` alone, from its pin: who manages the datapath, also while other maps
    /// are of another layout (a migration, a downgrade refused).
    pub fn pinned_agent(pins: &PinDir) -> Result<AgentInfo> {
        let a: Array<MapData, AgentInfo> = pins.open(map_names::AGENT)?.try_into()?;
        Ok(a.get(&0, 0)?)
    }

    /// Drop events: emitted, suppressed by the rate limit, lost (ring buffer full);
    /// summed over CPUs.
    pub fn event_totals(&self) -> Result<netpath_common::EventLimit> {
        let per_cpu: PerCpuValues<netpath_common::EventLimit> = self.event_limit.get(&0, 0)?;
        Ok(per_cpu
            .iter()
            .fold(Default::default(), |a, e| netpath_common::EventLimit {
                suppressed: a.suppressed + e.suppressed,
                lost: a.lost + e.lost,
                emitted: a.emitted + e.emitted,
                ..a
            }))
    }

    /// Every peer slot in use, by id: the 65,536 slots read in batches (a few syscalls,
    /// not one per slot).
    pub fn peer_infos(&self) -> Result<Vec<(u32, PeerInfo)>> {
        let all: Vec<(u32, PeerInfo)> =
            batch::lookup_all(aya::maps::IterableMap::map(&self.peer_info))?;
        Ok(all
            .into_iter()
            .filter(|(id, info)| *id < MAX_PEERS && info.origin != 0)
            .collect())
    }

    /// Counters by reason, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(u32, Counter)>> {
        let mut out = Vec::new();
        for i in 0..netpath_common::MAX_REASONS {
            let per_cpu: PerCpuValues<Counter> = self.counters.get(&i, 0)?;
            out.push((i, sum(per_cpu.iter().copied())));
        }
        Ok(out)
    }

    pub fn peer_stats(&self, id: u32) -> Result<PeerStats> {
        let per_cpu: PerCpuValues<PeerStats> = self.peer_stats.get(&id, 0)?;
        Ok(per_cpu.iter().fold(PeerStats::default(), |a, s| PeerStats {
            tx: sum([a.tx, s.tx]),
            rx: sum([a.rx, s.rx]),
            #[cfg(feature = "layout-test")]
            layout_test: sum([a.layout_test, s.layout_test]),
        }))
    }
}

/// A zeroed value for every possible CPU, to reset one entry of a per-CPU map.
pub(crate) fn zeroed_per_cpu<T: aya::Pod + Default + Clone>() -> Result<PerCpuValues<T>> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    Ok(PerCpuValues::try_from(vec![T::default(); n])?)
}

/// Packets and bytes added up (over CPUs).
pub(crate) fn sum(it: impl IntoIterator<Item = Counter>) -> Counter {
    it.into_iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}
