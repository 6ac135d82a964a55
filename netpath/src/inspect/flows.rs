//! Flows, NAT entries, published ports and the conntrack settings as operators read them.

use std::net::Ipv4Addr;

use anyhow::Result;
use netpath_common::{CT_KIND_POLICY, CT_KIND_PUBLISHED, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

use crate::{
    maps::{
        Maps, addr_of,
        flows::{flows, monotonic_ns, state, timeout},
    },
    reconcile::publish::observe as published,
    state::Conntrack,
};

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
        .map(|o| (o.item, o.origin))
        .map(|(p, origin)| PortRow {
            proto: p.proto.to_string(),
            host_port: p.host_port,
            container: p.container,
            port: p.port,
            origin: origin.as_str(),
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
