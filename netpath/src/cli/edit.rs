//! `netpath peer|publish|policy add|del|list`: live changes of a running datapath. Each
//! is checked like the config's entries, then goes through the same reconciler as an
//! agent start (the installed state with this one change as the desired state), under the
//! pin dir's lock; entries added here have origin `cli` and outlive the agent.

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::dump::{DumpMap, dump, print_policies, print_ports};
use crate::{
    maps::Maps,
    pin::PinDir,
    reconcile,
    state::{
        self, Mode, Peer, Proto, Publish,
        policy::{self, Action, RuleProto},
    },
};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Add a rule to the running datapath, checked like a config rule; it decides new
    /// flows from the next packet and is kept across agent restarts until `policy del`.
    /// Where several rules match, the most specific wins (see docs/how-it-works.md, "Policies").
    ///
    /// Example: netpath policy add --from 10.244.11.0/24 --to db --proto tcp --port 5432 --action allow
    Add {
        /// Source: a CIDR, an address, or a group from the config.
        #[arg(long)]
        from: String,
        /// Destination: a CIDR, an address, or a group from the config.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "any")]
        proto: RuleProto,
        /// Destination port or range FIRST-LAST (tcp and udp only).
        #[arg(long)]
        port: Option<String>,
        #[arg(long, value_enum)]
        action: Action,
    },
    /// Remove a rule by id (see `policy list`). Flows it allowed go on until they end.
    ///
    /// Example: netpath policy del 3
    Del { id: u32 },
    /// The rules with their hits, the default action and the groups (same as `dump policies`).
    ///
    /// Example: netpath policy list --json
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PublishCmd {
    /// Publish HOST_PORT of the host's underlay address as a container's ADDR:PORT, on the
    /// running datapath; kept across agent restarts until `publish del`.
    ///
    /// Example: netpath publish add tcp 8080 10.244.11.2:80
    Add {
        /// tcp or udp.
        proto: Proto,
        /// Port on the host's underlay address.
        host_port: u16,
        /// The container's address and port, in this host's subnet.
        #[arg(value_name = "ADDR:PORT")]
        target: String,
    },
    /// Unpublish a port; flows through it are cut.
    ///
    /// Example: netpath publish del tcp 8080
    Del { proto: Proto, host_port: u16 },
    /// Published ports, with their origin and current flows (same as `dump ports`).
    ///
    /// Example: netpath publish list --json
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PeerCmd {
    /// Add a peer to the running datapath, checked like a config peer; it is kept across
    /// agent restarts until `peer del`.
    ///
    /// Example: netpath peer add c --subnet 10.244.13.0/24 --underlay 198.18.0.13 --mode direct
    Add {
        /// Unique name, 1 to 31 printable characters.
        name: String,
        /// The peer's container subnet (CIDR), overlapping no other.
        #[arg(long)]
        subnet: String,
        /// The peer host's underlay address.
        #[arg(long)]
        underlay: String,
        /// direct (host-gw) or vxlan.
        #[arg(long, default_value = "direct")]
        mode: Mode,
        /// The peer's VTEP MAC, for a Linux vxlan device (default 02:4e:<underlay>).
        #[arg(long)]
        vtep_mac: Option<String>,
    },
    /// Remove a peer from the running datapath (a config peer comes back at the next
    /// agent start).
    ///
    /// Example: netpath peer del c
    Del { name: String },
    /// List the peers with their traffic (same as `dump peers`).
    ///
    /// Example: netpath peer list --json
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn policy_cmd(pins: &PinDir, cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Add {
            from,
            to,
            proto,
            port,
            action,
        } => {
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            let old = reconcile::policy::installed(&maps)?;
            let port = port.map(policy::PortSpec::Text);
            let rule = policy::parse_rule(
                &|k| format!("--{k}"),
                &from,
                &to,
                proto,
                port.as_ref(),
                action,
                &old.groups,
            )
            .map_err(|p| anyhow::anyhow!("{}", p.join("\n")))?;
            let id = reconcile::policy::add(&mut maps, &old, &rule)?;
            println!("added rule {id}: {rule}");
            Ok(())
        }
        PolicyCmd::Del { id } => {
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            let rule = reconcile::policy::del(&mut maps, id)?;
            println!("removed rule {id}: {rule}");
            Ok(())
        }
        PolicyCmd::List { json } => print_policies(&Maps::open(pins)?, json),
    }
}

pub fn peer(pins: &PinDir, cmd: PeerCmd) -> Result<()> {
    match cmd {
        PeerCmd::Add {
            name,
            subnet,
            underlay,
            mode,
            vtep_mac,
        } => {
            let mut problems = Vec::new();
            if let Err(e) = state::check_name("name", &name) {
                problems.push(e);
            }
            let subnet = state::parse_subnet("--subnet", &subnet).map_err(|e| problems.push(e));
            let underlay = state::parse_addr("--underlay", &underlay).map_err(|e| problems.push(e));
            let vtep_mac = vtep_mac
                .map(|m| state::parse_mac("--vtep-mac", &m))
                .transpose()
                .map_err(|e| problems.push(e));
            let (Ok(subnet), Ok(underlay), Ok(vtep_mac), true) =
                (subnet, underlay, vtep_mac, problems.is_empty())
            else {
                bail!("{}", problems.join("\n"));
            };
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            let p = Peer {
                name,
                subnet,
                underlay,
                mode,
                vtep_mac,
            };
            reconcile::peers::add(&mut maps, &p)?;
            println!(
                "added peer {} ({} via {}, {})",
                p.name, p.subnet, p.underlay, p.mode
            );
            Ok(())
        }
        PeerCmd::Del { name } => {
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            reconcile::peers::del(&mut maps, &name)?;
            println!("removed peer {name}");
            Ok(())
        }
        PeerCmd::List { json } => dump(&Maps::open(pins)?, DumpMap::Peers, json),
    }
}

pub fn publish(pins: &PinDir, cmd: PublishCmd) -> Result<()> {
    match cmd {
        PublishCmd::Add {
            proto,
            host_port,
            target,
        } => {
            let (addr, port) = target
                .rsplit_once(':')
                .and_then(|(a, p)| Some((a.parse().ok()?, p.parse().ok()?)))
                .with_context(|| {
                    format!("{target:?} is not ADDR:PORT: write it like 10.244.11.2:80")
                })?;
            let p = Publish {
                proto,
                host_port,
                container: addr,
                port,
            };
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            reconcile::publish::add(&mut maps, &p)?;
            println!("published {proto}/{host_port} -> {addr}:{port}");
            Ok(())
        }
        PublishCmd::Del { proto, host_port } => {
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            let changes = reconcile::publish::del(&mut maps, proto, host_port)?;
            println!(
                "unpublished {proto}/{host_port} ({} flows cut)",
                changes.flows_cut
            );
            Ok(())
        }
        PublishCmd::List { json } => print_ports(&Maps::open(pins)?, json),
    }
}
