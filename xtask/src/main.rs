//! `cargo xtask <command>`: netpath's one entry point for building, running, the demo, the
//! tests and the benchmark. Every command first installs what is missing (see setup.rs).

mod across_bench;
mod bench;
mod demo;
mod endpoint_bench;
mod etcd_bench;
mod fleet_bench;
mod package;
mod policy_bench;
mod setup;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, demo, test and benchmark netpath"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src, bpf-linker, the lab's Debian packages.
    Setup,
    /// Build the eBPF programs and the agent (release).
    Build,
    /// Build a Debian package of the release build (binary, systemd unit, example config,
    /// man pages, completions, docs) into target/debian.
    ///
    /// Example: cargo xtask package && apt install ./target/debian/netpath_*.deb
    Package,
    /// Build, then run netpath as root with the given arguments.
    ///
    /// Example: cargo xtask run -- run --config /etc/netpath/netpath.toml
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build a lab of 3 hosts with 2 containers each in network namespaces, run netpath
    /// on every host, show traffic crossing and the counters, then tear it all down.
    Demo,
    /// Soak: three hosts under mixed traffic in every mode for minutes, agents restarted
    /// every 30 s, peers, ports and rules changed every 10 s; then counters, conntrack
    /// and memory checked (results in target/soak). Not part of `test`.
    Soak {
        /// How long the traffic and the churn run (at least 1).
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
    },
    /// Run the whole test suite: unit tests, packet tests (BPF_PROG_TEST_RUN) and lab tests
    /// in network namespaces (root needed for the last two).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Compare netpath with the iptables path, the kernel's vxlan overlay and the ceiling
    /// (one veth) on labs in network namespaces: throughput, request/response rate and
    /// latency (on one connection and on 1,000 at once), UDP packets/s, connections/s,
    /// masquerade; the scale test (rules) and each program's ns per packet; the fleet on
    /// etcd (start to all peers, a new host to 3 agents, memory, a churn); etcd's side
    /// (simulated hosts against 3 members); a container's arrival on a host of 5,000;
    /// policy after a flow's first packet. Interleaved repetitions, medians and spread; writes
    /// target/bench/results.{md,json} and scale.png.
    Bench {
        /// Every path once, briefly (a smoke test of the benchmark itself, under 2 min).
        #[arg(long)]
        quick: bool,
        /// Repetitions of every path.
        #[arg(long, default_value_t = 7)]
        reps: usize,
        /// Seconds of iperf3 per measurement.
        #[arg(long, default_value_t = 2)]
        secs: u32,
        /// Seconds of each other measure (request/response, UDP, connections).
        #[arg(long, default_value_t = 1.5)]
        probe_secs: f64,
        /// Only paths whose name contains this (repeatable), e.g. --only vxlan; the
        /// scale test, the fleet, etcd's side, networks across hosts and policy after the
        /// first packet are skipped then. --only fleet: the fleet alone; --only etcd:
        /// etcd's side alone; --only endpoints: the local containers' arrivals and
        /// departures alone; --only across: Docker networks across hosts alone; --only
        /// policy: what 1,000 policy rules cost flows already decided, alone.
        #[arg(long)]
        only: Vec<String>,
        /// Host registrations the fleet's measurements write to etcd (entries only: no
        /// packet goes to them); measured at a tenth of it too; at most 50000.
        #[arg(long, default_value_t = 10000)]
        fleet_hosts: usize,
        /// Seconds of the fleet's churn (100 registrations per second).
        #[arg(long, default_value_t = 60)]
        fleet_churn_secs: u64,
        /// Hosts simulated (the agents' fleet tasks, no datapath) against a 3-member etcd
        /// for etcd's side; at most 50000.
        #[arg(long, default_value_t = 1000)]
        etcd_agents: usize,
        /// Seconds of each etcd case's steady window (at least two renewals).
        #[arg(long, default_value_t = 60)]
        etcd_secs: u64,
        /// Containers already on the host when one arrives and leaves (veths on five
        /// Docker bridge networks); at most 5000.
        #[arg(long, default_value_t = 5000)]
        endpoint_containers: usize,
        /// Containers that arrive and leave, on the large host and on an empty one; at
        /// most 21 (the addresses left in the first network's /22).
        #[arg(long, default_value_t = 20)]
        endpoint_arrivals: usize,
        /// Concurrent TCP flows opened through the masquerade paths.
        #[arg(long, default_value_t = 10000)]
        flows: usize,
        /// Connections of the request/response measure on many connections at once
        /// (every path: conntrack and NAT at a busy host's size).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Rule counts of the scale test (iptables: those up to 10000).
        #[arg(long, value_delimiter = ',', default_value = "0,1000,10000,100000")]
        scale: Vec<usize>,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run_status(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Builds the agent (which embeds the programs) and the lab's traffic tool np-probe next to
/// it; returns the agent binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
    eprintln!(
        "[build] netpath ({})",
        if release { "release" } else { "debug" }
    );
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "netpath",
        "--package",
        "netpath-tests",
        "--bin",
        "netpath",
        "--bin",
        "np-probe",
    ]);
    if release {
        cmd.arg("--release");
    }
    run_status(&mut cmd)?;
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("netpath"))
}

/// Builds the upgrade test's agent: this tree with the `layout-test` feature (a map
/// layout changed on purpose), copied to `netpath-layout-test` beside the agent. Run
/// before [`build`]: cargo puts the last build's binary at target/debug/netpath (both
/// stay cached, so the next build only links the right one there again).
fn build_layout_test() -> Result<PathBuf> {
    eprintln!("[build] netpath with --features layout-test (the upgrade test's second build)");
    run_status(cargo().args([
        "build",
        "--package",
        "netpath",
        "--bin",
        "netpath",
        "--features",
        "layout-test",
    ]))?;
    let dir = workspace_root().join("target/debug");
    let to = dir.join("netpath-layout-test");
    std::fs::copy(dir.join("netpath"), &to)
        .with_context(|| format!("copying the layout-test build to {}", to.display()))?;
    Ok(to)
}

/// Runs cargo test, passing its output through, and ends with one line that totals every
/// test binary ("summary: N passed, N failed, N ignored"): cargo's own last line is the
/// doc-tests' of the last crate, which says nothing about the run.
fn test(cmd: &mut Command) -> Result<Tally> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    Ok(Tally {
        passed,
        failed,
        ignored,
        ok: status.success(),
    })
}

/// What a test run counted.
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Whether cargo test succeeded.
    ok: bool,
}

impl Tally {
    /// Prints the one summary line and turns the tally into the command's result.
    fn finish(self) -> Result<()> {
        let Tally {
            passed,
            failed,
            ignored,
            ok,
        } = self;
        println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
        if failed > 0 {
            bail!("{failed} test(s) failed");
        }
        if !ok {
            bail!(
                "cargo test failed without a failing test (a test that does not build?): see above"
            );
        }
        if passed == 0 {
            bail!("no test ran");
        }
        Ok(())
    }
}

/// Points the lab (this process's and the tests', which inherit the environment) at the
/// binary just built: it finds netpath through NETPATH_BIN (tests/src/lib.rs).
fn use_binary(bin: &Path) {
    // SAFETY: called before xtask starts any thread.
    unsafe {
        std::env::set_var("NETPATH_BIN", bin);
        std::env::set_var("NP_PROBE_BIN", bin.with_file_name("np-probe"));
    }
}

/// Runs the rest of this process and its children (the tests) in a mount namespace of
/// their own where /sys/fs/bpf starts without bpffs, as on a machine just booted: every
/// test, lab and agent must mount it before it pins (a lab that forgets fails on every
/// run, not only on a newcomer's first). Pins made here are this namespace's alone, so
/// the tests never see, nor leave, pins of the machine's own. Called before any thread
/// starts (unshare(CLONE_NEWNS) refuses a process with several).
fn as_on_first_boot() -> Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("unshare(CLONE_NEWNS): a mount namespace for the tests")?;
    // Private first: an unmount in a namespace still sharing propagation with the
    // machine's would unmount bpffs there too.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the tests' mounts private")?;
    let mut unmounted = 0;
    while netpath_tests::bpffs_mounted()? {
        umount2("/sys/fs/bpf", MntFlags::MNT_DETACH)
            .context("unmounting bpffs from /sys/fs/bpf in the tests' mount namespace")?;
        unmounted += 1;
    }
    eprintln!(
        "[test] in a mount namespace of their own, /sys/fs/bpf without bpffs (as on first boot{})",
        if unmounted > 0 {
            "; the machine's is untouched"
        } else {
            ""
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup => setup::ensure(true),
        Cmd::Build => {
            setup::ensure(false)?;
            build(true).map(|p| eprintln!("[build] {}", p.display()))
        }
        Cmd::Package => {
            setup::ensure(false)?;
            let deb = package::build(&build(true)?)?;
            eprintln!("[package] {}", deb.display());
            Ok(())
        }
        Cmd::Run { args } => {
            setup::ensure(false)?;
            let bin = build(true)?;
            let mut cmd = if netpath_tests::is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            run_status(cmd.args(args))
        }
        Cmd::Soak { minutes } => {
            if !netpath_tests::is_root() {
                bail!("the soak builds network namespaces: run it as root");
            }
            setup::ensure(true)?;
            use_binary(&build(true)?);
            netpath_tests::reap_stale();
            soak::run(minutes)
        }
        Cmd::Demo => {
            if !netpath_tests::is_root() {
                bail!("the demo builds network namespaces: run it as root");
            }
            setup::ensure(true)?;
            use_binary(&build(true)?);
            netpath_tests::reap_stale();
            demo::run()
        }
        Cmd::Bench {
            quick,
            reps,
            secs,
            probe_secs,
            only,
            flows,
            connections,
            scale,
            fleet_hosts,
            fleet_churn_secs,
            etcd_agents,
            etcd_secs,
            endpoint_containers,
            endpoint_arrivals,
        } => {
            if !netpath_tests::is_root() {
                bail!("the benchmark builds network namespaces: run it as root");
            }
            setup::ensure(true)?;
            use_binary(&build(true)?);
            netpath_tests::reap_stale();
            let out_dir = workspace_root().join("target/bench");
            bench::run(if quick {
                bench::Options::quick(out_dir, only)
            } else {
                bench::Options {
                    reps: reps.max(1),
                    secs: secs.max(1),
                    probe_secs: probe_secs.max(0.1),
                    flows,
                    connections: connections.max(1),
                    scale,
                    prog_repeat: 100_000,
                    out_dir,
                    only,
                    fleet_hosts,
                    fleet_churn_secs,
                    etcd_agents: etcd_agents.clamp(2, 50_000),
                    etcd_secs: etcd_secs.max(1),
                    etcd_smoke: false,
                    across: across_bench::Size::FULL,
                    endpoints: endpoint_bench::Size {
                        containers: endpoint_containers.min(endpoint_bench::MAX_CONTAINERS),
                        arrivals: endpoint_arrivals.clamp(1, endpoint_bench::MAX_ARRIVALS),
                        idle_secs: 30,
                    },
                    policy: policy_bench::Size::FULL,
                }
            })
        }
        Cmd::Test { args } => {
            setup::ensure(true)?;
            let layout_test = build_layout_test()?;
            // The package of the release build, for its test (tests/tests/service.rs).
            let deb = package::build(&build(true)?)?;
            use_binary(&build(false)?);
            // SAFETY: no thread has started yet.
            unsafe {
                std::env::set_var("NETPATH_LAYOUT_TEST_BIN", &layout_test);
                std::env::set_var("NETPATH_DEB", &deb);
            }
            if netpath_tests::is_root() {
                netpath_tests::reap_stale();
                as_on_first_boot()?;
            } else {
                eprintln!("[test] not root: packet and lab tests will be skipped (they say so)");
            }
            eprintln!("[test] cargo test --workspace");
            let smoke = args.is_empty();
            let mut tally = test(
                cargo()
                    .args([
                        "test",
                        "--workspace",
                        "--exclude",
                        "netpath-ebpf",
                        "--no-fail-fast",
                    ])
                    .args(args),
            )?;
            // The benchmark's smoke test: every path once, briefly; it fails when a path
            // carries no traffic. Not with a filter (a run of chosen tests).
            if smoke && netpath_tests::is_root() {
                eprintln!("[test] cargo xtask bench --quick (smoke test)");
                match bench::run(bench::Options::quick(
                    workspace_root().join("target/bench-smoke"),
                    Vec::new(),
                )) {
                    Ok(()) => {
                        println!("test bench_quick_every_path_carries_traffic ... ok");
                        tally.passed += 1;
                    }
                    Err(e) => {
                        println!("test bench_quick_every_path_carries_traffic ... FAILED: {e:#}");
                        tally.failed += 1;
                    }
                }
            } else if smoke {
                tally.ignored += 1;
            }
            tally.finish()
        }
    }
}
