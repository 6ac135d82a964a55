//! The command line: nouns and verbs (`peer add`, `dump nat`, ...), one module per group
//! of commands. Every read command takes `--json`; every command that touches a running
//! datapath works from any process through the maps pinned under `--pin-dir`.

mod cluster;
mod dump;
mod edit;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    agent,
    inspect::report,
    maps::Maps,
    pin::{DEFAULT_PIN_DIR, PinDir},
    sources::file::{Config, Parsed},
    state::Proto,
};
pub use dump::DumpMap;
use edit::{PeerCmd, PolicyCmd, PublishCmd};

#[derive(Parser)]
#[command(
    name = "netpath",
    version,
    about = "eBPF datapath for containers talking across hosts"
)]
struct Cli {
    /// Where the datapath's maps and links are pinned; one per host (network namespace).
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR, env = "NETPATH_PIN_DIR")]
    pin_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the config, attach the datapath (or adopt a pinned one), fill its maps,
    /// then stay in the foreground logging. The datapath outlives the agent.
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
    /// container traffic, conntrack pressure, peers whose underlay does not answer. Each
    /// finding says what to do. Exits 1 when a check fails or warns.
    ///
    /// Example: netpath doctor
    Doctor {
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the peers' answers.
        #[arg(long, default_value_t = 1.0, value_parser = watch_secs)]
        wait: f64,
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
    /// subnet.env): the bridge address (`bip`) and the MTU containers may use.
    ///
    /// Example: netpath subnet --config /etc/netpath/netpath.toml --json
    Subnet {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
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
    /// encap and decap, NAT both ways, the policy lookup at several rule counts): a
    /// private copy of the datapath, nothing attached or pinned, BPF_PROG_TEST_RUN.
    /// `cargo xtask bench` runs it too.
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
        /// Peers of the host whose agent reconcile is timed (cold start, restart, one
        /// peer more, a live `peer add`); at most 3800.
        #[arg(long, default_value_t = 1000)]
        agent_peers: usize,
        /// Policy rules of that host.
        #[arg(long, default_value_t = 100000)]
        agent_rules: usize,
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
enum ClusterCmd {
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
enum ClusterMode {
    Direct,
    Vxlan,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum TraceProto {
    Icmp,
    Tcp,
    Udp,
}

/// Parses the command line, runs the command, reports an error on stderr.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum DebugCmd {
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
fn cidr_or_addr(s: &str) -> Result<ipnet::Ipv4Net, String> {
    s.parse::<ipnet::Ipv4Net>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::Ipv4Addr>().map(ipnet::Ipv4Net::from))
        .map_err(|_| format!("{s:?}: an IPv4 network (10.244.11.0/24) or address"))
}

fn watch_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.1..=3600.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?}: seconds between 0.1 and 3600")),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The runtime of the commands that talk to netlink or etcd: one thread is plenty.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<()> {
    let pins = PinDir::new(&cli.pin_dir);
    match cli.cmd {
        Cmd::Run {
            config,
            report_every,
        } => {
            crate::caps::check_agent()?;
            let rt = runtime()?;
            let cfg = match Config::load_leasing(&config)? {
                Parsed::Ready(cfg) => cfg,
                Parsed::Unleased(u) => {
                    // The subnet first: everything else is checked against it.
                    rt.block_on(crate::sources::etcd::lease(&u))?;
                    Config::load(&config)?
                }
            };
            rt.block_on(agent::run(cfg, pins, report_every))
        }
        Cmd::Check { config } => {
            let (host, peers) = match Config::load_leasing(&config)? {
                Parsed::Ready(cfg) => (cfg.host, cfg.peers.len()),
                Parsed::Unleased(u) => {
                    println!(
                        "{}: ok so far (host {}); its subnet is leased from etcd when the agent starts, and published ports are checked then",
                        config.display(),
                        u.host.name
                    );
                    return Ok(());
                }
            };
            println!(
                "{}: ok (host {}, subnet {}, {peers} peers)",
                config.display(),
                host.name,
                host.subnet
            );
            Ok(())
        }
        Cmd::Subnet { config, json } => cluster::subnet(&config, json),
        Cmd::Cluster { cmd } => match cmd {
            ClusterCmd::Init {
                config,
                cidr,
                subnet_len,
                vni,
                port,
                mode,
            } => cluster::init(
                &config,
                crate::sources::etcd::Cluster {
                    cidr,
                    subnet_len,
                    vni,
                    port,
                    mode: match mode {
                        ClusterMode::Direct => "direct",
                        ClusterMode::Vxlan => "vxlan",
                    }
                    .to_owned(),
                },
            ),
            ClusterCmd::Hosts { config, json } => cluster::hosts(&config, &pins, json),
            ClusterCmd::Status { config, json } => cluster::status(&config, &pins, json),
        },
        Cmd::Down => {
            let done = crate::datapath::down::down(&pins)?;
            if done.is_empty() {
                println!("nothing to remove at {}", pins.root.display());
            }
            for d in done {
                println!("{d}");
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "netpath",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man { dir } => {
            use clap::CommandFactory;
            let cmd = Cli::command().name("netpath");
            match dir {
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
                Some(d) => {
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("creating {}", d.display()))?;
                    clap_mangen::generate_to(cmd, &d)
                        .with_context(|| format!("writing man pages to {}", d.display()))?;
                    println!("man pages written to {}", d.display());
                }
            }
            Ok(())
        }
        Cmd::Fuzz { frames, seed, json } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            if !json {
                eprintln!("fuzz: {frames} frames from seed {seed}");
            }
            let r = crate::fuzz::run(frames, seed)?;
            if json {
                print_json(&r)?;
            } else {
                print!("{}", crate::fuzz::text(&r));
            }
            if r.failures_total > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Bench {
            rules,
            repeat,
            agent_peers,
            agent_rules,
            json,
        } => {
            let r = crate::bench::run(&rules, repeat, (agent_peers, agent_rules))?;
            if json {
                return print_json(&r);
            }
            println!("{:<40} {:>10}", "path (BPF_PROG_TEST_RUN)", "ns/packet");
            for p in &r.programs {
                println!("{:<40} {:>10.0}", p.case, p.ns_per_packet);
            }
            println!(
                "\n{:>8} {:>10} {:>10} {:>10}",
                "rules", "entries", "load ms", "ns/packet"
            );
            for p in &r.policy {
                println!(
                    "{:>8} {:>10} {:>10.0} {:>10.0}",
                    p.rules, p.entries, p.load_ms, p.ns_per_packet
                );
            }
            println!(
                "\n{:<28} {:>7} {:>8} {:>10} {:>9}",
                "agent reconcile", "peers", "rules", "ms", "writes"
            );
            for a in &r.agent {
                println!(
                    "{:<28} {:>7} {:>8} {:>10.1} {:>9}",
                    a.case, a.peers, a.rules, a.ms, a.writes
                );
            }
            Ok(())
        }
        Cmd::Monitor {
            json,
            debug,
            count,
            duration,
        } => crate::inspect::monitor::run(
            &pins,
            json,
            count,
            duration.map(Duration::from_secs_f64),
            debug,
        ),
        Cmd::Debug { what } => {
            use crate::inspect::decisions;
            let s = match what {
                DebugCmd::On { matching } => decisions::set(&pins, true, matching)?,
                DebugCmd::Off => decisions::set(&pins, false, None)?,
                DebugCmd::Show => Maps::open(&pins)?.debug.get(&0, 0)?,
            };
            println!("{}", decisions::state_text(&s));
            if s.flags & netpath_common::DEBUG_F_ON != 0 {
                println!("watch it with `netpath monitor --debug`; `netpath debug off` stops it");
            }
            Ok(())
        }
        Cmd::Trace {
            from,
            to,
            proto,
            port,
            sport,
            json,
        } => {
            let q = crate::inspect::trace::Query {
                from,
                to,
                proto: match proto {
                    TraceProto::Icmp => None,
                    TraceProto::Tcp => Some(Proto::Tcp),
                    TraceProto::Udp => Some(Proto::Udp),
                },
                sport,
                dport: port.unwrap_or(0),
            };
            let t = crate::inspect::trace::trace(&pins, &q)?;
            show(&t, json, Some(crate::inspect::trace::text))
        }
        Cmd::Doctor { json, wait } => {
            let f = crate::inspect::doctor::run(&pins, Duration::from_secs_f64(wait))?;
            if json {
                print_json(&f)?;
            } else {
                print!("{}", crate::inspect::doctor::text(&f));
            }
            if f.iter()
                .any(|x| x.level != crate::inspect::doctor::Level::Ok)
            {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Status { json } => {
            let s = crate::inspect::status::status(&pins)?;
            if json {
                print_json(&s)?;
            } else {
                print!("{}", crate::inspect::status::text(&s));
            }
            if !s.problems.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Stats { json, watch, count } => {
            let maps = Maps::open(&pins)?;
            let Some(secs) = watch else {
                return show(&report::stats(&maps)?, json, Some(report::stats_text));
            };
            let mut last = (std::time::Instant::now(), report::stats(&maps)?);
            let mut shown = 0u64;
            while count.is_none_or(|c| shown < c) {
                std::thread::sleep(Duration::from_secs_f64(secs));
                let now = (std::time::Instant::now(), report::stats(&maps)?);
                let r = report::rates(&last.1, &now.1, (now.0 - last.0).as_secs_f64());
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    // Home and clear: the table is redrawn in place.
                    print!("\x1b[H\x1b[2J{}", report::rates_text(&r));
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                last = now;
                shown += 1;
            }
            Ok(())
        }
        Cmd::Dump { map, json } => dump::dump(&Maps::open(&pins)?, map, json),
        Cmd::Peer { cmd } => edit::peer(&pins, cmd),
        Cmd::Publish { cmd } => edit::publish(&pins, cmd),
        Cmd::Policy { cmd } => edit::policy_cmd(&pins, cmd),
    }
}

/// Prints rows as JSON, or as a table: the map's own where it has one, else
/// dump::auto_table.
fn show<T: serde::Serialize>(rows: &T, json: bool, table: Option<fn(&T) -> String>) -> Result<()> {
    if json {
        return print_json(rows);
    }
    match table {
        Some(t) => print!("{}", t(rows)),
        None => print!("{}", crate::inspect::dump::auto_table(rows)?),
    }
    Ok(())
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
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
