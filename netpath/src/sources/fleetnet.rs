//! Networks across hosts in etcd: one subnet that every host of the fleet has as a Docker
//! bridge network, its addresses handed out fleet-wide (netpath is the network's IPAM
//! driver, agent/ipam.rs), its containers on other hosts reached through /32 routes.
//! - `<prefix>/networks/<name>` = a [`Stored`] network (JSON), no lease: it lives until
//!   `netpath network rm`;
//! - `<prefix>/vnis/<vni>` = the network's name: a VNI is one network's, taken in the same
//!   transaction as the name;
//! - `<prefix>/addresses/<name>/<a.b.c.d>` = the [`Holder`] of one address, no lease: made
//!   by a create-if-absent transaction (two hosts never both get it), deleted when Docker
//!   releases it. A holder's host that is gone (its registration expired) keeps it until a
//!   grace period has passed (`[etcd].address_grace`, 300 s); then any agent frees it
//!   ([`free_host`]).
//!
//! Everything read from etcd is checked: a key or value of another shape is skipped and
//! logged, never trusted.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::state::{Mode, VNI_MAX};

/// The first VNI handed to a network across hosts (the hosts' own VNI is below, 42 by
/// default); each network takes the lowest free one from here.
pub const FIRST_VNI: u32 = 4096;

/// The IPAM option that names the netpath network a Docker network's pool is for.
pub const IPAM_OPT_NETWORK: &str = "netpath.network";
/// The label of the Docker networks the agent made for a network across hosts.
pub const LABEL_NETWORK: &str = "netpath.network";

/// A network across hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetNet {
    pub name: String,
    pub subnet: Ipv4Net,
    /// The gateway every host's bridge has (the same address on each).
    pub gateway: Ipv4Addr,
    pub mode: Mode,
    pub vni: u32,
    pub masquerade: bool,
    pub internal: bool,
}

impl FleetNet {
    /// Whether `a` can be a container's address: in the subnet, not its network,
    /// broadcast or gateway address.
    pub fn holds_container(&self, a: Ipv4Addr) -> bool {
        self.subnet.contains(&a)
            && a != self.subnet.network()
            && a != self.subnet.broadcast()
            && a != self.gateway
    }
}

/// A network as etcd stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub mode: String,
    pub vni: u32,
    pub masquerade: bool,
    pub internal: bool,
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
}

/// One held address of a network across hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    pub network: String,
    pub addr: Ipv4Addr,
    pub host: String,
}

pub fn network_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/networks/{name}")
}

fn vni_key(prefix: &str, vni: u32) -> String {
    format!("{prefix}/vnis/{vni}")
}

pub fn address_key(prefix: &str, network: &str, a: Ipv4Addr) -> String {
    format!("{prefix}/addresses/{network}/{a}")
}

/// Checks a network name: what Docker takes for one, and short enough for the maps.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "network name {name:?}: use 1 to 48 letters, digits, '_', '.' or '-', starting with a letter or digit"
        ))
    }
}

/// The network at `key` (`<prefix>/networks/<name>`) with `value`; Err says what is wrong.
pub fn network_of(prefix: &str, key: &str, value: &[u8]) -> Result<FleetNet> {
    let name = key
        .strip_prefix(prefix)
        .and_then(|k| k.strip_prefix("/networks/"))
        .with_context(|| format!("{key}: not a network key"))?;
    check_name(name).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    let s: Stored = serde_json::from_slice(value)
        .with_context(|| format!("{key}: not a network (JSON with subnet, gateway, mode, vni)"))?;
    let subnet: Ipv4Net = s
        .subnet
        .parse()
        .with_context(|| format!("{key}: subnet {:?} is not a network", s.subnet))?;
    if subnet.trunc() != subnet || !(8..=29).contains(&subnet.prefix_len()) {
        bail!("{key}: subnet {subnet} must be a network of /8 to /29");
    }
    let mode = match s.mode.as_str() {
        "direct" => Mode::Direct,
        "vxlan" => Mode::Vxlan,
        m => bail!("{key}: mode {m:?} is neither direct nor vxlan"),
    };
    if !(FIRST_VNI..=VNI_MAX).contains(&s.vni) {
        bail!("{key}: vni {} is outside {FIRST_VNI}..={VNI_MAX}", s.vni);
    }
    let net = FleetNet {
        name: name.to_owned(),
        subnet,
        gateway: s.gateway,
        mode,
        vni: s.vni,
        masquerade: s.masquerade,
        internal: s.internal,
    };
    if !net.subnet.contains(&net.gateway)
        || net.gateway == subnet.network()
        || net.gateway == subnet.broadcast()
    {
        bail!("{key}: gateway {} is not an address of {subnet}", s.gateway);
    }
    Ok(net)
}

/// The held address at `key` (`<prefix>/addresses/<network>/<a.b.c.d>`) with `value`.
pub fn held_of(prefix: &str, key: &str, value: &[u8]) -> Result<Held> {
    let rest = key
        .strip_prefix(prefix)
        .and_then(|k| k.strip_prefix("/addresses/"))
        .with_context(|| format!("{key}: not an address key"))?;
    let (network, addr) = rest
        .split_once('/')
        .with_context(|| format!("{key}: not <network>/<address>"))?;
    check_name(network).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("{key}: {addr:?} is not an IPv4 address"))?;
    let h: Holder = serde_json::from_slice(value)
        .with_context(|| format!("{key}: not a holder (JSON with host)"))?;
    crate::state::check_name(&format!("{key}: host"), &h.host).map_err(anyhow::Error::msg)?;
    Ok(Held {
        network: network.to_owned(),
        addr,
        host: h.host,
    })
}

/// The networks across hosts and the addresses held in them, as etcd has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub networks: Vec<FleetNet>,
    pub held: Vec<Held>,
}

/// The networks across hosts and their containers on other hosts that the pinned maps
/// hold: this source until etcd answers (an agent that starts while etcd is away keeps
/// them).
pub fn live(o: &crate::reconcile::Observed) -> View {
    let networks: Vec<FleetNet> = o
        .networks
        .iter()
        .filter_map(|n| {
            let s = n.span?;
            Some(FleetNet {
                name: n.name.clone(),
                subnet: n.subnet,
                gateway: n.gateway?,
                mode: s.mode,
                vni: s.vni,
                masquerade: n.masquerade,
                internal: n.internal,
            })
        })
        .collect();
    let names: std::collections::HashMap<u32, String> = o
        .peers
        .infos
        .iter()
        .map(|(id, i)| (*id, netpath_common::name_str(&i.name).to_owned()))
        .collect();
    let held = o
        .peers
        .remote
        .iter()
        .filter_map(|(a, v)| {
            let addr = crate::maps::addr_of(*a);
            let net = networks.iter().find(|n| n.subnet.contains(&addr))?;
            Some(Held {
                network: net.name.clone(),
                addr,
                host: names.get(&v.id)?.clone(),
            })
        })
        .collect();
    View { networks, held }
}

/// What `netpath network create` asks for.
#[derive(Debug, Clone)]
pub struct Create {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub mode: Mode,
    pub masquerade: bool,
    pub internal: bool,
}

/// Every network and every held address, as of one revision (`rev`), with what was
/// skipped and why.
pub struct Listing {
    pub networks: BTreeMap<String, FleetNet>,
    pub held: BTreeMap<String, Held>,
    pub bad: Vec<String>,
}

/// Lists the networks and held addresses (at `rev`, or the latest with 0).
pub async fn list(client: &mut Client, prefix: &str, rev: i64) -> Result<Listing> {
    let opts = |o: GetOptions| if rev > 0 { o.with_revision(rev) } else { o };
    let nets = client
        .get(
            format!("{prefix}/networks/"),
            Some(opts(GetOptions::new().with_prefix())),
        )
        .await
        .context("listing the networks across hosts")?;
    let addrs = client
        .get(
            format!("{prefix}/addresses/"),
            Some(opts(GetOptions::new().with_prefix())),
        )
        .await
        .context("listing the held addresses")?;
    let mut out = Listing {
        networks: BTreeMap::new(),
        held: BTreeMap::new(),
        bad: Vec::new(),
    };
    for kv in nets.kvs() {
        let k = String::from_utf8_lossy(kv.key()).into_owned();
        match network_of(prefix, &k, kv.value()) {
            Ok(n) => {
                out.networks.insert(k, n);
            }
            Err(e) => out.bad.push(format!("{e:#}")),
        }
    }
    for kv in addrs.kvs() {
        let k = String::from_utf8_lossy(kv.key()).into_owned();
        match held_of(prefix, &k, kv.value()) {
            Ok(h) => {
                out.held.insert(k, h);
            }
            Err(e) => out.bad.push(format!("{e:#}")),
        }
    }
    Ok(out)
}

/// The networks across hosts, by name.
pub async fn networks(client: &mut Client, prefix: &str) -> Result<BTreeMap<String, FleetNet>> {
    Ok(list(client, prefix, 0)
        .await?
        .networks
        .into_values()
        .map(|n| (n.name.clone(), n))
        .collect())
}

/// `netpath network create`: writes the network once, with the lowest free VNI, in one
/// transaction with its VNI's key. Refused: a name or VNI taken meanwhile, a subnet that
/// overlaps another network or a host's registered subnet.
pub async fn create(client: &mut Client, prefix: &str, c: &Create) -> Result<FleetNet> {
    check_name(&c.name).map_err(anyhow::Error::msg)?;
    if c.subnet.trunc() != c.subnet || !(8..=29).contains(&c.subnet.prefix_len()) {
        bail!(
            "--subnet {}: give a network of /8 to /29 (its host bits zero, e.g. {})",
            c.subnet,
            c.subnet.trunc()
        );
    }
    let gateway = c
        .gateway
        .unwrap_or_else(|| c.subnet.hosts().next().unwrap_or(c.subnet.network()));
    if !c.subnet.contains(&gateway)
        || gateway == c.subnet.network()
        || gateway == c.subnet.broadcast()
    {
        bail!("--gateway {gateway}: not an address of {}", c.subnet);
    }
    for attempt in 0..5 {
        let now = list(client, prefix, 0).await?;
        if let Some(n) = now.networks.values().find(|n| n.name == c.name) {
            bail!(
                "network {} exists already ({}, {}, vni {}): `netpath network rm {}` first",
                n.name,
                n.subnet,
                n.mode,
                n.vni,
                n.name
            );
        }
        if let Some(n) = now.networks.values().find(|n| {
            n.subnet.contains(&c.subnet.network()) || c.subnet.contains(&n.subnet.network())
        }) {
            bail!(
                "--subnet {} overlaps network {} ({})",
                c.subnet,
                n.name,
                n.subnet
            );
        }
        let hosts = client
            .get(
                format!("{prefix}/subnets/"),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .context("listing the hosts' subnets")?;
        for kv in hosts.kvs() {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(s) = super::etcd::subnet_of(prefix, &k)
                && (s.contains(&c.subnet.network()) || c.subnet.contains(&s.network()))
            {
                bail!(
                    "--subnet {} overlaps {s}, a host's subnet ({k}): a network across hosts needs a range of its own",
                    c.subnet
                );
            }
        }
        let used: std::collections::HashSet<u32> = now.networks.values().map(|n| n.vni).collect();
        let vni = (FIRST_VNI..=VNI_MAX)
            .find(|v| !used.contains(v))
            .context("every VNI is taken")?;
        let net = FleetNet {
            name: c.name.clone(),
            subnet: c.subnet,
            gateway,
            mode: c.mode,
            vni,
            masquerade: c.masquerade,
            internal: c.internal,
        };
        let stored = Stored {
            subnet: net.subnet.to_string(),
            gateway,
            mode: net.mode.to_string(),
            vni,
            masquerade: net.masquerade,
            internal: net.internal,
        };
        let key = network_key(prefix, &c.name);
        let vkey = vni_key(prefix, vni);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(vkey.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key, serde_json::to_vec(&stored)?, None),
                TxnOp::put(vkey, c.name.clone(), None),
            ]);
        if client
            .txn(txn)
            .await
            .context("writing the network")?
            .succeeded()
        {
            return Ok(net);
        }
        log::debug!("network create: raced (attempt {attempt}), trying again");
    }
    bail!(
        "network {}: etcd kept changing under the create; try again",
        c.name
    )
}

/// `netpath network rm`: deletes the network and its VNI's key. Refused while
/// addresses of it are held (their containers run somewhere): the error names the hosts.
pub async fn remove(client: &mut Client, prefix: &str, name: &str) -> Result<FleetNet> {
    let now = list(client, prefix, 0).await?;
    let net = now
        .networks
        .values()
        .find(|n| n.name == name)
        .cloned()
        .with_context(|| {
            let known: Vec<&str> = now.networks.values().map(|n| n.name.as_str()).collect();
            format!(
                "no network across hosts named {name:?}; known: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })?;
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for h in now.held.values().filter(|h| h.network == name) {
        *holders.entry(h.host.as_str()).or_default() += 1;
    }
    if !holders.is_empty() {
        let list: Vec<String> = holders.iter().map(|(h, n)| format!("{h} ({n})")).collect();
        bail!(
            "network {name} has containers: addresses held on {}; remove them first (`docker rm -f` there)",
            list.join(", ")
        );
    }
    let txn = Txn::new().and_then([
        TxnOp::delete(network_key(prefix, name), None),
        TxnOp::delete(vni_key(prefix, net.vni), None),
    ]);
    client.txn(txn).await.context("deleting the network")?;
    Ok(net)
}

/// Frees each of `held` (the addresses of a host gone longer than the grace period): one
/// transaction per address, each only if its host still holds it. Returns how many were
/// freed.
pub async fn free_host(client: &mut Client, prefix: &str, held: &[Held]) -> Result<usize> {
    let mut n = 0;
    for h in held {
        if release(client, prefix, &h.network, h.addr, &h.host).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// What a reservation found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserve {
    /// The address is `host`'s now.
    Done,
    /// Another holds it (its host).
    Held(String),
}

/// Takes `a` of `network` for `host` if nobody holds it (one transaction).
pub async fn reserve(
    client: &mut Client,
    prefix: &str,
    network: &str,
    a: Ipv4Addr,
    host: &str,
) -> Result<Reserve> {
    let key = address_key(prefix, network, a);
    let value = serde_json::to_vec(&Holder {
        host: host.to_owned(),
    })?;
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), value, None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = client.txn(txn).await.context("reserving the address")?;
    if resp.succeeded() {
        return Ok(Reserve::Done);
    }
    for r in resp.op_responses() {
        if let TxnOpResponse::Get(g) = r
            && let Some(kv) = g.kvs().first()
        {
            let who = serde_json::from_slice::<Holder>(kv.value())
                .map_or_else(|_| "an unknown holder".to_owned(), |h| h.host);
            return Ok(Reserve::Held(who));
        }
    }
    // Deleted between the two: the next attempt takes it.
    Ok(Reserve::Held(String::new()))
}

/// The addresses of `net` that are held now.
async fn held_in(client: &mut Client, prefix: &str, net: &str) -> Result<Vec<Ipv4Addr>> {
    let resp = client
        .get(
            format!("{prefix}/addresses/{net}/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .context("listing the held addresses")?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            k.rsplit('/').next()?.parse().ok()
        })
        .collect())
}

/// A free address of `net` for `host`: a random one of those nobody holds, reserved; a
/// reservation that another host won meanwhile is tried again with another.
pub async fn allocate(
    client: &mut Client,
    prefix: &str,
    net: &FleetNet,
    host: &str,
) -> Result<Ipv4Addr> {
    for _ in 0..16 {
        let held: std::collections::HashSet<Ipv4Addr> = held_in(client, prefix, &net.name)
            .await?
            .into_iter()
            .collect();
        let free: Vec<Ipv4Addr> = net
            .subnet
            .hosts()
            .filter(|a| *a != net.gateway && !held.contains(a))
            .collect();
        if free.is_empty() {
            bail!(
                "network {} ({}) has no free address: {} are held",
                net.name,
                net.subnet,
                held.len()
            );
        }
        let pick = free[rand_index(free.len())];
        if reserve(client, prefix, &net.name, pick, host).await? == Reserve::Done {
            return Ok(pick);
        }
    }
    bail!(
        "network {}: other hosts kept taking the free addresses first; try again",
        net.name
    )
}

/// A random index below `n` (n > 0), from the clock and a counter: hosts that allocate at
/// once pick different addresses, and a collision is only a retry.
fn rand_index(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() % n as u64) as usize
}

/// Frees `a` of `network` if `host` holds it (one transaction: another's is left alone).
/// Ok(false): it was not `host`'s.
pub async fn release(
    client: &mut Client,
    prefix: &str,
    network: &str,
    a: Ipv4Addr,
    host: &str,
) -> Result<bool> {
    let key = address_key(prefix, network, a);
    let value = serde_json::to_vec(&Holder {
        host: host.to_owned(),
    })?;
    let txn = Txn::new()
        .when([Compare::value(key.clone(), CompareOp::Equal, value)])
        .and_then([TxnOp::delete(key, None)]);
    Ok(client
        .txn(txn)
        .await
        .context("releasing the address")?
        .succeeded())
}

/// How Docker's network `n` of the same name differs from `f` as etcd has it (driver,
/// IPAM driver, subnet, gateway, label); None when it is `f` on this host. Said in the
/// agent's log and by `netpath doctor`.
pub fn disagrees(f: &FleetNet, n: &bollard::models::Network, plugin: &str) -> Option<String> {
    let label = n.labels.as_ref().and_then(|l| l.get(LABEL_NETWORK));
    let ipam = n.ipam.as_ref();
    let conf = ipam.and_then(|i| i.config.as_ref()).and_then(|c| c.first());
    let subnet = conf
        .and_then(|c| c.subnet.clone())
        .unwrap_or_else(|| "(none)".to_owned());
    let gateway = conf
        .and_then(|c| c.gateway.clone())
        .unwrap_or_else(|| "(none)".to_owned());
    let mut wrong = Vec::new();
    if label != Some(&f.name) {
        wrong.push(format!(
            "label {LABEL_NETWORK}={}",
            label.map_or("(none)", |l| l)
        ));
    }
    let driver = n.driver.as_deref().unwrap_or("");
    if driver != "bridge" {
        wrong.push(format!("driver {driver}, not bridge"));
    }
    let ipam_driver = ipam.and_then(|i| i.driver.as_deref()).unwrap_or("default");
    if ipam_driver != plugin {
        wrong.push(format!("IPAM driver {ipam_driver}, not {plugin}"));
    }
    if subnet.parse::<ipnet::Ipv4Net>().ok() != Some(f.subnet) {
        wrong.push(format!("subnet {subnet}, etcd's is {}", f.subnet));
    }
    let gw = gateway.split('/').next().unwrap_or("");
    if gw.parse::<std::net::Ipv4Addr>().ok() != Some(f.gateway) {
        wrong.push(format!("gateway {gateway}, etcd's is {}", f.gateway));
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "network {} on this host's Docker is not etcd's network across hosts of that name ({}): its containers are not routed across hosts. Disconnect them and `docker network rm {}`: the agent makes it again as etcd says",
            f.name,
            wrong.join("; "),
            f.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_holders_are_read_and_garbage_is_refused() {
        let v = br#"{"subnet":"10.244.64.0/24","gateway":"10.244.64.1","mode":"vxlan","vni":4096,"masquerade":true,"internal":false}"#;
        let n = network_of("/np", "/np/networks/net1", v).unwrap();
        assert_eq!(n.subnet.to_string(), "10.244.64.0/24");
        assert_eq!(n.mode, Mode::Vxlan);
        assert!(n.holds_container("10.244.64.2".parse().unwrap()));
        assert!(!n.holds_container("10.244.64.1".parse().unwrap()));
        for (key, value, says) in [
            ("/np/networks/net1", &b"{"[..], "not a network"),
            ("/np/networks/-x", &v[..], "network name"),
            ("/np/other/net1", &v[..], "not a network key"),
            (
                "/np/networks/net1",
                &br#"{"subnet":"10.244.64.1/24","gateway":"10.244.64.1","mode":"vxlan","vni":4096,"masquerade":true,"internal":false}"#[..],
                "must be a network",
            ),
            (
                "/np/networks/net1",
                &br#"{"subnet":"10.244.64.0/24","gateway":"10.244.65.1","mode":"vxlan","vni":4096,"masquerade":true,"internal":false}"#[..],
                "not an address of",
            ),
            (
                "/np/networks/net1",
                &br#"{"subnet":"10.244.64.0/24","gateway":"10.244.64.1","mode":"gre","vni":4096,"masquerade":true,"internal":false}"#[..],
                "neither direct nor vxlan",
            ),
            (
                "/np/networks/net1",
                &br#"{"subnet":"10.244.64.0/24","gateway":"10.244.64.1","mode":"vxlan","vni":42,"masquerade":true,"internal":false}"#[..],
                "vni 42",
            ),
        ] {
            let e = format!("{:#}", network_of("/np", key, value).unwrap_err());
            assert!(e.contains(says), "{key} {}: {e}", String::from_utf8_lossy(value));
        }
        let h = held_of("/np", "/np/addresses/net1/10.244.64.3", br#"{"host":"h1"}"#).unwrap();
        assert_eq!((h.network.as_str(), h.host.as_str()), ("net1", "h1"));
        assert_eq!(h.addr.to_string(), "10.244.64.3");
        for (key, value) in [
            ("/np/addresses/net1/10.244.64.300", &br#"{"host":"h1"}"#[..]),
            ("/np/addresses/net1", &br#"{"host":"h1"}"#[..]),
            ("/np/addresses/net1/10.244.64.3", &b"h1"[..]),
            ("/np/addresses/net1/10.244.64.3", &br#"{"host":""}"#[..]),
        ] {
            assert!(held_of("/np", key, value).is_err(), "{key} accepted");
        }
    }
}
