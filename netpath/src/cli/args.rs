//! The command line as clap reads it: every command, its arguments, their help (which
//! `--help`, the man pages and the completions are generated from). What each command
//! does is in the parent module and its siblings.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::{
    cluster,
    dump::DumpMap,
    edit::{PeerCmd, PolicyCmd, PublishCmd},
};
use crate::pin::DEFAULT_PIN_DIR;

#[derive(Parser)]
#[command(
    name = "netpath",
    version,
    about = "eBPF datapath for containers talking across hosts"
)]
pub(super) struct Cli {
    /// Where the datapath's maps and links are pinned; one per host (network namespace).
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR, env = "NETPATH_PIN_DIR")]
    pub(super) pin_dir: PathBuf,
    #[command(subcommand)]
    pub(super) cmd: Cmd,
}

#[derive(Subcommand)]
pub(super) enum Cmd {
    /// Validate the config, attach the datapath (or adopt a pinned one), fill its maps,
    /// then stay in the foreground logging. The datapath outlives the agent. Needs
    /// CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_PTRACE (the service unit gives it
    /// exactly these); refuses to start, naming any it lacks.
    ///
    /// Example: netpath run --config /etc/netpath/netpath.toml
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Seconds between counter summaries in the log (0: none).
        #[arg(long, default_value_t = 60)]
        report_every: u64,
    },
    /// Validate a config without touching anything.
    ///
    /// Example: netpath check --config /etc/netpath/netpath.toml
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove everything netpath attached and pinned under --pin-dir, and stop its agent.
    ///
    /// Example: netpath down --pin-dir /sys/fs/bpf/netpath
    Down,
    /// What is attached where (interface, hook, program, TCX or clsact, XDP mode), which
    /// build runs, how full each map is, whether an agent looks after the datapath; then
    /// what needs attention. Exits 1 when something does.
    ///
    /// Example: netpath status --json
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Counters by reason, per peer and per policy rule; with --watch, their rates per
    /// second, refreshed in place (with --json: one JSON object per line and interval).
    ///
    /// Example: netpath stats --watch 1
    Stats {
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS, showing rates since the last reading; Ctrl-C stops.
        #[arg(long, value_name = "SECONDS", value_parser = watch_secs)]
        watch: Option<f64>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// What each program of the running datapath costs per packet on the traffic it
    /// carries now: the kernel's BPF run-time statistics, turned on for SECONDS (for every
    /// BPF program of the machine, two clock reads per run, off again after), each
    /// program's runs, runs per second, ns per run and share of a CPU. Needs
    /// CAP_SYS_ADMIN.
    ///
    /// Example: netpath profile --secs 5
    Profile {
        /// How long to measure.
        #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = watch_secs)]
        secs: f64,
        #[arg(long)]
        json: bool,
    },
    /// Drop events as they happen: reason, 5-tuple, interface, peer. The programs report
    /// up to `[monitor] rate` drops per second and CPU (default 1000) and count the rest
    /// as suppressed, which is shown. One monitor per host at a time.
    ///
    /// Example: netpath monitor --json
    Monitor {
        #[arg(long)]
        json: bool,
        /// Also the decision log: what each program decided about each packet `netpath
        /// debug on` selects (program, reason, action, the tuple in and out, peer, rule).
        #[arg(long)]
        debug: bool,
        /// Stop after this many drops (and decisions).
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS", value_parser = watch_secs)]
        duration: Option<f64>,
    },
    /// Switch the decision log: each program logs what it decides about each packet
    /// (through aya-log), shown by `netpath monitor --debug`. Off, it costs one map read
    /// per packet; it stays as set across agent restarts.
    ///
    /// Example: netpath debug on --match 10.244.11.2/32
    Debug {
        #[command(subcommand)]
        what: DebugCmd,
    },
    /// Explain, step by step, what this host's datapath would do with a packet: where it
    /// enters, which peer or local container, policy rule and verdict, conntrack, NAT,
    /// which interface it leaves by. The packet goes through the loaded programs with
    /// the live maps (BPF_PROG_TEST_RUN); nothing is sent and no counter or flow changes.
    ///
    /// Example: netpath trace --from 10.244.11.2 --to 10.244.12.3 --proto tcp --port 5432
    Trace {
        #[arg(long)]
        from: std::net::Ipv4Addr,
        #[arg(long)]
        to: std::net::Ipv4Addr,
        /// icmp (an echo request), tcp (a SYN) or udp.
        #[arg(long, value_enum, default_value = "icmp")]
        proto: TraceProto,
        /// Destination port (tcp and udp).
        #[arg(long, required_if_eq_any = [("proto", "tcp"), ("proto", "udp")])]
        port: Option<u16>,
        /// Source port (tcp and udp), or the echo identifier (icmp).
        #[arg(long, default_value_t = 40000)]
        sport: u16,
        #[arg(long)]
        json: bool,
    },
    /// Check this host for what breaks container networking: kernel features, bpffs,
    /// sysctls, rp_filter, MTU of uplink, bridge and tunnel, netfilter rules that still see
    /// container traffic, conntrack pressure, peers whose underlay does not answer; with
    /// --config, networks across hosts against etcd and Docker, and the IPAM plugin's
    /// socket. Each finding says what to do. Exits 1 when a check fails or warns.
    ///
    /// Example: netpath doctor --config /etc/netpath/netpath.toml
    Doctor {
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the peers' answers.
        #[arg(long, default_value_t = 1.0, value_parser = watch_secs)]
        wait: f64,
        /// The agent's config: also check networks across hosts (etcd, Docker, plugin).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print one map in readable form.
    ///
    /// Example: netpath dump peers --json
    Dump {
        map: DumpMap,
        #[arg(long)]
        json: bool,
    },
    /// Add, remove or list peers of a running datapath.
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
    /// Publish container ports on the host's address, unpublish them, list them.
    Publish {
        #[command(subcommand)]
        cmd: PublishCmd,
    },
    /// Add, remove or list policy rules of a running datapath; each change is atomic.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// What to put in Docker's daemon.json for this host's subnet (as flannel's
    /// subnet.env): docker0's address (`bip`, the subnet's first network), the pools
    /// Docker's other networks come from (`default-address-pools`, the rest of the subnet)
    /// and the MTU containers may use.
    ///
    /// Example: netpath subnet --config /etc/netpath/netpath.toml --json
    Subnet {
        #[arg(long)]
        config: PathBuf,
        /// Prefix length of each Docker network (docker0's and every pool's); the host's
        /// subnet is split into networks of this size.
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
        network_len: u8,
        #[arg(long)]
        json: bool,
    },
    /// The host's container networks: docker0 and, with [docker], every bridge network
    /// Docker has (compose's among them); networks across hosts (with [etcd]): create,
    /// remove, show.
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// The fleet in etcd (the [etcd] section of a config): set it up, list its hosts.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Print a shell completion script, generated from this CLI.
    ///
    /// Example: netpath completions bash > /etc/bash_completion.d/netpath
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this CLI; with --dir, write it and one
    /// page per command (netpath-policy-add.1, ...) there.
    ///
    /// Example: netpath man --dir /usr/local/share/man/man1
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Measure what each datapath path costs per packet on this machine (forward, vxlan
    /// encap and decap, NAT both ways, same host, flows already decided with 1,000
    /// policy rules live, the policy lookup of a new flow at several rule counts), each
    /// program's size as the kernel holds it, and the agent's reconcile: a private copy
    /// of the datapath, nothing attached or pinned, BPF_PROG_TEST_RUN. `cargo xtask
    /// bench` runs it too.
    ///
    /// Example: netpath bench --rules 0,1000,10000,100000
    Bench {
        /// Policy rule counts to measure the lookup at.
        #[arg(long, value_delimiter = ',', default_value = "0,1000,10000,100000")]
        rules: Vec<usize>,
        /// Runs per case: each path's packet is run this many times, each time afresh,
        /// and the kernel's timings averaged; the policy lookup uses the kernel's repeat.
        #[arg(long, default_value_t = 100000, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Peers (from etcd) of the host whose agent reconcile is timed (cold start,
        /// restart, one etcd host added, changed and gone, a live `peer add` and `peer
        /// del`, each followed by an etcd event, a Docker port published), with its CPU
        /// time, map writes and bpf(2) calls; at most 60000.
        #[arg(long, default_value_t = 10000)]
        agent_peers: usize,
        /// Policy rules of that host.
        #[arg(long, default_value_t = 100000)]
        agent_rules: usize,
        /// Only the paths whose name contains this text (for a profiler on one path:
        /// `perf record -a -g -- netpath bench --path encap --rules 0 --agent-peers 0`).
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run generated and mutated frames through every program and check the datapath's
    /// invariants on each: one reason counted, the verdict is the reason's, what leaves
    /// parses with right checksums, VXLAN only to peers, no forged inner source
    /// delivered, conntrack and NAT only of trackable flows. A private copy of the
    /// datapath (nothing attached or pinned), BPF_PROG_TEST_RUN. Exits 1 when an
    /// invariant broke; the same seed gives the same frames.
    ///
    /// Example: netpath fuzz --frames 1000000 --seed 42
    Fuzz {
        /// Frames to run.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        frames: u64,
        /// The generator's seed; a random one (printed) when not given.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(super) enum ClusterCmd {
    /// Write the cluster settings to <prefix>/config, once: refused if present.
    ///
    /// Example: netpath cluster init --config /etc/netpath/netpath.toml --cidr 10.244.0.0/16 --mode direct
    Init {
        /// A config with an [etcd] section (which etcd, which prefix).
        #[arg(long)]
        config: PathBuf,
        /// The container range the hosts' subnets come from.
        #[arg(long, value_parser = cluster::cidr)]
        cidr: ipnet::Ipv4Net,
        /// Prefix length of each host's subnet.
        #[arg(long, default_value_t = 24)]
        subnet_len: u8,
        #[arg(long, default_value_t = 42)]
        vni: u32,
        /// VXLAN UDP port.
        #[arg(long, default_value_t = 4789)]
        port: u16,
        /// How hosts reach each other's subnets.
        #[arg(long, value_enum, default_value_t = ClusterMode::Vxlan)]
        mode: ClusterMode,
    },
    /// The etcd members and whether they answer, the cluster settings and how full its
    /// range is, this host's registration, and which hosts it has as peers.
    ///
    /// Example: netpath cluster status --config /etc/netpath/netpath.toml
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// What a fleet costs etcd, without the fleet: many hosts' agents (their fleet tasks:
    /// lease, claim, renewals, listing, watch; no datapath) in this one process against
    /// this config's etcd, under a prefix of their own that must hold nothing and is
    /// emptied at the end. Each member's request rate, watch traffic, CPU and memory
    /// (from its /metrics, http endpoints only) are shown for the agents' start and for
    /// a steady window.
    ///
    /// Example: netpath cluster simulate --config /etc/netpath/netpath.toml --agents 1000 --churn 10
    Simulate {
        #[arg(long)]
        config: PathBuf,
        /// Simulated hosts, each with its own connection, lease and watch (2 to 50000).
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Seconds of the steady window (at least two renewal periods are measured).
        #[arg(long = "for", value_name = "SECS", default_value_t = 30)]
        secs: u64,
        /// The simulated hosts' lease, in seconds (they renew every third of it); default
        /// the config's [etcd].lease_ttl.
        #[arg(long)]
        lease_ttl: Option<u64>,
        /// Writes per second during the window, each an extra host's registration put or
        /// deleted again: every one is an event for each simulated host's watch.
        #[arg(long, default_value_t = 0.0)]
        churn: f64,
        /// Where the simulated hosts register.
        #[arg(long, default_value = "/netpath-simulate")]
        prefix: String,
        /// Every simulated host talks to the config's first endpoint only (as agents
        /// configured with one endpoint would); by default each starts at its own.
        #[arg(long)]
        one_member: bool,
        #[arg(long)]
        json: bool,
    },
    /// Every host registered in etcd: subnet, underlay, mode, its lease's seconds left,
    /// and whether this host (--pin-dir) has it as a peer yet.
    ///
    /// Example: netpath cluster hosts --config /etc/netpath/netpath.toml --json
    Hosts {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(super) enum ClusterMode {
    Direct,
    Vxlan,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub(super) enum TraceProto {
    Icmp,
    Tcp,
    Udp,
}

#[derive(Subcommand)]
pub(super) enum DebugCmd {
    /// Log every packet's decision, or only packets from or to --match.
    On {
        /// A network (or an address, as /32): packets with a source or destination in it.
        #[arg(long = "match", value_name = "CIDR", value_parser = cidr_or_addr)]
        matching: Option<ipnet::Ipv4Net>,
    },
    /// Stop logging.
    Off,
    /// Whether it is on, and for what.
    Show,
}

/// A network (its host bits dropped) or one address (/32).
pub(super) fn cidr_or_addr(s: &str) -> Result<ipnet::Ipv4Net, String> {
    s.parse::<ipnet::Ipv4Net>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::Ipv4Addr>().map(ipnet::Ipv4Net::from))
        .map_err(|_| format!("{s:?}: an IPv4 network (10.244.11.0/24) or address"))
}

pub(super) fn watch_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.1..=3600.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?}: seconds between 0.1 and 3600")),
    }
}

#[derive(Subcommand)]
pub(super) enum NetworkCmd {
    /// List the networks: bridge, subnet, origin, way out (masq, routed or internal),
    /// containers, and whether other hosts reach it (same as `dump networks`).
    ///
    /// Example: netpath network list --json
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a network across hosts in etcd: one subnet on every host of the fleet.
    /// Every host's agent (with [etcd] and [docker]) makes it on its Docker as a bridge
    /// network with netpath as its IPAM driver, so an address (`--ip` or not) is one
    /// container's in the whole fleet. Its containers reach each other on any host as on
    /// one LAN, and no other network.
    ///
    /// Example: netpath network create net1 --subnet 10.10.10.0/24 --mode vxlan --config /etc/netpath/netpath.toml
    Create {
        name: String,
        /// Its range: outside every host's subnet and every other network's.
        #[arg(long, value_parser = cluster::cidr)]
        subnet: ipnet::Ipv4Net,
        /// The bridge's address on every host; the subnet's first address by default.
        #[arg(long)]
        gateway: Option<std::net::Ipv4Addr>,
        /// How its containers on other hosts are reached: vxlan (a VNI of its own) or
        /// direct (the hosts share a link).
        #[arg(long, value_enum, default_value_t = ClusterMode::Vxlan)]
        mode: ClusterMode,
        /// Nothing in or out of the hosts: only between its containers.
        #[arg(long)]
        internal: bool,
        /// Its containers' traffic to the outside is not masqueraded (left to routing).
        #[arg(long)]
        no_masquerade: bool,
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove a network across hosts from etcd (refused while containers hold addresses
    /// of it); every agent then removes it from its Docker.
    ///
    /// Example: netpath network rm net1 --config /etc/netpath/netpath.toml
    Rm {
        name: String,
        #[arg(long)]
        config: PathBuf,
    },
    /// A network across hosts: its subnet, gateway, mode, VNI, the addresses each host
    /// holds, and whether this host has it.
    ///
    /// Example: netpath network show net1 --config /etc/netpath/netpath.toml --json
    Show {
        name: String,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_can_be_dumped_by_its_pinned_name() {
        for name in netpath_common::map_names::ALL {
            assert!(
                DumpMap::from_str(name, false).is_ok(),
                "`netpath dump {name}` is refused"
            );
        }
    }

    #[test]
    fn run_names_the_capabilities_it_needs() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let run = cli.find_subcommand("run").unwrap();
        let about = run.get_long_about().unwrap().to_string();
        for cap in crate::caps::AGENT {
            assert!(
                about.contains(cap.name),
                "`netpath run --help` lacks {}",
                cap.name
            );
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
