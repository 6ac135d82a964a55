//! `netpath cluster simulate`: the load a fleet puts on etcd, without the fleet. Many
//! agents' fleet tasks (the agent's own code: lease, claim, renewals, listing, the watch,
//! the peer views) run in this one process with no datapath, as hosts that exist only in
//! etcd; etcd's `/metrics` are read before, after their start and after a steady window,
//! so that each member's request rate, watch traffic, CPU and memory show what that many
//! hosts cost it with the settings given.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, DeleteOptions, GetOptions};
use ipnet::Ipv4Net;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use netpath_common::FLEET_F_REGISTERED;

use super::fleet::{self, Update};
use crate::{
    sources::etcd as store,
    state::{Etcd, Host, XdpMode},
};

/// The most simulated hosts: their subnets are 10.1.0.0/24 upwards, one /24 each.
pub const MAX_AGENTS: usize = 50_000;

/// What to simulate.
pub struct Plan {
    pub agents: usize,
    /// The steady window, rounded up to whole renewal periods (at least two).
    pub window: Duration,
    /// Writes per second during the window, each an extra host's registration put or
    /// deleted again (hosts coming and going): each is an event for every agent's watch.
    pub churn_per_sec: f64,
    /// Every simulated host talks to the first member only (as agents configured with one
    /// endpoint would); by default each starts at its own.
    pub one_member: bool,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub agents: usize,
    pub one_member: bool,
    pub lease_ttl: u64,
    /// Seconds between two renewals of an agent's lease (a third of the lease).
    pub renew_secs: u64,
    pub churn_per_sec: f64,
    /// From the start of the agents until every one holds its registration.
    pub registered_secs: f64,
    /// From the start until every agent's view holds every other agent and etcd has
    /// every agent's watch request.
    pub converged_secs: f64,
    pub window_secs: f64,
    /// Views of the other hosts the agents' fleet tasks handed on during the window.
    pub views: u64,
    /// Sessions that ended in an error (lost leases, watches, connections) in the run.
    pub session_errors: u64,
    /// Agents whose last view held exactly the other agents once the churn had stopped
    /// and the peers' grace passed.
    pub agreed: usize,
    /// This process's CPU during the window, in cores (near 1: it, not etcd, was the limit).
    pub sim_cpu: f64,
    pub sim_rss_mib: f64,
    /// Each member during the agents' start (None: its metrics could not be read, as
    /// over https).
    pub start: Vec<MemberLoad>,
    /// Each member during the steady window.
    pub steady: Vec<MemberLoad>,
}

/// One etcd member's load over a phase, from two readings of its `/metrics`.
#[derive(Debug, Serialize)]
pub struct MemberLoad {
    pub endpoint: String,
    pub leader: bool,
    /// gRPC messages received in the phase, all methods, and per second.
    pub requests: f64,
    pub requests_per_sec: f64,
    pub keepalives_per_sec: f64,
    /// Watch responses (events to the agents) sent per second.
    pub watch_sent_per_sec: f64,
    /// Watch streams open at the end of the phase (the agents' watches it serves).
    pub watch_streams: f64,
    /// CPU in cores.
    pub cpu: f64,
    pub rss_mib: f64,
    /// gRPC messages received per second, by method.
    pub by_method: BTreeMap<String, f64>,
}

/// What the agents' tasks tell the run.
#[derive(Default)]
struct Shared {
    /// Each agent's last view: how many other hosts it holds.
    seen: Vec<AtomicUsize>,
    views: AtomicU64,
    errors: AtomicU64,
}

/// Host `k` of the simulation: `sim-<k>`, subnet 10.(1+k/256).(k%256).0/24, underlay
/// 198.19.0.0 + k + 1 (hosts that exist only as entries).
fn host(k: usize) -> Host {
    let subnet = Ipv4Net::new(
        Ipv4Addr::new(10, 1 + (k / 256) as u8, (k % 256) as u8, 0),
        24,
    )
    .expect("a /24");
    let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + k as u32 + 1);
    Host {
        name: format!("sim-{k}"),
        uplink: "eth0".into(),
        uplink_ifindex: 0,
        bridge: "br0".into(),
        bridge_ifindex: 0,
        subnet,
        address,
        gateway: None,
        bridge_subnet: subnet,
        vni: 42,
        xdp: XdpMode::Off,
        vxlan_port: netpath_common::VXLAN_PORT,
        vtep_mac: netpath_common::default_vtep_mac(address.octets()),
        uplink_mtu: 1500,
        bridge_mac: [2, 0, 0, 0, 0, 1],
        masquerade: false,
        masquerade_ports: crate::state::MASQUERADE_PORTS,
    }
}

/// Runs the simulation against `e` (its prefix must hold nothing: the simulated hosts
/// write there) and removes every key it wrote, also when it fails.
pub async fn run(e: &Etcd, plan: &Plan) -> Result<Report> {
    if plan.agents < 2 || plan.agents > MAX_AGENTS {
        bail!("--agents {}: use 2 to {MAX_AGENTS}", plan.agents);
    }
    raise_fd_limit(plan.agents);
    let (mut client, _) = store::connect_from(e, 0).await?;
    let dir = format!("{}/", e.prefix);
    let there = client
        .get(
            dir.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .context("counting the keys under the prefix")?
        .count();
    if there > 0 {
        bail!(
            "{there} keys are under {}: a simulation writes only under a prefix that holds nothing (--prefix)",
            e.prefix
        );
    }
    let mut tasks = Vec::with_capacity(plan.agents);
    let result = simulate(e, plan, &mut tasks).await;
    for t in &tasks {
        t.abort();
    }
    let removed = client
        .delete(dir.as_str(), Some(DeleteOptions::new().with_prefix()))
        .await
        .with_context(|| format!("removing the simulation's keys under {}", e.prefix));
    let report = result?;
    removed?;
    Ok(report)
}

async fn simulate(
    e: &Etcd,
    plan: &Plan,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Report> {
    let n = plan.agents;
    let others = n - 1;
    let shared = Arc::new(Shared {
        seen: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        ..Shared::default()
    });
    let before = read_all(e).await;
    let mut theirs = e.clone();
    if plan.one_member {
        theirs.endpoints.truncate(1);
    }
    let t0 = Instant::now();
    let mut claims = Vec::with_capacity(n);
    for k in 0..n {
        let (rx, first, task) = fleet::spawn(theirs.clone(), host(k));
        tasks.push(task);
        tasks.push(tokio::spawn(drain(rx, k, shared.clone())));
        claims.push(first);
    }
    // Every start is given 30 s, plus a millisecond per host for the listing of all.
    let deadline = t0 + Duration::from_secs(30) + Duration::from_millis(n as u64);
    for (k, first) in claims.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, first).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(taken))) => bail!("simulated host sim-{k}: {taken}"),
            Ok(Err(_)) => bail!("simulated host sim-{k}: its fleet task ended"),
            Err(_) => bail!(
                "simulated host sim-{k} did not register within {:.0} s",
                (deadline - t0).as_secs_f64()
            ),
        }
    }
    let registered_secs = t0.elapsed().as_secs_f64();
    while agreeing(&shared, others) < n {
        if Instant::now() > deadline {
            bail!(
                "after {:.0} s only {} of {n} simulated hosts see all the others",
                t0.elapsed().as_secs_f64(),
                agreeing(&shared, others)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each task opens its watch and starts its renewals after handing on its first view:
    // the window starts once etcd has every watch's request (and a second more), so that
    // it holds whole renewal periods of every host.
    let watches = |r: &[(String, Option<Reading>)]| -> Option<f64> {
        let read: Vec<&Reading> = r.iter().filter_map(|(_, x)| x.as_ref()).collect();
        (read.len() == r.len()).then(|| {
            read.iter()
                .map(|x| x.received.get("Watch").copied().unwrap_or(0.0))
                .sum()
        })
    };
    if let Some(had) = watches(&before) {
        while watches(&read_all(e).await).is_some_and(|now| now < had + n as f64)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let converged_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = read_all(e).await;

    // The steady window, whole renewal periods: renewals, and the churn's events to every
    // watch, written from a thread of its own so that its rate holds however busy the
    // simulated hosts are.
    let renew_secs = (e.lease_ttl / 3).max(1);
    let periods = plan.window.as_secs().div_ceil(renew_secs).max(2);
    let window = Duration::from_secs(periods * renew_secs);
    let (views0, cpu0, w0) = (
        shared.views.load(Ordering::Relaxed),
        cpu_secs(),
        Instant::now(),
    );
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let (writer, per_sec) = (e.clone(), plan.churn_per_sec);
    std::thread::spawn(move || {
        let r = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the churn's runtime")
            .and_then(|rt| {
                rt.block_on(async {
                    let (mut c, _) = store::connect_from(&writer, 0).await?;
                    churn(&mut c, &writer.prefix, per_sec, window).await
                })
            });
        let _ = done_tx.send(r);
    });
    done.await.context("the churn's thread ended")??;
    let window_secs = w0.elapsed().as_secs_f64();
    let sim_cpu = (cpu_secs() - cpu0) / window_secs;
    let views = shared.views.load(Ordering::Relaxed) - views0;
    let steady = read_all(e).await;

    // Every churned host is gone: once the grace has passed each view holds the agents.
    let settle = Instant::now() + Duration::from_secs(e.peer_grace + 5);
    while agreeing(&shared, others) < n && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Report {
        agents: n,
        one_member: plan.one_member,
        lease_ttl: e.lease_ttl,
        renew_secs,
        churn_per_sec: plan.churn_per_sec,
        registered_secs,
        converged_secs,
        window_secs,
        views,
        session_errors: shared.errors.load(Ordering::Relaxed),
        agreed: agreeing(&shared, others),
        sim_cpu,
        sim_rss_mib: rss_mib(),
        start: loads(&before, &started),
        steady: loads(&started, &steady),
    })
}

/// Takes what agent `k`'s fleet task hands on, as the agent's loop would.
async fn drain(mut rx: tokio::sync::mpsc::Receiver<Update>, k: usize, shared: Arc<Shared>) {
    let mut registered = false;
    while let Some(u) = rx.recv().await {
        match u {
            Update::Peers(p) => {
                shared.seen[k].store(p.len(), Ordering::Relaxed);
                shared.views.fetch_add(1, Ordering::Relaxed);
            }
            Update::Info(i) => {
                let now = i.flags & FLEET_F_REGISTERED != 0;
                if registered && !now {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                registered = now;
            }
            Update::Networks(_) => {}
        }
    }
}

fn agreeing(shared: &Shared, others: usize) -> usize {
    shared
        .seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == others)
        .count()
}

/// For `window`: `per_sec` writes a second, each the registration of an extra host put
/// or (the next write) deleted again. None is left at the end.
async fn churn(client: &mut Client, prefix: &str, per_sec: f64, window: Duration) -> Result<()> {
    let start = Instant::now();
    if per_sec <= 0.0 {
        tokio::time::sleep(window).await;
        return Ok(());
    }
    let every = Duration::from_secs_f64(1.0 / per_sec);
    let mut writes = 0u32;
    let mut up: Option<String> = None;
    while start.elapsed() < window {
        let what = match up.take() {
            Some(k) => client.delete(k, None).await.map(|_| ()),
            None => {
                let i = (writes / 2 % 256) as u8;
                let k = format!("{prefix}/subnets/10.250.{i}.0-24");
                let reg = store::Registration {
                    host: format!("churn-{i}"),
                    underlay: Ipv4Addr::new(198, 19, 250, i),
                    mode: "vxlan".into(),
                    vtep_mac: "02:00:00:00:00:01".into(),
                    vni: 42,
                    port: netpath_common::VXLAN_PORT,
                    version: env!("CARGO_PKG_VERSION").into(),
                };
                let put = client.put(k.clone(), serde_json::to_vec(&reg)?, None).await;
                up = Some(k);
                put.map(|_| ())
            }
        };
        what.context("the churn's write")?;
        writes += 1;
        tokio::time::sleep_until((start + every * writes).into()).await;
    }
    if let Some(k) = up {
        client
            .delete(k, None)
            .await
            .context("the churn's last delete")?;
    }
    Ok(())
}

/// One reading of a member's `/metrics`.
#[derive(Debug, Default, Clone)]
struct Reading {
    at: Option<Instant>,
    received: BTreeMap<String, f64>,
    watch_sent: f64,
    watch_started: f64,
    watch_handled: f64,
    cpu: f64,
    rss: f64,
    leader: bool,
}

/// Every member's reading, in the order of `[etcd].endpoints` (None where it failed).
async fn read_all(e: &Etcd) -> Vec<(String, Option<Reading>)> {
    let mut out = Vec::new();
    for ep in &e.endpoints {
        let r = read_metrics(ep).await;
        if let Err(err) = &r {
            log::warn!("{ep}/metrics: {err:#}");
        }
        out.push((ep.clone(), r.ok()));
    }
    out
}

async fn read_metrics(endpoint: &str) -> Result<Reading> {
    let Some(addr) = endpoint.strip_prefix("http://") else {
        bail!("only http endpoints' metrics are read");
    };
    let addr = addr.trim_end_matches('/');
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("no answer within 5 s")??;
    if !body.starts_with("HTTP/1.0 200") && !body.starts_with("HTTP/1.1 200") {
        bail!("answered {}", body.lines().next().unwrap_or(""));
    }
    Ok(parse_metrics(&body))
}

/// The figures of a Prometheus text exposition this run uses (unknown lines ignored).
fn parse_metrics(text: &str) -> Reading {
    let mut r = Reading {
        at: Some(Instant::now()),
        ..Reading::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let method = label(labels, "grpc_method");
        match (name, method) {
            ("grpc_server_msg_received_total", Some(m)) => {
                *r.received.entry(m.to_owned()).or_default() += v;
            }
            ("grpc_server_msg_sent_total", Some("Watch")) => r.watch_sent += v,
            ("grpc_server_started_total", Some("Watch")) => r.watch_started += v,
            ("grpc_server_handled_total", Some("Watch")) => r.watch_handled += v,
            ("process_cpu_seconds_total", _) => r.cpu = v,
            ("process_resident_memory_bytes", _) => r.rss = v,
            ("etcd_server_is_leader", _) => r.leader = v == 1.0,
            _ => {}
        }
    }
    r
}

/// The value of label `key` in `a="x",b="y"}`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Each member's load between two readings.
fn loads(a: &[(String, Option<Reading>)], b: &[(String, Option<Reading>)]) -> Vec<MemberLoad> {
    a.iter()
        .zip(b)
        .filter_map(|((ep, a), (_, b))| {
            let (a, b) = (a.as_ref()?, b.as_ref()?);
            let secs = b.at?.duration_since(a.at?).as_secs_f64().max(1e-3);
            let rate = |x: f64, y: f64| (y - x).max(0.0) / secs;
            let by_method: BTreeMap<String, f64> = b
                .received
                .iter()
                .map(|(m, v)| {
                    (
                        m.clone(),
                        rate(a.received.get(m).copied().unwrap_or(0.0), *v),
                    )
                })
                .filter(|(_, r)| *r > 0.0)
                .collect();
            let requests_per_sec: f64 = by_method.values().sum();
            Some(MemberLoad {
                endpoint: ep.clone(),
                leader: b.leader,
                requests: requests_per_sec * secs,
                requests_per_sec,
                keepalives_per_sec: by_method.get("LeaseKeepAlive").copied().unwrap_or(0.0),
                watch_sent_per_sec: rate(a.watch_sent, b.watch_sent),
                watch_streams: b.watch_started - b.watch_handled,
                cpu: rate(a.cpu, b.cpu),
                rss_mib: b.rss / (1 << 20) as f64,
                by_method,
            })
        })
        .collect()
}

/// Each simulated host holds a connection: the soft limit on open files is raised to the
/// hard one when it is below what they need.
fn raise_fd_limit(agents: usize) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0
            && (l.rlim_cur as usize) < agents * 2 + 64
        {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// This process's CPU time (user and system), in seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes the struct given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_method_and_process() {
        let text = "# HELP x\n\
            grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 120\n\
            grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7\n\
            grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"other\",grpc_type=\"unary\"} 3\n\
            grpc_server_msg_sent_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 40\n\
            grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 12\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 2\n\
            process_cpu_seconds_total 3.5\n\
            process_resident_memory_bytes 1.048576e+07\n\
            etcd_server_is_leader 1\n\
            garbage line\n";
        let r = parse_metrics(text);
        assert_eq!(r.received["LeaseKeepAlive"], 120.0);
        assert_eq!(r.received["Range"], 10.0);
        assert_eq!(
            (r.watch_sent, r.watch_started, r.watch_handled),
            (40.0, 12.0, 2.0)
        );
        assert_eq!((r.cpu, r.rss, r.leader), (3.5, 10_485_760.0, true));
    }

    #[test]
    fn a_load_is_the_rates_between_two_readings() {
        let t = Instant::now();
        let a = Reading {
            at: Some(t),
            received: [("Range".to_owned(), 10.0)].into(),
            cpu: 1.0,
            ..Reading::default()
        };
        let b = Reading {
            at: Some(t + Duration::from_secs(2)),
            received: [
                ("Range".to_owned(), 30.0),
                ("LeaseKeepAlive".to_owned(), 8.0),
            ]
            .into(),
            cpu: 2.0,
            watch_started: 5.0,
            watch_handled: 1.0,
            ..Reading::default()
        };
        let l = loads(&[("m".into(), Some(a))], &[("m".into(), Some(b))]);
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].requests_per_sec, l[0].keepalives_per_sec),
            (14.0, 4.0)
        );
        assert_eq!((l[0].cpu, l[0].watch_streams), (0.5, 4.0));
    }

    #[test]
    fn simulated_hosts_are_apart_and_in_their_ranges() {
        let (a, b) = (host(0), host(MAX_AGENTS - 1));
        assert_eq!(a.subnet.to_string(), "10.1.0.0/24");
        assert_eq!(a.address, Ipv4Addr::new(198, 19, 0, 1));
        assert!(b.subnet.network().octets()[1] < 255);
        assert!(
            "198.18.0.0/15"
                .parse::<Ipv4Net>()
                .unwrap()
                .contains(&b.address)
        );
        assert_ne!(host(256).subnet, host(0).subnet);
    }

    #[test]
    fn hosts_spread_over_the_members() {
        let mut per = [0usize; 3];
        for k in 0..3000 {
            per[store::home_member(&format!("sim-{k}"), 3)] += 1;
        }
        assert!(per.iter().all(|&c| (850..=1150).contains(&c)), "{per:?}");
        assert_eq!(store::home_member("a", 1), 0);
        assert_eq!(store::home_member("a", 0), 0);
    }
}
