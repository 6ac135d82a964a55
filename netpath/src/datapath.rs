//! Loading, attaching and adopting the datapath; filling its maps; removing it.
//!
//! The datapath outlives the agent: maps are pinned under `<pin-dir>/maps`, TCX links
//! under `<pin-dir>/links`. An agent that starts where a datapath is already pinned
//! reuses the maps (aya opens pinned maps by name) and swaps its freshly loaded programs
//! into the existing links with BPF_LINK_UPDATE, which is atomic: no packet is ever
//! without a program.

use std::{
    net::Ipv4Addr,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{
        SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
    },
};
use ipnet::Ipv4Net;
use netpath_common::{
    AGENT_F_TCX, AGENT_F_XDP_GENERIC, AGENT_F_XDP_NATIVE, AgentInfo, CONFIG_F_MASQUERADE,
    CONFIG_F_READY, Counter, CtEntry, CtInfo, CtKey, GroupMember, MAX_PEERS, NatKey, NatValue,
    ORIGIN_CLI, ORIGIN_CONFIG, PeerInfo, PeerStats, PeerValue, PolicyRuleInfo, PolicyState,
    PolicyVerdict, PublishKey, PublishValue, addr_to_be, be_to_octets, map_names, name_bytes,
    name_str, prog_names,
};

use crate::{
    config::{self, Config, Mode, Peer},
    pin::PinDir,
};

/// The compiled programs, built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));

/// Loads the object. With a pin dir, maps are opened from it when pinned there, or
/// created and pinned; without one (packet tests), they are private to this process.
/// `ct_size` sizes the conntrack and NAT tables it creates (pinned ones keep their size).
pub fn load(pins: Option<&PinDir>, ct_size: u32) -> Result<Ebpf> {
    load_with(|name| pins.map(|p| p.map_path(name)), ct_size)
}

/// Loads the object, each map `pin` gives a path for opened from (or pinned at) that
/// path, the others private to this process (`netpath trace` shares only the maps the
/// programs read).
pub fn load_with(pin: impl Fn(&str) -> Option<std::path::PathBuf>, ct_size: u32) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_names::CT, ct_size)
        .map_max_entries(map_names::NAT, ct_size);
    for name in map_names::ALL {
        if let Some(path) = pin(name) {
            loader.map_pin_path(name, path);
        }
    }
    let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
    // XDP is loaded even with `xdp = "off"`: a config change needs no other object.
    for name in [
        prog_names::FROM_BRIDGE,
        prog_names::FROM_UPLINK,
        prog_names::FROM_CONTAINER,
    ] {
        program::<SchedClassifier>(&mut ebpf, name)?
            .load()
            .with_context(|| format!("loading program {name} (the verifier's log says why)"))?;
    }
    program::<Xdp>(&mut ebpf, prog_names::XDP_UPLINK)?
        .load()
        .with_context(|| {
            format!(
                "loading program {} (the verifier's log says why)",
                prog_names::XDP_UPLINK
            )
        })?;
    Ok(ebpf)
}

/// The program `name` of the object, as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    Ok(prog.try_into()?)
}

/// FNV-1a 64 of the eBPF object this binary carries: tells which build's programs run.
pub fn object_digest() -> u64 {
    OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn net_key(net: Ipv4Net) -> Key<u32> {
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
        })
    }

    pub fn config(&self) -> Result<netpath_common::Config> {
        Ok(self.config.get(&0, 0)?)
    }

    pub fn agent(&self) -> Result<AgentInfo> {
        Ok(self.agent.get(&0, 0)?)
    }

    /// Writes the host part of the config; the programs act on it from the next packet.
    pub fn write_config(&mut self, cfg: &Config) -> Result<()> {
        let h = &cfg.host;
        let value = netpath_common::Config {
            host_addr: addr_to_be(h.address.octets()),
            subnet_addr: addr_to_be(h.subnet.network().octets()),
            subnet_mask: addr_to_be(h.subnet.netmask().octets()),
            uplink_ifindex: h.uplink_ifindex,
            bridge_ifindex: h.bridge_ifindex,
            vni: h.vni,
            flags: CONFIG_F_READY | if h.masquerade { CONFIG_F_MASQUERADE } else { 0 },
            gateway_addr: h.gateway.map(|g| addr_to_be(g.octets())).unwrap_or(0),
            vtep_mac: h.vtep_mac,
            vxlan_port: h.vxlan_port.to_be(),
            tunnel_mss: h.tunnel_mss(),
            tunnel_mtu: h.tunnel_mtu().min(u16::MAX as u32) as u16,
            nat_port_min: h.masquerade_ports.0,
            nat_port_max: h.masquerade_ports.1,
        };
        self.config.set(0, value, 0)?;
        Ok(())
    }

    /// Sets how many drop events each CPU may report per second.
    pub fn write_monitor(&mut self, m: &config::Monitor) -> Result<()> {
        let v = netpath_common::MonitorState {
            rate: m.rate,
            _pad: 0,
        };
        self.monitor.set(0, v, 0)?;
        Ok(())
    }

    /// Records that this netpath loaded the programs now.
    pub fn write_build(&mut self) -> Result<()> {
        let v = netpath_common::BuildInfo {
            version: name_bytes(env!("CARGO_PKG_VERSION")),
            object_digest: object_digest(),
            loaded_at: now(),
        };
        self.build.set(0, v, 0)?;
        Ok(())
    }

    /// Drop events: emitted, suppressed by the rate limit, lost (ring buffer full);
    /// summed over CPUs.
    pub fn event_totals(&self) -> Result<netpath_common::EventLimit> {
        let per_cpu: PerCpuValues<netpath_common::EventLimit> = self.event_limit.get(&0, 0)?;
        Ok(per_cpu.iter().fold(Default::default(), |a, e| {
            netpath_common::EventLimit {
                suppressed: a.suppressed + e.suppressed,
                lost: a.lost + e.lost,
                emitted: a.emitted + e.emitted,
                ..a
            }
        }))
    }

    /// Every peer slot in use, by id.
    pub fn peer_infos(&self) -> Result<Vec<(u32, PeerInfo)>> {
        let mut out = Vec::new();
        for id in 0..MAX_PEERS {
            let info = self.peer_info.get(&id, 0)?;
            if info.origin != 0 {
                out.push((id, info));
            }
        }
        Ok(out)
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
        }))
    }

    fn reset_peer_stats(&mut self, id: u32) -> Result<()> {
        self.peer_stats.set(id, zeroed_per_cpu()?, 0)?;
        Ok(())
    }

    /// Installs one peer in slot `id`: info first, then the route, so a packet that finds
    /// the route always finds a counted, named peer.
    fn put_peer(&mut self, id: u32, p: &Peer, origin: u8, fresh: bool) -> Result<()> {
        if fresh {
            self.reset_peer_stats(id)?;
        }
        let info = PeerInfo {
            name: name_bytes(&p.name),
            subnet: addr_to_be(p.subnet.network().octets()),
            underlay: addr_to_be(p.underlay.octets()),
            prefix_len: p.subnet.prefix_len(),
            mode: p.mode.to_map(),
            origin,
            vtep_mac_set: p.vtep_mac.is_some() as u8,
            vtep_mac: p.vtep_mac(),
            _pad: [0; 2],
        };
        self.peer_info.set(id, info, 0)?;
        let value = PeerValue {
            underlay: info.underlay,
            id,
            mode: info.mode,
            _pad: 0,
            vtep_mac: info.vtep_mac,
        };
        self.underlay.insert(info.underlay, value, 0)?;
        self.peers.insert(&net_key(p.subnet), value, 0)?;
        Ok(())
    }

    /// Removes the route and underlay entries that `info` (slot `id`) wrote, where they
    /// are still its own: within one config change another peer may already have taken
    /// that subnet or address over (two peers swapping them), and its entry must stay.
    fn remove_owned_keys(&mut self, id: u32, info: &PeerInfo) -> Result<()> {
        let key = Key::new(info.prefix_len as u32, info.subnet);
        if self.peers.get(&key, 0).is_ok_and(|v| v.id == id) {
            self.peers.remove(&key)?;
        }
        if self
            .underlay
            .get(&info.underlay, 0)
            .is_ok_and(|v| v.id == id)
        {
            self.underlay.remove(&info.underlay)?;
        }
        Ok(())
    }

    /// Removes the peer in slot `id`: route and underlay entry first, then its info.
    fn drop_peer(&mut self, id: u32, info: &PeerInfo) -> Result<()> {
        self.remove_owned_keys(id, info)?;
        self.peer_info
            .set(id, <PeerInfo as bytemuck::Zeroable>::zeroed(), 0)?;
        Ok(())
    }
}

/// The lowest peer slot not in `used` (ids read once with [`Maps::peer_infos`], plus
/// those handed out since).
fn free_id(used: &std::collections::HashSet<u32>) -> Result<u32> {
    (0..MAX_PEERS)
        .find(|id| !used.contains(id))
        .with_context(|| format!("all {MAX_PEERS} peer slots are in use: remove peers first"))
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

pub fn peer_from_info(info: &PeerInfo) -> Peer {
    Peer {
        name: name_str(&info.name).to_owned(),
        subnet: Ipv4Net::new(addr_of(info.subnet), info.prefix_len).unwrap_or_default(),
        underlay: addr_of(info.underlay),
        mode: Mode::from_map(info.mode).unwrap_or(Mode::Direct),
        vtep_mac: (info.vtep_mac_set != 0).then_some(info.vtep_mac),
    }
}

/// What a peer sync changed, for the agent's log.
#[derive(Debug, Default)]
pub struct PeerChanges {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub kept_cli: Vec<String>,
}

/// A private copy of the datapath (nothing attached, no map pinned) set up from `cfg`
/// with the agent's own code: for packet tests and `netpath bench`.
pub fn private(cfg: &Config) -> Result<(Ebpf, Maps)> {
    let mut ebpf = load(None, netpath_common::DEFAULT_CT_SIZE)?;
    let mut maps = Maps::take(&mut ebpf)?;
    maps.write_config(cfg)?;
    crate::nat::write_ct_info(&mut maps, &cfg.conntrack)?;
    sync_peers(&mut maps, cfg)?;
    crate::nat::sync_publish(&mut maps, cfg)?;
    crate::policy::sync(&mut maps, cfg)?;
    maps.write_monitor(&cfg.monitor)?;
    Ok((ebpf, maps))
}

/// Makes the peer maps say what `cfg` says, keeping peers added with `netpath peer add`.
/// Checks everything before the first write; then adds and updates before it removes, so
/// a peer that stays is never missing for a packet.
pub fn sync_peers(maps: &mut Maps, cfg: &Config) -> Result<PeerChanges> {
    let existing = maps.peer_infos()?;
    let by_name: std::collections::HashMap<String, (u32, PeerInfo)> = existing
        .iter()
        .map(|(id, i)| (name_str(&i.name).to_owned(), (*id, *i)))
        .collect();
    let mut changes = PeerChanges::default();

    // CLI peers stay unless the config now defines the same name; they must still fit.
    let mut keep: Vec<Peer> = cfg.peers.clone();
    for (_, info) in existing.iter().filter(|(_, i)| i.origin == ORIGIN_CLI) {
        let p = peer_from_info(info);
        if cfg.peers.iter().any(|c| c.name == p.name) {
            continue;
        }
        let problems = config::check_peer(
            &format!("peer {:?} (added with `netpath peer add`)", p.name),
            &p,
            cfg.host.subnet,
            cfg.host.address,
            &keep,
        );
        if !problems.is_empty() {
            bail!(
                "{}\nremove it with `netpath peer del {}` or change the config",
                problems.join("\n"),
                p.name
            );
        }
        changes.kept_cli.push(p.name.clone());
        keep.push(p);
    }

    let mut used: std::collections::HashSet<u32> = existing.iter().map(|(id, _)| *id).collect();
    for p in &cfg.peers {
        match by_name.get(&p.name) {
            Some((id, info)) => {
                let old = peer_from_info(info);
                if old != *p || info.origin != ORIGIN_CONFIG {
                    if old.subnet != p.subnet || old.underlay != p.underlay {
                        maps.remove_owned_keys(*id, info)?;
                    }
                    maps.put_peer(*id, p, ORIGIN_CONFIG, false)?;
                    changes.updated.push(p.name.clone());
                }
            }
            None => {
                let id = free_id(&used)?;
                maps.put_peer(id, p, ORIGIN_CONFIG, true)?;
                used.insert(id);
                changes.added.push(p.name.clone());
            }
        }
    }
    for (id, info) in &existing {
        let name = name_str(&info.name);
        if info.origin == ORIGIN_CONFIG && !cfg.peers.iter().any(|p| p.name == name) {
            maps.drop_peer(*id, info)?;
            changes.removed.push(name.to_owned());
        }
    }
    Ok(changes)
}

/// Adds a peer to a running datapath (`netpath peer add`).
pub fn add_peer(maps: &mut Maps, p: &Peer) -> Result<u32> {
    let cfg = maps.config()?;
    let local = Ipv4Net::with_netmask(addr_of(cfg.subnet_addr), addr_of(cfg.subnet_mask))
        .context("local subnet in NP_CONFIG")?;
    let infos = maps.peer_infos()?;
    let others: Vec<Peer> = infos.iter().map(|(_, i)| peer_from_info(i)).collect();
    let host = addr_of(cfg.host_addr);
    let problems = config::check_peer(&format!("peer {:?}", p.name), p, local, host, &others);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let id = free_id(&infos.iter().map(|(id, _)| *id).collect())?;
    maps.put_peer(id, p, ORIGIN_CLI, true)?;
    Ok(id)
}

/// Removes a peer by name (`netpath peer del`); an error names the known peers.
pub fn del_peer(maps: &mut Maps, name: &str) -> Result<()> {
    let infos = maps.peer_infos()?;
    let Some((id, info)) = infos.iter().find(|(_, i)| name_str(&i.name) == name) else {
        let known: Vec<&str> = infos.iter().map(|(_, i)| name_str(&i.name)).collect();
        bail!("no peer named {name:?}; known peers: {}", known.join(", "));
    };
    if info.origin == ORIGIN_CONFIG {
        log::warn!("peer {name:?} comes from the config: the next agent start will add it again");
    }
    maps.drop_peer(*id, info)
}

/// Where a TC program goes.
pub struct Attachment {
    pub prog: &'static str,
    pub iface: String,
    /// Name of its pinned link under `<pin-dir>/links`.
    pub pin: String,
    /// Whether a pinned link of this program may be adopted: it is attached to this same
    /// interface (by the agent that `before` records).
    pub adopt: bool,
}

/// The programs and their interfaces; `before` is the `NP_AGENT` record of the datapath
/// being adopted (zeroed for a new one, whose ifindexes never match).
pub fn attachments(cfg: &Config, before: &AgentInfo) -> Vec<Attachment> {
    let h = &cfg.host;
    vec![
        Attachment {
            prog: prog_names::FROM_BRIDGE,
            iface: h.bridge.clone(),
            pin: prog_names::FROM_BRIDGE.into(),
            adopt: before.bridge_ifindex == h.bridge_ifindex,
        },
        Attachment {
            prog: prog_names::FROM_UPLINK,
            iface: h.uplink.clone(),
            pin: prog_names::FROM_UPLINK.into(),
            adopt: before.uplink_ifindex == h.uplink_ifindex,
        },
    ]
}

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new TCX link, pinned.
    NewLink,
    /// The program replaced the one in an existing pinned link (agent restart).
    Replaced,
    /// A clsact filter through netlink (kernels without TCX).
    Netlink,
}

/// Attaches `a` at TC ingress. Where a link for the same interface is pinned, the new
/// program is swapped into it atomically; a pinned link for another interface (the config
/// changed) is replaced by a new one.
pub fn attach(ebpf: &mut Ebpf, pins: &PinDir, a: &Attachment) -> Result<Attached> {
    let prog = program::<SchedClassifier>(ebpf, a.prog)?;
    let pin = pins.link_path(&a.pin);
    if pin.exists() {
        let old = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        if a.adopt {
            let link = SchedClassifierLink::try_from(FdLink::from(old))?;
            let id = prog
                .attach_to_link(link)
                .with_context(|| format!("replacing the program of {} on {}", a.prog, a.iface))?;
            // The pin keeps the link; dropping our handle must not detach it.
            let link = prog.take_link(id)?;
            std::mem::forget(link);
            return Ok(Attached::Replaced);
        }
        // Another interface: detach the old link (unpin, then close the last fd).
        drop(old.unpin()?);
    }
    let id = prog.attach(&a.iface, TcAttachType::Ingress).or_else(|e| {
        // Kernels without TCX: aya uses netlink, which needs the clsact qdisc.
        let _ = tc::qdisc_add_clsact(&a.iface);
        prog.attach(&a.iface, TcAttachType::Ingress)
            .with_context(|| {
                format!(
                    "attaching {} to {} ingress (first error: {e})",
                    a.prog, a.iface
                )
            })
    })?;
    let link = prog.take_link(id)?;
    match FdLink::try_from(link) {
        Ok(fd_link) => {
            fd_link
                .pin(&pin)
                .with_context(|| format!("pinning link {}", pin.display()))?;
            Ok(Attached::NewLink)
        }
        Err(_) => {
            // A netlink filter stays attached after we exit; `down` removes it by name.
            Ok(Attached::Netlink)
        }
    }
}

/// Name of the pinned link of np_from_container on the bridge port `ifindex`.
fn container_pin(ifindex: u32) -> String {
    format!("{}@{ifindex}", prog_names::FROM_CONTAINER)
}

/// The ports of the bridge `bridge` (ifindex): each container's host-side veth, as
/// (ifindex, name). Asked over rtnetlink, so it is the calling process's network
/// namespace whatever /sys shows.
pub async fn bridge_ports(handle: &rtnetlink::Handle, bridge: u32) -> Result<Vec<(u32, String)>> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = handle.link().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = links.try_next().await.context("listing links")? {
        let mut controller = None;
        let mut name = None;
        for a in &msg.attributes {
            match a {
                LinkAttribute::Controller(c) => controller = Some(*c),
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                _ => {}
            }
        }
        if let (Some(c), Some(n)) = (controller, name) {
            if c == bridge {
                out.push((msg.header.index, n));
            }
        }
    }
    Ok(out)
}

/// What a sync of the container programs did.
#[derive(Debug, Default)]
pub struct PortChanges {
    pub attached: Vec<String>,
    pub adopted: usize,
    pub removed: usize,
}

/// Puts np_from_container on every port of the bridge (`ports`, from [`bridge_ports`]):
/// a port whose pinned link exists gets the new program in it (agent restart, atomic),
/// `fresh` ports known to have one already are left alone, others get a new link;
/// links of ports that are gone are unpinned. Returns what changed; an attach that fails
/// is reported and the rest go on.
pub fn sync_container_links(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    ports: &[(u32, String)],
    done: &mut std::collections::HashSet<u32>,
) -> (PortChanges, Vec<String>) {
    let mut changes = PortChanges::default();
    let mut errors = Vec::new();
    for (ifindex, name) in ports {
        if done.contains(ifindex) {
            continue;
        }
        let a = Attachment {
            prog: prog_names::FROM_CONTAINER,
            iface: name.clone(),
            pin: container_pin(*ifindex),
            adopt: true,
        };
        match attach(ebpf, pins, &a) {
            Ok(Attached::Replaced) => {
                changes.adopted += 1;
                done.insert(*ifindex);
            }
            Ok(_) => {
                changes.attached.push(name.clone());
                done.insert(*ifindex);
            }
            Err(e) => errors.push(format!("{name}: {e:#}")),
        }
    }
    let live: std::collections::HashSet<u32> = ports.iter().map(|(i, _)| *i).collect();
    done.retain(|i| live.contains(i));
    let prefix = format!("{}@", prog_names::FROM_CONTAINER);
    if let Ok(entries) = std::fs::read_dir(pins.links()) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(idx) = file
                .strip_prefix(&prefix)
                .and_then(|i| i.parse::<u32>().ok())
            else {
                continue;
            };
            if !live.contains(&idx) {
                // The veth is gone (its link with it) or left the bridge: drop the pin,
                // which detaches a link that is still attached.
                if let Ok(l) = PinnedLink::from_pin(e.path()) {
                    let _ = l.unpin();
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
                changes.removed += 1;
            }
        }
    }
    (changes, errors)
}

/// The `AGENT_F_XDP_*` bit of an XDP mode (0 for off).
pub fn xdp_flag(mode: config::XdpMode) -> u32 {
    match mode {
        config::XdpMode::Off => 0,
        config::XdpMode::Generic => AGENT_F_XDP_GENERIC,
        config::XdpMode::Native => AGENT_F_XDP_NATIVE,
    }
}

/// The XDP mode an `NP_AGENT` record's flags say is attached.
pub fn xdp_mode(flags: u32) -> config::XdpMode {
    if flags & AGENT_F_XDP_NATIVE != 0 {
        config::XdpMode::Native
    } else if flags & AGENT_F_XDP_GENERIC != 0 {
        config::XdpMode::Generic
    } else {
        config::XdpMode::Off
    }
}

/// Puts the XDP program on the uplink as the config says. A pinned XDP link on the same
/// interface in the same mode gets the new program atomically; one in another mode or on
/// another interface (or with `xdp = "off"`) is detached first: the kernel cannot change
/// the mode of a link. Returns how it is attached, None for off.
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    cfg: &Config,
    before: &AgentInfo,
) -> Result<Option<Attached>> {
    let h = &cfg.host;
    let name = prog_names::XDP_UPLINK;
    let pin = pins.link_path(name);
    let had = xdp_mode(before.flags);
    let prog = program::<Xdp>(ebpf, name)?;
    if pin.exists() {
        let old = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        if h.xdp != config::XdpMode::Off
            && h.xdp == had
            && before.uplink_ifindex == h.uplink_ifindex
        {
            let link = XdpLink::try_from(FdLink::from(old))?;
            let id = prog
                .attach_to_link(link)
                .with_context(|| format!("replacing the XDP program on {}", h.uplink))?;
            std::mem::forget(prog.take_link(id)?);
            return Ok(Some(Attached::Replaced));
        }
        drop(old.unpin()?);
    }
    let mode = match h.xdp {
        config::XdpMode::Off => return Ok(None),
        config::XdpMode::Generic => aya::programs::XdpMode::Skb,
        config::XdpMode::Native => aya::programs::XdpMode::Driver,
    };
    let id = prog.attach(&h.uplink, mode).with_context(|| {
        format!(
            "attaching XDP to {} in {} mode{}",
            h.uplink,
            h.xdp,
            if h.xdp == config::XdpMode::Native {
                " (the driver may not support it: try xdp = \"generic\", or \"off\")"
            } else {
                ""
            }
        )
    })?;
    let Ok(link) = FdLink::try_from(prog.take_link(id)?) else {
        // aya fell back to netlink: such an attachment cannot be pinned or adopted.
        bail!("this kernel has no XDP links (Linux 5.9+): set xdp = \"off\"");
    };
    link.pin(&pin)
        .with_context(|| format!("pinning link {}", pin.display()))?;
    Ok(Some(Attached::NewLink))
}

/// Records who manages the datapath (status, down, restarts).
pub fn write_agent(maps: &mut Maps, cfg: &Config, tcx: bool, adopted: bool) -> Result<AgentInfo> {
    let xdp = xdp_flag(cfg.host.xdp);
    let old = maps.agent()?;
    let now = now();
    let info = AgentInfo {
        attached_at: if adopted && old.attached_at != 0 {
            old.attached_at
        } else {
            now
        },
        agent_started_at: now,
        agent_pid: std::process::id(),
        uplink_ifindex: cfg.host.uplink_ifindex,
        bridge_ifindex: cfg.host.bridge_ifindex,
        generation: old.generation + 1,
        host_name: name_bytes(&cfg.host.name),
        uplink: name_bytes(&cfg.host.uplink),
        bridge: name_bytes(&cfg.host.bridge),
        flags: if tcx { AGENT_F_TCX } else { 0 } | xdp,
        _pad: 0,
    };
    maps.agent.set(0, info, 0)?;
    Ok(info)
}

/// Removes everything netpath attached and pinned under `pins`. Collects every error and
/// reports them together, after trying every step.
pub fn down(pins: &PinDir) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    if !pins.root.exists() {
        return Ok(done);
    }
    // Netlink filters (no TCX) are not pinned: find them through the agent record.
    if let Ok(maps) = Maps::open(pins) {
        if let Ok(agent) = maps.agent() {
            if agent.flags & AGENT_F_TCX == 0 && agent.agent_pid != 0 {
                for (iface, prog) in [
                    (name_str(&agent.bridge), prog_names::FROM_BRIDGE),
                    (name_str(&agent.uplink), prog_names::FROM_UPLINK),
                ] {
                    match tc::qdisc_detach_program(iface, TcAttachType::Ingress, prog) {
                        Ok(()) => done.push(format!("detached {prog} from {iface} (netlink)")),
                        Err(e) => errors.push(format!("detaching {prog} from {iface}: {e}")),
                    }
                }
            }
            stop_agent(agent.agent_pid, &mut done);
        }
    }
    if let Ok(entries) = std::fs::read_dir(pins.links()) {
        for e in entries.flatten() {
            let path = e.path();
            match PinnedLink::from_pin(&path)
                .map_err(anyhow::Error::from)
                .and_then(|l| l.unpin().map_err(anyhow::Error::from))
            {
                // Dropping the last fd of the link detaches the program.
                Ok(fd) => {
                    drop(fd);
                    done.push(format!("detached {}", e.file_name().to_string_lossy()));
                }
                Err(err) => {
                    // Not a link (or already defunct): the file must go all the same.
                    let _ = std::fs::remove_file(&path);
                    errors.push(format!("{}: {err:#}", path.display()));
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(pins.maps()) {
        for e in entries.flatten() {
            match std::fs::remove_file(e.path()) {
                Ok(()) => done.push(format!("unpinned {}", e.file_name().to_string_lossy())),
                Err(err) => errors.push(format!("{}: {err}", e.path().display())),
            }
        }
    }
    for dir in [pins.links(), pins.maps(), pins.root.clone()] {
        if let Err(err) = std::fs::remove_dir(&dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("{}: {err}", dir.display()));
            }
        }
    }
    if errors.is_empty() {
        Ok(done)
    } else {
        bail!(
            "netpath down left things behind:\n  {}",
            errors.join("\n  ")
        )
    }
}

/// Whether `pid` (from `NP_AGENT`) is still a running netpath process. A pid the kernel
/// has since given to another program is not, and neither is a killed agent that nobody
/// has reaped yet (a zombie, state Z or X): it must not block the next agent.
pub fn agent_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "<pid> (<comm>) <state> ...": comm is in parentheses and may hold spaces.
    let (Some((_, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
        return false;
    };
    let comm = &stat[open + 1..stat.len() - rest.len() - 1];
    let state = rest.trim_start().chars().next();
    pid != 0 && comm == "netpath" && !matches!(state, Some('Z' | 'X') | None)
}

/// Stops a running agent of this datapath.
fn stop_agent(pid: u32, done: &mut Vec<String>) {
    if pid == std::process::id() || !agent_alive(pid) {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
        done.push(format!("stopped agent (pid {pid})"));
    }
}
