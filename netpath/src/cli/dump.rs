//! `netpath dump MAP`: every map in readable form.

use anyhow::Result;
use clap::ValueEnum;

use super::show;
use crate::{
    inspect::{self, flows, report},
    maps::Maps,
};

/// What `dump` can print: every map, by a name people use or by its pinned name
/// (NP_*_V1), which `status` lists.
#[derive(Clone, Copy, ValueEnum)]
pub enum DumpMap {
    /// The host's datapath config: addresses, subnet, VNI, tunnel MTU, masquerade.
    #[value(aliases = ["NP_CONFIG_V2", "NP_CONFIG_V1"])]
    Config,
    /// Peer subnets, how they are reached, and their traffic.
    #[value(aliases = ["NP_PEERS_V1", "NP_PEER_INFO_V1", "NP_PEER_STATS_V1"])]
    Peers,
    /// Peers by underlay address (how tunnel packets are checked).
    #[value(alias = "NP_UNDERLAY_V1")]
    Underlay,
    /// Every reason with its packet and byte counts, zeros included.
    #[value(alias = "NP_COUNTERS_V1")]
    Counters,
    /// Who manages the datapath: agent pid, start times, interfaces, TCX or clsact, XDP.
    #[value(alias = "NP_AGENT_V1")]
    Agent,
    /// Tracked flows (masquerade, published ports, flows policy allowed): state, age, expiry.
    #[value(alias = "NP_CT_V1")]
    Conntrack,
    /// Conntrack timeouts and what the agent's collector did.
    #[value(alias = "NP_CT_INFO_V1")]
    ConntrackInfo,
    /// The NAT table: which port on the host's address leads to which container.
    #[value(alias = "NP_NAT_V1")]
    Nat,
    /// Published ports.
    #[value(alias = "NP_PUBLISH_V1")]
    Ports,
    /// Policy rules with their hits, the default action and the groups.
    #[value(aliases = ["NP_POLICY_INFO_V1", "NP_POLICY_STATS_V1", "NP_POLICY_STATE_V1"])]
    Policies,
    /// Named groups, one row per CIDR.
    #[value(alias = "NP_GROUPS_V1")]
    Groups,
    /// Compiled policy, first stage: source address -> source class.
    #[value(alias = "NP_POLICY_SRC_V1")]
    PolicySrc,
    /// Compiled policy, second stage: source class and destination -> pair class.
    #[value(alias = "NP_POLICY_DST_V1")]
    PolicyDst,
    /// Compiled policy, last stage: pair class, protocol and port -> rule and action.
    #[value(alias = "NP_POLICY_RULES_V1")]
    PolicyRules,
    /// Reject answers sent per CPU in the current second.
    #[value(alias = "NP_REJECT_LIMIT_V1")]
    RejectLimit,
    /// Drop events per CPU: emitted, suppressed by the rate, lost.
    #[value(aliases = ["NP_EVENTS_V1", "NP_MONITOR_V1", "NP_EVENT_LIMIT_V1"])]
    Events,
    /// Which netpath loaded the running programs.
    #[value(alias = "NP_BUILD_V1")]
    Build,
    /// Local containers that netpath delivers to straight (bpf_redirect_peer): address,
    /// MAC, host-side veth. Learned from the bridge's neighbours.
    #[value(alias = "NP_ENDPOINTS_V1")]
    Endpoints,
    /// The Docker engine ([docker]) as the agent last saw it: up, containers, ports
    /// served and refused (NP_DOCKER).
    #[value(alias = "NP_DOCKER_V1")]
    Docker,
    /// The fleet's store ([etcd]) as the agent last saw it: registered, other hosts,
    /// since when it has not answered.
    #[value(alias = "NP_FLEET_V1")]
    Fleet,
    /// The decision log's switch (`netpath debug`): on, and for which network.
    #[value(alias = "NP_DEBUG_V1")]
    Debug,
    /// The host's container networks (docker0 and Docker's other bridge networks):
    /// bridge, subnet, origin, internal, masquerade, containers (same as `network list`).
    #[value(alias = "NP_NETWORKS_V1")]
    Networks,
}

pub fn dump(maps: &Maps, map: DumpMap, json: bool) -> Result<()> {
    use crate::inspect::dump;
    match map {
        DumpMap::Config => show(&dump::config(maps)?, json, None),
        DumpMap::Peers => show(
            &report::peer_rows(maps)?,
            json,
            Some(|r| report::peers_table(r)),
        ),
        DumpMap::Underlay => show(&dump::underlay(maps)?, json, None),
        DumpMap::Counters => show(
            &report::counter_rows(maps, true)?,
            json,
            Some(|r| report::counters_table(r)),
        ),
        DumpMap::Agent => show(&report::agent_row(maps)?, json, None),
        DumpMap::Conntrack => show(
            &flows::flow_rows(maps)?,
            json,
            Some(|r| report::flows_table(r)),
        ),
        DumpMap::ConntrackInfo => show(&flows::info(maps)?, json, None),
        DumpMap::Nat => show(
            &flows::nat_rows(maps)?,
            json,
            Some(|r| report::nat_table(r)),
        ),
        DumpMap::Ports => print_ports(maps, json),
        DumpMap::Policies => print_policies(maps, json),
        DumpMap::Groups => show(&dump::groups(maps)?, json, None),
        DumpMap::PolicySrc => show(&dump::policy_trie(maps, "src")?, json, None),
        DumpMap::PolicyDst => show(&dump::policy_trie(maps, "dst")?, json, None),
        DumpMap::PolicyRules => show(&dump::policy_trie(maps, "rules")?, json, None),
        DumpMap::RejectLimit => show(&dump::reject_limit(maps)?, json, None),
        DumpMap::Events => show(&dump::events(maps)?, json, None),
        DumpMap::Build => show(&dump::build(maps)?, json, None),
        DumpMap::Endpoints => show(&dump::endpoints_all(maps)?, json, None),
        DumpMap::Networks => show(
            &inspect::networks::rows(maps)?,
            json,
            Some(inspect::networks::table),
        ),
        DumpMap::Docker => show(
            &crate::inspect::status::docker(maps, crate::maps::now())?,
            json,
            None,
        ),
        DumpMap::Fleet => show(
            &crate::inspect::status::fleet(maps, crate::maps::now())?,
            json,
            None,
        ),
        DumpMap::Debug => show(
            &crate::inspect::decisions::view(&maps.debug.get(&0, 0)?),
            json,
            None,
        ),
    }
}

pub fn print_policies(maps: &Maps, json: bool) -> Result<()> {
    show(
        &inspect::policy::report(maps)?,
        json,
        Some(report::policies_table),
    )
}

pub fn print_ports(maps: &Maps, json: bool) -> Result<()> {
    show(
        &flows::port_rows(maps)?,
        json,
        Some(|r| report::ports_table(r)),
    )
}
