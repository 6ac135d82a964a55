//! The maps, named as in `netpath_common::map_names` (a test checks both sides agree).
//! Pinned by name: the agent loads with a pin dir, so these outlive it.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray},
};
use netpath_common::{
    AgentInfo, Config, Counter, MAX_PEERS, MAX_REASONS, PeerInfo, PeerKey, PeerStats, PeerValue,
};

#[map(name = "NP_CONFIG_V1")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "NP_PEERS_V1")]
pub static PEERS: LpmTrie<PeerKey, PeerValue> = LpmTrie::pinned(MAX_PEERS, 0);

#[map(name = "NP_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_REASONS, 0);

#[map(name = "NP_PEER_STATS_V1")]
pub static PEER_STATS: PerCpuArray<PeerStats> = PerCpuArray::pinned(MAX_PEERS, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: names and origins of peers, indexed like `PEER_STATS`.
#[map(name = "NP_PEER_INFO_V1")]
pub static PEER_INFO: Array<PeerInfo> = Array::pinned(MAX_PEERS, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: who manages this datapath.
#[map(name = "NP_AGENT_V1")]
pub static AGENT: Array<AgentInfo> = Array::pinned(1, 0);
