//! The kernel as a source: the local containers netpath delivers to straight
//! (`NP_ENDPOINTS`), learned from the bridges, with no per-container config. A container's
//! address and MAC come from the bridge's neighbour table (the host learns them from the
//! container's ARP for its gateway, or resolves them itself when it first forwards to
//! it), its port from the bridge's forwarding database (where the bridge learned that
//! MAC). [`Kernel`] holds what a full reading said ([`read`], [`bridge_ports`]) and follows
//! each rtnetlink event after it ([`event`], [`Kernel::apply`]): an event touches the
//! addresses it is about, and only their endpoints are decided again
//! ([`Kernel::endpoint`]). The agent reads everything again as its periodic repair.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use rtnetlink::packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};

use crate::state::{Endpoint, Network, network_of};

type Mac = [u8; 6];

/// What the kernel says about one bridge: its IPv4 neighbours and where it learned MACs,
/// indexed both ways so that an event about one MAC or one port finds its addresses
/// without going through the bridge's other containers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// IPv4 neighbours: address -> MAC (None while unresolved), usable.
    neighbours: HashMap<Ipv4Addr, (Option<Mac>, bool)>,
    /// Learned (not local) forwarding entries: MAC -> the port it was learned on.
    fdb: HashMap<Mac, u32>,
    /// The neighbours by MAC.
    by_mac: HashMap<Mac, BTreeSet<Ipv4Addr>>,
    /// The forwarding entries by port.
    by_port: HashMap<u32, BTreeSet<Mac>>,
}

impl Bridge {
    /// A bridge of `neighbours` and forwarding entries `fdb` in the kernel's order: the
    /// first entry of a MAC on one of `ports` is its port (with VLANs a MAC can have
    /// several); entries on other interfaces are left out.
    pub fn new(
        neighbours: impl IntoIterator<Item = (Ipv4Addr, Option<Mac>, bool)>,
        fdb: impl IntoIterator<Item = (Mac, u32)>,
        ports: &impl Fn(u32) -> bool,
    ) -> Bridge {
        let mut b = Bridge::default();
        for (addr, mac, usable) in neighbours {
            b.set_neighbour(addr, mac, usable);
        }
        for (mac, port) in fdb {
            if ports(port) && !b.fdb.contains_key(&mac) {
                b.set_fdb(mac, port);
            }
        }
        b
    }

    /// The neighbour of `addr`: its MAC (None while unresolved), and whether it is usable.
    pub fn neighbour(&self, addr: &Ipv4Addr) -> Option<(Option<Mac>, bool)> {
        self.neighbours.get(addr).copied()
    }

    /// Every neighbour's address.
    pub fn addrs(&self) -> impl Iterator<Item = &Ipv4Addr> {
        self.neighbours.keys()
    }

    /// The port where the bridge learned `mac`.
    pub fn port_of(&self, mac: &Mac) -> Option<u32> {
        self.fdb.get(mac).copied()
    }

    /// The addresses whose neighbour has `mac`.
    pub fn with_mac(&self, mac: &Mac) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.by_mac.get(mac).into_iter().flatten().copied()
    }

    /// The addresses whose neighbour's MAC the bridge learned on `port`.
    pub fn learned_on(&self, port: u32) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let macs = self.by_port.get(&port).into_iter().flatten();
        macs.flat_map(|m| self.with_mac(m))
    }

    pub fn set_neighbour(&mut self, addr: Ipv4Addr, mac: Option<Mac>, usable: bool) {
        self.remove_neighbour(&addr);
        self.neighbours.insert(addr, (mac, usable));
        if let Some(m) = mac {
            self.by_mac.entry(m).or_default().insert(addr);
        }
    }

    pub fn remove_neighbour(&mut self, addr: &Ipv4Addr) {
        if let Some((Some(m), _)) = self.neighbours.remove(addr) {
            unindex(&mut self.by_mac, m, addr);
        }
    }

    /// `mac` is learned on `port` (one entry: a MAC that moved has its new port).
    pub fn set_fdb(&mut self, mac: Mac, port: u32) {
        self.remove_fdb(&mac);
        self.fdb.insert(mac, port);
        self.by_port.entry(port).or_default().insert(mac);
    }

    pub fn remove_fdb(&mut self, mac: &Mac) {
        if let Some(p) = self.fdb.remove(mac) {
            unindex(&mut self.by_port, p, mac);
        }
    }
}

/// Endpoints by address, also indexed by port and by MAC: the map's (what
/// [`Kernel::apply`] is given as `known`) and Docker's word ([`Kernel::docker`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Endpoints {
    all: BTreeMap<Ipv4Addr, Endpoint>,
    by_port: HashMap<u32, BTreeSet<Ipv4Addr>>,
    by_mac: HashMap<Mac, BTreeSet<Ipv4Addr>>,
}

impl Endpoints {
    pub fn get(&self, addr: &Ipv4Addr) -> Option<&Endpoint> {
        self.all.get(addr)
    }

    /// Every endpoint, by address.
    pub fn all(&self) -> &BTreeMap<Ipv4Addr, Endpoint> {
        &self.all
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Puts `e` in, in place of its address's endpoint.
    pub fn insert(&mut self, e: Endpoint) {
        self.remove(&e.addr);
        self.all.insert(e.addr, e);
        self.by_port.entry(e.ifindex).or_default().insert(e.addr);
        self.by_mac.entry(e.mac).or_default().insert(e.addr);
    }

    pub fn remove(&mut self, addr: &Ipv4Addr) -> Option<Endpoint> {
        let e = self.all.remove(addr)?;
        unindex(&mut self.by_port, e.ifindex, addr);
        unindex(&mut self.by_mac, e.mac, addr);
        Some(e)
    }

    /// The addresses of the endpoints on `port`.
    pub fn on_port(&self, port: u32) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.by_port.get(&port).into_iter().flatten().copied()
    }

    /// The addresses of the endpoints with `mac`.
    pub fn with_mac(&self, mac: &Mac) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.by_mac.get(mac).into_iter().flatten().copied()
    }
}

impl FromIterator<Endpoint> for Endpoints {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(iter: I) -> Endpoints {
        let mut out = Endpoints::default();
        for e in iter {
            out.insert(e);
        }
        out
    }
}

/// Takes `v` out of `index`'s set of `k`, and the set once empty.
fn unindex<K: std::hash::Hash + Eq, V: Ord>(index: &mut HashMap<K, BTreeSet<V>>, k: K, v: &V) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = index.entry(k) {
        e.get_mut().remove(v);
        if e.get().is_empty() {
            e.remove();
        }
    }
}

/// Reads the neighbours and forwarding database of each bridge of `bridges` (`ports`:
/// says which interfaces are ports of the networks' bridges): one listing of each.
pub async fn read(
    handle: &rtnetlink::Handle,
    bridges: &[u32],
    ports: &impl Fn(u32) -> bool,
) -> Result<HashMap<u32, Bridge>> {
    let mut neighbours: HashMap<u32, Vec<_>> = bridges.iter().map(|b| (*b, vec![])).collect();
    let mut neigh = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Some(m) = neigh.try_next().await.context("listing neighbours")? {
        if let Some(on) = neighbours.get_mut(&m.header.ifindex)
            && let Some(n) = neighbour(&m)
        {
            on.push(n);
        }
    }
    let mut entries: HashMap<u32, Vec<_>> = HashMap::new();
    let mut fdb = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(m) = fdb
        .try_next()
        .await
        .context("listing the bridges' forwarding database")?
    {
        if let Some((on, mac, port)) = learned(&m)
            && neighbours.contains_key(&on)
        {
            entries.entry(on).or_default().push((mac, port));
        }
    }
    Ok(neighbours
        .into_iter()
        .map(|(b, n)| {
            (
                b,
                Bridge::new(n, entries.remove(&b).unwrap_or_default(), ports),
            )
        })
        .collect())
}

/// The ports of every bridge: each container's host-side veth, as (ifindex, name), by
/// the bridge's ifindex. Asked over rtnetlink, so it is the calling process's network
/// namespace whatever /sys shows.
pub async fn bridge_ports(handle: &rtnetlink::Handle) -> Result<HashMap<u32, Vec<(u32, String)>>> {
    let mut links = handle.link().get().execute();
    let mut out: HashMap<u32, Vec<(u32, String)>> = HashMap::new();
    while let Some(msg) = links.try_next().await.context("listing links")? {
        let (name, controller) = link(&msg);
        if let (Some(c), Some(n)) = (controller, name) {
            out.entry(c).or_default().push((msg.header.index, n));
        }
    }
    Ok(out)
}

/// An IPv4 neighbour entry: its address, MAC (None while unresolved) and whether it is
/// usable. None for another family's or one without an address.
fn neighbour(m: &NeighbourMessage) -> Option<(Ipv4Addr, Option<Mac>, bool)> {
    let addr = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(*a),
        _ => None,
    })?;
    let usable = matches!(
        m.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    Some((addr, lladdr(m), usable))
}

/// A forwarding entry the bridge learned (or was given): its bridge, MAC and port. None
/// for a port's own address (permanent) or an entry of no bridge.
fn learned(m: &NeighbourMessage) -> Option<(u32, Mac, u32)> {
    let bridge = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Controller(c) => Some(*c),
        _ => None,
    })?;
    if m.header.state == NeighbourState::Permanent {
        return None;
    }
    Some((bridge, lladdr(m)?, m.header.ifindex))
}

fn lladdr(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => b.as_slice().try_into().ok(),
        _ => None,
    })
}

/// A link's name and the bridge (or other controller) it is a port of.
fn link(m: &LinkMessage) -> (Option<String>, Option<u32>) {
    let (mut name, mut controller) = (None, None);
    for a in &m.attributes {
        match a {
            LinkAttribute::Controller(c) => controller = Some(*c),
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            _ => {}
        }
    }
    (name, controller)
}

/// What one rtnetlink event says, as far as the endpoints go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An IPv4 neighbour of interface `ifindex` is new, changed or (`gone`) deleted.
    Neighbour {
        ifindex: u32,
        addr: Ipv4Addr,
        mac: Option<Mac>,
        usable: bool,
        gone: bool,
    },
    /// Bridge `bridge` learned `mac` on `port`, or (`gone`) forgot it there.
    Fdb {
        bridge: u32,
        mac: Mac,
        port: u32,
        gone: bool,
    },
    /// Link `ifindex` is new or changed (its bridge: `controller`), or `gone`.
    Link {
        ifindex: u32,
        name: String,
        controller: Option<u32>,
        gone: bool,
    },
    /// An interface's IPv4 address came or went (the gateway may have changed).
    Address,
    /// Nothing the endpoints depend on (IPv6 neighbours, a port's own MAC, routes).
    Other,
}

/// What the rtnetlink message `m` says (see [`Event`]).
pub fn event(m: &RouteNetlinkMessage) -> Event {
    use RouteNetlinkMessage as R;
    match m {
        R::NewNeighbour(n) | R::DelNeighbour(n) => {
            let gone = matches!(m, R::DelNeighbour(_));
            match n.header.family {
                AddressFamily::Inet => match neighbour(n) {
                    Some((addr, mac, usable)) => Event::Neighbour {
                        ifindex: n.header.ifindex,
                        addr,
                        mac,
                        usable,
                        gone,
                    },
                    None => Event::Other,
                },
                AddressFamily::Bridge => match learned(n) {
                    Some((bridge, mac, port)) => Event::Fdb {
                        bridge,
                        mac,
                        port,
                        gone,
                    },
                    None => Event::Other,
                },
                _ => Event::Other,
            }
        }
        R::NewLink(l) | R::DelLink(l) => {
            let (name, controller) = link(l);
            Event::Link {
                ifindex: l.header.index,
                name: name.unwrap_or_default(),
                controller,
                gone: matches!(m, R::DelLink(_)),
            }
        }
        R::NewAddress(_) | R::DelAddress(_) => Event::Address,
        _ => Event::Other,
    }
}

/// What events did to a [`Kernel`]: the addresses whose endpoint must be decided again,
/// the ports that came (their programs to attach) and went, whether the bridge's gateway
/// may have moved, and whether only a full reading can tell (a network's bridge went).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    pub addrs: BTreeSet<Ipv4Addr>,
    pub new_ports: Vec<(u32, String)>,
    pub gone_ports: Vec<u32>,
    pub address: bool,
    pub reread: bool,
}

/// What the kernel says about the networks' bridges: a full reading, followed since by
/// each event (see the module's doc).
#[derive(Debug, Default, Clone)]
pub struct Kernel {
    /// The networks followed (NP_NETWORKS at the reading).
    pub nets: Vec<Network>,
    /// Each network bridge's neighbours and forwarding entries, by its ifindex.
    pub bridges: HashMap<u32, Bridge>,
    /// The ports of the networks' bridges: ifindex -> (bridge, name).
    pub ports: HashMap<u32, (u32, String)>,
    /// Docker's word on its containers, by address (the last of an address, should
    /// Docker give two).
    pub docker: Endpoints,
}

static NO_BRIDGE: std::sync::LazyLock<Bridge> = std::sync::LazyLock::new(Bridge::default);

impl Kernel {
    /// The endpoint of address `addr` (`known`: its entry in the map now), or None.
    ///
    /// Docker's word on a container (address, MAC, veth) wins: it holds before the
    /// container has sent anything. Otherwise a usable neighbour of a network's bridge
    /// with a container address of that network and a unicast MAC is an endpoint on the
    /// port where the bridge learned that MAC. The bridge forgets a MAC it no longer sees
    /// (300 s), and traffic that netpath delivers straight never passes it: a `known`
    /// endpoint keeps its port while that port exists and the neighbour still has that
    /// MAC, and also once the kernel dropped the neighbour entry (it collects unused ones
    /// once it holds many). A neighbour that failed, or that has another MAC, ends it.
    pub fn endpoint(&self, addr: Ipv4Addr, known: Option<&Endpoint>) -> Option<Endpoint> {
        let is_port = |i: u32| self.ports.contains_key(&i);
        if let Some(d) = self.docker.get(&addr)
            && network_of(&self.nets, addr).is_some()
            && is_port(d.ifindex)
        {
            return Some(*d);
        }
        let mut out = None;
        for n in self.nets.iter().filter(|n| n.holds_container(addr)) {
            let b = self.bridges.get(&n.bridge_ifindex).unwrap_or(&NO_BRIDGE);
            let kept = known.filter(|e| is_port(e.ifindex));
            let e = match b.neighbour(&addr) {
                None => kept.copied(),
                Some((Some(mac), true)) if mac[0] & 1 == 0 && mac != [0; 6] => b
                    .port_of(&mac)
                    .filter(|p| is_port(*p))
                    .or(kept.filter(|e| e.mac == mac).map(|e| e.ifindex))
                    .map(|ifindex| Endpoint { addr, ifindex, mac }),
                Some(_) => None,
            };
            if e.is_some() {
                out = e;
            }
        }
        out
    }

    /// Every endpoint (`known`: the map now), by [`Kernel::endpoint`].
    pub fn endpoints(&self, known: &BTreeMap<Ipv4Addr, Endpoint>) -> Vec<Endpoint> {
        let mut addrs: BTreeSet<Ipv4Addr> = known.keys().copied().collect();
        addrs.extend(self.docker.all().keys());
        for b in self.bridges.values() {
            addrs.extend(b.addrs());
        }
        addrs
            .into_iter()
            .filter_map(|a| self.endpoint(a, known.get(&a)))
            .collect()
    }

    /// Docker's containers are now `docker`: the addresses whose word changed.
    pub fn set_docker(&mut self, docker: BTreeMap<Ipv4Addr, Endpoint>) -> BTreeSet<Ipv4Addr> {
        let mut touched: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for (a, e) in &docker {
            if self.docker.get(a) != Some(e) {
                touched.insert(*a);
            }
        }
        let was = self.docker.all().keys();
        touched.extend(was.filter(|a| !docker.contains_key(a)));
        self.docker = docker.into_values().collect();
        touched
    }

    /// Follows event `ev` (`known`: the endpoints in the map now), adding what it
    /// touched to `t`.
    pub fn apply(&mut self, ev: &Event, known: &Endpoints, t: &mut Touched) {
        match ev {
            Event::Neighbour {
                ifindex,
                addr,
                mac,
                usable,
                gone,
            } => {
                let Some(b) = self.bridges.get_mut(ifindex) else {
                    return;
                };
                if *gone {
                    b.remove_neighbour(addr);
                } else {
                    b.set_neighbour(*addr, *mac, *usable);
                }
                t.addrs.insert(*addr);
            }
            Event::Fdb {
                bridge,
                mac,
                port,
                gone,
            } => {
                let is_port = self.ports.contains_key(port);
                let Some(b) = self.bridges.get_mut(bridge) else {
                    return;
                };
                if *gone {
                    // The entry of another port (the MAC moved since) stays.
                    if b.port_of(mac) == Some(*port) {
                        b.remove_fdb(mac);
                    }
                } else if is_port {
                    b.set_fdb(*mac, *port);
                } else {
                    return;
                }
                t.addrs.extend(b.with_mac(mac));
                t.addrs.extend(known.with_mac(mac));
            }
            Event::Link {
                ifindex,
                name,
                controller,
                gone,
            } => {
                let is_bridge = |i: u32| self.nets.iter().any(|n| n.bridge_ifindex == i);
                if is_bridge(*ifindex) {
                    // A network's bridge itself: only a deletion matters, and a full
                    // reading says what is left.
                    t.reread |= *gone;
                    return;
                }
                let now = controller.filter(|c| !*gone && is_bridge(*c));
                let was = self.ports.get(ifindex).map(|(b, _)| *b);
                if now == was {
                    return;
                }
                match now {
                    Some(b) => {
                        self.ports.insert(*ifindex, (b, name.clone()));
                        if was.is_none() {
                            t.new_ports.push((*ifindex, name.clone()));
                        }
                    }
                    None => {
                        self.ports.remove(ifindex);
                        t.gone_ports.push(*ifindex);
                    }
                }
                // Every address whose endpoint the port can carry: those learned on it,
                // known on it, or given on it by Docker.
                for b in self.bridges.values() {
                    t.addrs.extend(b.learned_on(*ifindex));
                }
                t.addrs.extend(known.on_port(*ifindex));
                t.addrs.extend(self.docker.on_port(*ifindex));
            }
            Event::Address => t.address = true,
            Event::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Host;

    fn host() -> Host {
        Host {
            name: "h".into(),
            uplink: "up".into(),
            uplink_ifindex: 1,
            bridge: "br".into(),
            bridge_ifindex: 2,
            subnet: "10.244.1.0/24".parse().unwrap(),
            address: "198.18.0.10".parse().unwrap(),
            gateway: Some("10.244.1.1".parse().unwrap()),
            bridge_subnet: "10.244.1.0/24".parse().unwrap(),
            vni: 42,
            xdp: crate::state::XdpMode::Off,
            vxlan_port: 4789,
            vtep_mac: [2, 0, 0, 0, 0, 9],
            uplink_mtu: 1500,
            bridge_mac: [2, 0, 0, 0, 0, 2],
            masquerade: false,
            masquerade_ports: (32768, 60999),
        }
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ep(addr: &str, ifindex: u32, mac: [u8; 6]) -> Endpoint {
        Endpoint {
            addr: ip(addr),
            ifindex,
            mac,
        }
    }

    /// The host's bridge (ifindex 2) with ports `ports`, `neighbours` and `fdb`.
    fn kernel(
        ports: &[u32],
        neighbours: Vec<(Ipv4Addr, Option<Mac>, bool)>,
        fdb: Vec<(Mac, u32)>,
    ) -> Kernel {
        let is_port = |p: u32| ports.contains(&p);
        Kernel {
            nets: vec![Network::of_host(&host())],
            bridges: [(2, Bridge::new(neighbours, fdb, &is_port))].into(),
            ports: ports.iter().map(|p| (*p, (2, format!("v{p}")))).collect(),
            docker: Endpoints::default(),
        }
    }

    fn known(eps: &[Endpoint]) -> BTreeMap<Ipv4Addr, Endpoint> {
        eps.iter().map(|e| (e.addr, *e)).collect()
    }

    #[test]
    fn a_neighbour_is_an_endpoint_on_the_port_that_learned_its_mac() {
        let k = kernel(
            &[10, 11],
            vec![
                (ip("10.244.1.2"), Some(A), true),
                (ip("10.244.1.3"), Some(B), true),
                // Unresolved, failed, outside the subnet, the gateway, multicast: none.
                (ip("10.244.1.4"), None, false),
                (ip("10.244.1.5"), Some([2, 0, 0, 0, 0, 5]), false),
                (ip("10.244.2.2"), Some(A), true),
                (ip("10.244.1.1"), Some(A), true),
                (ip("10.244.1.6"), Some([1, 0, 0x5e, 0, 0, 1]), true),
                // No forwarding entry and not known: its port is unknown.
                (ip("10.244.1.7"), Some([2, 0, 0, 0, 0, 7]), true),
            ],
            vec![(A, 10), (B, 11), ([2, 0, 0, 0, 0, 5], 11)],
        );
        assert_eq!(
            k.endpoints(&BTreeMap::new()),
            vec![ep("10.244.1.2", 10, A), ep("10.244.1.3", 11, B)]
        );
    }

    #[test]
    fn a_known_endpoint_outlives_the_bridge_forgetting_its_mac_but_not_its_port() {
        let known = known(&[ep("10.244.1.2", 10, A), ep("10.244.1.3", 11, B)]);
        // The forwarding entries aged out; port 11 is gone.
        let neighbours = vec![
            (ip("10.244.1.2"), Some(A), true),
            (ip("10.244.1.3"), Some(B), true),
        ];
        let k = kernel(&[10], neighbours, vec![]);
        assert_eq!(k.endpoints(&known), vec![ep("10.244.1.2", 10, A)]);
        // The neighbour entry was collected: the endpoint stays while its port does.
        let k = kernel(&[10, 11], vec![], vec![]);
        assert_eq!(k.endpoints(&known).len(), 2);
        // A failed neighbour, or the address now at another MAC (a new container), ends it.
        let neighbours = vec![
            (ip("10.244.1.2"), Some(A), false),
            (ip("10.244.1.3"), Some(A), true),
        ];
        let k = kernel(&[10, 11], neighbours, vec![(A, 10)]);
        assert_eq!(k.endpoints(&known), vec![ep("10.244.1.3", 10, A)]);
    }

    #[test]
    fn a_macs_first_forwarding_entry_on_a_port_is_its_port() {
        // A on the uplink (not a port) first, then on 11, then on 10: 11. B only on a
        // port that left: not learned.
        let k = kernel(
            &[10, 11],
            vec![
                (ip("10.244.1.2"), Some(A), true),
                (ip("10.244.1.3"), Some(B), true),
            ],
            vec![(A, 1), (A, 11), (A, 10), (B, 12)],
        );
        assert_eq!(k.endpoints(&BTreeMap::new()), vec![ep("10.244.1.2", 11, A)]);
    }

    #[test]
    fn dockers_word_wins_on_a_port_of_a_network() {
        let mut k = kernel(
            &[10, 11],
            vec![(ip("10.244.1.2"), Some(A), true)],
            vec![(A, 10)],
        );
        let touched = k.set_docker(known(&[
            ep("10.244.1.2", 11, B),
            // Not on a port yet, or outside every network: not Docker's word yet.
            ep("10.244.1.3", 12, B),
            ep("10.244.9.3", 11, B),
        ]));
        assert_eq!(touched.len(), 3);
        assert_eq!(k.endpoints(&BTreeMap::new()), vec![ep("10.244.1.2", 11, B)]);
        // The same word again touches nothing; a container gone touches its address.
        assert!(k.set_docker(k.docker.all().clone()).is_empty());
        let touched = k.set_docker(known(&[ep("10.244.1.2", 11, B)]));
        assert_eq!(touched, [ip("10.244.1.3"), ip("10.244.9.3")].into());
    }

    /// Follows `events`, then decides again the endpoints they touched, as the agent does;
    /// returns what they touched.
    fn follow(k: &mut Kernel, map: &mut BTreeMap<Ipv4Addr, Endpoint>, events: &[Event]) -> Touched {
        let mut t = Touched::default();
        let known: Endpoints = map.values().copied().collect();
        for e in events {
            k.apply(e, &known, &mut t);
        }
        for a in &t.addrs {
            match k.endpoint(*a, map.get(a)) {
                Some(e) => map.insert(*a, e),
                None => map.remove(a),
            };
        }
        t
    }

    fn neigh(addr: &str, mac: Option<Mac>, usable: bool, gone: bool) -> Event {
        Event::Neighbour {
            ifindex: 2,
            addr: ip(addr),
            mac,
            usable,
            gone,
        }
    }

    fn port(ifindex: u32, controller: Option<u32>, gone: bool) -> Event {
        Event::Link {
            ifindex,
            name: format!("v{ifindex}"),
            controller,
            gone,
        }
    }

    fn fdb(mac: Mac, port: u32, gone: bool) -> Event {
        Event::Fdb {
            bridge: 2,
            mac,
            port,
            gone,
        }
    }

    #[test]
    fn a_bridges_indices_say_what_its_tables_say() {
        let mut b = Bridge::default();
        let mut x = 7u32;
        for _ in 0..3000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let addr = Ipv4Addr::new(10, 244, 1, (x >> 8) as u8 % 16);
            let mac = [2, 0, 0, 0, 0, (x >> 16) as u8 % 8];
            let port = (x >> 20) % 4;
            match (x >> 27) % 5 {
                0 => b.set_neighbour(addr, Some(mac), true),
                1 => b.set_neighbour(addr, None, false),
                2 => b.remove_neighbour(&addr),
                3 => b.set_fdb(mac, port),
                _ => b.remove_fdb(&mac),
            }
            for p in 0..4 {
                let want: BTreeSet<Ipv4Addr> = b
                    .neighbours
                    .iter()
                    .filter(|(_, (m, _))| m.and_then(|m| b.port_of(&m)) == Some(p))
                    .map(|(a, _)| *a)
                    .collect();
                assert_eq!(b.learned_on(p).collect::<BTreeSet<_>>(), want);
            }
            for m in 0..8 {
                let mac = [2, 0, 0, 0, 0, m];
                let want: BTreeSet<Ipv4Addr> = b
                    .neighbours
                    .iter()
                    .filter(|(_, (n, _))| *n == Some(mac))
                    .map(|(a, _)| *a)
                    .collect();
                assert_eq!(b.with_mac(&mac).collect::<BTreeSet<_>>(), want);
            }
            // Nothing left behind: an index holds no empty set.
            assert!(b.by_mac.values().all(|s| !s.is_empty()));
            assert!(b.by_port.values().all(|s| !s.is_empty()));
        }
    }

    #[test]
    fn endpoints_are_found_by_port_and_mac_after_they_change() {
        let mut e: Endpoints = [ep("10.244.1.2", 10, A), ep("10.244.1.3", 10, B)]
            .into_iter()
            .collect();
        let on = |e: &Endpoints, p: u32| e.on_port(p).collect::<Vec<_>>();
        assert_eq!(on(&e, 10), [ip("10.244.1.2"), ip("10.244.1.3")]);
        // The same address on another port with another MAC: found there only.
        e.insert(ep("10.244.1.2", 11, B));
        assert_eq!(on(&e, 10), [ip("10.244.1.3")]);
        assert_eq!(on(&e, 11), [ip("10.244.1.2")]);
        assert_eq!(e.with_mac(&A).count(), 0);
        assert_eq!(e.with_mac(&B).count(), 2);
        assert_eq!(e.remove(&ip("10.244.1.3")), Some(ep("10.244.1.3", 10, B)));
        assert!(on(&e, 10).is_empty());
        assert_eq!(e.len(), 1);
        assert!(
            e.by_port
                .values()
                .chain(e.by_mac.values())
                .all(|s| !s.is_empty())
        );
    }

    #[test]
    fn a_containers_arrival_and_departure_touch_its_own_address_and_port_only() {
        // 200 containers already there, their endpoints in the map.
        let mac = |i: u32| [2, 0, 0, 0, 1, i as u8];
        let addr = |i: u32| format!("10.244.1.{}", 10 + i);
        let ports: Vec<u32> = (100..300).collect();
        let mut k = kernel(
            &ports,
            ports
                .iter()
                .map(|&p| (ip(&addr(p - 100)), Some(mac(p)), true))
                .collect(),
            ports.iter().map(|&p| (mac(p), p)).collect(),
        );
        let mut map = known(&k.endpoints(&BTreeMap::new()));
        assert_eq!(map.len(), 200);
        // One more: its veth joins the bridge, the bridge learns its MAC, its ARP makes
        // the neighbour. Events of other interfaces and families touch nothing.
        let t = follow(
            &mut k,
            &mut map,
            &[
                port(300, None, false),
                port(300, Some(2), false),
                port(300, Some(2), false),
                port(7, Some(99), false),
                Event::Other,
                fdb(mac(300), 300, false),
                neigh("10.244.1.240", None, false, false),
                neigh("10.244.1.240", Some(mac(300)), true, false),
            ],
        );
        assert_eq!(t.addrs, [ip("10.244.1.240")].into());
        assert_eq!(t.new_ports, vec![(300, "v300".to_owned())]);
        assert!(t.gone_ports.is_empty() && !t.reread && !t.address);
        assert_eq!(map.len(), 201);
        assert_eq!(map[&ip("10.244.1.240")], ep("10.244.1.240", 300, mac(300)));
        assert_eq!(known(&k.endpoints(&map)), map, "the same as a full reading");
        // It leaves: its veth is deleted (the fdb entry with it).
        let t = follow(
            &mut k,
            &mut map,
            &[port(300, Some(2), true), fdb(mac(300), 300, true)],
        );
        assert_eq!(t.addrs, [ip("10.244.1.240")].into());
        assert_eq!(t.gone_ports, vec![300]);
        assert_eq!(map.len(), 200);
        assert!(!map.contains_key(&ip("10.244.1.240")));
        // A MAC that moves to another port moves its endpoint; a stale deletion of the
        // old entry after it changes nothing.
        follow(
            &mut k,
            &mut map,
            &[port(301, Some(2), false), fdb(mac(100), 301, false)],
        );
        follow(&mut k, &mut map, &[fdb(mac(100), 100, true)]);
        assert_eq!(map[&ip(&addr(0))].ifindex, 301);
        // A neighbour that fails ends its endpoint; one deleted keeps it (the port is there).
        follow(
            &mut k,
            &mut map,
            &[neigh(&addr(1), Some(mac(101)), false, false)],
        );
        assert!(!map.contains_key(&ip(&addr(1))));
        follow(
            &mut k,
            &mut map,
            &[neigh(&addr(2), Some(mac(102)), true, true)],
        );
        assert_eq!(map[&ip(&addr(2))].ifindex, 102);
        assert_eq!(known(&k.endpoints(&map)), map, "the same as a full reading");
        // An address event, or the bridge itself deleted: the agent's to handle.
        let t = follow(&mut k, &mut map, &[Event::Address, port(2, None, true)]);
        assert!(t.address && t.reread);
    }
}
