//! The desired state's types, defined once: the host, peers, published ports, conntrack
//! and monitor settings (policy types in [`policy`]), where each entry comes from
//! ([`Origin`]), and the checks every source applies to them. No source and no map is
//! known here: sources (sources/) produce a [`Desired`], reconcilers (reconcile/) write
//! it into the maps.

pub mod policy;

use std::{fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::Deserialize;

use policy::{Action, Groups, Rule};

/// Where an entry of the desired state comes from. Stored with the entry in its map
/// (`origin`), so that the next agent knows which entries each source owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The config file: the agent makes the maps say what it says at every start.
    Config,
    /// `netpath peer|publish|policy add` on a running datapath: kept until `... del`.
    Cli,
    /// Another host's registration in etcd (`[etcd]`): kept until etcd says it is gone.
    Etcd,
    /// A port Docker publishes for a running container (`[docker]`): kept until Docker
    /// says the container stopped.
    Docker,
}

impl Origin {
    pub fn to_map(self) -> u8 {
        match self {
            Origin::Config => netpath_common::ORIGIN_CONFIG,
            Origin::Cli => netpath_common::ORIGIN_CLI,
            Origin::Etcd => netpath_common::ORIGIN_ETCD,
            Origin::Docker => netpath_common::ORIGIN_DOCKER,
        }
    }

    /// The origin an entry's `origin` byte names (an unknown one reads as the config's,
    /// which the next reconcile replaces or removes).
    pub fn from_map(v: u8) -> Origin {
        match v {
            netpath_common::ORIGIN_CLI => Origin::Cli,
            netpath_common::ORIGIN_ETCD => Origin::Etcd,
            netpath_common::ORIGIN_DOCKER => Origin::Docker,
            _ => Origin::Config,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Cli => "cli",
            Origin::Etcd => "etcd",
            Origin::Docker => "docker",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry of the desired state and the source it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned<T> {
    pub item: T,
    pub origin: Origin,
}

/// A policy rule of the desired state. `id` is the id the rule must keep (a rule added
/// with `policy add` is known by its id); None lets the reconciler keep the id of the same
/// installed rule or hand out a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRule {
    pub rule: Rule,
    pub origin: Origin,
    pub id: Option<u32>,
}

/// The policy of the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPolicy {
    pub groups: Groups,
    pub rules: Vec<DesiredRule>,
    /// For packets no rule matches.
    pub default: Action,
    /// Reject answers per second, per CPU.
    pub reject_rate: u32,
}

/// What the datapath must look like: every source's part merged (sources/), valid as a
/// whole. The reconcilers (reconcile/) make the pinned maps say exactly this.
#[derive(Debug, Clone)]
pub struct Desired {
    pub host: Host,
    pub conntrack: Conntrack,
    pub monitor: Monitor,
    pub peers: Vec<Owned<Peer>>,
    pub publish: Vec<Owned<Publish>>,
    pub policy: DesiredPolicy,
    /// The host's container networks: the `[host].bridge` first, then Docker's others.
    pub networks: Vec<Network>,
    /// The containers of networks across hosts that live on peers: a /32 route each.
    pub remote: Vec<Remote>,
}

/// A desired state whose policy was left out (sources::desired_docker: a Docker event's,
/// which never touches the policy); reconcile::docker_from leaves the policy's maps as
/// they are. Not a [`Desired`], so that it cannot be reconciled as one: its empty policy
/// would remove every rule.
#[derive(Debug, Clone)]
pub struct DesiredNoPolicy(pub Desired);

/// The peers' part of a desired state: what an etcd registration's change touches
/// (sources::desired_peers, reconcile::peers_from).
#[derive(Debug, Clone, Default)]
pub struct DesiredPeers {
    pub peers: Vec<Owned<Peer>>,
    /// The containers of networks across hosts that live on peers: a /32 route each.
    pub remote: Vec<Remote>,
}

/// A container of a network across hosts on another host (a peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub addr: Ipv4Addr,
    pub network: String,
    /// The peer (by name) it lives on.
    pub host: String,
    /// The network's mode.
    pub mode: Mode,
}

/// Largest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// Peer names are stored NUL-padded in 32 bytes.
pub const NAME_MAX: usize = 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Direct,
    Vxlan,
}

impl Mode {
    pub fn to_map(self) -> u8 {
        match self {
            Mode::Direct => netpath_common::MODE_DIRECT,
            Mode::Vxlan => netpath_common::MODE_VXLAN,
        }
    }

    pub fn from_map(m: u8) -> Option<Mode> {
        match m {
            netpath_common::MODE_DIRECT => Some(Mode::Direct),
            netpath_common::MODE_VXLAN => Some(Mode::Vxlan),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Direct => "direct",
            Mode::Vxlan => "vxlan",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Mode::Direct),
            "vxlan" => Ok(Mode::Vxlan),
            _ => Err(format!("unknown mode {s:?}: use \"direct\" or \"vxlan\"")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    Off,
    Generic,
    Native,
}

impl XdpMode {
    /// The name used in the config file and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Off => "off",
            XdpMode::Generic => "generic",
            XdpMode::Native => "native",
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[monitor]`: drop events for `netpath monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitor {
    /// Drop events each CPU may report per second (0: none); drops past it are only
    /// counted (as suppressed).
    pub rate: u32,
}

impl Default for Monitor {
    fn default() -> Monitor {
        Monitor {
            rate: netpath_common::DEFAULT_EVENT_RATE,
        }
    }
}

/// Largest `[monitor] rate`.
pub const EVENT_RATE_MAX: u32 = 1_000_000;

/// Protocols a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => netpath_common::IPPROTO_TCP,
            Proto::Udp => netpath_common::IPPROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            netpath_common::IPPROTO_TCP => Some(Proto::Tcp),
            netpath_common::IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl std::str::FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("unknown protocol {s:?}: use \"tcp\" or \"udp\"")),
        }
    }
}

/// A published port: `host_port` on the host's underlay address leads to
/// `container:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub proto: Proto,
    pub host_port: u16,
    pub container: Ipv4Addr,
    pub port: u16,
}

/// `[conntrack]`: the size of the flow tables and the idle timeouts (seconds) after
/// which the agent removes a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conntrack {
    /// Entries of the conntrack table and of the NAT table (each).
    pub size: u32,
    /// A TCP flow that has not been answered yet.
    pub tcp_syn: u32,
    pub tcp_established: u32,
    /// A TCP flow after a FIN or RST.
    pub tcp_closing: u32,
    pub udp: u32,
    pub icmp: u32,
    /// Seconds between two collections of expired flows.
    pub gc_interval: u32,
}

impl Default for Conntrack {
    fn default() -> Conntrack {
        Conntrack {
            size: netpath_common::DEFAULT_CT_SIZE,
            tcp_syn: 60,
            tcp_established: 21600,
            tcp_closing: 10,
            udp: 60,
            icmp: 30,
            gc_interval: 10,
        }
    }
}

/// Smallest and largest conntrack table.
pub const CT_SIZE_MIN: u32 = 1024;
pub const CT_SIZE_MAX: u32 = 1 << 24;
/// Default masquerade ports: Linux's default ephemeral range.
pub const MASQUERADE_PORTS: (u16, u16) = (32768, 60999);

#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub uplink: String,
    pub uplink_ifindex: u32,
    pub bridge: String,
    pub bridge_ifindex: u32,
    /// The host's container subnet: what peers route to this host. It holds the bridge's
    /// network and, on a Docker host, the pool its other networks come from.
    pub subnet: Ipv4Net,
    pub address: Ipv4Addr,
    /// The bridge's own address inside `subnet`, if it has one.
    pub gateway: Option<Ipv4Addr>,
    /// The bridge's network: the subnet of its address (`bip`) inside `subnet`, or all of
    /// `subnet` while the bridge has no address there.
    pub bridge_subnet: Ipv4Net,
    pub vni: u32,
    pub xdp: XdpMode,
    pub vxlan_port: u16,
    pub vtep_mac: [u8; 6],
    /// MTU of the uplink (read at start).
    pub uplink_mtu: u32,
    /// MAC of the bridge (read at start): the source MAC of deliveries into containers.
    pub bridge_mac: [u8; 6],
    /// Masquerade container traffic to the outside.
    pub masquerade: bool,
    /// First and last port masqueraded flows get.
    pub masquerade_ports: (u16, u16),
}

impl Host {
    /// Largest IPv4 packet the tunnel carries without fragmenting.
    pub fn tunnel_mtu(&self) -> u32 {
        self.uplink_mtu
            .saturating_sub(netpath_common::VXLAN_OVERHEAD)
    }

    /// Largest TCP MSS that fits the tunnel (20 bytes of IPv4, 20 of TCP).
    pub fn tunnel_mss(&self) -> u16 {
        self.tunnel_mtu().saturating_sub(40).min(u16::MAX as u32) as u16
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub subnet: Ipv4Net,
    pub underlay: Ipv4Addr,
    pub mode: Mode,
    /// Configured VTEP MAC, if any (see [`Peer::vtep_mac`]).
    pub vtep_mac: Option<[u8; 6]>,
}

impl Peer {
    /// The inner destination MAC of what is encapsulated to this peer.
    pub fn vtep_mac(&self) -> [u8; 6] {
        self.vtep_mac
            .unwrap_or_else(|| netpath_common::default_vtep_mac(self.underlay.octets()))
    }
}

/// Parses a MAC written as six hex pairs separated by colons.
/// `aa:bb:cc:dd:ee:ff`, as [`parse_mac`] reads it.
pub fn format_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(field: &str, s: &str) -> Result<[u8; 6], String> {
    let err =
        || format!("{field} = {s:?} is not a MAC address: write it like \"02:4e:c6:12:00:0b\"");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(err());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(format!("{field} = {s:?} is not a unicast MAC address"));
    }
    Ok(mac)
}

/// Parses a CIDR; the address must be the network address (10.244.1.0/24, not .5/24).
pub fn parse_subnet(field: &str, s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        format!("{field} = {s:?} is not an IPv4 CIDR: write it like \"10.244.1.0/24\"")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{field} = {s:?} has host bits set: did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

pub fn parse_addr(field: &str, s: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| {
        format!("{field} = {s:?} is not an IPv4 address: write it like \"198.18.0.11\"")
    })
}

pub fn check_name(field: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > NAME_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{field} = {s:?}: use 1 to {NAME_MAX} printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// Checks a peer against the host (its subnet `local`, its underlay address `host`) and
/// the other peers; `others` are already valid. Shared by the config and `peer add`.
pub fn check_peer<'a>(
    field: &dyn std::fmt::Display,
    p: &Peer,
    local: Ipv4Net,
    host: Ipv4Addr,
    others: impl IntoIterator<Item = &'a Peer>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if p.underlay == host {
        problems.push(format!(
            "{field}.underlay = \"{}\" is this host's own address: a peer is another host",
            p.underlay
        ));
    }
    if overlaps(p.subnet, local) {
        problems.push(format!(
            "{field}.subnet = \"{}\" overlaps the local subnet [host].subnet = \"{local}\": give each host its own subnet",
            p.subnet
        ));
    }
    for o in others {
        if o.name == p.name {
            problems.push(format!(
                "{field}.name = {:?} is used by another peer: peer names must be unique",
                p.name
            ));
        }
        if overlaps(o.subnet, p.subnet) {
            problems.push(format!(
                "{field}.subnet = \"{}\" overlaps peer {:?} (\"{}\"): peer subnets must not overlap",
                p.subnet, o.name, o.subnet
            ));
        }
        if o.underlay == p.underlay {
            problems.push(format!(
                "{field}.underlay = \"{}\" is also peer {:?}'s: one peer per host, with one subnet",
                p.underlay, o.name
            ));
        }
    }
    if p.underlay.is_unspecified() || p.underlay.is_broadcast() || p.underlay.is_multicast() {
        problems.push(format!(
            "{field}.underlay = \"{}\" is not a unicast address",
            p.underlay
        ));
    }
    problems
}

/// The peers accepted so far, indexed so that [`check_peer`]'s questions (same name,
/// same underlay, an overlapping subnet) cost O(log n) each instead of a walk over every
/// peer: a merge of 10,000 hosts is then O(n log n), not O(n²). Holds disjoint subnets
/// (what `check` accepts).
/// Borrows the peers it holds (nothing is copied while merging).
#[derive(Default)]
pub struct PeerIndex<'a> {
    names: foldhash::HashMap<&'a str, usize>,
    underlays: foldhash::HashMap<Ipv4Addr, usize>,
    /// First address of each subnet -> (last address, peer).
    ranges: std::collections::BTreeMap<u32, (u32, usize)>,
    peers: Vec<&'a Peer>,
}

impl<'a> PeerIndex<'a> {
    /// An index with room for `n` peers (no growing while they are inserted).
    pub fn with_capacity(n: usize) -> Self {
        use foldhash::HashMapExt;
        PeerIndex {
            names: foldhash::HashMap::with_capacity(n),
            underlays: foldhash::HashMap::with_capacity(n),
            ranges: Default::default(),
            peers: Vec::with_capacity(n),
        }
    }

    /// What [`check_peer`] says of `p` against every peer inserted so far.
    /// `field` is written out only into a problem found.
    pub fn check(
        &self,
        field: &dyn std::fmt::Display,
        p: &Peer,
        local: Ipv4Net,
        host: Ipv4Addr,
    ) -> Vec<String> {
        let (first, last) = (
            u32::from(p.subnet.network()),
            u32::from(p.subnet.broadcast()),
        );
        let mut near = [
            self.names.get(p.name.as_str()).copied(),
            self.underlays.get(&p.underlay).copied(),
            self.ranges
                .range(..=last)
                .next_back()
                .filter(|(_, (end, _))| *end >= first)
                .map(|(_, (_, i))| *i),
        ];
        near.sort_unstable();
        // Sorted: a peer found twice (same name and underlay, say) is named once.
        let mut seen = None;
        let others = near
            .into_iter()
            .flatten()
            .filter(|&i| seen.replace(i) != Some(i))
            .map(|i| self.peers[i]);
        check_peer(field, p, local, host, others)
    }

    /// [`PeerIndex::check`], and `p` inserted when nothing is found: what was found
    /// (empty: `p` is in).
    pub fn admit(
        &mut self,
        field: &dyn std::fmt::Display,
        p: &'a Peer,
        local: Ipv4Net,
        host: Ipv4Addr,
    ) -> Vec<String> {
        let found = self.check(field, p, local, host);
        if found.is_empty() {
            self.insert(p);
        }
        found
    }

    /// Adds `p` (checked, or trusted: the config's own peers).
    pub fn insert(&mut self, p: &'a Peer) {
        let i = self.peers.len();
        self.names.insert(&p.name, i);
        self.underlays.insert(p.underlay, i);
        self.ranges.insert(
            u32::from(p.subnet.network()),
            (u32::from(p.subnet.broadcast()), i),
        );
        self.peers.push(p);
    }

    /// The peers inserted, in the order they were.
    pub fn into_peers(self) -> Vec<&'a Peer> {
        self.peers
    }
}

/// Parses a port range written "FIRST-LAST" (1 to 65535, FIRST <= LAST).
pub fn parse_port_range(field: &str, s: &str) -> Result<(u16, u16), String> {
    let err = || format!("{field} = {s:?} is not a port range: write it like \"32768-60999\"");
    let (a, b) = s.split_once('-').ok_or_else(err)?;
    let a: u16 = a.trim().parse().map_err(|_| err())?;
    let b: u16 = b.trim().parse().map_err(|_| err())?;
    if a == 0 || a > b {
        return Err(format!(
            "{field} = {s:?}: the first port must be at least 1 and not above the last"
        ));
    }
    Ok((a, b))
}

/// Checks the `[conntrack]` section.
pub fn check_conntrack(c: &Conntrack) -> Vec<String> {
    let mut problems = Vec::new();
    if !(CT_SIZE_MIN..=CT_SIZE_MAX).contains(&c.size) {
        problems.push(format!(
            "[conntrack].size = {}: use {CT_SIZE_MIN} to {CT_SIZE_MAX} entries",
            c.size
        ));
    }
    for (name, v) in [
        ("tcp_syn", c.tcp_syn),
        ("tcp_established", c.tcp_established),
        ("tcp_closing", c.tcp_closing),
        ("udp", c.udp),
        ("icmp", c.icmp),
        ("gc_interval", c.gc_interval),
    ] {
        if v == 0 {
            problems.push(format!(
                "[conntrack].{name} = 0: timeouts and the collection interval are seconds, at least 1"
            ));
        }
    }
    problems
}

/// Checks a published port against the host's subnet (the container must be in it and be
/// neither the gateway nor the network or broadcast address) and the ports already
/// published (`others`, valid). Shared by the config and `publish add`.
pub fn check_publish(
    field: &str,
    p: &Publish,
    subnet: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    vxlan_port: u16,
    others: &[Publish],
) -> Vec<String> {
    let mut problems = Vec::new();
    if p.host_port == 0 {
        problems.push(format!("{field}.host_port = 0: use a port from 1 to 65535"));
    }
    if p.port == 0 {
        problems.push(format!("{field}.port = 0: use a port from 1 to 65535"));
    }
    if p.proto == Proto::Udp && p.host_port == vxlan_port {
        problems.push(format!(
            "{field}.host_port = {} is the VXLAN port: publish another one",
            p.host_port
        ));
    }
    if !subnet.contains(&p.container)
        || p.container == subnet.network()
        || p.container == subnet.broadcast()
        || Some(p.container) == gateway
    {
        problems.push(format!(
            "{field}.container = \"{}\" is not a container address of this host: use one in [host].subnet = \"{subnet}\" (not its gateway, network or broadcast address)",
            p.container
        ));
    }
    if let Some(o) = others
        .iter()
        .find(|o| o.proto == p.proto && o.host_port == p.host_port)
    {
        problems.push(format!(
            "{field}: {}/{} is already published (to {}:{}): one container per host port",
            p.proto, p.host_port, o.container, o.port
        ));
    }
    problems
}

/// `items` joined with ", " for an error message, or "none".
pub fn listed(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A container network of this host: a bridge and its subnet (the `[host].bridge`, and
/// each user-defined bridge network Docker has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Docker's name ("bridge" for docker0), or the bridge's own without `[docker]`.
    pub name: String,
    /// Docker's network id (its first 12 hex digits); empty for the config's bridge.
    pub docker_id: String,
    pub bridge: String,
    pub bridge_ifindex: u32,
    pub bridge_mac: [u8; 6],
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// `--internal`: no way in or out of the host.
    pub internal: bool,
    /// Docker's `com.docker.network.bridge.enable_ip_masquerade` (on unless "false").
    pub masquerade: bool,
    pub origin: Origin,
    /// A network across hosts (`netpath network create`): its VNI and mode.
    pub span: Option<Span>,
}

/// What makes a network one across hosts: the VNI of its packets in VXLAN, and how its
/// containers on other hosts are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub vni: u32,
    pub mode: Mode,
}

impl Network {
    /// The `[host].bridge` as a network: its address's subnet.
    pub fn of_host(h: &Host) -> Network {
        Network {
            name: h.bridge.clone(),
            docker_id: String::new(),
            bridge: h.bridge.clone(),
            bridge_ifindex: h.bridge_ifindex,
            bridge_mac: h.bridge_mac,
            subnet: h.bridge_subnet,
            gateway: h.gateway,
            internal: false,
            masquerade: true,
            origin: Origin::Config,
            span: None,
        }
    }

    /// Whether `a` can be a container of this network: in its subnet, and neither its
    /// gateway nor its network or broadcast address.
    pub fn holds_container(&self, a: Ipv4Addr) -> bool {
        self.subnet.contains(&a)
            && a != self.subnet.network()
            && a != self.subnet.broadcast()
            && Some(a) != self.gateway
    }
}

/// The subnet of the bridge's network: that of `addrs`' first address inside `subnet`
/// (never wider than `subnet`), or `subnet` itself when there is none.
pub fn bridge_subnet(subnet: Ipv4Net, addrs: &[Ipv4Net]) -> (Option<Ipv4Addr>, Ipv4Net) {
    match addrs.iter().find(|n| subnet.contains(&n.addr())) {
        Some(n) if n.prefix_len() >= subnet.prefix_len() => (Some(n.addr()), n.trunc()),
        Some(n) => (Some(n.addr()), subnet),
        None => (None, subnet),
    }
}

/// The network of `nets` that holds `a` (the most specific, as the datapath's lookup).
pub fn network_of(nets: &[Network], a: Ipv4Addr) -> Option<&Network> {
    nets.iter()
        .filter(|n| n.subnet.contains(&a))
        .max_by_key(|n| n.subnet.prefix_len())
}

/// A local container as netpath delivers to it: its address, the host-side veth (a port
/// of the bridge) and its MAC. Learned from the bridge's neighbours (sources::neigh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// `[etcd]`: the fleet's store, where each host registers its subnet and finds the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etcd {
    /// `http://ADDRESS:PORT` or `https://ADDRESS:PORT`, one per member.
    pub endpoints: Vec<String>,
    /// Every key netpath writes starts with it (`/netpath`): `<prefix>/config`,
    /// `<prefix>/subnets/<a.b.c.d-len>`.
    pub prefix: String,
    /// Seconds a registration outlives its agent's last renewal.
    pub lease_ttl: u64,
    /// Seconds the addresses (networks across hosts) of a host whose registration is gone
    /// stay its own; then any agent frees them.
    pub address_grace: u64,
    /// Seconds a deleted registration's peer stays in the maps: put back within them
    /// (an agent's restart, a re-registration), its route never goes.
    pub peer_grace: u64,
    /// Client TLS: the CA that signed the members' certificates, and this host's
    /// certificate and key (PEM files).
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// Where a leased subnet is remembered (`NETPATH_SUBNET=...`), so that the host keeps
    /// it across restarts.
    pub subnet_file: std::path::PathBuf,
    /// `[host].subnet` is left out: the subnet is leased from the cluster's range.
    pub leased: bool,
}

/// `[docker]`: the Docker engine whose containers' published ports netpath serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Docker {
    /// The engine's API socket.
    pub socket: std::path::PathBuf,
    /// The name of netpath's IPAM plugin for networks across hosts (with `[etcd]`): its
    /// socket is `/run/docker/plugins/<plugin>.sock`.
    pub plugin: String,
}

/// The IPAM plugin's name by default.
pub const DOCKER_PLUGIN: &str = "netpath";
/// Where Docker looks for the sockets of legacy plugins.
pub const DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";

/// The socket of legacy plugin `name` in `dir` (Docker's own naming).
pub fn plugin_socket(dir: &str, name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(dir).join(format!("{name}.sock"))
}

pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

pub const ETCD_PREFIX: &str = "/netpath";
pub const ETCD_SUBNET_FILE: &str = "/var/lib/netpath/subnet.env";
pub const ETCD_LEASE_TTL: u64 = 60;
/// Seconds the addresses of a host whose registration expired stay its own (networks
/// across hosts), so that a host back from a short cut finds its containers' addresses.
pub const ETCD_ADDRESS_GRACE: u64 = 300;
/// `[etcd].peer_grace`'s default.
pub const ETCD_PEER_GRACE: u64 = 5;
pub const ETCD_LEASE_TTL_MIN: u64 = 5;
pub const ETCD_LEASE_TTL_MAX: u64 = 86_400;

/// Checks `[etcd]` as written; every problem names its field and the fix.
pub fn check_etcd(
    endpoints: &[String],
    prefix: &str,
    lease_ttl: u64,
    tls: [Option<&str>; 3],
) -> Vec<String> {
    let mut problems = Vec::new();
    if endpoints.is_empty() {
        problems.push(
            "[etcd].endpoints is empty: list the members, like [\"http://198.18.0.2:2379\"]"
                .to_owned(),
        );
    }
    let mut https = false;
    for e in endpoints {
        let (scheme, rest) = e.split_once("://").unwrap_or(("", e));
        https |= scheme == "https";
        let port_ok = rest
            .rsplit_once(':')
            .map(|(h, p)| {
                !h.is_empty() && !p.contains('/') && p.parse::<u16>().is_ok_and(|p| p > 0)
            })
            .unwrap_or(false);
        if !matches!(scheme, "http" | "https") || !port_ok {
            problems.push(format!(
                "[etcd].endpoints: {e:?} is not http://ADDRESS:PORT or https://ADDRESS:PORT"
            ));
        }
    }
    if !prefix.starts_with('/')
        || prefix.len() < 2
        || prefix.ends_with('/')
        || prefix.len() > 128
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        problems.push(format!(
            "[etcd].prefix = {prefix:?}: use a key path like \"/netpath\" (a leading /, no trailing /, no spaces, at most 128 bytes)"
        ));
    }
    if !(ETCD_LEASE_TTL_MIN..=ETCD_LEASE_TTL_MAX).contains(&lease_ttl) {
        problems.push(format!(
            "[etcd].lease_ttl = {lease_ttl}: use {ETCD_LEASE_TTL_MIN} to {ETCD_LEASE_TTL_MAX} seconds (how long a host stays registered after its agent stops renewing)"
        ));
    }
    let [ca, cert, key] = tls;
    for (field, path) in [("ca", ca), ("cert", cert), ("key", key)] {
        if let Some(p) = path
            && std::fs::metadata(p).map(|m| !m.is_file()).unwrap_or(true)
        {
            problems.push(format!(
                "[etcd].{field} = {p:?}: no such file (a PEM file readable by the agent)"
            ));
        }
    }
    if cert.is_some() != key.is_some() {
        problems.push("[etcd].cert and [etcd].key go together: set both, or neither".to_owned());
    }
    if https && ca.is_none() {
        problems.push(
            "[etcd].endpoints use https but [etcd].ca is not set: name the CA that signed the members' certificates".to_owned(),
        );
    }
    if !https && (ca.is_some() || cert.is_some()) {
        problems.push(
            "[etcd].ca/cert are set but the endpoints use http: write them as https://".to_owned(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, subnet: &str, underlay: &str) -> Peer {
        Peer {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            underlay: underlay.parse().unwrap(),
            mode: Mode::Direct,
            vtep_mac: None,
        }
    }

    /// The index says what a walk over every peer says, for a candidate that contains,
    /// is inside, equals, touches or misses the subnets there are, or shares a name or an
    /// underlay.
    #[test]
    fn the_peer_index_finds_what_the_walk_finds() {
        let local: Ipv4Net = "10.244.11.0/24".parse().unwrap();
        let host: Ipv4Addr = "198.18.0.11".parse().unwrap();
        let there = [
            peer("a", "10.1.0.0/24", "198.18.1.1"),
            peer("b", "10.1.2.0/23", "198.18.1.2"),
            peer("c", "10.2.0.0/16", "198.18.1.3"),
            peer("d", "10.3.0.16/28", "198.18.1.4"),
        ];
        let mut index = PeerIndex::default();
        for p in &there {
            index.insert(p);
        }
        let cases = [
            peer("x", "10.1.0.0/16", "198.18.2.1"),     // contains a and b
            peer("x", "10.1.3.128/25", "198.18.2.1"),   // inside b
            peer("x", "10.2.0.0/16", "198.18.2.1"),     // equals c
            peer("x", "10.1.1.0/24", "198.18.2.1"),     // between a and b
            peer("x", "10.3.0.0/28", "198.18.2.1"),     // just before d
            peer("x", "10.3.0.32/28", "198.18.2.1"),    // just after d
            peer("x", "10.3.0.16/32", "198.18.2.1"),    // d's first address
            peer("a", "10.9.0.0/24", "198.18.2.1"),     // a's name
            peer("x", "10.9.0.0/24", "198.18.1.4"),     // d's underlay
            peer("x", "10.244.11.0/25", "198.18.0.11"), // the host's own
            peer("x", "0.0.0.0/0", "198.18.2.1"),       // everything
        ];
        for p in &cases {
            let walk = check_peer(&"p", p, local, host, &there);
            let mut found = index.check(&"p", p, local, host);
            let mut want = walk.clone();
            found.sort();
            want.sort();
            // The walk names every overlapping peer; the index at least one, and the same
            // verdict.
            assert_eq!(
                found.is_empty(),
                want.is_empty(),
                "{p:?}: {found:?} vs {want:?}"
            );
            assert!(
                found.iter().all(|f| want.contains(f)),
                "{p:?}: {found:?} vs {want:?}"
            );
        }
    }
}
