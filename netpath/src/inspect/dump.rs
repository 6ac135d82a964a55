//! `netpath dump` for the maps that have no table of their own elsewhere (report.rs,
//! nat.rs, policy.rs): the host config, the underlay index, the agent and build
//! records, the named groups, the compiled policy tries, the per-CPU rate limits and the
//! drop-event state. Rows are plain structs: JSON as they are, tables through
//! [`auto_table`], so both always show the same thing.

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::PerCpuValues;
use netpath_common::{CONFIG_F_MASQUERADE, CONFIG_F_READY, POLICY_GEN_BITS, RejectLimit, name_str};
use serde::Serialize;
use serde_json::Value;

use crate::{
    maps::{Maps, addr_of},
    state::{format_mac, policy::Action},
};

fn prefix_len_of_mask(mask_be: u32) -> u32 {
    u32::from_be(mask_be).count_ones()
}

#[derive(Serialize)]
pub struct ConfigDump {
    pub ready: bool,
    pub host_address: Ipv4Addr,
    pub subnet: String,
    pub gateway: Option<Ipv4Addr>,
    pub uplink_ifindex: u32,
    pub bridge_ifindex: u32,
    pub vni: u32,
    pub vxlan_port: u16,
    pub vtep_mac: String,
    pub bridge_mac: String,
    pub tunnel_mtu: u16,
    pub tunnel_mss: u16,
    pub masquerade: bool,
    pub masquerade_ports: String,
}

pub fn config(maps: &Maps) -> Result<ConfigDump> {
    let c = maps.config()?;
    Ok(ConfigDump {
        ready: c.flags & CONFIG_F_READY != 0,
        host_address: addr_of(c.host_addr),
        subnet: format!(
            "{}/{}",
            addr_of(c.subnet_addr),
            prefix_len_of_mask(c.subnet_mask)
        ),
        gateway: (c.gateway_addr != 0).then(|| addr_of(c.gateway_addr)),
        uplink_ifindex: c.uplink_ifindex,
        bridge_ifindex: c.bridge_ifindex,
        vni: c.vni,
        vxlan_port: u16::from_be(c.vxlan_port),
        vtep_mac: format_mac(c.vtep_mac),
        bridge_mac: format_mac(c.bridge_mac),
        tunnel_mtu: c.tunnel_mtu,
        tunnel_mss: c.tunnel_mss,
        masquerade: c.flags & CONFIG_F_MASQUERADE != 0,
        masquerade_ports: format!("{}-{}", c.nat_port_min, c.nat_port_max),
    })
}

#[derive(Serialize)]
pub struct UnderlayRow {
    pub underlay: Ipv4Addr,
    pub peer_id: u32,
    pub peer: String,
    pub mode: String,
    pub vtep_mac: String,
}

pub fn underlay(maps: &Maps) -> Result<Vec<UnderlayRow>> {
    let mut rows = Vec::new();
    for item in maps.underlay.iter() {
        let (addr, v) = item?;
        let info = maps.peer_info.get(&v.id, 0)?;
        rows.push(UnderlayRow {
            underlay: addr_of(addr),
            peer_id: v.id,
            peer: name_str(&info.name).to_owned(),
            mode: crate::state::Mode::from_map(v.mode)
                .map(|m| m.to_string())
                .unwrap_or_else(|| format!("mode-{}", v.mode)),
            vtep_mac: format_mac(v.vtep_mac),
        });
    }
    rows.sort_by_key(|r| u32::from(r.underlay));
    Ok(rows)
}

/// A local container netpath delivers to straight.
#[derive(Serialize)]
pub struct EndpointRow {
    pub address: Ipv4Addr,
    /// The network it is on (None: on no network the datapath knows).
    pub network: Option<String>,
    pub mac: String,
    /// The container's host-side veth.
    pub ifindex: u32,
    /// Its name, when the caller's network namespace has it.
    pub interface: Option<String>,
    /// The host it lives on: None for this host's (delivered straight into it); a peer's
    /// name for a container of a network across hosts there (routed to it by its /32).
    pub host: Option<String>,
}

fn endpoint_row(
    addr: u32,
    e: &netpath_common::Endpoint,
    nets: &[crate::state::Network],
) -> EndpointRow {
    EndpointRow {
        address: addr_of(addr),
        network: crate::inspect::networks::name_of(nets, addr_of(addr)),
        mac: format_mac(e.mac),
        ifindex: e.ifindex,
        interface: crate::iface::name_of(e.ifindex),
        host: None,
    }
}

/// This host's endpoints, then the containers of networks across hosts on other hosts
/// (`dump endpoints`).
pub fn endpoints_all(maps: &Maps) -> Result<Vec<EndpointRow>> {
    let mut rows = endpoints(maps)?;
    let nets = crate::reconcile::networks::observe(maps)?;
    let names: std::collections::HashMap<u32, String> = maps
        .peer_infos()?
        .into_iter()
        .map(|(id, i)| (id, netpath_common::name_str(&i.name).to_owned()))
        .collect();
    let mut remote: Vec<EndpointRow> = crate::reconcile::remote::installed(maps)?
        .into_iter()
        .map(|(addr, v)| EndpointRow {
            address: addr_of(addr),
            network: crate::inspect::networks::name_of(&nets, addr_of(addr)),
            mac: "-".to_owned(),
            ifindex: 0,
            interface: None,
            host: Some(
                names
                    .get(&v.id)
                    .cloned()
                    .unwrap_or_else(|| format!("peer #{}", v.id)),
            ),
        })
        .collect();
    remote.sort_by_key(|r| u32::from(r.address));
    rows.extend(remote);
    Ok(rows)
}

pub fn endpoints(maps: &Maps) -> Result<Vec<EndpointRow>> {
    let mut rows = Vec::new();
    let nets = crate::reconcile::networks::observe(maps)?;
    for item in maps.endpoints.iter() {
        let (addr, e) = item?;
        rows.push(endpoint_row(addr, &e, &nets));
    }
    rows.sort_by_key(|r| u32::from(r.address));
    Ok(rows)
}

/// The endpoint of `addr`, if netpath knows it (one lookup).
pub fn endpoint(maps: &Maps, addr: Ipv4Addr) -> Result<Option<EndpointRow>> {
    let key = netpath_common::addr_to_be(addr.octets());
    match maps.endpoints.get(&key, 0) {
        Ok(e) => Ok(Some(endpoint_row(
            key,
            &e,
            &crate::reconcile::networks::observe(maps)?,
        ))),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[derive(Serialize)]
pub struct GroupRow {
    pub group: String,
    pub cidr: String,
    pub origin: &'static str,
}

fn origin(o: u8) -> &'static str {
    crate::state::Origin::from_map(o).as_str()
}

pub fn groups(maps: &Maps) -> Result<Vec<GroupRow>> {
    let mut rows = Vec::new();
    for item in maps.groups.iter() {
        let (m, o) = item?;
        rows.push(GroupRow {
            group: name_str(&m.name).to_owned(),
            cidr: format!("{}/{}", addr_of(m.addr), m.prefix_len),
            origin: origin(o),
        });
    }
    rows.sort_by(|a, b| (&a.group, &a.cidr).cmp(&(&b.group, &b.cidr)));
    Ok(rows)
}

/// One entry of a compiled policy trie. `live`: it belongs to the generation packets use
/// now (the other one is the previous policy or the next being written).
#[derive(Serialize)]
pub struct TrieRow {
    pub generation: u8,
    pub live: bool,
    /// Source class (policy-dst) or pair class (policy-rules).
    pub class: Option<u32>,
    /// The matched address range (policy-src, policy-dst).
    pub cidr: Option<String>,
    /// policy-rules: protocol and destination ports the entry covers.
    pub proto: Option<String>,
    pub ports: Option<String>,
    /// What the entry leads to: a source class, a pair class, or rule and action.
    pub value: String,
}

/// The three policy tries as rows (`which`: "src", "dst" or "rules").
pub fn policy_trie(maps: &Maps, which: &str) -> Result<Vec<TrieRow>> {
    let live = maps.policy_state.get(&0, 0)?.generation;
    let mut rows = Vec::new();
    let cidr = |a: [u8; 4], bits: u32| format!("{}/{}", Ipv4Addr::from(a), bits);
    match which {
        "src" => {
            for item in maps.policy_src.iter() {
                let (k, class) = item?;
                let d = k.data();
                rows.push(TrieRow {
                    generation: d[0],
                    live: d[0] == live,
                    class: None,
                    cidr: Some(cidr(
                        [d[1], d[2], d[3], d[4]],
                        k.prefix_len().saturating_sub(POLICY_GEN_BITS),
                    )),
                    proto: None,
                    ports: None,
                    value: format!("source class {class}"),
                });
            }
        }
        "dst" => {
            for item in maps.policy_dst.iter() {
                let (k, pair) = item?;
                let d = k.data();
                rows.push(TrieRow {
                    generation: d[0],
                    live: d[0] == live,
                    class: Some(u32::from_be_bytes([d[1], d[2], d[3], d[4]])),
                    cidr: Some(cidr(
                        [d[5], d[6], d[7], d[8]],
                        k.prefix_len().saturating_sub(POLICY_GEN_BITS + 32),
                    )),
                    proto: None,
                    ports: None,
                    value: format!("pair class {pair}"),
                });
            }
        }
        _ => {
            for item in maps.policy_rules.iter() {
                let (k, v) = item?;
                let d = k.data();
                let plen = k.prefix_len();
                let port = u16::from_be_bytes([d[6], d[7]]);
                let port_bits = plen.saturating_sub(48).min(16);
                let span = if port_bits == 0 {
                    0xffff
                } else {
                    (1u32 << (16 - port_bits)) as u16 - 1
                };
                rows.push(TrieRow {
                    generation: d[0],
                    live: d[0] == live,
                    class: Some(u32::from_be_bytes([d[1], d[2], d[3], d[4]])),
                    cidr: None,
                    proto: Some(if plen >= 48 {
                        crate::inspect::flows::proto_name(d[5])
                    } else {
                        "any".into()
                    }),
                    ports: (plen > 48).then(|| match span {
                        0 => port.to_string(),
                        s => format!("{port}-{}", port | s),
                    }),
                    value: format!(
                        "rule {} {}",
                        v.rule,
                        Action::from_map(v.action)
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| format!("action-{}", v.action))
                    ),
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        (b.live, a.class, &a.cidr, &a.proto, &a.ports)
            .cmp(&(a.live, b.class, &b.cidr, &b.proto, &b.ports))
    });
    Ok(rows)
}

#[derive(Serialize)]
pub struct CpuRow {
    pub cpu: usize,
    /// Start of the current one-second window, seconds before now (monotonic clock).
    pub window_age_s: Option<f64>,
    /// Sent in that window.
    pub sent: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emitted: Option<u64>,
}

fn age(window_ns: u64) -> Option<f64> {
    (window_ns != 0).then(|| {
        (crate::maps::flows::monotonic_ns().saturating_sub(window_ns) / 1_000_000) as f64 / 1e3
    })
}

/// NP_REJECT_LIMIT: reject answers sent per CPU in the current second.
pub fn reject_limit(maps: &Maps) -> Result<Vec<CpuRow>> {
    let v: PerCpuValues<RejectLimit> = maps.reject_limit.get(&0, 0)?;
    Ok(v.iter()
        .enumerate()
        .map(|(cpu, r)| CpuRow {
            cpu,
            window_age_s: age(r.window_ns),
            sent: r.sent,
            suppressed: None,
            lost: None,
            emitted: None,
        })
        .collect())
}

/// NP_EVENT_LIMIT (and NP_MONITOR's rate): drop events per CPU.
pub fn events(maps: &Maps) -> Result<Vec<CpuRow>> {
    let v: PerCpuValues<netpath_common::EventLimit> = maps.event_limit.get(&0, 0)?;
    Ok(v.iter()
        .enumerate()
        .map(|(cpu, e)| CpuRow {
            cpu,
            window_age_s: age(e.window_ns),
            sent: e.sent,
            suppressed: Some(e.suppressed),
            lost: Some(e.lost),
            emitted: Some(e.emitted),
        })
        .collect())
}

#[derive(Serialize)]
pub struct BuildDump {
    pub version: String,
    pub object_digest: String,
    pub loaded_at: u64,
    pub monitor_rate_per_cpu: u32,
}

pub fn build(maps: &Maps) -> Result<BuildDump> {
    let b = maps.build.get(&0, 0)?;
    Ok(BuildDump {
        version: name_str(&b.version).to_owned(),
        object_digest: format!("{:016x}", b.object_digest),
        loaded_at: b.loaded_at,
        monitor_rate_per_cpu: maps.monitor.get(&0, 0)?.rate,
    })
}

/// A value as a table cell; `*_at` fields are Unix times, shown in UTC.
fn cell(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if key.ends_with("_at") => {
            crate::inspect::status::utc(n.as_u64().unwrap_or(0))
        }
        Value::Array(a) => a.iter().map(|v| cell(key, v)).collect::<Vec<_>>().join(","),
        v => v.to_string(),
    }
}

/// A table of rows (an array of objects: one column per field, in field order) or a
/// list of `field  value` lines (one object).
pub fn auto_table<T: Serialize>(v: &T) -> Result<String> {
    let v = serde_json::to_value(v)?;
    Ok(match &v {
        Value::Array(rows) => {
            let Some(Value::Object(first)) = rows.first() else {
                return Ok("(empty)\n".into());
            };
            let header: Vec<String> = first.keys().map(|k| k.to_uppercase()).collect();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| first.keys().map(|k| cell(k, &r[k])).collect())
                .collect();
            let h: Vec<&str> = header.iter().map(String::as_str).collect();
            crate::inspect::report::table(&h, &cells)
        }
        Value::Object(o) => {
            let w = o.keys().map(|k| k.len()).max().unwrap_or(0);
            o.iter()
                .map(|(k, v)| format!("{k:<w$}  {}\n", cell(k, v)))
                .collect()
        }
        v => format!("{}\n", cell("", v)),
    })
}
