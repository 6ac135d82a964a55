//! The maps, named as in `netpath_common::map_names` (a test checks both sides agree).
//! Not pinned by the object itself: the agent pins each one under its pin dir
//! (EbpfLoader::map_pin_path), packet tests load them private to the test.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use netpath_common::{
    AgentInfo, Config, Counter, CtEntry, CtInfo, CtKey, DEFAULT_CT_SIZE, MAX_PEERS, MAX_PUBLISH,
    MAX_REASONS, NatKey, NatValue, PeerInfo, PeerKey, PeerStats, PeerValue, PublishKey,
    PublishValue, UnderlayValue,
};

#[map(name = "NP_CONFIG_V1")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "NP_PEERS_V1")]
pub static PEERS: LpmTrie<PeerKey, PeerValue> = LpmTrie::with_max_entries(MAX_PEERS, 0);

/// Underlay address (network byte order) -> the peer that owns it.
#[map(name = "NP_UNDERLAY_V1")]
pub static UNDERLAY: HashMap<u32, UnderlayValue> = HashMap::with_max_entries(MAX_PEERS, 0);

#[map(name = "NP_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_REASONS, 0);

#[map(name = "NP_PEER_STATS_V1")]
pub static PEER_STATS: PerCpuArray<PeerStats> = PerCpuArray::with_max_entries(MAX_PEERS, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: names and origins of peers, indexed like `PEER_STATS`.
#[map(name = "NP_PEER_INFO_V1")]
pub static PEER_INFO: Array<PeerInfo> = Array::with_max_entries(MAX_PEERS, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: who manages this datapath.
#[map(name = "NP_AGENT_V1")]
pub static AGENT: Array<AgentInfo> = Array::with_max_entries(1, 0);

/// Translated flows by their container-side tuple (nat.rs). The agent sizes it from the
/// config (`[conntrack] size`) and expires entries.
#[map(name = "NP_CT_V1")]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(DEFAULT_CT_SIZE, 0);

/// Translated flows by their tuple on the uplink: the reverse of `CT`, and the ports in use.
#[map(name = "NP_NAT_V1")]
pub static NAT: LruHashMap<NatKey, NatValue> = LruHashMap::with_max_entries(DEFAULT_CT_SIZE, 0);

/// Published ports of the host's address.
#[map(name = "NP_PUBLISH_V1")]
pub static PUBLISH: HashMap<PublishKey, PublishValue> = HashMap::with_max_entries(MAX_PUBLISH, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: conntrack timeouts and collector figures.
#[map(name = "NP_CT_INFO_V1")]
pub static CT_INFO: Array<CtInfo> = Array::with_max_entries(1, 0);
