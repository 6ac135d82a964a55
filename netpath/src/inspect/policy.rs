//! What `policy list` and `dump policies` show.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::{
    maps::Maps,
    reconcile::policy::{installed, rule_stats},
    state::policy::Action,
};

/// A rule as `policy list` shows it.
#[derive(Serialize)]
pub struct RuleRow {
    pub id: u32,
    pub from: String,
    pub to: String,
    pub proto: String,
    pub port: String,
    pub action: String,
    pub origin: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Everything `policy list` and `dump policies` show.
#[derive(Serialize)]
pub struct PolicyReport {
    pub default_action: String,
    /// Whether the programs apply policy at all (a rule exists or the default is not allow).
    pub enabled: bool,
    pub reject_rate_per_cpu: u32,
    pub generation: u8,
    pub entries: u32,
    pub changed_at: u64,
    pub rules: Vec<RuleRow>,
    /// Packets and bytes that no rule matched (the default action).
    pub default_packets: u64,
    pub default_bytes: u64,
    pub groups: BTreeMap<String, Vec<String>>,
}

pub fn report(maps: &Maps) -> Result<PolicyReport> {
    let inst = installed(maps)?;
    let mut rows = Vec::new();
    for (id, r, origin) in &inst.rules {
        let c = rule_stats(maps, *id)?;
        rows.push(RuleRow {
            id: *id,
            from: r.from.to_string(),
            to: r.to.to_string(),
            proto: r.proto.to_string(),
            port: r.ports_text(),
            action: r.action.to_string(),
            origin: crate::state::Origin::from_map(*origin).as_str(),
            packets: c.packets,
            bytes: c.bytes,
        });
    }
    let d = rule_stats(maps, 0)?;
    let s = inst.state;
    Ok(PolicyReport {
        default_action: Action::from_map(s.default_action)
            .unwrap_or(Action::Allow)
            .to_string(),
        enabled: s.enabled != 0,
        reject_rate_per_cpu: s.reject_rate,
        generation: s.generation,
        entries: s.entries,
        changed_at: s.changed_at,
        rules: rows,
        default_packets: d.packets,
        default_bytes: d.bytes,
        groups: inst
            .groups
            .iter()
            .map(|(g, nets)| (g.clone(), nets.iter().map(|n| n.to_string()).collect()))
            .collect(),
    })
}
