//! The agent's side of the NAT (see netpath-ebpf/src/nat.rs): published ports, the
//! conntrack collector, and the rows that `dump conntrack|nat|ports` print.
//!
//! The datapath creates flows; only the agent removes them: a flow idle for longer than
//! its protocol's timeout, and any half of a flow whose other half is gone (the LRU
//! evicted it when the table was full).

use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use netpath_common::{
    CT_F_FIN_CONTAINER, CT_F_FIN_REMOTE, CT_F_RST, CT_F_SEEN_CONTAINER, CT_F_SEEN_REMOTE,
    CT_KIND_POLICY, CT_KIND_PUBLISHED, CtEntry, CtInfo, CtKey, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, NatKey, ORIGIN_CLI, ORIGIN_CONFIG, PublishKey, PublishValue, addr_to_be,
};
use serde::Serialize;

use crate::{
    config::{self, Config, Conntrack, Proto, Publish},
    datapath::{Maps, addr_of},
};

/// Nanoseconds of CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn publish_key(proto: Proto, host_port: u16) -> PublishKey {
    PublishKey {
        host_port: host_port.to_be(),
        proto: proto.number(),
        _pad: 0,
    }
}

fn publish_from(k: &PublishKey, v: &PublishValue) -> Option<Publish> {
    Some(Publish {
        proto: Proto::from_number(k.proto)?,
        host_port: u16::from_be(k.host_port),
        container: addr_of(v.container),
        port: u16::from_be(v.container_port),
    })
}

/// Every published port, with its origin.
pub fn published(maps: &Maps) -> Result<Vec<(Publish, u8)>> {
    let mut out = Vec::new();
    for item in maps.publish.iter() {
        let (k, v) = item?;
        if let Some(p) = publish_from(&k, &v) {
            out.push((p, v.origin));
        }
    }
    out.sort_by_key(|(p, _)| (p.proto.number(), p.host_port));
    Ok(out)
}

fn put_publish(maps: &mut Maps, p: &Publish, origin: u8) -> Result<()> {
    let value = PublishValue {
        container: addr_to_be(p.container.octets()),
        container_port: p.port.to_be(),
        origin,
        _pad: 0,
    };
    maps.publish
        .insert(publish_key(p.proto, p.host_port), value, 0)?;
    Ok(())
}

/// What a publish sync changed, for the agent's log.
#[derive(Debug, Default)]
pub struct PublishChanges {
    pub set: usize,
    pub removed: usize,
    pub kept_cli: usize,
}

/// Makes the published ports say what `cfg` says, keeping those added with `netpath
/// publish add` unless the config now publishes the same port. A removed port's flows
/// are cut.
pub fn sync_publish(maps: &mut Maps, cfg: &Config) -> Result<PublishChanges> {
    let mut changes = PublishChanges::default();
    let existing = published(maps)?;
    for p in &cfg.publish {
        put_publish(maps, p, ORIGIN_CONFIG)?;
        changes.set += 1;
    }
    for (p, origin) in existing {
        let in_config = cfg
            .publish
            .iter()
            .any(|c| c.proto == p.proto && c.host_port == p.host_port);
        if in_config {
            continue;
        }
        if origin == ORIGIN_CLI {
            changes.kept_cli += 1;
        } else {
            del_publish(maps, p.proto, p.host_port)?;
            changes.removed += 1;
        }
    }
    Ok(changes)
}

/// Publishes a port on a running datapath (`netpath publish add`), checked like a config
/// entry against the running host's subnet and the ports already published.
pub fn add_publish(maps: &mut Maps, p: &Publish) -> Result<()> {
    let cfg = maps.config()?;
    let subnet = Ipv4Net::with_netmask(addr_of(cfg.subnet_addr), addr_of(cfg.subnet_mask))
        .context("local subnet in NP_CONFIG")?;
    let gateway = (cfg.gateway_addr != 0).then(|| addr_of(cfg.gateway_addr));
    let others: Vec<Publish> = published(maps)?.into_iter().map(|(p, _)| p).collect();
    let problems = config::check_publish(
        "publish",
        p,
        subnet,
        gateway,
        u16::from_be(cfg.vxlan_port),
        &others,
    );
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    put_publish(maps, p, ORIGIN_CLI)
}

/// Unpublishes a port (`netpath publish del`) and cuts its flows: a client that was
/// connected must not keep a way in. Returns how many flows were cut.
pub fn del_publish(maps: &mut Maps, proto: Proto, host_port: u16) -> Result<usize> {
    let key = publish_key(proto, host_port);
    if maps.publish.get(&key, 0).is_err() {
        let known: Vec<String> = published(maps)?
            .iter()
            .map(|(p, _)| format!("{}/{}", p.proto, p.host_port))
            .collect();
        bail!(
            "{proto}/{host_port} is not published; published: {}",
            crate::config::listed(&known)
        );
    }
    maps.publish.remove(&key)?;
    let flows = flows(maps)?;
    let mut cut = 0;
    for (k, e) in flows {
        if e.kind == CT_KIND_PUBLISHED
            && k.proto == proto.number()
            && u16::from_be(e.nat_port) == host_port
        {
            remove_flow(maps, &k, &e);
            cut += 1;
        }
    }
    Ok(cut)
}

fn nat_key(k: &CtKey, e: &CtEntry) -> NatKey {
    NatKey {
        remote: k.remote,
        remote_port: k.remote_port,
        nat_port: e.nat_port,
        proto: k.proto,
        _pad: [0; 3],
    }
}

/// Removes both halves of a flow (either may already be gone).
fn remove_flow(maps: &mut Maps, k: &CtKey, e: &CtEntry) {
    let _ = maps.ct.remove(k);
    let nk = nat_key(k, e);
    if maps
        .nat
        .get(&nk, 0)
        .is_ok_and(|v| v.container == k.container && v.container_port == k.container_port)
    {
        let _ = maps.nat.remove(&nk);
    }
}

/// Every flow of the conntrack table (a snapshot: the datapath keeps changing it).
pub fn flows(maps: &Maps) -> Result<Vec<(CtKey, CtEntry)>> {
    let mut out = Vec::new();
    for item in maps.ct.iter() {
        match item {
            Ok(kv) => out.push(kv),
            // An entry removed while we walked: skip it.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// A flow's state, as its timeout sees it.
pub fn state(k: &CtKey, e: &CtEntry) -> &'static str {
    match k.proto {
        IPPROTO_TCP if e.flags & (CT_F_FIN_CONTAINER | CT_F_FIN_REMOTE | CT_F_RST) != 0 => {
            "closing"
        }
        IPPROTO_TCP
            if e.flags & (CT_F_SEEN_CONTAINER | CT_F_SEEN_REMOTE)
                == CT_F_SEEN_CONTAINER | CT_F_SEEN_REMOTE =>
        {
            "established"
        }
        IPPROTO_TCP => "syn",
        _ if e.flags & (CT_F_SEEN_CONTAINER | CT_F_SEEN_REMOTE)
            == CT_F_SEEN_CONTAINER | CT_F_SEEN_REMOTE =>
        {
            "replied"
        }
        _ => "unreplied",
    }
}

/// Seconds a flow in this state may stay idle.
pub fn timeout(c: &CtInfo, k: &CtKey, e: &CtEntry) -> u32 {
    match (k.proto, state(k, e)) {
        (IPPROTO_TCP, "closing") => c.tcp_closing,
        (IPPROTO_TCP, "established") => c.tcp_established,
        (IPPROTO_TCP, _) => c.tcp_syn,
        (IPPROTO_UDP, _) => c.udp,
        _ => c.icmp,
    }
}

/// Records the timeouts the collector uses, keeping its running totals.
pub fn write_ct_info(maps: &mut Maps, c: &Conntrack) -> Result<()> {
    let old = maps.ct_info.get(&0, 0)?;
    let info = CtInfo {
        tcp_syn: c.tcp_syn,
        tcp_established: c.tcp_established,
        tcp_closing: c.tcp_closing,
        udp: c.udp,
        icmp: c.icmp,
        gc_interval: c.gc_interval,
        ..old
    };
    maps.ct_info.set(0, info, 0)?;
    Ok(())
}

/// `NP_CT_INFO` as operators read it (`dump conntrack-info`).
#[derive(Serialize)]
pub struct CtInfoDump {
    /// The table size and the timeouts, seconds.
    #[serde(flatten)]
    pub config: Conntrack,
    pub last_gc_at: u64,
    pub ct_entries_at_last_gc: u32,
    pub nat_entries_at_last_gc: u32,
    pub expired_total: u64,
    pub orphans_total: u64,
}

pub fn info(maps: &Maps) -> Result<CtInfoDump> {
    let i = maps.ct_info.get(&0, 0)?;
    let size = aya::maps::IterableMap::map(&maps.ct).info()?.max_entries();
    Ok(CtInfoDump {
        config: Conntrack {
            size,
            tcp_syn: i.tcp_syn,
            tcp_established: i.tcp_established,
            tcp_closing: i.tcp_closing,
            udp: i.udp,
            icmp: i.icmp,
            gc_interval: i.gc_interval,
        },
        last_gc_at: i.last_gc_at,
        ct_entries_at_last_gc: i.ct_entries,
        nat_entries_at_last_gc: i.nat_entries,
        expired_total: i.expired,
        orphans_total: i.orphans,
    })
}

/// What one collection did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gc {
    pub expired: u64,
    pub orphans: u64,
    pub ct_entries: u32,
    pub nat_entries: u32,
}

/// Removes expired flows and orphaned halves; records the figures in `NP_CT_INFO`.
pub fn gc(maps: &mut Maps) -> Result<Gc> {
    let info = maps.ct_info.get(&0, 0)?;
    let now = monotonic_ns();
    let mut g = Gc::default();
    let mut live: HashSet<NatKey> = HashSet::new();
    for (k, e) in flows(maps)? {
        let idle = now.saturating_sub(e.last_seen_ns) / 1_000_000_000;
        let nk = nat_key(&k, &e);
        if idle > timeout(&info, &k, &e) as u64 {
            remove_flow(maps, &k, &e);
            g.expired += 1;
        } else if e.kind == CT_KIND_POLICY {
            // Policy's own record of a flow: it has no NAT half.
            g.ct_entries += 1;
        } else if maps.nat.get(&nk, 0).is_err() {
            // Its way back was evicted: the flow cannot work any more.
            let _ = maps.ct.remove(&k);
            g.orphans += 1;
        } else {
            live.insert(nk);
            g.ct_entries += 1;
        }
    }
    let mut stale = Vec::new();
    for item in maps.nat.iter() {
        let Ok((nk, v)) = item else { continue };
        if live.contains(&nk) {
            g.nat_entries += 1;
            continue;
        }
        // A reservation made after the walk above started has its CT half by now (the
        // datapath inserts NAT first, CT right after): check again before removing.
        let ck = CtKey {
            container: v.container,
            remote: nk.remote,
            container_port: v.container_port,
            remote_port: nk.remote_port,
            proto: nk.proto,
            _pad: [0; 3],
        };
        if maps.ct.get(&ck, 0).is_ok() {
            g.nat_entries += 1;
        } else {
            stale.push(nk);
        }
    }
    for nk in stale {
        if maps.nat.remove(&nk).is_ok() {
            g.orphans += 1;
        }
    }
    let info = CtInfo {
        last_gc_at: crate::datapath::now(),
        expired: info.expired + g.expired,
        orphans: info.orphans + g.orphans,
        ct_entries: g.ct_entries,
        nat_entries: g.nat_entries,
        ..info
    };
    maps.ct_info.set(0, info, 0)?;
    Ok(g)
}

/// An IP protocol as people write it (its number when it has no name here).
pub fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        n => n.to_string(),
    }
}

fn endpoint(addr: u32, port_be: u16, proto: u8) -> String {
    if proto == IPPROTO_ICMP {
        format!("{} id {}", addr_of(addr), u16::from_be(port_be))
    } else {
        format!("{}:{}", addr_of(addr), u16::from_be(port_be))
    }
}

#[derive(Serialize)]
pub struct FlowRow {
    pub proto: String,
    pub kind: &'static str,
    /// The container's end, "ip:port" (ICMP: "ip id N").
    pub container: String,
    pub remote: String,
    /// The port (or ICMP identifier) on the host's address.
    pub host_port: u16,
    /// The policy rule that allowed the flow (0: the default action).
    pub rule: u32,
    pub state: &'static str,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub expires_in_secs: u64,
}

pub fn flow_rows(maps: &Maps) -> Result<Vec<FlowRow>> {
    let info = maps.ct_info.get(&0, 0)?;
    let now = monotonic_ns();
    let mut rows: Vec<FlowRow> = flows(maps)?
        .iter()
        .map(|(k, e)| {
            let idle = now.saturating_sub(e.last_seen_ns) / 1_000_000_000;
            FlowRow {
                proto: proto_name(k.proto),
                kind: match e.kind {
                    CT_KIND_PUBLISHED => "published",
                    CT_KIND_POLICY => "policy",
                    _ => "masquerade",
                },
                container: endpoint(k.container, k.container_port, k.proto),
                remote: if k.proto == IPPROTO_ICMP {
                    addr_of(k.remote).to_string()
                } else {
                    endpoint(k.remote, k.remote_port, k.proto)
                },
                host_port: u16::from_be(e.nat_port),
                rule: e.rule,
                state: state(k, e),
                age_secs: now.saturating_sub(e.created_ns) / 1_000_000_000,
                idle_secs: idle,
                expires_in_secs: (timeout(&info, k, e) as u64).saturating_sub(idle),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.proto, &a.container, &a.remote).cmp(&(&b.proto, &b.container, &b.remote))
    });
    Ok(rows)
}

#[derive(Serialize)]
pub struct NatRow {
    pub proto: String,
    pub remote: String,
    /// The port (or ICMP identifier) on the host's address.
    pub host_port: u16,
    /// Where it leads.
    pub container: String,
}

pub fn nat_rows(maps: &Maps) -> Result<Vec<NatRow>> {
    let mut rows = Vec::new();
    for item in maps.nat.iter() {
        let Ok((k, v)) = item else { continue };
        rows.push(NatRow {
            proto: proto_name(k.proto),
            remote: if k.proto == IPPROTO_ICMP {
                addr_of(k.remote).to_string()
            } else {
                endpoint(k.remote, k.remote_port, k.proto)
            },
            host_port: u16::from_be(k.nat_port),
            container: endpoint(v.container, v.container_port, k.proto),
        });
    }
    rows.sort_by(|a, b| {
        (&a.proto, a.host_port, &a.remote).cmp(&(&b.proto, b.host_port, &b.remote))
    });
    Ok(rows)
}

#[derive(Serialize)]
pub struct PortRow {
    pub proto: String,
    pub host_port: u16,
    pub container: Ipv4Addr,
    pub port: u16,
    pub origin: &'static str,
    /// Flows through it in the conntrack table now.
    pub flows: usize,
}

pub fn port_rows(maps: &Maps) -> Result<Vec<PortRow>> {
    let flows = flows(maps)?;
    Ok(published(maps)?
        .into_iter()
        .map(|(p, origin)| PortRow {
            proto: p.proto.to_string(),
            host_port: p.host_port,
            container: p.container,
            port: p.port,
            origin: if origin == ORIGIN_CLI {
                "cli"
            } else {
                "config"
            },
            flows: flows
                .iter()
                .filter(|(k, e)| {
                    e.kind == CT_KIND_PUBLISHED
                        && k.proto == p.proto.number()
                        && u16::from_be(e.nat_port) == p.host_port
                })
                .count(),
        })
        .collect())
}

/// Fill levels and collector figures, for `stats`.
#[derive(Serialize)]
pub struct CtSummary {
    pub ct_entries: u32,
    pub nat_entries: u32,
    pub size: u32,
    pub expired_total: u64,
    pub orphans_total: u64,
    pub last_gc_at: u64,
}

pub fn summary(maps: &Maps) -> Result<CtSummary> {
    let info = maps.ct_info.get(&0, 0)?;
    Ok(CtSummary {
        ct_entries: info.ct_entries,
        nat_entries: info.nat_entries,
        size: aya::maps::IterableMap::map(&maps.ct).info()?.max_entries(),
        expired_total: info.expired,
        orphans_total: info.orphans,
        last_gc_at: info.last_gc_at,
    })
}
