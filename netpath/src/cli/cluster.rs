//! `netpath cluster init|status|hosts|simulate`: the fleet as etcd holds it, through the `[etcd]` section
//! of a config file.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{
    agent::simulate,
    maps::Maps,
    pin::PinDir,
    sources::{
        etcd::{self, Cluster, HostRow, MemberRow},
        file::{Config, Parsed},
    },
    state::Etcd,
};

/// What the cluster commands need of a config: this host's name and subnet (None: not
/// leased yet) and its `[etcd]`.
struct Me {
    name: String,
    subnet: Option<Ipv4Net>,
    etcd: Etcd,
}

fn etcd_of(config: &Path) -> Result<Me> {
    let (name, subnet, etcd) = match Config::load_leasing(config)? {
        Parsed::Ready(cfg) => (cfg.host.name, Some(cfg.host.subnet), cfg.etcd),
        Parsed::Unleased(u) => (u.host.name, None, Some(u.etcd)),
    };
    let etcd = etcd.with_context(|| format!("{} has no [etcd] section", config.display()))?;
    Ok(Me { name, subnet, etcd })
}

/// `cluster init`: writes the cluster settings once; refused when present.
pub fn init(config: &Path, c: Cluster) -> Result<()> {
    if !(8..=30).contains(&c.subnet_len) || c.subnet_len < c.cidr.prefix_len() {
        bail!(
            "--subnet-len {}: use a length between the range's ({}) and 30",
            c.subnet_len,
            c.cidr.prefix_len()
        );
    }
    if c.vni == 0 || c.vni > crate::state::VNI_MAX {
        bail!("--vni {}: use 1 to {}", c.vni, crate::state::VNI_MAX);
    }
    if c.port == 0 {
        bail!("--port 0: use a UDP port, 4789 by default");
    }
    let e = etcd_of(config)?.etcd;
    super::runtime()?.block_on(async {
        let mut client = etcd::connect(&e).await?;
        if !etcd::init(&mut client, &e.prefix, &c).await? {
            bail!(
                "{}/config exists already: the cluster is set up (see `netpath cluster hosts`)",
                e.prefix
            );
        }
        println!(
            "{}/config written: range {}, /{} per host, vni {}, port {}, mode {}",
            e.prefix, c.cidr, c.subnet_len, c.vni, c.port, c.mode
        );
        Ok(())
    })
}

#[derive(Serialize)]
struct HostsReport {
    cluster: Option<Cluster>,
    hosts: Vec<HostLine>,
}

#[derive(Serialize)]
struct HostLine {
    #[serde(flatten)]
    row: HostRow,
    /// Whether this host's datapath has it as a peer (None: no datapath here, or it is
    /// this host).
    peer_here: Option<bool>,
}

/// `cluster hosts`: every registration, its lease's time left, and whether this host has
/// it as a peer.
pub fn hosts(config: &Path, pins: &PinDir, json: bool) -> Result<()> {
    let me = etcd_of(config)?;
    let (cluster, rows) = super::runtime()?.block_on(async {
        let mut client = etcd::connect(&me.etcd).await?;
        etcd::hosts(&mut client, &me.etcd.prefix).await
    })?;
    let hosts = lines(&me, pins, rows);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&HostsReport { cluster, hosts })?
        );
        return Ok(());
    }
    match &cluster {
        Some(c) => println!(
            "cluster: range {}, /{} per host, vni {}, port {}, mode {}",
            c.cidr, c.subnet_len, c.vni, c.port, c.mode
        ),
        None => {
            println!("cluster: not initialised (netpath cluster init); hosts register as vxlan")
        }
    }
    println!(
        "{:<18} {:<16} {:<15} {:<7} {:>9}  PEER HERE",
        "SUBNET", "HOST", "UNDERLAY", "MODE", "LEASE s"
    );
    for h in &hosts {
        let r = &h.row;
        let here = match h.peer_here {
            Some(true) => "yes",
            Some(false) => "not yet",
            None if r.host == me.name => "(this host)",
            None => "-",
        };
        println!(
            "{:<18} {:<16} {:<15} {:<7} {:>9}  {here}{}",
            r.subnet,
            r.host,
            r.underlay,
            r.mode,
            r.lease_left_s,
            r.problem
                .as_deref()
                .map(|p| format!("  (skipped: {p})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Each registration, with whether this host's datapath (at `pins`) has it as a peer.
fn lines(me: &Me, pins: &PinDir, rows: Vec<HostRow>) -> Vec<HostLine> {
    let peers = Maps::open(pins)
        .ok()
        .and_then(|m| crate::inspect::report::peer_rows(&m).ok());
    rows.into_iter()
        .map(|row| {
            let own = row.host == me.name;
            let peer_here = match (&peers, own) {
                (Some(p), false) => Some(p.iter().any(|x| x.subnet == row.subnet)),
                _ => None,
            };
            HostLine { row, peer_here }
        })
        .collect()
}

#[derive(Serialize)]
struct StatusReport {
    members: Vec<MemberRow>,
    cluster: Option<Cluster>,
    /// Subnets the cluster's range holds, and how many are registered.
    subnets_total: Option<u64>,
    registered: usize,
    this_host: ThisHost,
    /// Other hosts this one has as peers, and those it has not (yet).
    peers_here: Vec<String>,
    not_yet: Vec<String>,
}

#[derive(Serialize)]
struct ThisHost {
    name: String,
    /// None: not leased yet.
    subnet: Option<String>,
    leased: bool,
    registered: bool,
    lease_left_s: Option<i64>,
}

/// `cluster status`: the members and whether they answer, the cluster settings, how full
/// the range is, this host's registration and which hosts it has as peers.
pub fn status(config: &Path, pins: &PinDir, json: bool) -> Result<()> {
    let me = etcd_of(config)?;
    let (members, cluster, rows) = super::runtime()?.block_on(async {
        let members = etcd::members(&me.etcd).await?;
        let mut client = etcd::connect(&me.etcd).await?;
        let (cluster, rows) = etcd::hosts(&mut client, &me.etcd.prefix).await?;
        Ok::<_, anyhow::Error>((members, cluster, rows))
    })?;
    let registered = rows.len();
    let lines = lines(&me, pins, rows);
    let own = lines.iter().find(|l| l.row.host == me.name);
    let named = |want: bool| {
        let mut v: Vec<String> = lines
            .iter()
            .filter(|l| l.peer_here == Some(want))
            .map(|l| l.row.host.clone())
            .collect();
        v.sort();
        v
    };
    let report = StatusReport {
        subnets_total: cluster
            .as_ref()
            .map(|c| 1u64 << (c.subnet_len.saturating_sub(c.cidr.prefix_len()).min(32))),
        cluster,
        registered,
        this_host: ThisHost {
            name: me.name.clone(),
            subnet: me.subnet.map(|s| s.to_string()),
            leased: me.etcd.leased,
            registered: own.is_some(),
            lease_left_s: own.map(|l| l.row.lease_left_s),
        },
        peers_here: named(true),
        not_yet: named(false),
        members,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let up = report.members.iter().filter(|m| m.answers).count();
    println!("etcd: {} members, {up} answer", report.members.len());
    for m in &report.members {
        match &m.error {
            None => println!(
                "  {:<28} {:<8} {:<9} db {} KiB, raft index {}",
                m.endpoint,
                m.version.as_deref().unwrap_or("?"),
                if m.leader == Some(true) {
                    "leader"
                } else {
                    "follower"
                },
                m.db_size.unwrap_or(0) / 1024,
                m.raft_index.unwrap_or(0)
            ),
            Some(e) => println!("  {:<28} not answering: {e}", m.endpoint),
        }
    }
    match (&report.cluster, report.subnets_total) {
        (Some(c), Some(total)) => println!(
            "cluster: range {}, /{} per host ({} registered of {total}), vni {}, port {}, mode {}",
            c.cidr, c.subnet_len, report.registered, c.vni, c.port, c.mode
        ),
        _ => println!(
            "cluster: not initialised (netpath cluster init); {} registered, as vxlan",
            report.registered
        ),
    }
    let t = &report.this_host;
    println!(
        "this host: {} {}{}, {}",
        t.name,
        t.subnet.as_deref().unwrap_or("(no subnet leased yet)"),
        if t.leased { " (leased)" } else { "" },
        match t.lease_left_s {
            Some(s) => format!("registered, lease {s} s left"),
            None => "not registered (is its agent running?)".to_owned(),
        }
    );
    println!(
        "peers here: {} of {} other hosts{}",
        report.peers_here.len(),
        report.peers_here.len() + report.not_yet.len(),
        if report.not_yet.is_empty() {
            String::new()
        } else {
            format!("; not yet: {}", report.not_yet.join(", "))
        }
    );
    Ok(())
}

#[derive(Serialize)]
struct SubnetReport {
    subnet: String,
    /// docker0's address: the first address of the subnet's first network, with its
    /// length.
    bip: String,
    /// Where Docker's other networks come from: the rest of the subnet, in networks of
    /// `size` bits. Empty when the subnet holds docker0's network only.
    pools: Vec<Pool>,
    /// The largest MTU containers may use: the uplink's, less the tunnel's headers when
    /// any peer (or the fleet's default) is reached through VXLAN.
    mtu: u32,
    daemon_json: serde_json::Value,
}

/// One of Docker's `default-address-pools`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Pool {
    pub base: String,
    pub size: u8,
}

/// docker0's network (the first of `len` bits of `subnet`) and the pools that hold the
/// rest of `subnet`, each as large as it can be (the first network's siblings, from the
/// smallest up), with networks of `len` bits. `len` is at least the subnet's own length.
pub fn split(subnet: Ipv4Net, len: u8) -> (Ipv4Net, Vec<Pool>) {
    let len = len.max(subnet.prefix_len()).min(32);
    let first = Ipv4Net::new(subnet.network(), len)
        .expect("len <= 32")
        .trunc();
    let base = u32::from(subnet.network());
    let pools = (subnet.prefix_len() + 1..=len)
        .rev()
        .map(|p| Pool {
            base: format!(
                "{}/{p}",
                std::net::Ipv4Addr::from(base | 1 << (32 - p as u32))
            ),
            size: len,
        })
        .collect();
    (first, pools)
}

/// `netpath subnet`: Docker's `bip`, `default-address-pools` and `mtu` for this host's
/// subnet, split into networks of `network_len` bits.
pub fn subnet(config: &Path, network_len: u8, json: bool) -> Result<()> {
    let cfg = Config::load(config)?;
    let h = &cfg.host;
    if network_len < h.subnet.prefix_len() {
        anyhow::bail!(
            "--network-len {network_len}: Docker's networks must fit in this host's subnet {}: use {} to 30",
            h.subnet,
            h.subnet.prefix_len()
        );
    }
    let (docker0, pools) = split(h.subnet, network_len);
    let first = docker0
        .hosts()
        .next()
        .with_context(|| format!("subnet {docker0} has no address for the bridge"))?;
    let bip = format!("{first}/{}", docker0.prefix_len());
    // A fleet reaches this host in its cluster's mode, vxlan by default: leave room for
    // the tunnel unless every peer is direct.
    let tunnel = cfg.etcd.is_some()
        || cfg
            .peers
            .iter()
            .any(|p| p.mode == crate::state::Mode::Vxlan);
    let mtu = if tunnel { h.tunnel_mtu() } else { h.uplink_mtu };
    let mut daemon_json = serde_json::json!({"bip": bip, "mtu": mtu});
    if !pools.is_empty() {
        daemon_json["default-address-pools"] = serde_json::to_value(&pools)?;
    }
    let r = SubnetReport {
        subnet: h.subnet.to_string(),
        bip: bip.clone(),
        pools,
        mtu,
        daemon_json,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let pools: Vec<String> = r.pools.iter().map(|p| p.base.clone()).collect();
        println!(
            "NETPATH_SUBNET={}\nNETPATH_BIP={}\nNETPATH_POOLS={}\nNETPATH_NETWORK_LEN={}\nNETPATH_MTU={}",
            r.subnet,
            r.bip,
            pools.join(","),
            docker0.prefix_len(),
            r.mtu
        );
        println!(
            "# /etc/docker/daemon.json: {}",
            serde_json::to_string(&r.daemon_json)?
        );
        if r.pools.is_empty() {
            println!(
                "# {} holds docker0's network only: Docker gives its other networks (compose's) subnets of its own that no other host routes to. Give hosts wider subnets (`netpath cluster init --subnet-len 20`, or a wider [host].subnet).",
                r.subnet
            );
        }
    }
    Ok(())
}

/// Parses `--cidr`.
pub fn cidr(s: &str) -> Result<Ipv4Net, String> {
    let n: Ipv4Net = s
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR like 10.244.0.0/16"))?;
    if n.network() != n.addr() {
        return Err(format!("{s:?}: host bits set; write {}", n.trunc()));
    }
    Ok(n)
}

/// `cluster simulate`'s settings beside the run's plan.
pub struct Simulation {
    pub lease_ttl: Option<u64>,
    pub prefix: String,
    pub plan: simulate::Plan,
}

/// `cluster simulate`: many agents' fleet tasks against the config's etcd, and what they
/// cost each member.
pub fn simulate(config: &Path, s: Simulation, json: bool) -> Result<()> {
    let mut e = etcd_of(config)?.etcd;
    let ttl = s.lease_ttl.unwrap_or(e.lease_ttl);
    let (lo, hi) = (
        crate::state::ETCD_LEASE_TTL_MIN,
        crate::state::ETCD_LEASE_TTL_MAX,
    );
    if !(lo..=hi).contains(&ttl) {
        bail!("--lease-ttl {ttl}: use {lo} to {hi} seconds");
    }
    let p = s.prefix.trim_end_matches('/');
    if !p.starts_with('/') || p.len() < 2 || p.contains("//") || p == e.prefix {
        bail!(
            "--prefix {:?}: a key prefix such as /netpath-simulate, not the fleet's own ({})",
            s.prefix,
            e.prefix
        );
    }
    if !s.plan.churn_per_sec.is_finite() || !(0.0..=10_000.0).contains(&s.plan.churn_per_sec) {
        bail!(
            "--churn {}: use 0 to 10000 writes per second",
            s.plan.churn_per_sec
        );
    }
    e.prefix = p.to_owned();
    e.lease_ttl = ttl;
    let r = super::runtime()?.block_on(simulate::run(&e, &s.plan))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_simulation(&r, &e);
    }
    if r.agreed < r.agents {
        bail!(
            "{} of {} simulated hosts did not see exactly the others at the end",
            r.agents - r.agreed,
            r.agents
        );
    }
    Ok(())
}

fn print_simulation(r: &simulate::Report, e: &Etcd) {
    println!(
        "{} simulated hosts, lease {} s (renewed every {} s), churn {} writes/s, {}",
        r.agents,
        r.lease_ttl,
        r.renew_secs,
        r.churn_per_sec,
        if r.one_member {
            "all on the first member".to_owned()
        } else {
            format!("spread over {} member(s)", e.endpoints.len())
        }
    );
    println!(
        "registered in {:.2} s, every view whole in {:.2} s; {} views in the {:.0} s window; {} session errors; {}/{} agree at the end",
        r.registered_secs,
        r.converged_secs,
        r.views,
        r.window_secs,
        r.session_errors,
        r.agreed,
        r.agents
    );
    println!(
        "this process: {:.0}% of a core in the window, {:.0} MiB",
        r.sim_cpu * 100.0,
        r.sim_rss_mib
    );
    for (phase, loads) in [("start", &r.start), ("steady", &r.steady)] {
        println!(
            "\n{phase:<7} {:<28} {:>6} {:>10} {:>10} {:>10} {:>8} {:>6} {:>8}",
            "member", "leader", "req/s", "renew/s", "events/s", "watches", "cpu %", "RSS MiB"
        );
        for m in loads {
            println!(
                "{:<7} {:<28} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>8.0} {:>6.1} {:>8.0}",
                "",
                m.endpoint,
                if m.leader { "yes" } else { "" },
                m.requests_per_sec,
                m.keepalives_per_sec,
                m.watch_sent_per_sec,
                m.watch_streams,
                m.cpu * 100.0,
                m.rss_mib
            );
        }
        if loads.is_empty() {
            println!("        (no member's /metrics could be read: http endpoints only)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_splits_into_docker0_and_pools_that_cover_the_rest_exactly() {
        let (first, pools) = split("10.244.16.0/20".parse().unwrap(), 24);
        assert_eq!(first.to_string(), "10.244.16.0/24");
        let bases: Vec<&str> = pools.iter().map(|p| p.base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "10.244.17.0/24",
                "10.244.18.0/23",
                "10.244.20.0/22",
                "10.244.24.0/21"
            ]
        );
        assert!(pools.iter().all(|p| p.size == 24));
        // Every address of the subnet is in exactly one of them.
        let mut nets: Vec<Ipv4Net> = pools.iter().map(|p| p.base.parse().unwrap()).collect();
        nets.push(first);
        let total: u64 = nets.iter().map(|n| 1u64 << (32 - n.prefix_len())).sum();
        assert_eq!(total, 1 << 12);
        for (i, a) in nets.iter().enumerate() {
            for b in &nets[i + 1..] {
                assert!(
                    !a.contains(&b.network()) && !b.contains(&a.network()),
                    "{a} {b}"
                );
            }
        }
        // A subnet of one network has no pool.
        let (first, pools) = split("10.244.3.0/24".parse().unwrap(), 24);
        assert_eq!(first.to_string(), "10.244.3.0/24");
        assert!(pools.is_empty());
    }
}
