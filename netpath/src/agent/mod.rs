//! The agent (`netpath run`): loads the programs, builds the desired state from its
//! sources, reconciles the maps, attaches, then stays in the foreground: container
//! programs on new bridge ports, the conntrack collector, metrics, periodic reports.

pub mod collector;
mod containers;
pub mod dockernet;
pub mod fleet;
pub mod ipam;
pub mod simulate;

use std::{borrow::Cow, collections::HashSet, time::Duration};

use anyhow::{Context, Result, bail};
use netpath_common::{AGENT_F_TCX, AgentInfo, map_names, name_bytes, prog_names};

use crate::{
    datapath::{
        self,
        attach::{self, Attached},
    },
    inspect::{metrics, report},
    maps::{Maps, now},
    pin::PinDir,
    reconcile::{self, fault, migrate},
    sources::{self, file::Config},
};

/// Runs the agent until SIGINT/SIGTERM; the config is valid (checked before this). The
/// datapath is attached or adopted, and stays when the agent exits.
pub async fn run(mut cfg: Config, pins: PinDir, report_every: u64) -> Result<()> {
    fault::from_env()?;
    pins.prepare()?;
    let lock = pins.lock()?;
    // Maps of an older layout are migrated (a newer one, a downgrade, is refused here,
    // before anything changes); the rest must be of this build's layout.
    let mut migration = migrate::plan(&pins)?;
    let adopted = pins.exists();
    if pins.map_path(map_names::AGENT).exists() {
        let a = Maps::pinned_agent(&pins)?;
        if datapath::down::agent_alive(a.agent_pid) && a.agent_pid != std::process::id() {
            bail!(
                "an agent (pid {}) already manages {}: stop it first, or use another --pin-dir",
                a.agent_pid,
                pins.root.display()
            );
        }
    }
    pins.check_layouts()?;
    let metrics = cfg.metrics.map(metrics::bind).transpose()?;
    // The fleet: a subnet another host holds is refused before anything changes; etcd
    // away is not an error (the pinned etcd peers stand, the task keeps trying).
    let mut fleet = match &cfg.etcd {
        None => None,
        Some(e) => {
            let (rx, first, _) = fleet::spawn(e.clone(), cfg.host.clone());
            match tokio::time::timeout(Duration::from_secs(5), first).await {
                Ok(Ok(Err(taken))) => bail!("{taken}"),
                Ok(Ok(Ok(()))) => {}
                _ => log::warn!(
                    "etcd at {} does not answer yet: starting with the fleet the pinned maps hold",
                    e.endpoints.join(", ")
                ),
            }
            Some(rx)
        }
    };
    let (mut ebpf, mut maps, mirror) = match start(&cfg, &pins, adopted, &mut migration) {
        Ok(x) => x,
        Err(e) => {
            if !adopted {
                // Nothing was running before: leave nothing behind.
                let _ = datapath::down::down(&pins);
            }
            return Err(e);
        }
    };
    // The container programs: on every port of the bridge now, and on each one that
    // appears later; the endpoints from the bridge's neighbours; the gateway from the
    // bridge's address (rtnetlink link, address and neighbour events; the collector's
    // tick rescans too).
    let (mut conn, handle, mut events) =
        rtnetlink::new_connection().context("opening rtnetlink")?;
    // A host starting thousands of containers sends events faster than the agent takes
    // them while it attaches; what overflows this buffer is lost (netlink-proto warns
    // "socket buffer full") and waits for the next full reading.
    grow_receive_buffer(rtnetlink::sys::AsyncSocket::socket_ref(conn.socket_mut()));
    rtnetlink::sys::AsyncSocket::socket_mut(conn.socket_mut())
        .bind(&rtnetlink::sys::SocketAddr::new(
            0,
            rtnetlink::constants::RTMGRP_LINK
                | rtnetlink::constants::RTMGRP_NEIGH
                | rtnetlink::constants::RTMGRP_IPV4_IFADDR,
        ))
        .context("subscribing to link, address and neighbour events")?;
    tokio::spawn(conn);
    let mut done = Done {
        mirror,
        ..Default::default()
    };
    containers::sync(
        &mut ebpf,
        &mut maps,
        &pins,
        &handle,
        &mut cfg,
        &mut done,
        &Views::default(),
    )
    .await;
    // Every link runs this build's programs now: the old maps can go.
    if !migration.is_empty() {
        match std::mem::take(&mut migration).finish(&pins) {
            Ok(lines) => {
                for l in lines {
                    log::info!("migrated {l}");
                }
            }
            Err(e) => log::error!(
                "the migration did not finish: {e:#}; the next start of the agent finishes it"
            ),
        }
    }
    drop(lock);
    if let Some(l) = metrics {
        let pins = pins.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(l, pins).await {
                log::error!("metrics: {e:#}");
            }
        });
    }

    // NP_FLEET: what the fleet task last said (zero without [etcd]).
    let mut fleet_info = netpath_common::FleetInfo::default();
    if let Some(e) = &cfg.etcd {
        fleet_info.flags = netpath_common::FLEET_F_CONFIGURED;
        fleet_info.lease_ttl = e.lease_ttl as u32;
    }
    let _ = maps.fleet.set(0, fleet_info, 0);
    // NP_DOCKER: what the Docker task last said (zero without [docker]).
    let mut docker_info = netpath_common::DockerInfo::default();
    let mut docker = cfg.docker.as_ref().map(|d| {
        docker_info.flags = netpath_common::DOCKER_F_CONFIGURED;
        sources::docker::spawn(d.clone(), cfg.host.address)
    });
    // Networks across hosts (with both [etcd] and [docker]): the IPAM plugin, and the
    // task that makes etcd's networks on this host's Docker.
    let (fleet_nets, fleet_nets_rx) = tokio::sync::watch::channel(None);
    if let (Some(e), Some(d)) = (&cfg.etcd, &cfg.docker) {
        let path = crate::state::plugin_socket(crate::state::DOCKER_PLUGIN_DIR, &d.plugin);
        ipam::spawn(e.clone(), cfg.host.name.clone(), path)?;
        docker_info.flags |= netpath_common::DOCKER_F_IPAM;
        let mtu = cfg
            .host
            .uplink_mtu
            .saturating_sub(netpath_common::VXLAN_OVERHEAD);
        dockernet::spawn(d.clone(), fleet_nets_rx, mtu);
    }
    let _ = maps.docker.set(0, docker_info, 0);
    let mut views = Views::default();
    let mut tick = tokio::time::interval(Duration::from_secs(report_every.max(1)));
    tick.tick().await;
    let mut gc = tokio::time::interval(Duration::from_secs(cfg.conntrack.gc_interval as u64));
    // Its first tick is now: the start has just read the containers.
    gc.tick().await;
    // Every REPAIR_EVERY the whole desired state is reconciled again: what was changed in
    // the maps behind netpath's back (bpftool, a crashed tool) is put right.
    let mut repair = tokio::time::interval(REPAIR_EVERY);
    repair.tick().await;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            Some((m, _)) = futures::StreamExt::next(&mut events) => {
                // Taken as a burst (a container start is several events), until 20 ms
                // pass without one, 200 ms in all: a steady stream must not keep the
                // other sources (Docker, etcd) waiting.
                let mut burst = vec![m];
                let until = tokio::time::Instant::now() + Duration::from_millis(200);
                while let Ok(Some((m, _))) = tokio::time::timeout(
                    Duration::from_millis(20).min(until.saturating_duration_since(tokio::time::Instant::now())),
                    futures::StreamExt::next(&mut events),
                ).await {
                    burst.push(m);
                }
                if burst.len() > containers::STORM {
                    // Many containers at once (or a backlog): one reading costs less than
                    // following each event, and makes what is queued before it moot.
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(futures::StreamExt::next(&mut events)) {}
                    containers::sync(&mut ebpf, &mut maps, &pins, &handle, &mut cfg, &mut done, &views).await;
                } else {
                    containers::follow(&mut ebpf, &mut maps, &pins, &handle, &mut cfg, &mut done, &views, &burst).await;
                }
            }
            Some(update) = async {
                match fleet.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match update {
                fleet::Update::Peers(peers) => {
                    views.etcd = Some(peers);
                    if let Some(m) = apply(&mut maps, &mut done.mirror, &pins, &cfg, &views, News::Hosts) {
                        fleet_info.skipped = m.skipped_etcd.len() as u32;
                    }
                    let _ = maps.fleet.set(0, fleet_info, 0);
                }
                fleet::Update::Networks(v) => {
                    let _ = fleet_nets.send(Some(v.networks.clone()));
                    // Addresses alone (containers of other hosts came or went) touch the
                    // routes of remote containers, a peers' family: reconciled from the
                    // copy. A network's own change (made, gone, its VNI) touches
                    // NP_NETWORKS too: every family.
                    let news = match &views.fleet {
                        Some(f) if f.networks == v.networks => News::Hosts,
                        _ => News::Etcd,
                    };
                    views.fleet = Some(v);
                    apply(&mut maps, &mut done.mirror, &pins, &cfg, &views, news);
                }
                fleet::Update::Info(info) => {
                    fleet_info = netpath_common::FleetInfo { skipped: fleet_info.skipped, ..info };
                    let _ = maps.fleet.set(0, fleet_info, 0);
                }
            },
            Some(update) = async {
                match docker.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match update {
                    sources::docker::Update::View(v) => {
                        docker_info.flags |= netpath_common::DOCKER_F_UP;
                        docker_info.away_since = 0;
                        docker_info.last_ok = now();
                        docker_info.containers = v.containers as u32;
                        // Ports Docker keeps by design (bound to 127.0.0.1, sctp, other
                        // networks): logged, not counted as refused.
                        for s in &v.skipped {
                            log::info!("docker: {s}");
                        }
                        views.docker = Some(v);
                        // The networks first: the endpoints and programs follow them.
                        if let Some(m) = apply(&mut maps, &mut done.mirror, &pins, &cfg, &views, News::Docker) {
                            docker_info.ports = m.kept_docker as u32;
                            docker_info.refused = m.skipped_docker.len() as u32;
                            docker_info.note = name_bytes(m.skipped_docker.first().map_or("", |s| s.as_str()));
                        }
                        containers::follow_docker(&mut ebpf, &mut maps, &pins, &handle, &mut cfg, &mut done, &views).await;
                    }
                    sources::docker::Update::Away(why) => {
                        docker_info.flags &= !netpath_common::DOCKER_F_UP;
                        if docker_info.away_since == 0 {
                            docker_info.away_since = now();
                        }
                        docker_info.note = name_bytes(&why);
                    }
                }
                let _ = maps.docker.set(0, docker_info, 0);
            }
            _ = repair.tick() => {
                apply(&mut maps, &mut done.mirror, &pins, &cfg, &views, News::Repair);
            }
            _ = gc.tick() => {
                containers::sync(&mut ebpf, &mut maps, &pins, &handle, &mut cfg, &mut done, &views).await;
                match collector::gc(&mut maps) {
                    Ok(g) if g.expired + g.orphans > 0 => log::debug!(
                        "conntrack: {} expired, {} evicted halves removed, {} flows",
                        g.expired, g.orphans, g.ct_entries
                    ),
                    Ok(_) => {}
                    Err(e) => log::warn!("conntrack collection failed: {e:#}"),
                }
            }
            _ = tick.tick(), if report_every > 0 => {
                if let Ok(s) = report::stats(&maps) {
                    log::info!(
                        "forwarded {} passed {} dropped {}",
                        s.totals.forwarded, s.totals.passed, s.totals.dropped
                    );
                }
            }
        }
    }
    log::info!(
        "agent exiting; the datapath stays attached (remove it with `netpath down --pin-dir {}`)",
        pins.root.display()
    );
    Ok(())
}

/// The receive buffer of the agent's rtnetlink event socket (the kernel doubles it).
const EVENT_BUFFER: usize = 4 << 20;

/// Sets the event socket's receive buffer to EVENT_BUFFER, past `net.core.rmem_max`
/// (SO_RCVBUFFORCE: the agent has CAP_NET_ADMIN); where refused, the kernel's default
/// stays, and says so.
fn grow_receive_buffer(s: &rtnetlink::sys::Socket) {
    use std::os::fd::AsRawFd;
    let size = EVENT_BUFFER as libc::c_int;
    // SAFETY: a valid socket descriptor, and a c_int option value of its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        log::warn!(
            "growing the rtnetlink event buffer: {}; a burst of container events may overflow it (the periodic reading catches up)",
            std::io::Error::last_os_error()
        );
    }
}

/// What the agent knows it has done: the interfaces known to run this build's programs
/// (bridges of the networks but the `[host].bridge`, attached at start, and their ports),
/// what it last left in the peers' maps (an etcd event starts from that), and what it
/// knows of the local containers (None: the next event reads everything).
#[derive(Default)]
struct Done {
    bridges: HashSet<u32>,
    ports: HashSet<u32>,
    mirror: reconcile::Mirror,
    containers: Option<containers::Containers>,
}

/// The latest word of the live sources; None: not heard from yet, so the pinned maps'
/// entries of that origin stand (the datapath stays as it was).
#[derive(Default)]
struct Views {
    etcd: Option<Vec<crate::state::Peer>>,
    docker: Option<sources::docker::View>,
    /// The networks across hosts and their addresses.
    fleet: Option<sources::fleetnet::View>,
}

impl Views {
    /// The desired state: the config, the CLI's entries in `observed` and the sources'
    /// views (see [`Views::etcd`], [`Views::docker`], [`Views::fleet`]).
    fn desired(
        &self,
        cfg: &Config,
        observed: &reconcile::Observed,
    ) -> Result<(crate::state::Desired, sources::Merge)> {
        self.merged(cfg, observed, sources::desired)
    }

    /// The desired state but its policy (a Docker event's: see sources::desired_docker).
    fn desired_docker(
        &self,
        cfg: &Config,
        observed: &reconcile::Observed,
    ) -> Result<(crate::state::DesiredNoPolicy, sources::Merge)> {
        self.merged(cfg, observed, sources::desired_docker)
    }

    /// What `merge` makes of the config, the CLI's entries in `observed` and the views.
    fn merged<T>(
        &self,
        cfg: &Config,
        observed: &reconcile::Observed,
        merge: sources::Merger<T>,
    ) -> Result<(T, sources::Merge)> {
        let (docker, networks) = self.docker(cfg, observed);
        merge(
            cfg,
            &sources::cli::live(observed),
            &self.etcd(cfg, observed),
            &docker,
            &networks,
            &self.fleet(cfg, observed),
        )
    }

    /// The peers' part of the desired state (an etcd registration's change): the config's,
    /// the CLI's in `observed` and etcd's, with their containers of networks across hosts.
    fn desired_peers(
        &self,
        cfg: &Config,
        observed: &reconcile::Observed,
    ) -> Result<(crate::state::DesiredPeers, sources::Merge)> {
        sources::desired_peers(
            cfg,
            &sources::cli::live_peers(observed),
            &self.etcd(cfg, observed),
            &self.fleet(cfg, observed),
        )
    }

    /// The etcd peers: etcd's view, or what the pinned maps hold of them until etcd
    /// answers (not copied: 10,000 of them on each event would cost).
    fn etcd<'a>(
        &'a self,
        cfg: &Config,
        observed: &reconcile::Observed,
    ) -> Cow<'a, [crate::state::Peer]> {
        match (&self.etcd, &cfg.etcd) {
            (Some(v), _) => Cow::Borrowed(v),
            (None, Some(_)) => Cow::Owned(sources::etcd::live(observed)),
            (None, None) => Cow::Borrowed(&[]),
        }
    }

    /// The networks across hosts and their addresses, as [`Views::etcd`].
    fn fleet<'a>(
        &'a self,
        cfg: &Config,
        observed: &reconcile::Observed,
    ) -> Cow<'a, sources::fleetnet::View> {
        match (&self.fleet, &cfg.etcd) {
            (Some(v), _) => Cow::Borrowed(v),
            (None, Some(_)) => Cow::Owned(sources::fleetnet::live(observed)),
            (None, None) => Cow::Owned(Default::default()),
        }
    }

    /// Docker's ports and networks: the engine's view, or what the pinned maps hold.
    fn docker(
        &self,
        cfg: &Config,
        observed: &reconcile::Observed,
    ) -> (Vec<sources::docker::DockerPort>, Vec<crate::state::Network>) {
        match (&self.docker, &cfg.docker) {
            (Some(v), _) => (v.ports.clone(), v.networks.clone()),
            (None, Some(_)) => (
                sources::docker::live(observed),
                sources::docker::live_networks(observed),
            ),
            (None, None) => (Vec::new(), Vec::new()),
        }
    }
}

/// Which source's news an [`apply`] acts on (what it logs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum News {
    /// The hosts registered in etcd, or the addresses held in networks across hosts,
    /// changed: only the peers' families are reconciled, from the agent's copy of them
    /// (the policy and the published ports are not theirs).
    Hosts,
    Etcd,
    /// Docker's networks, containers or ports changed: every family but the policy
    /// (Docker never changes it), the peers' from the agent's copy.
    Docker,
    /// The `[host].bridge`'s address changed (and its network with it).
    Gateway,
    /// Nobody's news: the periodic check that the maps say what the sources do.
    Repair,
}

/// How often the agent reconciles everything again, news or not.
const REPAIR_EVERY: Duration = Duration::from_secs(30);

/// Reconciles with the sources' latest views (`views`) after news from one of them. A
/// failure is logged; the next news tries again. Returns the merge (None on failure).
fn apply(
    maps: &mut Maps,
    mirror: &mut reconcile::Mirror,
    pins: &PinDir,
    cfg: &Config,
    views: &Views,
    news: News,
) -> Option<sources::Merge> {
    let result = (|| -> Result<_> {
        // As the CLI's edits do: a `peer add` between reading the maps and writing them
        // would otherwise be undone.
        let _lock = pins.lock()?;
        match news {
            News::Hosts => mirror.reconcile_peers(maps, |o| views.desired_peers(cfg, o)),
            News::Docker => mirror.reconcile_docker(maps, |o| views.desired_docker(cfg, o)),
            _ => mirror.reconcile_all(maps, |o| views.desired(cfg, o)),
        }
    })();
    let (c, merge) = match result {
        Ok(x) => x,
        Err(e) => {
            match news {
                News::Etcd | News::Hosts => {
                    log::warn!("etcd: applying the fleet's view: {e:#}")
                }
                News::Docker => {
                    log::warn!("docker: applying the engine's networks and ports: {e:#}")
                }
                News::Gateway => log::warn!("applying the bridge's new network: {e:#}"),
                News::Repair => log::warn!("checking the maps against the sources: {e:#}"),
            }
            return None;
        }
    };
    if matches!(news, News::Etcd | News::Hosts) {
        for s in &merge.skipped_etcd {
            log::warn!("etcd: skipped {s}");
        }
    }
    if news == News::Docker {
        for s in merge.skipped_docker.iter().chain(&merge.skipped_networks) {
            log::warn!("docker: refused {s}");
        }
    }
    if news == News::Repair {
        if !c.is_empty() {
            let restored = match c.peers.restored.as_slice() {
                [] => String::new(),
                names => format!(" (restored: {})", names.join(", ")),
            };
            log::warn!(
                "maps changed behind netpath's back, put right: {}{restored}",
                c.summary()
            );
        }
        return Some(merge);
    }
    let p = &c.peers;
    if !p.restored.is_empty() || p.orphans > 0 {
        log::warn!(
            "maps changed behind netpath's back, put right: peers {:?} restored, {} stray entries removed",
            p.restored,
            p.orphans
        );
    }
    if !(p.added.is_empty() && p.updated.is_empty() && p.removed.is_empty()) {
        log::info!(
            "etcd: {} hosts as peers; {} added {:?}, {} updated {:?}, {} removed {:?}",
            merge.kept_etcd,
            c.peers.added.len(),
            c.peers.added,
            c.peers.updated.len(),
            c.peers.updated,
            c.peers.removed.len(),
            c.peers.removed
        );
    }
    let r = &c.remote;
    if !r.is_empty() {
        log::info!(
            "across hosts: {} containers on other hosts routed; {} added, {} updated, {} removed{}",
            r.routed,
            r.added,
            r.updated,
            r.removed,
            if r.unrouted > 0 {
                format!(", {} whose host is no peer yet", r.unrouted)
            } else {
                String::new()
            }
        );
    }
    let n = &c.networks;
    if !n.is_empty() {
        log::info!(
            "networks: {} added {:?}, {} updated {:?}, {} removed {:?}",
            n.added.len(),
            n.added,
            n.updated.len(),
            n.updated,
            n.removed.len(),
            n.removed
        );
    }
    if !c.publish.is_empty() {
        log::info!(
            "published ports: {} from Docker; {} added {:?}, {} updated {:?}, {} removed {:?} ({} flows cut)",
            merge.kept_docker,
            c.publish.added.len(),
            c.publish.added,
            c.publish.updated.len(),
            c.publish.updated,
            c.publish.removed.len(),
            c.publish.removed,
            c.publish.flows_cut
        );
    }
    Some(merge)
}

/// Loads the programs (adopting pinned maps), reconciles every map family with the
/// desired state, attaches the programs. Logs what changed.
fn start(
    cfg: &Config,
    pins: &PinDir,
    adopted: bool,
    migration: &mut migrate::Plan,
) -> Result<(aya::Ebpf, Maps, reconcile::Mirror)> {
    // A migrated conntrack table keeps its size, as a pinned one does.
    let ct_size = migration
        .old_max_entries(pins, map_names::CT)
        .or_else(|| migration.old_max_entries(pins, map_names::NAT))
        .unwrap_or(cfg.conntrack.size);
    migration.prepare(pins)?;
    let mut ebpf = datapath::load(Some(pins), ct_size)?;
    if migration.migrates() {
        let started = std::time::Instant::now();
        migration.copy(pins)?;
        log::info!(
            "migrating maps of an older layout: {} (copied in {:.0} ms; the old programs still run on them)",
            migration.summary(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut maps = Maps::take(&mut ebpf)?;
    let size = aya::maps::IterableMap::map(&maps.ct).info()?.max_entries();
    if size != cfg.conntrack.size {
        log::warn!(
            "[conntrack].size = {} but the pinned tables hold {size} entries: they keep their flows and their size until `netpath down`",
            cfg.conntrack.size
        );
    }
    let before = maps.agent()?;
    if let Ok(d) = maps.debug.get(&0, 0)
        && d.flags & netpath_common::DEBUG_F_ON != 0
    {
        log::warn!(
            "{} (set by `netpath debug`; it stays on across restarts): `netpath debug off` stops it",
            crate::inspect::decisions::state_text(&d)
        );
    }
    write_build(&mut maps)?;
    let started = std::time::Instant::now();
    let mut observed = reconcile::observe(&maps).context("reading the pinned maps")?;
    let (desired, merge) = Views::default().desired(cfg, &observed)?;
    for s in merge.skipped_docker.iter().chain(&merge.skipped_networks) {
        log::warn!("docker: refused {s}");
    }
    let changes = reconcile::all_from(&mut maps, &mut observed, &desired)?;
    let took = started.elapsed();
    // From the first swap on, the new maps are live (an interrupted migration finishes).
    migration.swapping(pins)?;
    let mut tcx = true;
    for a in attach::attachments(&cfg.host, &before) {
        let how = attach::attach(&mut ebpf, pins, &a)?;
        tcx &= how != Attached::Netlink;
        log::info!("{} on {} ingress: {how:?}", a.prog, a.iface);
    }
    if let Some(how) = attach::attach_xdp(&mut ebpf, pins, &cfg.host, &before)? {
        log::info!(
            "{} on {} ({} mode): {how:?}",
            datapath::loaded_name(&ebpf, prog_names::XDP_UPLINK),
            cfg.host.uplink,
            cfg.host.xdp
        );
    }
    let xdp_check = cfg.host.xdp != crate::state::XdpMode::Off && !datapath::xdp_decaps(&ebpf);
    let info = write_agent(&mut maps, cfg, tcx, xdp_check, adopted)?;
    let c = &changes;
    log::info!(
        "reconciled in {:.0} ms: {}",
        took.as_secs_f64() * 1e3,
        c.summary()
    );
    for (what, names) in [
        ("peers added", &c.peers.added),
        ("peers updated", &c.peers.updated),
        ("peers removed", &c.peers.removed),
        ("peers restored", &c.peers.restored),
        ("ports added", &c.publish.added),
        ("ports updated", &c.publish.updated),
        ("ports removed", &c.publish.removed),
    ] {
        if !names.is_empty() {
            log::debug!("{what}: {}", names.join(", "));
        }
    }
    log::info!(
        "host {}: {} datapath at {} (generation {}), subnet {}, underlay {}, masquerade {}, {} peers ({} kept from `peer add`), {} published ports ({} kept from `publish add`)",
        cfg.host.name,
        if adopted {
            "adopted the"
        } else {
            "attached a new"
        },
        pins.root.display(),
        info.generation,
        cfg.host.subnet,
        cfg.host.address,
        if cfg.host.masquerade {
            format!(
                "on (ports {}-{})",
                cfg.host.masquerade_ports.0, cfg.host.masquerade_ports.1
            )
        } else {
            "off".to_owned()
        },
        desired.peers.len(),
        merge.kept_cli.peers,
        desired.publish.len(),
        merge.kept_cli.publish,
    );
    log::info!(
        "policy: {} rules ({} kept from `policy add`), default {}, {} lookup entries",
        c.policy.rules,
        merge.kept_cli.rules,
        cfg.policy.default,
        c.policy.entries
    );
    let mut mirror = reconcile::Mirror::default();
    mirror.keep(&maps, observed)?;
    Ok((ebpf, maps, mirror))
}

/// Records that this netpath loaded the programs now.
fn write_build(maps: &mut Maps) -> Result<()> {
    let v = netpath_common::BuildInfo {
        version: name_bytes(env!("CARGO_PKG_VERSION")),
        object_digest: datapath::object_digest(),
        loaded_at: now(),
    };
    maps.build.set(0, v, 0)?;
    Ok(())
}

/// Records who manages the datapath (status, down, restarts).
/// `xdp_check`: the XDP program attached only checks (see datapath::xdp_decaps).
fn write_agent(
    maps: &mut Maps,
    cfg: &Config,
    tcx: bool,
    xdp_check: bool,
    adopted: bool,
) -> Result<AgentInfo> {
    let mut xdp = attach::xdp_flag(cfg.host.xdp);
    if xdp_check {
        xdp |= netpath_common::AGENT_F_XDP_CHECK;
    }
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
        peer_edits: old.peer_edits,
    };
    maps.agent.set(0, info, 0)?;
    Ok(info)
}
