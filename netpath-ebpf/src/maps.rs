//! The maps, named as in `netpath_common::map_names` (a test checks both sides agree).
//! Not pinned by the object itself: the agent pins each one under its pin dir
//! (EbpfLoader::map_pin_path), packet tests load them private to the test.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use netpath_common::{
    AgentInfo, BuildInfo, CONFIG_F_READY, Config, Counter, CtEntry, CtInfo, CtKey, DEFAULT_CT_SIZE,
    DebugState, DockerInfo, EVENTS_SIZE, Endpoint, EventLimit, FleetInfo, GroupMember,
    MAX_ENDPOINTS, MAX_GROUP_MEMBERS, MAX_NETWORKS, MAX_PEERS, MAX_POLICY_ENTRIES,
    MAX_POLICY_RULES, MAX_PUBLISH, MAX_REASONS, MonitorState, NatKey, NatValue, Network, PeerInfo,
    PeerKey, PeerStats, PeerValue, PolicyRuleInfo, PolicyState, PolicyVerdict, PublishKey,
    PublishValue, Reason, RejectLimit, UnderlayValue,
};

#[map(name = "NP_CONFIG_V2")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "NP_PEERS_V1")]
pub static PEERS: LpmTrie<PeerKey, PeerValue> = LpmTrie::with_max_entries(MAX_PEERS, 0);

/// Underlay address (network byte order) -> the peer that owns it.
#[map(name = "NP_UNDERLAY_V1")]
pub static UNDERLAY: HashMap<u32, UnderlayValue> = HashMap::with_max_entries(MAX_PEERS, 0);

#[map(name = "NP_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_REASONS, 0);

#[cfg_attr(not(feature = "layout-test"), map(name = "NP_PEER_STATS_V1"))]
#[cfg_attr(feature = "layout-test", map(name = "NP_PEER_STATS_V2"))]
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
#[cfg_attr(not(feature = "layout-test"), map(name = "NP_CT_V1"))]
#[cfg_attr(feature = "layout-test", map(name = "NP_CT_V2"))]
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

/// Which policy generation is live, the default action, the reject rate (policy.rs).
#[map(name = "NP_POLICY_STATE_V1")]
pub static POLICY_STATE: Array<PolicyState> = Array::with_max_entries(1, 0);

/// (generation, source address) -> source class. Keys: `netpath_common::policy_src_key`.
#[map(name = "NP_POLICY_SRC_V1")]
pub static POLICY_SRC: LpmTrie<[u8; 8], u32> = LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);

/// (generation, source class, destination address) -> pair class.
#[map(name = "NP_POLICY_DST_V1")]
pub static POLICY_DST: LpmTrie<[u8; 12], u32> = LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);

/// (generation, pair class, protocol, destination port) -> the deciding rule.
#[map(name = "NP_POLICY_RULES_V1")]
pub static POLICY_RULES: LpmTrie<[u8; 8], PolicyVerdict> =
    LpmTrie::with_max_entries(MAX_POLICY_ENTRIES, 0);

/// Packets and bytes per rule id (0: the default action).
#[map(name = "NP_POLICY_STATS_V1")]
pub static POLICY_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_POLICY_RULES, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: the rules as written, by id.
#[map(name = "NP_POLICY_INFO_V1")]
pub static POLICY_INFO: HashMap<u32, PolicyRuleInfo> =
    HashMap::with_max_entries(MAX_POLICY_RULES, BPF_F_NO_PREALLOC);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: the named groups, one entry per CIDR.
#[map(name = "NP_GROUPS_V1")]
pub static GROUPS: HashMap<GroupMember, u8> =
    HashMap::with_max_entries(MAX_GROUP_MEMBERS, BPF_F_NO_PREALLOC);

/// Reject answers sent this second, per CPU.
#[map(name = "NP_REJECT_LIMIT_V1")]
pub static REJECT_LIMIT: PerCpuArray<RejectLimit> = PerCpuArray::with_max_entries(1, 0);

/// Drop events for `netpath monitor` (events.rs).
#[map(name = "NP_EVENTS_V1")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_SIZE, 0);

/// The rate of drop events the agent allows.
#[map(name = "NP_MONITOR_V1")]
pub static MONITOR: Array<MonitorState> = Array::with_max_entries(1, 0);

/// The decision log's switch and match (debug.rs).
#[map(name = "NP_DEBUG_V1")]
pub static DEBUG: Array<DebugState> = Array::with_max_entries(1, 0);

/// Drop events emitted this second, suppressed and lost, per CPU.
#[map(name = "NP_EVENT_LIMIT_V1")]
pub static EVENT_LIMIT: PerCpuArray<EventLimit> = PerCpuArray::with_max_entries(1, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: which netpath loaded the programs.
#[map(name = "NP_BUILD_V1")]
pub static BUILD: Array<BuildInfo> = Array::with_max_entries(1, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: the agent's view of etcd.
#[map(name = "NP_FLEET_V1")]
pub static FLEET: Array<FleetInfo> = Array::with_max_entries(1, 0);

#[allow(dead_code, reason = "read by the agent only")]
/// Userspace only: the agent's view of the Docker engine.
#[map(name = "NP_DOCKER_V1")]
pub static DOCKER: Array<DockerInfo> = Array::with_max_entries(1, 0);

/// Local containers by address (network byte order): their host-side veth and MAC, for
/// delivery straight into them (forward.rs). Kept by the agent from the bridge's
/// neighbours and forwarding database.
#[map(name = "NP_ENDPOINTS_V1")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

/// This host's container networks by subnet (docker0 and Docker's other bridge networks):
/// which bridge a local address is on, its gateway, whether it is internal or masqueraded.
#[map(name = "NP_NETWORKS_V1")]
pub static NETWORKS: LpmTrie<u32, Network> = LpmTrie::with_max_entries(MAX_NETWORKS, 0);

/// The local network `addr` (network byte order) is in, if any.
#[inline(always)]
pub fn network(addr: u32) -> Option<&'static Network> {
    NETWORKS.get(aya_ebpf::maps::lpm_trie::Key::new(32, addr))
}

/// The host's config, once the agent has written it (`CONFIG_F_READY`).
#[inline(always)]
pub fn config() -> Result<&'static Config, Reason> {
    match CONFIG.get(0) {
        Some(c) if c.flags & CONFIG_F_READY != 0 => Ok(c),
        _ => Err(Reason::PassNoConfig),
    }
}
