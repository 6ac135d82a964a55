//! The command line: nouns and verbs (`peer add`, `dump nat`, ...), one module per group
//! of commands. Every read command takes `--json`; every command that touches a running
//! datapath works from any process through the maps pinned under `--pin-dir`.

mod args;
mod cluster;
mod dump;
mod edit;
mod fleetnet;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;

use crate::{
    agent,
    inspect::report,
    maps::Maps,
    pin::PinDir,
    sources::file::{Config, Parsed},
    state::Proto,
};
use args::{Cli, ClusterCmd, ClusterMode, Cmd, DebugCmd, TraceProto};
pub use dump::DumpMap;

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
        Cmd::Subnet {
            config,
            network_len,
            json,
        } => cluster::subnet(&config, network_len, json),
        Cmd::Network { cmd } => match cmd {
            args::NetworkCmd::List { json } => {
                let maps = Maps::open(&pins)?;
                show(
                    &crate::inspect::networks::rows(&maps)?,
                    json,
                    Some(crate::inspect::networks::table),
                )
            }
            args::NetworkCmd::Create {
                name,
                subnet,
                gateway,
                mode,
                internal,
                no_masquerade,
                config,
            } => fleetnet::create(
                &config,
                crate::sources::fleetnet::Create {
                    name,
                    subnet,
                    gateway,
                    mode: match mode {
                        ClusterMode::Direct => crate::state::Mode::Direct,
                        ClusterMode::Vxlan => crate::state::Mode::Vxlan,
                    },
                    masquerade: !no_masquerade,
                    internal,
                },
            ),
            args::NetworkCmd::Rm { name, config } => fleetnet::remove(&config, &name),
            args::NetworkCmd::Show { name, config, json } => {
                fleetnet::show(&config, &pins, &name, json)
            }
        },
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
            ClusterCmd::Simulate {
                config,
                agents,
                secs,
                lease_ttl,
                churn,
                prefix,
                one_member,
                json,
            } => cluster::simulate(
                &config,
                cluster::Simulation {
                    lease_ttl,
                    prefix,
                    plan: crate::agent::simulate::Plan {
                        agents,
                        window: std::time::Duration::from_secs(secs),
                        churn_per_sec: churn,
                        one_member,
                    },
                },
                json,
            ),
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
            path,
            json,
        } => {
            let r = crate::bench::run(&rules, repeat, (agent_peers, agent_rules), path.as_deref())?;
            if json {
                return print_json(&r);
            }
            println!("{:<40} {:>10}", "path (BPF_PROG_TEST_RUN)", "ns/packet");
            for p in &r.programs {
                println!("{:<40} {:>10.0}", p.case, p.ns_per_packet);
            }
            println!(
                "\n{:<20} {:>13} {:>11} {:>14} {:>5}",
                "program (loaded)", "instructions", "jited bytes", "verifier went", "maps"
            );
            for p in &r.sizes {
                println!(
                    "{:<20} {:>13} {:>11} {:>14} {:>5}",
                    p.program,
                    p.xlated_insns,
                    p.jited_bytes,
                    p.verified_insns.map_or("?".into(), |n| n.to_string()),
                    p.maps
                );
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
                "\n{:<40} {:>7} {:>8} {:>10} {:>8} {:>9} {:>9}",
                "agent reconcile", "peers", "rules", "ms", "cpu ms", "writes", "bpf calls"
            );
            for a in &r.agent {
                println!(
                    "{:<40} {:>7} {:>8} {:>10.1} {:>8.1} {:>9} {:>9}",
                    a.case,
                    a.peers,
                    a.rules,
                    a.ms,
                    a.cpu_ms,
                    a.writes,
                    a.bpf_calls.map_or("?".into(), |n| n.to_string())
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
        Cmd::Doctor { json, wait, config } => {
            let f = crate::inspect::doctor::run(
                &pins,
                Duration::from_secs_f64(wait),
                config.as_deref(),
            )?;
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
        Cmd::Profile { secs, json } => show(
            &crate::inspect::profile::profile(&pins, secs)?,
            json,
            Some(crate::inspect::profile::text),
        ),
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
