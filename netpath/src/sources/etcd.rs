//! The fleet as a source: each host registers its subnet in etcd under its lease and
//! turns every other host's registration into a peer (origin `etcd`). The layout is
//! flannel's, under netpath's own prefix:
//! - `<prefix>/subnets/<a.b.c.d-len>` = a [`Registration`] (JSON), under its host's lease;
//! - `<prefix>/config` = the cluster settings (`netpath cluster init`).
//!
//! Until etcd answers, the etcd peers the pinned maps hold are this source ([`live`]): an
//! agent that starts while etcd is away keeps the fleet it had.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    reconcile::Observed,
    state::{Etcd, Host, Mode, Origin, Peer},
};

/// What a host writes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub host: String,
    pub underlay: Ipv4Addr,
    /// "direct" or "vxlan": how the others reach this host's subnet.
    pub mode: String,
    pub vtep_mac: String,
    pub vni: u32,
    pub port: u16,
    /// The netpath that wrote it.
    pub version: String,
}

/// The key of `subnet`'s registration.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{prefix}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The subnet a registration key names; None for a key of another shape.
pub fn subnet_of(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("/subnets/")?;
    let (addr, len) = rest.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.addr()).then_some(net)
}

/// This host's registration. `mode`: how the others reach it (the mode it uses towards
/// peers of its own config; vxlan if it has no peer of its own).
pub fn registration(h: &Host, mode: Mode) -> Registration {
    Registration {
        host: h.name.clone(),
        underlay: h.address,
        mode: mode.to_string(),
        vtep_mac: crate::state::format_mac(h.vtep_mac),
        vni: h.vni,
        port: h.vxlan_port,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The peer a registration (at `key`, with `value`) describes; Err says what is wrong with
/// it (another host wrote garbage: it is skipped and logged, never trusted).
pub fn peer_of(prefix: &str, key: &str, value: &[u8]) -> Result<Peer> {
    let subnet = subnet_of(prefix, key).with_context(|| format!("{key}: not a subnet key"))?;
    let r: Registration =
        serde_json::from_slice(value).with_context(|| format!("{key}: not a registration"))?;
    let mode = match r.mode.as_str() {
        "direct" => Mode::Direct,
        "vxlan" => Mode::Vxlan,
        m => bail!("{key}: mode {m:?} is neither direct nor vxlan"),
    };
    let vtep_mac = crate::state::parse_mac(&format!("{key}: vtep_mac"), &r.vtep_mac)
        .map_err(anyhow::Error::msg)?;
    crate::state::check_name(&format!("{key}: host"), &r.host).map_err(anyhow::Error::msg)?;
    Ok(Peer {
        name: r.host,
        subnet,
        underlay: r.underlay,
        mode,
        vtep_mac: Some(vtep_mac),
    })
}

/// The etcd peers in the pinned maps: this source until etcd answers.
pub fn live(o: &Observed) -> Vec<Peer> {
    o.peers_of(Origin::Etcd)
}

/// Where the next [`connect`] starts in the list of members: after the one that last
/// failed, so a dead member costs one attempt, not every session.
static NEXT_MEMBER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn options(e: &Etcd) -> Result<ConnectOptions> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    if let Some(ca) = &e.ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("[etcd].ca: reading {}", ca.display()))?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(pem));
        if let (Some(cert), Some(key)) = (&e.cert, &e.key) {
            let c = std::fs::read(cert)
                .with_context(|| format!("[etcd].cert: reading {}", cert.display()))?;
            let k = std::fs::read(key)
                .with_context(|| format!("[etcd].key: reading {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

/// Connects to the member at `ep` and asks its status (connecting is lazy: this tells
/// that it answers). Err says why not, with a hint for TLS errors.
async fn connect_one(
    ep: &str,
    opts: &ConnectOptions,
) -> Result<(Client, etcd_client::StatusResponse), String> {
    let attempt = async {
        let mut client = Client::connect([ep], Some(opts.clone())).await?;
        let status = client.status().await?;
        Ok::<_, etcd_client::Error>((client, status))
    };
    attempt.await.map_err(|err| {
        let text = err.to_string();
        let hint = if text.contains("UnknownIssuer") {
            ": its certificate is not signed by [etcd].ca"
        } else if text.contains("NotValidForName") {
            ": its certificate does not name this address"
        } else if text.contains("CertificateRequired") {
            ": it wants a client certificate ([etcd].cert and key)"
        } else {
            ""
        };
        format!("{ep}{hint} ({text})")
    })
}

/// Connects to a member of `e` that answers (TLS where configured), trying each in turn
/// from the one that answered last. Fails within a few seconds per member when none
/// answers.
pub async fn connect(e: &Etcd) -> Result<Client> {
    use std::sync::atomic::Ordering;
    let start = NEXT_MEMBER.load(Ordering::Relaxed);
    match connect_from(e, start).await {
        Ok((client, k)) => {
            NEXT_MEMBER.store(k, Ordering::Relaxed);
            Ok(client)
        }
        Err(err) => {
            NEXT_MEMBER.store(start + 1, Ordering::Relaxed);
            Err(err)
        }
    }
}

/// Connects to a member of `e` that answers, trying each in turn from member `first`
/// (modulo their count); also returns which one answered.
pub async fn connect_from(e: &Etcd, first: usize) -> Result<(Client, usize)> {
    let opts = options(e)?;
    let n = e.endpoints.len().max(1);
    let mut errors = Vec::new();
    for i in 0..n {
        let k = (first + i) % n;
        let Some(ep) = e.endpoints.get(k) else { break };
        match connect_one(ep, &opts).await {
            Ok((client, _)) => return Ok((client, k)),
            Err(err) => errors.push(err),
        }
    }
    bail!("no etcd member answers ({})", errors.join("; "))
}

/// The member of `members` a host named `name` talks to first: hosts spread evenly over
/// the members by a stable hash of their names (FNV-1a), so that a fleet whose configs
/// all list the same endpoints does not pile onto the first.
pub fn home_member(name: &str, members: usize) -> usize {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % members.max(1) as u64) as usize
}

/// One member of `[etcd].endpoints`, as `netpath cluster status` shows it.
#[derive(Debug, Serialize)]
pub struct MemberRow {
    pub endpoint: String,
    pub answers: bool,
    pub version: Option<String>,
    /// Whether it is the raft leader.
    pub leader: Option<bool>,
    pub db_size: Option<i64>,
    pub raft_index: Option<u64>,
    /// Why it does not answer.
    pub error: Option<String>,
}

/// Asks every member of `e` for its status, each on its own connection.
pub async fn members(e: &Etcd) -> Result<Vec<MemberRow>> {
    let opts = options(e)?;
    let mut rows = Vec::new();
    for ep in &e.endpoints {
        rows.push(match connect_one(ep, &opts).await {
            Ok((_, s)) => MemberRow {
                endpoint: ep.clone(),
                answers: true,
                version: Some(s.version().to_owned()),
                leader: s.header().map(|h| h.member_id() == s.leader()),
                db_size: Some(s.db_size()),
                raft_index: Some(s.raft_index()),
                error: None,
            },
            Err(err) => MemberRow {
                endpoint: ep.clone(),
                answers: false,
                version: None,
                leader: None,
                db_size: None,
                raft_index: None,
                error: Some(err),
            },
        });
    }
    Ok(rows)
}

/// How a claim of this host's subnet ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Registered (created, or this host's own entry taken over after a restart).
    Held,
    /// Another host holds it: never overwritten.
    Taken(String),
}

/// Registers `reg` at `key` under `lease`, by a transaction that creates the key only if
/// it is absent; an entry of the same host (its previous agent) is taken over.
pub async fn claim(
    client: &mut Client,
    key: &str,
    reg: &Registration,
    lease: i64,
) -> Result<Claim> {
    // An entry deleted between the transaction and the read: try again (a few times).
    for _ in 0..3 {
        if let Some(c) = claim_once(client, key, reg, lease).await? {
            return Ok(c);
        }
    }
    bail!("{key} keeps changing hands: registering it later")
}

async fn claim_once(
    client: &mut Client,
    key: &str,
    reg: &Registration,
    lease: i64,
) -> Result<Option<Claim>> {
    let value = serde_json::to_vec(reg)?;
    let put = || {
        TxnOp::put(
            key,
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    let txn = Txn::new()
        .when([Compare::version(key, CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::get(key, None)]);
    let resp = client.txn(txn).await.context("registering the subnet")?;
    if resp.succeeded() {
        return Ok(Some(Claim::Held));
    }
    let holder = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
        _ => None,
    });
    let Some((value, revision)) = holder else {
        // Deleted between the two steps: the next attempt creates it.
        return Ok(None);
    };
    match serde_json::from_slice::<Registration>(&value) {
        Ok(h) if h.host == reg.host => {
            // Ours, from before a restart: renew it under the new lease, unless it changed
            // since it was read.
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
                .and_then([put()]);
            // Changed since it was read: look again.
            Ok(client.txn(txn).await?.succeeded().then_some(Claim::Held))
        }
        Ok(h) => Ok(Some(Claim::Taken(format!("{} ({})", h.host, h.underlay)))),
        Err(_) => Ok(Some(Claim::Taken(
            "an entry that is not a netpath registration".to_owned(),
        ))),
    }
}

/// Every key under `<prefix>/subnets/`, read at one revision.
async fn registrations(client: &mut Client, prefix: &str) -> Result<etcd_client::GetResponse> {
    client
        .get(
            format!("{prefix}/subnets/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .context("listing the fleet")
}

/// Every registration under `prefix`: the peers (all but `own`), the problems of the
/// entries that are not good, and the revision of the reading.
pub async fn list(
    client: &mut Client,
    prefix: &str,
    own: &str,
) -> Result<(Vec<(String, Peer)>, Vec<String>, i64)> {
    let resp = registrations(client, prefix).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let (mut peers, mut bad) = (Vec::new(), Vec::new());
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if key == own {
            continue;
        }
        match peer_of(prefix, &key, kv.value()) {
            Ok(p) => peers.push((key, p)),
            Err(e) => bad.push(format!("{e:#}")),
        }
    }
    Ok((peers, bad, rev))
}

/// The cluster settings at `<prefix>/config` (`netpath cluster init`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// The container range the hosts' subnets come from.
    pub cidr: Ipv4Net,
    /// The prefix length of each host's subnet.
    pub subnet_len: u8,
    pub vni: u32,
    pub port: u16,
    /// How hosts reach each other: "direct" or "vxlan".
    pub mode: String,
}

impl Cluster {
    /// How hosts reach each other: vxlan unless the settings say direct.
    pub fn mode(&self) -> Mode {
        if self.mode == "direct" {
            Mode::Direct
        } else {
            Mode::Vxlan
        }
    }
}

/// The cluster settings at `<prefix>/config`; None when `netpath cluster init` has not
/// written them.
pub async fn cluster(client: &mut Client, prefix: &str) -> Result<Option<Cluster>> {
    let resp = client
        .get(format!("{prefix}/config"), None)
        .await
        .context("reading the cluster settings")?;
    resp.kvs()
        .first()
        .map(|kv| {
            serde_json::from_slice(kv.value())
                .with_context(|| format!("{prefix}/config is not netpath's cluster settings"))
        })
        .transpose()
}

/// Writes `c` at `<prefix>/config` unless something is there already: Ok(false) then.
pub async fn init(client: &mut Client, prefix: &str, c: &Cluster) -> Result<bool> {
    let key = format!("{prefix}/config");
    let txn = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), serde_json::to_vec(c)?, None)]);
    Ok(client
        .txn(txn)
        .await
        .context("writing the cluster settings")?
        .succeeded())
}

/// A registered host, as `netpath cluster hosts` shows it.
#[derive(Debug, Serialize)]
pub struct HostRow {
    pub subnet: String,
    pub host: String,
    pub underlay: String,
    pub mode: String,
    pub version: String,
    /// Seconds until its lease expires, unless renewed.
    pub lease_left_s: i64,
    /// What is wrong with the entry, when it is not a good registration.
    pub problem: Option<String>,
}

/// The cluster settings, if written, and every registration with its lease's time left.
pub async fn hosts(client: &mut Client, prefix: &str) -> Result<(Option<Cluster>, Vec<HostRow>)> {
    let cluster = cluster(client, prefix).await?;
    let resp = registrations(client, prefix).await?;
    let mut rows = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let left = if kv.lease() != 0 {
            client
                .lease_time_to_live(kv.lease(), None)
                .await
                .map(|t| t.ttl())
                .unwrap_or(-1)
        } else {
            -1
        };
        let reg: Result<Registration, _> = serde_json::from_slice(kv.value());
        let problem = peer_of(prefix, &key, kv.value())
            .err()
            .map(|e| format!("{e:#}"));
        let subnet = subnet_of(prefix, &key).map_or(key.clone(), |n| n.to_string());
        rows.push(match reg {
            Ok(r) => HostRow {
                subnet,
                host: r.host,
                underlay: r.underlay.to_string(),
                mode: r.mode,
                version: r.version,
                lease_left_s: left,
                problem,
            },
            Err(_) => HostRow {
                subnet,
                host: String::new(),
                underlay: String::new(),
                mode: String::new(),
                version: String::new(),
                lease_left_s: left,
                problem,
            },
        });
    }
    Ok((cluster, rows))
}

/// A host without `[host].subnet` that has not leased one yet: everything but the subnet
/// is checked (published ports are checked once it is known).
#[derive(Debug, Clone)]
pub struct Unleased {
    /// The host, its subnet not set yet.
    pub host: Host,
    pub etcd: crate::state::Etcd,
}

/// The subnet remembered in `path` (`NETPATH_SUBNET=a.b.c.d/len`); None when there is no
/// such file (this host has not leased one).
pub fn remembered(path: &Path) -> Result<Option<Ipv4Net>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "[etcd].subnet_file: cannot read {}: {e}",
                path.display()
            ));
        }
    };
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("NETPATH_SUBNET="))
        .ok_or_else(|| {
            format!(
                "[etcd].subnet_file: {} has no NETPATH_SUBNET= line: remove it to lease a subnet again",
                path.display()
            )
        })?;
    crate::state::parse_subnet(&format!("{}: NETPATH_SUBNET", path.display()), line.trim())
        .map(Some)
}

/// Remembers `subnet` in `path` (written whole, then renamed into place).
pub fn remember(path: &Path, subnet: Ipv4Net) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("# the subnet this host leased from etcd (netpath); remove it to lease another\nNETPATH_SUBNET={subnet}\n"),
    )
    .and_then(|()| std::fs::rename(&tmp, path))
    .inspect_err(|_| {
        // A full disk leaves a part of it: nothing half-written stays behind.
        let _ = std::fs::remove_file(&tmp);
    })
    .with_context(|| format!("[etcd].subnet_file: writing {}", path.display()))
}

/// Where a host's search for a free subnet starts: a hash of its name, so that hosts that
/// start together try different subnets first.
fn start_of(name: &str, n: u64) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    h % n.max(1)
}

/// The subnets of `c`'s range, in the order `name` tries them, without those `taken`.
/// Lazy: a /8 in /30s is four million subnets, of which a lease needs the first free one.
pub fn free_subnets<'a>(
    c: &Cluster,
    name: &str,
    taken: &'a [Ipv4Net],
) -> impl Iterator<Item = Ipv4Net> + 'a {
    let (base, len) = (u32::from(c.cidr.network()), c.subnet_len);
    let count = match len.checked_sub(c.cidr.prefix_len()) {
        Some(bits) if len <= 32 => 1u64 << bits,
        _ => 0,
    };
    let start = start_of(name, count);
    (0..count).filter_map(move |k| {
        let i = (start + k) % count;
        let addr = base.wrapping_add((i << (32 - u32::from(len))) as u32);
        let s = Ipv4Net::new(Ipv4Addr::from(addr), len).ok()?;
        let free = !taken
            .iter()
            .any(|t| t.contains(&s.network()) || s.contains(&t.network()));
        free.then_some(s)
    })
}

/// Leases a subnet for `u`'s host: the one its registration already holds (an agent whose
/// subnet file was lost), else a free one of the cluster's range, claimed by a transaction
/// that only creates what is absent. The registration is written under a lease of its own
/// (the agent's fleet task takes it over) and the subnet remembered in the subnet file.
pub async fn lease(u: &Unleased) -> Result<Ipv4Net> {
    let e = &u.etcd;
    let mut client = connect(e).await.context(
        "[host].subnet is not set and this host has no lease yet: it needs etcd to lease one",
    )?;
    let c = cluster(&mut client, &e.prefix).await?.with_context(|| {
        format!(
            "[host].subnet is not set, and {}/config holds no cluster range to lease it from: run `netpath cluster init --cidr ...`, or set [host].subnet",
            e.prefix
        )
    })?;
    let resp = registrations(&mut client, &e.prefix).await?;
    let mut taken = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some(net) = subnet_of(&e.prefix, &key) else {
            continue;
        };
        if let Ok(r) = serde_json::from_slice::<Registration>(kv.value())
            && r.host == u.host.name
        {
            if r.underlay != u.host.address {
                bail!(
                    "{key} is registered by a host named {} at {}, not this host's {}: give this host another [host].name",
                    r.host,
                    r.underlay,
                    u.host.address
                );
            }
            remember(&e.subnet_file, net)?;
            log::info!(
                "etcd: this host holds {net} already ({key}); remembered in {}",
                e.subnet_file.display()
            );
            return Ok(net);
        }
        taken.push(net);
    }
    let mut free = free_subnets(&c, &u.host.name, &taken).peekable();
    if free.peek().is_none() {
        bail!(
            "no free subnet is left in the cluster's range {} (/{} per host, {} registered): widen it or remove hosts",
            c.cidr,
            c.subnet_len,
            taken.len()
        );
    }
    let reg = registration(&u.host, c.mode());
    let lease = client
        .lease_grant(e.lease_ttl as i64, None)
        .await
        .context("granting a lease")?
        .id();
    for net in free {
        let key = subnet_key(&e.prefix, net);
        // Another host may take it between the listing and the transaction: the next one.
        if claim(&mut client, &key, &reg, lease).await? == Claim::Held {
            if let Err(err) = remember(&e.subnet_file, net) {
                // Not remembered, not held: the registration goes with its lease now,
                // not when the lease runs out.
                let _ = client.lease_revoke(lease).await;
                return Err(err.context(format!(
                    "{net} was leased, and given back: this host could not remember it"
                )));
            }
            log::info!(
                "etcd: leased {net} from {} ({key}); remembered in {}",
                c.cidr,
                e.subnet_file.display()
            );
            return Ok(net);
        }
    }
    bail!(
        "every free subnet of {} was taken while this host tried them: start it again",
        c.cidr
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_subnet_and_nothing_else() {
        let net: Ipv4Net = "10.244.11.0/24".parse().unwrap();
        let key = subnet_key("/netpath", net);
        assert_eq!(key, "/netpath/subnets/10.244.11.0-24");
        assert_eq!(subnet_of("/netpath", &key), Some(net));
        for bad in [
            "/netpath/subnets/10.244.11.1-24",
            "/netpath/subnets/10.244.11.0",
            "/netpath/subnets/x-24",
            "/netpath/config",
            "/other/subnets/10.244.11.0-24",
            "/netpath/subnets/10.244.11.0-33",
        ] {
            assert_eq!(subnet_of("/netpath", bad), None, "{bad}");
        }
    }

    #[test]
    fn free_subnets_skip_the_taken_and_start_where_the_name_says() {
        let c = Cluster {
            cidr: "10.244.0.0/22".parse().unwrap(),
            subnet_len: 24,
            vni: 42,
            port: 4789,
            mode: "vxlan".into(),
        };
        let all: Vec<Ipv4Net> = free_subnets(&c, "h1", &[]).collect();
        assert_eq!(all.len(), 4);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, c.cidr.subnets(24).unwrap().collect::<Vec<_>>());
        // Another name starts elsewhere (here: at least one of a few does).
        assert!(
            ["h2", "h3", "h4", "h5"]
                .iter()
                .any(|n| free_subnets(&c, n, &[]).next() != Some(all[0]))
        );
        // Taken ones, and ones overlapping a registration of another length, are skipped.
        let taken: Vec<Ipv4Net> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "10.244.2.0/23".parse().unwrap(),
        ];
        assert_eq!(
            free_subnets(&c, "h1", &taken).collect::<Vec<_>>(),
            vec!["10.244.0.0/24".parse::<Ipv4Net>().unwrap()]
        );
        let full: Vec<Ipv4Net> = vec!["10.244.0.0/22".parse().unwrap()];
        assert!(free_subnets(&c, "h1", &full).next().is_none());
    }

    #[test]
    fn a_registration_becomes_a_peer_and_garbage_is_refused() {
        let r = Registration {
            host: "h2".into(),
            underlay: "198.18.0.12".parse().unwrap(),
            mode: "vxlan".into(),
            vtep_mac: "02:00:c6:12:00:0c".into(),
            vni: 42,
            port: 4789,
            version: "0.1.0".into(),
        };
        let key = "/netpath/subnets/10.244.12.0-24";
        let p = peer_of("/netpath", key, &serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(p.name, "h2");
        assert_eq!(p.subnet.to_string(), "10.244.12.0/24");
        assert_eq!(p.mode, Mode::Vxlan);
        assert_eq!(p.vtep_mac, Some([2, 0, 0xc6, 0x12, 0, 0x0c]));
        for (value, want) in [
            (b"not json".to_vec(), "not a registration"),
            (
                serde_json::to_vec(&Registration {
                    mode: "carrier-pigeon".into(),
                    ..r.clone()
                })
                .unwrap(),
                "neither direct nor vxlan",
            ),
            (
                serde_json::to_vec(&Registration {
                    vtep_mac: "zz".into(),
                    ..r.clone()
                })
                .unwrap(),
                "vtep_mac",
            ),
        ] {
            let e = peer_of("/netpath", key, &value).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{e:#}");
        }
    }
}
