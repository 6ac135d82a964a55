//! The maps, named as in `netpath_common::map_names` (a test checks both sides agree).
//! Not pinned by the object itself: the agent pins each one under its pin dir
//! (EbpfLoader::map_pin_path), packet tests load them private to the test.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use netpath_common::{
    AgentInfo, Config, Counter, MAX_PEERS, MAX_REASONS, PeerInfo, PeerKey, PeerStats, PeerValue,
    UnderlayValue,
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
