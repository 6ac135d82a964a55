//! `netpath cluster init|hosts`: the fleet as etcd holds it, through the `[etcd]` section
//! of a config file.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::{
    maps::Maps,
    pin::PinDir,
    sources::{
        etcd::{self, Cluster, HostRow},
        file::Config,
    },
    state::Etcd,
};

fn etcd_of(config: &Path) -> Result<(Config, Etcd)> {
    let cfg = Config::load(config)?;
    let e = cfg
        .etcd
        .clone()
        .with_context(|| format!("{} has no [etcd] section", config.display()))?;
    Ok((cfg, e))
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
    let (_, e) = etcd_of(config)?;
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
    let (cfg, e) = etcd_of(config)?;
    let (cluster, rows) = super::runtime()?.block_on(async {
        let mut client = etcd::connect(&e).await?;
        etcd::hosts(&mut client, &e.prefix).await
    })?;
    let peers = Maps::open(pins)
        .ok()
        .and_then(|m| crate::inspect::report::peer_rows(&m).ok());
    let hosts: Vec<HostLine> = rows
        .into_iter()
        .map(|row| {
            let own = row.host == cfg.host.name;
            let peer_here = match (&peers, own) {
                (Some(p), false) => Some(p.iter().any(|x| x.subnet == row.subnet)),
                _ => None,
            };
            HostLine { row, peer_here }
        })
        .collect();
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
            None if r.host == cfg.host.name => "(this host)",
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

#[derive(Serialize)]
struct SubnetReport {
    subnet: String,
    /// docker0's address: the subnet's first address, with its length.
    bip: String,
    /// The largest MTU containers may use: the uplink's, less the tunnel's headers when
    /// any peer (or the fleet's default) is reached through VXLAN.
    mtu: u32,
    daemon_json: serde_json::Value,
}

/// `netpath subnet`: Docker's `bip` and `mtu` for this host's subnet.
pub fn subnet(config: &Path, json: bool) -> Result<()> {
    let cfg = Config::load(config)?;
    let h = &cfg.host;
    let first = h
        .subnet
        .hosts()
        .next()
        .with_context(|| format!("subnet {} has no address for the bridge", h.subnet))?;
    let bip = format!("{first}/{}", h.subnet.prefix_len());
    // A fleet reaches this host in its cluster's mode, vxlan by default: leave room for
    // the tunnel unless every peer is direct.
    let tunnel = cfg.etcd.is_some()
        || cfg
            .peers
            .iter()
            .any(|p| p.mode == crate::state::Mode::Vxlan);
    let mtu = if tunnel { h.tunnel_mtu() } else { h.uplink_mtu };
    let r = SubnetReport {
        subnet: h.subnet.to_string(),
        bip: bip.clone(),
        mtu,
        daemon_json: serde_json::json!({"bip": bip, "mtu": mtu}),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "NETPATH_SUBNET={}\nNETPATH_BIP={}\nNETPATH_MTU={}",
            r.subnet, r.bip, r.mtu
        );
        println!(
            "# /etc/docker/daemon.json: {}",
            serde_json::to_string(&r.daemon_json)?
        );
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
