//! Everything the eBPF programs and the agent must agree on: map names, key and value
//! layouts, verdict reasons. Each type is `#[repr(C)]` and derives `bytemuck::Pod`, so a
//! layout with hidden padding fails to compile; padding is an explicit `_pad` field.
#![cfg_attr(not(test), no_std)]

pub mod reason;

pub use reason::Reason;

/// Layout version of the set of maps below: bumped whenever one map's key or value changes
/// (and that map's own `_V<n>` suffix with it), so an agent never reuses a pinned map of
/// another layout: it migrates the pinned maps of an older one (netpath/src/reconcile/
/// migrate.rs says how each map is carried) and refuses a newer one.
#[cfg(not(feature = "layout-test"))]
pub const LAYOUT_VERSION: u32 = 2;
/// The `layout-test` build (a field added to [`CtEntry`] and [`PeerStats`], for the
/// upgrade test).
#[cfg(feature = "layout-test")]
pub const LAYOUT_VERSION: u32 = 3;

/// Names of the maps, as they appear in the eBPF object and as the files pinned under the
/// pin dir. The `_V<n>` suffix is the version of that map's layout; `netpath-ebpf` spells
/// them out (its `#[map]` attribute needs a literal) and a test checks that both sides
/// agree.
pub mod map_names {
    pub const CONFIG: &str = "NP_CONFIG_V2";
    pub const PEERS: &str = "NP_PEERS_V1";
    pub const COUNTERS: &str = "NP_COUNTERS_V1";
    #[cfg(not(feature = "layout-test"))]
    pub const PEER_STATS: &str = "NP_PEER_STATS_V1";
    #[cfg(feature = "layout-test")]
    pub const PEER_STATS: &str = "NP_PEER_STATS_V2";
    pub const PEER_INFO: &str = "NP_PEER_INFO_V1";
    pub const UNDERLAY: &str = "NP_UNDERLAY_V1";
    pub const AGENT: &str = "NP_AGENT_V1";
    #[cfg(not(feature = "layout-test"))]
    pub const CT: &str = "NP_CT_V1";
    #[cfg(feature = "layout-test")]
    pub const CT: &str = "NP_CT_V2";
    pub const NAT: &str = "NP_NAT_V1";
    pub const PUBLISH: &str = "NP_PUBLISH_V1";
    pub const CT_INFO: &str = "NP_CT_INFO_V1";
    pub const POLICY_STATE: &str = "NP_POLICY_STATE_V1";
    pub const POLICY_SRC: &str = "NP_POLICY_SRC_V1";
    pub const POLICY_DST: &str = "NP_POLICY_DST_V1";
    pub const POLICY_RULES: &str = "NP_POLICY_RULES_V1";
    pub const POLICY_STATS: &str = "NP_POLICY_STATS_V1";
    pub const POLICY_INFO: &str = "NP_POLICY_INFO_V1";
    pub const GROUPS: &str = "NP_GROUPS_V1";
    pub const REJECT_LIMIT: &str = "NP_REJECT_LIMIT_V1";
    pub const EVENTS: &str = "NP_EVENTS_V1";
    pub const MONITOR: &str = "NP_MONITOR_V1";
    pub const EVENT_LIMIT: &str = "NP_EVENT_LIMIT_V1";
    pub const BUILD: &str = "NP_BUILD_V1";
    pub const ENDPOINTS: &str = "NP_ENDPOINTS_V1";
    pub const FLEET: &str = "NP_FLEET_V1";
    pub const DOCKER: &str = "NP_DOCKER_V1";
    pub const DEBUG: &str = "NP_DEBUG_V1";
    pub const NETWORKS: &str = "NP_NETWORKS_V1";
    /// Every map, for status, dumps and `netpath down`.
    pub const ALL: &[&str] = &[
        CONFIG,
        PEERS,
        COUNTERS,
        PEER_STATS,
        PEER_INFO,
        UNDERLAY,
        AGENT,
        CT,
        NAT,
        PUBLISH,
        CT_INFO,
        POLICY_STATE,
        POLICY_SRC,
        POLICY_DST,
        POLICY_RULES,
        POLICY_STATS,
        POLICY_INFO,
        GROUPS,
        REJECT_LIMIT,
        EVENTS,
        MONITOR,
        EVENT_LIMIT,
        BUILD,
        ENDPOINTS,
        FLEET,
        DOCKER,
        DEBUG,
        NETWORKS,
    ];
}

/// Names of the programs in the eBPF object.
pub mod prog_names {
    /// TC ingress of the container bridge: what containers send to be routed.
    pub const FROM_BRIDGE: &str = "np_from_bridge";
    /// TC ingress of the uplink: what peers send to this host's containers.
    pub const FROM_UPLINK: &str = "np_from_uplink";
    /// XDP on the uplink (optional): early checks and decap of tunnel traffic.
    pub const XDP_UPLINK: &str = "np_xdp_uplink";
    /// XDP_UPLINK for kernels whose XDP programs cannot have metadata: checks and drops
    /// only (TC decapsulates); loaded, under XDP_UPLINK's pin, where the kernel refuses
    /// XDP_UPLINK.
    pub const XDP_CHECK: &str = "np_xdp_check";
    /// TC ingress of each container's host-side veth: policy between containers of the
    /// same host (their traffic is bridged and never reaches the other programs).
    pub const FROM_CONTAINER: &str = "np_from_container";
}

/// Capacity of the peers map (LPM trie: one entry per peer subnet).
pub const MAX_PEERS: u32 = 65536;
/// Size of the counters array: room for reasons added later without a layout change.
pub const MAX_REASONS: u32 = 64;

/// Peer modes, as stored in [`PeerValue::mode`].
pub const MODE_DIRECT: u8 = 1;
pub const MODE_VXLAN: u8 = 2;

/// The one entry of the `NP_CONFIG` array. Until the agent writes it (`flags` has
/// [`CONFIG_F_READY`]) the programs pass everything to the stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Config {
    /// Underlay address of this host; network byte order.
    pub host_addr: u32,
    /// Local container subnet address; network byte order.
    pub subnet_addr: u32,
    /// Local container subnet mask; network byte order.
    pub subnet_mask: u32,
    /// ifindex of the uplink.
    pub uplink_ifindex: u32,
    /// ifindex of the container bridge.
    pub bridge_ifindex: u32,
    /// VXLAN network identifier, host byte order (24 bits used).
    pub vni: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// The bridge's own address in the local subnet (the containers' gateway), 0 if none;
    /// network byte order. Packets for it are the host's, never a container's.
    pub gateway_addr: u32,
    /// This host's VTEP MAC: the inner source MAC of what it encapsulates.
    pub vtep_mac: [u8; 6],
    /// VXLAN UDP port; network byte order.
    pub vxlan_port: u16,
    /// Largest TCP MSS that fits the tunnel: uplink MTU - VXLAN_OVERHEAD - 40.
    pub tunnel_mss: u16,
    /// Largest inner IPv4 packet the tunnel carries: uplink MTU - VXLAN_OVERHEAD. Bigger
    /// DF packets are answered with ICMP fragmentation-needed carrying this value.
    pub tunnel_mtu: u16,
    /// Masquerade ports: the first and last port (host byte order) that new flows to the
    /// outside may be given on the host's address.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// The bridge's MAC: the source MAC of what netpath delivers straight into a
    /// container (as the bridge, the containers' gateway, would have sent it).
    pub bridge_mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl Config {
    /// Whether `addr` (network byte order) can be one of this host's containers: in its
    /// subnet and not the containers' gateway.
    #[inline(always)]
    pub fn is_container(&self, addr: u32) -> bool {
        addr & self.subnet_mask == self.subnet_addr && addr != self.gateway_addr
    }
}

/// Set once the agent has filled the config.
pub const CONFIG_F_READY: u32 = 1;
/// `masquerade = true`: container traffic to the outside leaves with the host's address.
pub const CONFIG_F_MASQUERADE: u32 = 2;

/// Capacity of `NP_ENDPOINTS`: one entry per local container address.
pub const MAX_ENDPOINTS: u32 = 65536;

/// Value of `NP_ENDPOINTS` (hash; key: the container's IPv4 address, network byte order):
/// where netpath delivers a local container's packets with `bpf_redirect_peer`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Endpoint {
    /// ifindex of the container's host-side veth (a port of the bridge).
    pub ifindex: u32,
    /// The container's MAC: the destination MAC of what is delivered to it.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Capacity of `NP_NETWORKS`: the container networks of one host.
pub const MAX_NETWORKS: u32 = 1024;

/// Value of `NP_NETWORKS` (LPM trie; key: the network's subnet, an IPv4 address in
/// network byte order with its prefix length): a container network of this host, a
/// bridge with its subnet (docker0, and each user-defined bridge network of Docker).
/// Containers of two different networks of one host do not reach each other, as
/// Docker's isolation chains have it; the programs compare `bridge_ifindex`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Network {
    /// ifindex of the network's bridge: where its containers' veths are ports.
    pub bridge_ifindex: u32,
    /// The bridge's address in the subnet (the containers' gateway), 0 if none; network
    /// byte order. Packets for it are the host's.
    pub gateway_addr: u32,
    /// `NET_F_*` bits.
    pub flags: u32,
    /// The bridge's MAC: the source MAC of what is delivered into the network's containers.
    pub bridge_mac: [u8; 6],
    /// `ORIGIN_CONFIG` (the `[host].bridge`) or `ORIGIN_DOCKER`.
    pub origin: u8,
    pub prefix_len: u8,
    /// Userspace only, NUL-padded UTF-8: the network's name (Docker's), its bridge, and
    /// Docker's network id (the first 12 hex digits).
    pub name: [u8; 64],
    pub bridge: [u8; 16],
    pub docker_id: [u8; 12],
}

impl Default for Network {
    fn default() -> Network {
        bytemuck::Zeroable::zeroed()
    }
}

impl Network {
    /// The subnet's mask, network byte order.
    #[inline(always)]
    pub fn mask(&self) -> u32 {
        match self.prefix_len {
            0 => 0,
            p => (u32::MAX << (32 - p.min(32) as u32)).to_be(),
        }
    }

    /// Whether `addr` (network byte order) is in this network's subnet (that of its
    /// gateway: a network without one holds nothing by this test).
    #[inline(always)]
    pub fn holds(&self, addr: u32) -> bool {
        self.gateway_addr != 0 && addr & self.mask() == self.gateway_addr & self.mask()
    }

    /// A network across hosts ([`NET_F_SPANS`]).
    #[inline(always)]
    pub fn spans(&self) -> bool {
        self.flags & NET_F_SPANS != 0
    }

    /// The VNI of a network across hosts' packets in VXLAN.
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        self.flags >> NET_VNI_SHIFT
    }

    /// Whether `addr` (network byte order, an address of this network) is its broadcast
    /// address.
    #[inline(always)]
    pub fn is_broadcast(&self, addr: u32) -> bool {
        addr | self.mask() == u32::MAX
    }
}

/// Containers of the network may go to the outside masqueraded (with the host's
/// `masquerade = true`; Docker's `com.docker.network.bridge.enable_ip_masquerade`).
pub const NET_F_MASQUERADE: u32 = 1;
/// `docker network create --internal`: nothing in or out of the host, only between the
/// network's own containers (and to the host).
pub const NET_F_INTERNAL: u32 = 2;
/// A network across hosts (`netpath network create`): one subnet on every host of the
/// fleet, its containers on other hosts reached through their /32 routes in `NP_PEERS`
/// ([`PEER_F_ENDPOINT`]), their ARP answered; kept apart from every other network on the
/// wire too (its own VNI in vxlan, bits [`NET_VNI_SHIFT`].. of `flags`).
pub const NET_F_SPANS: u32 = 4;
/// Userspace only: a network across hosts carried in VXLAN (else direct).
pub const NET_F_VXLAN: u32 = 8;
/// Where a network across hosts keeps its VNI in [`Network::flags`].
pub const NET_VNI_SHIFT: u32 = 8;

/// Default size of the conntrack and NAT tables (LRU hashes, entries).
pub const DEFAULT_CT_SIZE: u32 = 65536;
/// Capacity of the published-ports map.
pub const MAX_PUBLISH: u32 = 4096;

/// Flow kinds, in [`CtEntry::kind`].
pub const CT_KIND_MASQUERADE: u8 = 1;
pub const CT_KIND_PUBLISHED: u8 = 2;
/// A flow that policy allowed and nothing translates (to a peer, from a peer, between two
/// containers of this host): the entry only remembers the verdict.
pub const CT_KIND_POLICY: u8 = 3;

/// [`CtEntry::flags`]: what the datapath has seen of a flow.
pub const CT_F_SEEN_CONTAINER: u8 = 1;
pub const CT_F_SEEN_REMOTE: u8 = 2;
/// TCP FIN from the container / from the remote end.
pub const CT_F_FIN_CONTAINER: u8 = 4;
pub const CT_F_FIN_REMOTE: u8 = 8;
/// TCP RST from either end.
pub const CT_F_RST: u8 = 16;

/// IP protocol numbers of the flows netpath translates.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of `NP_CT` (LRU hash): a translated flow, as seen on the container's side. For
/// ICMP echo the container's "port" is the echo identifier and the remote port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtKey {
    /// The container's address; network byte order.
    pub container: u32,
    /// The other end: the server a masqueraded flow goes to, or the client of a published
    /// port; network byte order.
    pub remote: u32,
    /// network byte order.
    pub container_port: u16,
    /// network byte order.
    pub remote_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `NP_CT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtEntry {
    /// bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC, at most a tick behind it: it reads no
    /// clock source, so a packet of a known flow costs no TSC read) of the first packet.
    pub created_ns: u64,
    /// bpf_ktime_get_coarse_ns of the latest packet, refreshed at most once a second (and
    /// when `flags` change): the agent expires the flow from it (CLOCK_MONOTONIC, never
    /// behind these).
    pub last_seen_ns: u64,
    /// The port (or echo identifier) on the host's address; network byte order.
    pub nat_port: u16,
    /// `CT_KIND_*`.
    pub kind: u8,
    /// `CT_F_*`.
    pub flags: u8,
    /// The policy rule that allowed the flow (its id in `NP_POLICY_STATS`); 0 for the
    /// default action. Every packet of the flow is counted under it.
    pub rule: u32,
    /// Only in the `layout-test` build: a field added on purpose, so that the upgrade
    /// test has a layout change to migrate (entries carried from `NP_CT_V1` read 0).
    #[cfg(feature = "layout-test")]
    pub layout_test: u64,
}

/// Key of `NP_NAT` (LRU hash): a translated flow as seen on the uplink, addressed to the
/// host's own address. Reserving a key is how a port is allocated: two flows can share a
/// port as long as they go to different remote ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatKey {
    /// network byte order.
    pub remote: u32,
    /// network byte order (0 for ICMP).
    pub remote_port: u16,
    /// network byte order.
    pub nat_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `NP_NAT`: whose flow it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NatValue {
    /// network byte order.
    pub container: u32,
    /// network byte order.
    pub container_port: u16,
    pub _pad: [u8; 2],
}

/// Key of `NP_PUBLISH` (hash): a port on the host's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PublishKey {
    /// network byte order.
    pub host_port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `NP_PUBLISH`: where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PublishValue {
    /// network byte order.
    pub container: u32,
    /// network byte order.
    pub container_port: u16,
    /// `ORIGIN_CONFIG` or `ORIGIN_CLI`.
    pub origin: u8,
    pub _pad: u8,
}

/// The one entry of `NP_CT_INFO` (userspace only): the timeouts the agent expires flows
/// with, and what its collector did, for `dump conntrack` and `stats` in any process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtInfo {
    /// Unix time of the last collection (0: never).
    pub last_gc_at: u64,
    /// Flows removed because their timeout passed, since the datapath was attached.
    pub expired: u64,
    /// Entries removed because their other half was gone (the LRU evicted it under
    /// pressure), since the datapath was attached.
    pub orphans: u64,
    /// Timeouts in seconds.
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
    pub icmp: u32,
    /// Seconds between collections.
    pub gc_interval: u32,
    /// Entries found by the last collection.
    pub ct_entries: u32,
    pub nat_entries: u32,
}

/// Policy actions, in [`PolicyVerdict::action`], [`PolicyState::default_action`] and
/// [`PolicyRuleInfo::action`].
pub const ACTION_ALLOW: u8 = 1;
/// Drop silently.
pub const ACTION_DENY: u8 = 2;
/// Drop and answer: TCP RST, or ICMP destination unreachable (administratively prohibited).
pub const ACTION_REJECT: u8 = 3;

/// Rule ids run from 1 to `MAX_POLICY_RULES - 1`; id 0 stands for the default action.
pub const MAX_POLICY_RULES: u32 = 131072;
/// Capacity of each policy LPM trie (allocated per entry, not up front). Both generations
/// (see [`PolicyState::generation`]) share it.
pub const MAX_POLICY_ENTRIES: u32 = 1 << 21;
/// Capacity of `NP_GROUPS` (one entry per CIDR of a group).
pub const MAX_GROUP_MEMBERS: u32 = 65536;

/// The one entry of `NP_POLICY_STATE`: which generation of the policy tries is live.
/// The agent writes a new policy into the other generation, then flips `generation`: a packet
/// reads `generation` once and does all its lookups in one generation, so it never sees half a
/// change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PolicyState {
    /// 0 or 1: the first byte of every key of the live generation.
    pub generation: u8,
    /// `ACTION_*` for packets that no rule matches; 0 reads as allow.
    pub default_action: u8,
    /// 1 when there is a rule or the default is not allow; 0: the programs skip policy.
    pub enabled: u8,
    pub _pad: u8,
    /// Reject answers each CPU may send per second; the others are dropped unanswered.
    pub reject_rate: u32,
    /// Rules in the live generation.
    pub rules: u32,
    /// Entries of the live generation in the three tries.
    pub entries: u32,
    /// Unix time of the last change.
    pub changed_at: u64,
}

/// Bits of the policy keys before the address (`NP_POLICY_SRC`) or the class
/// (`NP_POLICY_DST`, `NP_POLICY_RULES`): the generation byte.
pub const POLICY_GEN_BITS: u32 = 8;

/// Data of an `NP_POLICY_SRC` key (LPM): generation, then the source address (network
/// byte order), then padding. The value is the source class: the longest `from` prefix
/// that holds the address.
pub const fn policy_src_key(generation: u8, addr: u32) -> [u8; 8] {
    let a = addr.to_ne_bytes();
    [generation, a[0], a[1], a[2], a[3], 0, 0, 0]
}

/// Data of an `NP_POLICY_DST` key (LPM): generation, source class (big-endian), the
/// destination address (network byte order), padding. The value is the pair class.
pub const fn policy_dst_key(generation: u8, class: u32, addr: u32) -> [u8; 12] {
    let c = class.to_be_bytes();
    let a = addr.to_ne_bytes();
    [
        generation, c[0], c[1], c[2], c[3], a[0], a[1], a[2], a[3], 0, 0, 0,
    ]
}

/// Data of an `NP_POLICY_RULES` key (LPM): generation, pair class (big-endian), IP
/// protocol, destination port (network byte order). Prefix 40 matches every protocol,
/// 48 one protocol, 48 + n the first n bits of the port.
pub const fn policy_rule_key(generation: u8, pair: u32, proto: u8, port_be: u16) -> [u8; 8] {
    let c = pair.to_be_bytes();
    let p = port_be.to_ne_bytes();
    [generation, c[0], c[1], c[2], c[3], proto, p[0], p[1]]
}

/// Value of `NP_POLICY_RULES`: the rule that decides, already the most specific one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PolicyVerdict {
    pub rule: u32,
    /// `ACTION_*`.
    pub action: u8,
    pub _pad: [u8; 3],
}

/// A rule as written, for `policy list` from any process (userspace only: `NP_POLICY_INFO`,
/// a hash by rule id). `from` and `to` hold a CIDR or a group name, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PolicyRuleInfo {
    pub from: [u8; 32],
    pub to: [u8; 32],
    /// Destination ports, host byte order; 0-0 means any port.
    pub port_min: u16,
    pub port_max: u16,
    /// IP protocol; 0 means any.
    pub proto: u8,
    /// `ACTION_*`.
    pub action: u8,
    /// `ORIGIN_CONFIG` or `ORIGIN_CLI`.
    pub origin: u8,
    pub _pad: u8,
}

/// Key of `NP_GROUPS` (userspace only): one CIDR of a named group. The value is the
/// group's origin.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GroupMember {
    pub name: [u8; 32],
    /// network byte order.
    pub addr: u32,
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}

/// Per-CPU state of the reject rate limit (`NP_REJECT_LIMIT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RejectLimit {
    /// bpf_ktime_get_ns at the start of the current second.
    pub window_ns: u64,
    /// Answers sent in it.
    pub sent: u32,
    pub _pad: u32,
}

/// Size of the drop-event ring buffer (`NP_EVENTS`), bytes: about 6,500 events.
pub const EVENTS_SIZE: u32 = 256 * 1024;
/// Drop events each CPU may emit per second unless the agent sets another rate.
pub const DEFAULT_EVENT_RATE: u32 = 1000;

/// A drop, as `netpath monitor` receives it from `NP_EVENTS` (ring buffer). The tuple is
/// the packet's as it was when dropped (the outer headers of a tunnel packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DropEvent {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// [`Reason`] value.
    pub reason: u32,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// network byte order; 0 when the packet was not IPv4.
    pub src: u32,
    pub dst: u32,
    /// network byte order; 0 for protocols without ports (ICMP: type and code).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 1: dropped by the XDP program.
    pub xdp: u8,
    pub _pad: [u8; 2],
    /// Length of the packet.
    pub len: u32,
    pub _pad2: u32,
}

/// The one entry of `NP_MONITOR`: how many drop events each CPU may emit per second
/// (0: none). Unset (the entry is zero before the agent writes it) reads as none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MonitorState {
    pub rate: u32,
    pub _pad: u32,
}

/// The one entry of `NP_DEBUG`: the per-packet decision log (`netpath debug on|off`).
/// Off (zero) it costs each TC program one read of this entry per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DebugState {
    /// `DEBUG_F_*`.
    pub flags: u32,
    /// Only packets with a source or destination in this network are logged (network
    /// byte order; mask 0: every packet).
    pub match_addr: u32,
    pub match_mask: u32,
    pub _pad: u32,
}

/// One decision of the log, as the programs write it (through aya-log, as hex bytes: one
/// argument keeps the programs' stack small) and netpath reads it back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DebugRecord {
    /// `PROG_*`.
    pub prog: u8,
    /// The reason counted ([`Reason`]).
    pub reason: u8,
    pub proto: u8,
    pub _pad: u8,
    /// The program's return value (TC action or XDP action).
    pub action: i32,
    /// The packet as it came in: addresses and ports in network byte order.
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    /// As it left (translated, or the inner packet of a decapsulated one).
    pub out_src: u32,
    pub out_dst: u32,
    pub out_sport: u16,
    pub out_dport: u16,
    /// The peer routed to or come from (its id in `NP_PEER_STATS`), u32::MAX for none.
    pub peer: u32,
    /// The policy rule of the packet's flow, u32::MAX for none (no tracked flow).
    pub rule: u32,
}

/// `netpath debug on`: every decision is logged (aya-log's ring buffer).
pub const DEBUG_F_ON: u32 = 1;

/// The programs, as the decision log names them.
pub const PROG_FROM_BRIDGE: u8 = 1;
pub const PROG_FROM_UPLINK: u8 = 2;
pub const PROG_FROM_CONTAINER: u8 = 3;
pub const PROG_XDP_UPLINK: u8 = 4;

/// Per-CPU state of the drop-event rate limit (`NP_EVENT_LIMIT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EventLimit {
    /// bpf_ktime_get_ns at the start of the current second.
    pub window_ns: u64,
    /// Events emitted in it.
    pub sent: u32,
    pub _pad: u32,
    /// Drops not reported because the CPU was over its rate, since the datapath started.
    pub suppressed: u64,
    /// Events lost because the ring buffer was full (nobody reading, or too slowly).
    pub lost: u64,
    /// Events emitted, since the datapath started.
    pub emitted: u64,
}

/// The one entry of `NP_BUILD` (userspace only): which netpath loaded the running
/// programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BuildInfo {
    /// NUL-padded version of the netpath that loaded the programs.
    pub version: [u8; 32],
    /// FNV-1a 64 of the eBPF object it loaded.
    pub object_digest: u64,
    /// Unix time the programs were loaded.
    pub loaded_at: u64,
}

/// The one entry of `NP_FLEET` (userspace only): the agent's view of etcd (`[etcd]`), for
/// `status`, `doctor` and the metrics from any process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FleetInfo {
    /// `FLEET_F_*` bits; 0: no `[etcd]`.
    pub flags: u32,
    /// Other hosts etcd lists.
    pub hosts: u32,
    /// Unix time etcd last answered (0: never, since the agent started).
    pub last_ok: u64,
    /// Unix time since which etcd has not answered; 0 while it answers.
    pub away_since: u64,
    pub lease_ttl: u32,
    /// Registrations left out (not good, or colliding with the config's peers).
    pub skipped: u32,
}

/// The one entry of `NP_DOCKER` (userspace only): the agent's view of the Docker engine
/// (`[docker]`), for `status`, `doctor` and the metrics from any process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DockerInfo {
    /// `DOCKER_F_*` bits; 0: no `[docker]`.
    pub flags: u32,
    /// Running containers Docker lists.
    pub containers: u32,
    /// Their published ports netpath serves.
    pub ports: u32,
    /// Their published ports netpath refused (see `note`).
    pub refused: u32,
    /// Unix time the engine last answered (0: never, since the agent started).
    pub last_ok: u64,
    /// Unix time since which the engine has not answered; 0 while it answers.
    pub away_since: u64,
    /// NUL-padded UTF-8: the first refusal, or why the engine does not answer.
    pub note: [u8; 128],
}

impl Default for DockerInfo {
    fn default() -> DockerInfo {
        bytemuck::Zeroable::zeroed()
    }
}

/// `[docker]` is configured.
pub const DOCKER_F_CONFIGURED: u32 = 1;
/// The engine answers (listed, events followed).
pub const DOCKER_F_UP: u32 = 2;
/// The agent serves the IPAM plugin of networks across hosts (`[etcd]` and `[docker]`).
pub const DOCKER_F_IPAM: u32 = 4;

/// `[etcd]` is configured.
pub const FLEET_F_CONFIGURED: u32 = 1;
/// This host's subnet is registered under a live lease.
pub const FLEET_F_REGISTERED: u32 = 2;
/// Another host holds this host's subnet: it is not registered.
pub const FLEET_F_TAKEN: u32 = 4;

/// Data part of the LPM key of `NP_PEERS`: an IPv4 address in network byte order
/// (stored as the four bytes in packet order, so `u32::from_ne_bytes(octets)`).
pub type PeerKey = u32;

/// Value of `NP_PEERS`: how to reach a peer's container subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PeerValue {
    /// Underlay address of the peer host; network byte order.
    pub underlay: u32,
    /// Index of this peer in `NP_PEER_STATS`.
    pub id: u32,
    /// `MODE_DIRECT` or `MODE_VXLAN`.
    pub mode: u8,
    /// `PEER_F_*` bits.
    pub flags: u8,
    /// The peer's VTEP MAC: the inner destination MAC of what is encapsulated to it (a
    /// Linux vxlan device accepts only frames for its own MAC).
    pub vtep_mac: [u8; 6],
}

/// A route of `NP_PEERS` that is one container (a /32) of a network across hosts
/// ([`NET_F_SPANS`]) on that peer, not the peer's own subnet: only that network's
/// containers may send to it or receive from it. Its `mode` is the network's.
pub const PEER_F_ENDPOINT: u8 = 1;

/// Value of `NP_UNDERLAY` (hash, key: underlay address in network byte order): the peer
/// that owns an underlay address, for checking the outer source of tunnel packets.
pub type UnderlayValue = PeerValue;

/// The VTEP MAC netpath uses for a host that has no `vtep_mac` configured: locally
/// administered, 02:4e:<the four bytes of its underlay address> ("N" for netpath).
pub const fn default_vtep_mac(underlay: [u8; 4]) -> [u8; 6] {
    [
        0x02,
        0x4e,
        underlay[0],
        underlay[1],
        underlay[2],
        underlay[3],
    ]
}

/// Bytes that VXLAN adds in front of the inner IP packet: outer IPv4 (20), UDP (8),
/// VXLAN (8), inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// Packets and bytes; the value of `NP_COUNTERS` (per CPU, indexed by [`Reason`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-peer traffic, the value of `NP_PEER_STATS` (per CPU, indexed by [`PeerValue::id`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PeerStats {
    /// Sent to the peer.
    pub tx: Counter,
    /// Received from the peer and delivered to a local container.
    pub rx: Counter,
    /// Only in the `layout-test` build: a counter added on purpose, so that the upgrade
    /// test migrates a per-CPU map of counters too (`NP_PEER_STATS_V1` to `_V2`).
    #[cfg(feature = "layout-test")]
    pub layout_test: Counter,
}

/// Origin of a peer, in [`PeerInfo::origin`].
pub const ORIGIN_CONFIG: u8 = 1;
/// Added with `netpath peer add`: kept across agent restarts until `netpath peer del`.
pub const ORIGIN_CLI: u8 = 2;
/// A peer registered in etcd by another host (sources::etcd).
pub const ORIGIN_ETCD: u8 = 3;
/// A port Docker publishes for a running container (`docker run -p`; sources::docker).
pub const ORIGIN_DOCKER: u8 = 4;

/// What operators need to know about a peer and the datapath does not: its name and
/// where it came from. `NP_PEER_INFO` is an array indexed by [`PeerValue::id`]; a slot
/// whose `origin` is 0 is free. Only userspace reads it, from any process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PeerInfo {
    /// NUL-padded UTF-8.
    pub name: [u8; 32],
    /// Peer container subnet address; network byte order.
    pub subnet: u32,
    /// Underlay address; network byte order.
    pub underlay: u32,
    pub prefix_len: u8,
    pub mode: u8,
    /// 0 (free), `ORIGIN_CONFIG` or `ORIGIN_CLI`.
    pub origin: u8,
    /// 1 when `vtep_mac` was configured, 0 when it is the default for the underlay.
    pub vtep_mac_set: u8,
    pub vtep_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The one entry of `NP_AGENT`: who manages this datapath, for `status` and `down`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AgentInfo {
    /// Unix time the running datapath was first attached.
    pub attached_at: u64,
    /// Unix time the current (or last) agent started.
    pub agent_started_at: u64,
    /// pid of the current (or last) agent.
    pub agent_pid: u32,
    pub uplink_ifindex: u32,
    pub bridge_ifindex: u32,
    /// How many times an agent has (re)adopted this datapath.
    pub generation: u32,
    /// NUL-padded host name from the config.
    pub host_name: [u8; 32],
    pub uplink: [u8; 16],
    pub bridge: [u8; 16],
    /// `AGENT_F_*` bits.
    pub flags: u32,
    /// What the live CLI edits of the peers (`peer add|del`) last did, written by each
    /// under the pin lock ([`peer_edit`]): how many there were (high 16 bits, wrapping)
    /// and the slot the last one edited (low 16). The running agent's copy of the peers'
    /// maps stands while this is unchanged; after one edit it rereads that slot alone.
    pub peer_edits: u32,
}

/// `AgentInfo::peer_edits` after one more live edit, of peer slot `slot`.
pub fn peer_edit(before: u32, slot: u32) -> u32 {
    ((before >> 16).wrapping_add(1) << 16) | (slot & 0xffff)
}

/// The slot edited, if `now` is `before` and exactly one live edit ([`peer_edit`]); None
/// when nothing changed or more than one edit came. (An older CLI added one to the whole
/// word: that shows as none, but once in 65,536 of its edits.)
pub fn one_peer_edit(before: u32, now: u32) -> Option<u32> {
    ((now >> 16) == ((before >> 16).wrapping_add(1) & 0xffff)).then_some(now & 0xffff)
}

// A peer's slot fits the low half of `AgentInfo::peer_edits`.
const _: () = assert!(MAX_PEERS <= 1 << 16);

/// The TC programs are attached with TCX links (pinned); without it, with netlink
/// (clsact filters, which outlive the agent by themselves).
pub const AGENT_F_TCX: u32 = 1;
/// XDP is attached to the uplink in generic (SKB) mode.
pub const AGENT_F_XDP_GENERIC: u32 = 2;
/// XDP is attached to the uplink in native (driver) mode.
pub const AGENT_F_XDP_NATIVE: u32 = 4;
/// The XDP program attached checks and drops only (np_xdp_check: the kernel gives XDP
/// no metadata); np_from_uplink decapsulates every tunnel packet.
pub const AGENT_F_XDP_CHECK: u32 = 8;

/// Reads a NUL-padded name field.
pub fn name_str(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("?")
}

/// Writes `s` into a NUL-padded field, cut at the field size (callers validate lengths),
/// at a character boundary so that it stays UTF-8.
pub fn name_bytes<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut n = s.len().min(N);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::PeerInfo {}
    unsafe impl aya::Pod for super::AgentInfo {}
    // SAFETY: all of these are #[repr(C)], Copy, and bytemuck::Pod (no padding, any bit
    // pattern valid), which is what aya::Pod requires.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Network {}
    unsafe impl aya::Pod for super::FleetInfo {}
    unsafe impl aya::Pod for super::DockerInfo {}
    unsafe impl aya::Pod for super::PeerValue {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::PeerStats {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::NatKey {}
    unsafe impl aya::Pod for super::NatValue {}
    unsafe impl aya::Pod for super::PublishKey {}
    unsafe impl aya::Pod for super::PublishValue {}
    unsafe impl aya::Pod for super::CtInfo {}
    unsafe impl aya::Pod for super::PolicyState {}
    unsafe impl aya::Pod for super::PolicyVerdict {}
    unsafe impl aya::Pod for super::PolicyRuleInfo {}
    unsafe impl aya::Pod for super::GroupMember {}
    unsafe impl aya::Pod for super::RejectLimit {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::MonitorState {}
    unsafe impl aya::Pod for super::DebugState {}
    unsafe impl aya::Pod for super::EventLimit {}
    unsafe impl aya::Pod for super::BuildInfo {}
}

/// Converts an address to its map representation (network byte order in a u32).
#[inline(always)]
pub const fn addr_to_be(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Converts a map representation back to octets.
#[inline(always)]
pub const fn be_to_octets(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

#[cfg(test)]
mod tests {
    use super::{one_peer_edit, peer_edit};

    #[test]
    fn one_live_edit_names_its_slot_and_more_than_one_names_none() {
        let start = 0x1234_0007;
        let one = peer_edit(start, 65_535);
        assert_eq!(one_peer_edit(start, one), Some(65_535));
        assert_eq!(one_peer_edit(start, start), None, "nothing changed");
        assert_eq!(one_peer_edit(start, peer_edit(one, 3)), None, "two edits");
        // The count wraps: the 65,536th edit after 0xffff is one edit still.
        let last = 0xffff_0001;
        assert_eq!(one_peer_edit(last, peer_edit(last, 9)), Some(9));
        assert_eq!(peer_edit(last, 9), 9);
        // An older CLI added one to the whole word: not taken for one edit.
        assert_eq!(one_peer_edit(start, start + 1), None);
    }
}
