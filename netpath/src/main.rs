//! `netpath`: the agent (`run`) and the operator's CLI, which works from any process
//! through the maps pinned under `--pin-dir`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use netpath::{
    config::{self, Config, Mode, Peer, Proto, Publish},
    datapath::{self, Attached, Maps},
    nat,
    pin::{DEFAULT_PIN_DIR, PinDir},
    policy::{self, Action, RuleProto},
    report,
};

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
    /// Example: netpath run --config /etc/netpath.toml
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Seconds between counter summaries in the log (0: none).
        #[arg(long, default_value_t = 60)]
        report_every: u64,
    },
    /// Validate a config without touching anything.
    ///
    /// Example: netpath check --config /etc/netpath.toml
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
        /// Stop after this many drops.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS", value_parser = watch_secs)]
        duration: Option<f64>,
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
        /// Runs per case (the kernel reports their mean).
        #[arg(long, default_value_t = 100000, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Add a rule to the running datapath, checked like a config rule; it decides new
    /// flows from the next packet and is kept across agent restarts until `policy del`.
    /// Where several rules match, the most specific wins (see README, "Policies").
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
enum PublishCmd {
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

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum TraceProto {
    Icmp,
    Tcp,
    Udp,
}

/// What `dump` can print: every map, by a name people use or by its pinned name
/// (NP_*_V1), which `status` lists.
#[derive(Clone, Copy, ValueEnum)]
enum DumpMap {
    /// The host's datapath config: addresses, subnet, VNI, tunnel MTU, masquerade.
    #[value(alias = "NP_CONFIG_V1")]
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
}

#[derive(Subcommand)]
enum PeerCmd {
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
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

fn run(cli: Cli) -> Result<()> {
    let pins = PinDir::new(&cli.pin_dir);
    match cli.cmd {
        Cmd::Run {
            config,
            report_every,
        } => {
            let cfg = Config::load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(agent(cfg, pins, report_every))
        }
        Cmd::Check { config } => {
            let cfg = Config::load(&config)?;
            println!(
                "{}: ok (host {}, {} peers)",
                config.display(),
                cfg.host.name,
                cfg.peers.len()
            );
            Ok(())
        }
        Cmd::Down => {
            let done = datapath::down(&pins)?;
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
        Cmd::Bench {
            rules,
            repeat,
            json,
        } => {
            let r = netpath::bench::run(&rules, repeat)?;
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
            Ok(())
        }
        Cmd::Monitor {
            json,
            count,
            duration,
        } => netpath::monitor::run(&pins, json, count, duration.map(Duration::from_secs_f64)),
        Cmd::Trace {
            from,
            to,
            proto,
            port,
            sport,
            json,
        } => {
            let q = netpath::trace::Query {
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
            let t = netpath::trace::trace(&pins, &q)?;
            show(&t, json, Some(netpath::trace::text))
        }
        Cmd::Doctor { json, wait } => {
            let f = netpath::doctor::run(&pins, Duration::from_secs_f64(wait))?;
            if json {
                print_json(&f)?;
            } else {
                print!("{}", netpath::doctor::text(&f));
            }
            if f.iter().any(|x| x.level != netpath::doctor::Level::Ok) {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Status { json } => {
            let s = netpath::status::status(&pins)?;
            if json {
                print_json(&s)?;
            } else {
                print!("{}", netpath::status::text(&s));
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
        Cmd::Dump { map, json } => dump(&Maps::open(&pins)?, map, json),
        Cmd::Peer { cmd } => peer(&pins, cmd),
        Cmd::Publish { cmd } => publish(&pins, cmd),
        Cmd::Policy { cmd } => policy_cmd(&pins, cmd),
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
        None => print!("{}", netpath::dump::auto_table(rows)?),
    }
    Ok(())
}

fn dump(maps: &Maps, map: DumpMap, json: bool) -> Result<()> {
    use netpath::dump;
    match map {
        DumpMap::Config => show(&dump::config(maps)?, json, None),
        DumpMap::Peers => show(&report::peer_rows(maps)?, json, Some(|r| report::peers_table(r))),
        DumpMap::Underlay => show(&dump::underlay(maps)?, json, None),
        DumpMap::Counters => show(
            &report::counter_rows(maps, true)?,
            json,
            Some(|r| report::counters_table(r)),
        ),
        DumpMap::Agent => show(&report::agent_row(maps)?, json, None),
        DumpMap::Conntrack => show(&nat::flow_rows(maps)?, json, Some(|r| report::flows_table(r))),
        DumpMap::ConntrackInfo => show(&nat::info(maps)?, json, None),
        DumpMap::Nat => show(&nat::nat_rows(maps)?, json, Some(|r| report::nat_table(r))),
        DumpMap::Ports => print_ports(maps, json),
        DumpMap::Policies => print_policies(maps, json),
        DumpMap::Groups => show(&dump::groups(maps)?, json, None),
        DumpMap::PolicySrc => show(&dump::policy_trie(maps, "src")?, json, None),
        DumpMap::PolicyDst => show(&dump::policy_trie(maps, "dst")?, json, None),
        DumpMap::PolicyRules => show(&dump::policy_trie(maps, "rules")?, json, None),
        DumpMap::RejectLimit => show(&dump::reject_limit(maps)?, json, None),
        DumpMap::Events => show(&dump::events(maps)?, json, None),
        DumpMap::Build => show(&dump::build(maps)?, json, None),
    }
}

fn print_policies(maps: &Maps, json: bool) -> Result<()> {
    show(&policy::report(maps)?, json, Some(report::policies_table))
}

fn policy_cmd(pins: &PinDir, cmd: PolicyCmd) -> Result<()> {
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
            let old = policy::installed(&maps)?;
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
            let id = policy::add(&mut maps, &old, &rule)?;
            println!("added rule {id}: {rule}");
            Ok(())
        }
        PolicyCmd::Del { id } => {
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            let rule = policy::del(&mut maps, id)?;
            println!("removed rule {id}: {rule}");
            Ok(())
        }
        PolicyCmd::List { json } => print_policies(&Maps::open(pins)?, json),
    }
}

fn peer(pins: &PinDir, cmd: PeerCmd) -> Result<()> {
    match cmd {
        PeerCmd::Add {
            name,
            subnet,
            underlay,
            mode,
            vtep_mac,
        } => {
            let mut problems = Vec::new();
            if let Err(e) = config::check_name("name", &name) {
                problems.push(e);
            }
            let subnet = config::parse_subnet("--subnet", &subnet).map_err(|e| problems.push(e));
            let underlay =
                config::parse_addr("--underlay", &underlay).map_err(|e| problems.push(e));
            let vtep_mac = vtep_mac
                .map(|m| config::parse_mac("--vtep-mac", &m))
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
            datapath::add_peer(&mut maps, &p)?;
            println!(
                "added peer {} ({} via {}, {})",
                p.name, p.subnet, p.underlay, p.mode
            );
            Ok(())
        }
        PeerCmd::Del { name } => {
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            datapath::del_peer(&mut maps, &name)?;
            println!("removed peer {name}");
            Ok(())
        }
        PeerCmd::List { json } => dump(&Maps::open(pins)?, DumpMap::Peers, json),
    }
}

fn print_ports(maps: &Maps, json: bool) -> Result<()> {
    show(&nat::port_rows(maps)?, json, Some(|r| report::ports_table(r)))
}

fn publish(pins: &PinDir, cmd: PublishCmd) -> Result<()> {
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
            nat::add_publish(&mut maps, &p)?;
            println!("published {proto}/{host_port} -> {addr}:{port}");
            Ok(())
        }
        PublishCmd::Del { proto, host_port } => {
            let mut maps = Maps::open(pins)?;
            let _lock = pins.lock()?;
            let cut = nat::del_publish(&mut maps, proto, host_port)?;
            println!("unpublished {proto}/{host_port} ({cut} flows cut)");
            Ok(())
        }
        PublishCmd::List { json } => print_ports(&Maps::open(pins)?, json),
    }
}

/// The agent: everything is validated before this runs; here the datapath is attached or
/// adopted, then the agent reports until SIGINT/SIGTERM, leaving the datapath in place.
async fn agent(cfg: Config, pins: PinDir, report_every: u64) -> Result<()> {
    pins.prepare()?;
    let lock = pins.lock()?;
    pins.check_layouts()?;
    let adopted = pins.exists();
    if adopted {
        let maps = Maps::open(&pins)?;
        let a = report::agent_row(&maps)?;
        if a.agent_running && a.agent_pid != std::process::id() {
            bail!(
                "an agent (pid {}) already manages {}: stop it first, or use another --pin-dir",
                a.agent_pid,
                pins.root.display()
            );
        }
    }
    let metrics = cfg.metrics.map(netpath::metrics::bind).transpose()?;
    let (mut ebpf, mut maps) = match start(&cfg, &pins, adopted) {
        Ok(x) => x,
        Err(e) => {
            if !adopted {
                // Nothing was running before: leave nothing behind.
                let _ = datapath::down(&pins);
            }
            return Err(e);
        }
    };
    // The container programs: on every port of the bridge now, and on each one that
    // appears later (rtnetlink link events; the collector's tick rescans too).
    let (mut conn, handle, mut events) =
        rtnetlink::new_connection().context("opening rtnetlink")?;
    rtnetlink::sys::AsyncSocket::socket_mut(conn.socket_mut())
        .bind(&rtnetlink::sys::SocketAddr::new(
            0,
            rtnetlink::constants::RTMGRP_LINK,
        ))
        .context("subscribing to link events")?;
    tokio::spawn(conn);
    let mut ports_done = std::collections::HashSet::new();
    sync_ports(
        &mut ebpf,
        &pins,
        &handle,
        cfg.host.bridge_ifindex,
        &mut ports_done,
    )
    .await;
    drop(lock);
    if let Some(l) = metrics {
        let pins = pins.clone();
        tokio::spawn(async move {
            if let Err(e) = netpath::metrics::serve(l, pins).await {
                log::error!("metrics: {e:#}");
            }
        });
    }

    let mut tick = tokio::time::interval(Duration::from_secs(report_every.max(1)));
    tick.tick().await;
    let mut gc = tokio::time::interval(Duration::from_secs(cfg.conntrack.gc_interval as u64));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            Some(_) = futures::StreamExt::next(&mut events) => {
                // Coalesce a burst (a container start is several events).
                while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), futures::StreamExt::next(&mut events)).await {}
                sync_ports(&mut ebpf, &pins, &handle, cfg.host.bridge_ifindex, &mut ports_done).await;
            }
            _ = gc.tick() => {
                sync_ports(&mut ebpf, &pins, &handle, cfg.host.bridge_ifindex, &mut ports_done).await;
                match nat::gc(&mut maps) {
                    Ok(g) if g.expired + g.orphans > 0 => log::debug!(
                        "conntrack: {} expired, {} evicted halves removed, {} flows",
                        g.expired, g.orphans, g.ct_entries
                    ),
                    Ok(_) => {}
                    Err(e) => log::warn!("conntrack collection failed: {e:#}"),
                }
            }
            _ = tick.tick(), if report_every > 0 => {
                if let Ok(s) = report::stats(&maps) {
                    log::info!(
                        "forwarded {} passed {} dropped {}",
                        s.totals.forwarded, s.totals.passed, s.totals.dropped
                    );
                }
            }
        }
    }
    log::info!(
        "agent exiting; the datapath stays attached (remove it with `netpath down --pin-dir {}`)",
        pins.root.display()
    );
    Ok(())
}

/// Puts np_from_container on the bridge's ports that lack it (see
/// datapath::sync_container_links), logging what changed.
async fn sync_ports(
    ebpf: &mut aya::Ebpf,
    pins: &PinDir,
    handle: &rtnetlink::Handle,
    bridge: u32,
    done: &mut std::collections::HashSet<u32>,
) {
    let ports = match datapath::bridge_ports(handle, bridge).await {
        Ok(p) => p,
        Err(e) => {
            log::warn!("listing the bridge's ports: {e:#}");
            return;
        }
    };
    let (changes, errors) = datapath::sync_container_links(ebpf, pins, &ports, done);
    if !changes.attached.is_empty() || changes.adopted > 0 || changes.removed > 0 {
        log::info!(
            "{} on container ports: attached to {:?}, {} adopted, {} gone",
            netpath_common::prog_names::FROM_CONTAINER,
            changes.attached,
            changes.adopted,
            changes.removed
        );
    }
    for e in errors {
        log::warn!(
            "attaching {} to {e}",
            netpath_common::prog_names::FROM_CONTAINER
        );
    }
}

fn start(cfg: &Config, pins: &PinDir, adopted: bool) -> Result<(aya::Ebpf, Maps)> {
    let mut ebpf = datapath::load(Some(pins), cfg.conntrack.size)?;
    let mut maps = Maps::take(&mut ebpf)?;
    let size = aya::maps::IterableMap::map(&maps.ct).info()?.max_entries();
    if size != cfg.conntrack.size {
        log::warn!(
            "[conntrack].size = {} but the pinned tables hold {size} entries: they keep their flows and their size until `netpath down`",
            cfg.conntrack.size
        );
    }
    let before = maps.agent()?;
    maps.write_config(cfg)?;
    maps.write_monitor(&cfg.monitor)?;
    maps.write_build()?;
    nat::write_ct_info(&mut maps, &cfg.conntrack)?;
    let changes = datapath::sync_peers(&mut maps, cfg).context("updating peers")?;
    let published = nat::sync_publish(&mut maps, cfg).context("updating published ports")?;
    let rules = policy::sync(&mut maps, cfg).context("updating the policy")?;
    let mut tcx = true;
    for a in datapath::attachments(cfg, &before) {
        let how = datapath::attach(&mut ebpf, pins, &a)?;
        tcx &= how != Attached::Netlink;
        log::info!("{} on {} ingress: {how:?}", a.prog, a.iface);
    }
    if let Some(how) = datapath::attach_xdp(&mut ebpf, pins, cfg, &before)? {
        log::info!(
            "{} on {} ({} mode): {how:?}",
            netpath_common::prog_names::XDP_UPLINK,
            cfg.host.uplink,
            cfg.host.xdp
        );
    }
    let info = datapath::write_agent(&mut maps, cfg, tcx, adopted)?;
    log::info!(
        "host {}: {} datapath at {} (generation {}), subnet {}, underlay {}, masquerade {}, peers: {} added, {} updated, {} removed, {} kept from `peer add`; published ports: {} from the config, {} removed, {} kept from `publish add`",
        cfg.host.name,
        if adopted {
            "adopted the"
        } else {
            "attached a new"
        },
        pins.root.display(),
        info.generation,
        cfg.host.subnet,
        cfg.host.address,
        if cfg.host.masquerade {
            format!(
                "on (ports {}-{})",
                cfg.host.masquerade_ports.0, cfg.host.masquerade_ports.1
            )
        } else {
            "off".to_owned()
        },
        changes.added.len(),
        changes.updated.len(),
        changes.removed.len(),
        changes.kept_cli.len(),
        published.set,
        published.removed,
        published.kept_cli,
    );
    log::info!(
        "policy: {} rules ({} kept from `policy add`), default {}, {} lookup entries",
        rules.rules,
        rules.kept_cli,
        cfg.policy.default,
        rules.entries
    );
    Ok((ebpf, maps))
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
