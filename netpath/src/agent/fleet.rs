//! The agent's side of the fleet (`[etcd]`): registers this host's subnet under a lease
//! and renews it, lists and watches the other hosts' registrations and hands every new
//! view of them to the agent's loop, which reconciles the peers. When etcd is away the
//! datapath stays as it is (the last view stands) and the task reconnects with backoff;
//! each session starts with a full listing, so what was deleted meanwhile (a lease that
//! expired while this host was cut off) is seen as gone then.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::{mpsc, oneshot};

use netpath_common::{FLEET_F_CONFIGURED, FLEET_F_REGISTERED, FLEET_F_TAKEN, FleetInfo};

use crate::{
    maps::now,
    sources::{
        etcd::{self as store, Claim, Registration},
        fleetnet::{self, FleetNet, Held},
    },
    state::{Etcd, Host, Mode, Peer},
};

/// What the fleet task tells the agent's loop.
pub enum Update {
    /// A new view of the other hosts.
    Peers(Vec<Peer>),
    /// How etcd is doing (for `NP_FLEET`; the loop adds the skipped count).
    Info(FleetInfo),
    /// A new view of the networks across hosts and their held addresses.
    Networks(fleetnet::View),
}

/// The longest wait between two attempts to reach etcd.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The first claim's outcome: Ok once this host holds its subnet; Err names the host that
/// holds it instead. Not sent while etcd does not answer.
pub type FirstClaim = oneshot::Receiver<Result<(), String>>;

/// Starts the fleet task. Every view of the other hosts, and every change of etcd's
/// state, arrives on the channel. The task ends when the channel's receiver is gone (at
/// its next send) or when aborted through its handle.
pub fn spawn(
    e: Etcd,
    host: Host,
) -> (
    mpsc::Receiver<Update>,
    FirstClaim,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(16);
    let (first_tx, first_rx) = oneshot::channel();
    let task = tokio::spawn(run(e, host, tx, first_tx));
    (rx, first_rx, task)
}

async fn run(
    e: Etcd,
    host: Host,
    tx: mpsc::Sender<Update>,
    first: oneshot::Sender<Result<(), String>>,
) {
    let key = store::subnet_key(&e.prefix, host.subnet);
    let mut first = Some(first);
    let mut backoff = Duration::from_secs(1);
    let mut info = FleetInfo {
        flags: FLEET_F_CONFIGURED,
        lease_ttl: e.lease_ttl as u32,
        away_since: now(),
        ..FleetInfo::default()
    };
    loop {
        let ended = session(&e, &host, &key, &tx, &mut first, &mut backoff, &mut info).await;
        match ended {
            Ok(()) => return, // the agent is gone
            Err(err) => {
                if info.away_since == 0 {
                    info.away_since = now();
                }
                info.flags &= !FLEET_F_REGISTERED;
                if tx.send(Update::Info(info)).await.is_err() {
                    return;
                }
                log::warn!(
                    "etcd: {err:#}; the datapath stays as it is (etcd not reached for {} s); trying again in {} s",
                    now().saturating_sub(info.away_since),
                    backoff.as_secs()
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The mode the others reach this host in: the cluster's (`<prefix>/config`), vxlan when
/// there is none (it works across any underlay).
async fn cluster_mode(client: &mut Client, prefix: &str) -> Result<Mode> {
    Ok(store::cluster(client, prefix)
        .await?
        .map_or(Mode::Vxlan, |c| c.mode()))
}

/// One connection to etcd, from registration to the first error. Ok only when the agent
/// has gone (nobody listens on `tx`).
async fn session(
    e: &Etcd,
    host: &Host,
    key: &str,
    tx: &mpsc::Sender<Update>,
    first: &mut Option<oneshot::Sender<Result<(), String>>>,
    backoff: &mut Duration,
    info: &mut FleetInfo,
) -> Result<()> {
    // Each host starts at its own member (failing over to the others), so that the
    // fleet's watches and renewals spread over the members.
    let home = store::home_member(&host.name, e.endpoints.len());
    let (mut client, _) = store::connect_from(e, home).await?;
    info.last_ok = now();
    let mode = cluster_mode(&mut client, &e.prefix).await?;
    let reg: Registration = store::registration(host, mode);
    let lease = client
        .lease_grant(e.lease_ttl as i64, None)
        .await
        .context("granting a lease")?
        .id();
    if let Claim::Taken(who) = store::claim(&mut client, key, &reg, lease).await? {
        let fix = if e.leased {
            format!(
                "it had leased it, but was away longer than its lease: remove {} to lease another (and move docker0's bip to it)",
                e.subnet_file.display()
            )
        } else {
            "give it another [host].subnet".to_owned()
        };
        let msg = format!(
            "subnet {} is registered in etcd by {who}: this host does not register it; {fix}",
            host.subnet
        );
        if let Some(f) = first.take() {
            let _ = f.send(Err(msg.clone()));
        }
        info.flags |= FLEET_F_TAKEN;
        bail!("{msg}");
    }
    info.flags = (info.flags & !FLEET_F_TAKEN) | FLEET_F_REGISTERED;
    if let Some(f) = first.take() {
        let _ = f.send(Ok(()));
    }
    let (mut keeper, mut acks) = client
        .lease_keep_alive(lease)
        .await
        .context("keeping the lease alive")?;
    let (listed, bad, rev) = store::list(&mut client, &e.prefix, key).await?;
    for b in &bad {
        log::warn!("etcd: skipping {b}");
    }
    let mut known: BTreeMap<String, Peer> = listed.into_iter().collect();
    let nets = fleetnet::list(&mut client, &e.prefix, rev).await?;
    for b in &nets.bad {
        log::warn!("etcd: skipping {b}");
    }
    let (mut networks, mut held) = (nets.networks, nets.held);
    info.away_since = 0;
    info.last_ok = now();
    info.hosts = known.len() as u32;
    if tx.send(Update::Info(*info)).await.is_err() {
        return Ok(());
    }
    *backoff = Duration::from_secs(1);
    log::info!(
        "etcd: registered {key} (lease {lease:x}, {} s); {} other hosts",
        e.lease_ttl,
        known.len()
    );
    if tx
        .send(Update::Peers(known.values().cloned().collect()))
        .await
        .is_err()
        || tx
            .send(Update::Networks(view(&networks, &held)))
            .await
            .is_err()
    {
        return Ok(());
    }
    // Everything under the prefix: registrations, networks across hosts, their addresses.
    let mut watch = client
        .watch(
            format!("{}/", e.prefix),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .context("watching the fleet")?;
    let mut renew = tokio::time::interval(Duration::from_secs((e.lease_ttl / 3).max(1)));
    renew.tick().await;
    // Hosts that hold addresses but are not registered, since when (see `reclaim`).
    let mut gone_since: HashMap<String, Instant> = HashMap::new();
    // Registrations deleted but kept as peers for `[etcd].peer_grace`, in case they come back.
    let mut going = Going::default();
    let grace = Duration::from_secs(e.peer_grace);
    let mut expire = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = expire.tick(), if !going.is_empty() => {
                let gone = going.expired(grace, Instant::now());
                let mut changed = false;
                for k in &gone {
                    changed |= known.remove(k).is_some();
                }
                if changed {
                    info.hosts = known.len() as u32;
                    let view = Update::Peers(known.values().cloned().collect());
                    if tx.send(Update::Info(*info)).await.is_err() || tx.send(view).await.is_err() {
                        return Ok(());
                    }
                }
            }
            _ = renew.tick() => {
                reclaim(&mut client, e, &host.name, &known, &held, &mut gone_since).await;
                keeper.keep_alive().await.context("renewing the lease")?;
                match acks.message().await.context("renewing the lease")? {
                    Some(a) if a.ttl() > 0 => {}
                    _ => bail!("the lease expired (etcd did not hear from this host for {} s)", e.lease_ttl),
                }
                info.last_ok = now();
                if tx.send(Update::Info(*info)).await.is_err() {
                    return Ok(());
                }
            }
            msg = watch.message() => {
                let resp = msg.context("watching the fleet")?.context("the watch ended")?;
                if resp.canceled() {
                    bail!("the watch was cancelled (compacted at revision {}): listing again", resp.compact_revision());
                }
                let (mut changed, mut nets_changed) = (false, false);
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let k = String::from_utf8_lossy(kv.key()).into_owned();
                    let put = ev.event_type() == EventType::Put;
                    if k.starts_with(&format!("{}/networks/", e.prefix)) {
                        let v = put.then(|| fleetnet::network_of(&e.prefix, &k, kv.value()));
                        nets_changed |= follow(&mut networks, k, v);
                        continue;
                    }
                    if k.starts_with(&format!("{}/addresses/", e.prefix)) {
                        let v = put.then(|| fleetnet::held_of(&e.prefix, &k, kv.value()));
                        nets_changed |= follow(&mut held, k, v);
                        continue;
                    }
                    if !k.starts_with(&format!("{}/subnets/", e.prefix)) {
                        continue;
                    }
                    match ev.event_type() {
                        EventType::Delete if k == key => {
                            log::warn!("etcd: {key} was deleted by someone else: registering it again");
                            if let Claim::Taken(who) = store::claim(&mut client, key, &reg, lease).await? {
                                bail!("subnet {} was taken by {who}", host.subnet);
                            }
                        }
                        EventType::Put if k == key => {}
                        EventType::Delete if grace.is_zero() => changed |= known.remove(&k).is_some(),
                        EventType::Delete => {
                            if known.contains_key(&k) {
                                going.deleted(&k, Instant::now());
                            }
                        }
                        EventType::Put => match store::peer_of(&e.prefix, &k, kv.value()) {
                            Ok(p) => {
                                going.put(&k);
                                changed |= known.get(&k) != Some(&p);
                                known.insert(k, p);
                            }
                            Err(err) => {
                                log::warn!("etcd: skipping {err:#}");
                                changed |= known.remove(&k).is_some();
                            }
                        },
                    }
                }
                if nets_changed && tx.send(Update::Networks(view(&networks, &held))).await.is_err() {
                    return Ok(());
                }
                if changed {
                    info.hosts = known.len() as u32;
                    info.last_ok = now();
                    let view = Update::Peers(known.values().cloned().collect());
                    if tx.send(Update::Info(*info)).await.is_err() || tx.send(view).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Applies one watched event to `known` (`value`: None for a delete, else what the put
/// says, garbage skipped and logged). Returns whether `known` changed.
fn follow<T: PartialEq>(
    known: &mut BTreeMap<String, T>,
    key: String,
    value: Option<Result<T>>,
) -> bool {
    match value {
        None => known.remove(&key).is_some(),
        Some(Ok(v)) => {
            let changed = known.get(&key) != Some(&v);
            known.insert(key, v);
            changed
        }
        Some(Err(err)) => {
            log::warn!("etcd: skipping {err:#}");
            known.remove(&key).is_some()
        }
    }
}

fn view(networks: &BTreeMap<String, FleetNet>, held: &BTreeMap<String, Held>) -> fleetnet::View {
    fleetnet::View {
        networks: networks.values().cloned().collect(),
        held: held.values().cloned().collect(),
    }
}

/// Frees the addresses of hosts that have not been registered for `[etcd].address_grace`
/// (their lease expired: the host died or was cut off that long). Every agent does it;
/// the transactions make it once. A failure is logged and tried again at the next tick.
async fn reclaim(
    client: &mut Client,
    e: &Etcd,
    me: &str,
    known: &BTreeMap<String, Peer>,
    held: &BTreeMap<String, Held>,
    gone_since: &mut HashMap<String, Instant>,
) {
    let registered: std::collections::HashSet<&str> =
        known.values().map(|p| p.name.as_str()).collect();
    let holders: std::collections::HashSet<&str> = held
        .values()
        .map(|h| h.host.as_str())
        .filter(|h| *h != me && !registered.contains(h))
        .collect();
    gone_since.retain(|h, _| holders.contains(h.as_str()));
    let grace = Duration::from_secs(e.address_grace);
    for h in holders {
        let since = *gone_since.entry(h.to_owned()).or_insert_with(Instant::now);
        if since.elapsed() < grace {
            continue;
        }
        let theirs: Vec<Held> = held.values().filter(|a| a.host == h).cloned().collect();
        match fleetnet::free_host(client, &e.prefix, &theirs).await {
            Ok(n) => {
                log::info!(
                    "etcd: host {h} has not been registered for {} s: freed {n} of its addresses",
                    e.address_grace
                );
                gone_since.remove(h);
            }
            Err(err) => log::warn!("etcd: freeing the addresses of host {h}: {err:#}"),
        }
    }
}

/// Registrations deleted in etcd, by key, since when: their peers stay for
/// `[etcd].peer_grace`, and one put back meanwhile (an agent restarted, a registration
/// written again) never loses its route. A new session lists afresh, so what was deleted
/// while this host was cut off is gone at once.
#[derive(Default)]
struct Going(HashMap<String, Instant>);

impl Going {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `key` was deleted at `at` (a second delete keeps the first time).
    fn deleted(&mut self, key: &str, at: Instant) {
        self.0.entry(key.to_owned()).or_insert(at);
    }

    /// `key` was put: it is not going.
    fn put(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// The keys deleted at least `grace` before `now`, no longer tracked.
    fn expired(&mut self, grace: Duration, now: Instant) -> Vec<String> {
        let gone: Vec<String> = self
            .0
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= grace)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.0.remove(k);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_put_back_within_the_grace_never_goes() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        let mut g = Going::default();
        g.deleted("a", t0);
        g.deleted("b", t0);
        g.deleted("a", t0 + Duration::from_secs(3)); // a second delete: still the first
        g.put("b"); // put back
        assert!(g.expired(grace, t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(g.expired(grace, t0 + Duration::from_secs(5)), ["a"]);
        assert!(g.is_empty(), "b came back, a went: nothing left to expire");
        assert!(g.expired(grace, t0 + Duration::from_secs(60)).is_empty());
    }
}
