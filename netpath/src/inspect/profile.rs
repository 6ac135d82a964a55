//! `netpath profile`: what each program of a running datapath costs per packet on the
//! traffic it carries now. The kernel times every program run while run-time statistics
//! are on (BPF_ENABLE_STATS: on while the descriptor it returns is open, for every BPF
//! program of the machine, at the cost of two clock reads per run); this reads each
//! program's total run time and run count, waits, reads them again and divides.
//! `netpath bench` measures each path alone on crafted packets; this measures the mix a
//! host has.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::{
    maps::MapInfo,
    programs::{ProgramInfo, loaded_programs},
    sys::{Stats, enable_stats},
};
use netpath_common::{map_names, prog_names};
use serde::Serialize;

use crate::pin::PinDir;

/// One program of the datapath over the window.
#[derive(Serialize, Debug, PartialEq)]
pub struct ProgramCost {
    pub program: String,
    pub id: u32,
    /// Runs in the window, and per second.
    pub runs: u64,
    pub runs_per_sec: f64,
    /// The kernel's time in the program, ns per run (None: it did not run).
    pub ns_per_run: Option<f64>,
    /// Share of one CPU the program took.
    pub cpu_pct: f64,
}

#[derive(Serialize)]
pub struct Profile {
    pub secs: f64,
    pub programs: Vec<ProgramCost>,
}

/// Every program name of the datapath, longest first: the kernel keeps 15 bytes of a
/// name (np_from_container is "np_from_contain" there), so a loaded program is matched
/// by the prefix it kept.
const NAMES: [&str; 5] = [
    prog_names::FROM_CONTAINER,
    prog_names::FROM_BRIDGE,
    prog_names::FROM_UPLINK,
    prog_names::XDP_UPLINK,
    prog_names::XDP_CHECK,
];

/// The datapath's name for a loaded program's (truncated) name.
fn full_name(kernel: &str) -> Option<&'static str> {
    if kernel.is_empty() {
        return None;
    }
    NAMES.iter().copied().find(|n| n.starts_with(kernel))
}

/// The loaded programs of the datapath pinned at `pins`: those named as its programs that
/// use its `NP_CONFIG` map (another host's datapath on this machine has its own).
fn programs(pins: &PinDir) -> Result<Vec<(&'static str, u32)>> {
    pins.open(map_names::CONFIG)?;
    let config = MapInfo::from_pin(pins.map_path(map_names::CONFIG))
        .context("the datapath's NP_CONFIG")?
        .id();
    let mut found = Vec::new();
    for p in loaded_programs().flatten() {
        let Some(name) = p.name_as_str().and_then(full_name) else {
            continue;
        };
        if p.map_ids()
            .ok()
            .flatten()
            .is_some_and(|m| m.contains(&config))
        {
            found.push((name, p.id()));
        }
    }
    if found.is_empty() {
        bail!(
            "no loaded program uses the datapath at {}: is its agent attached?",
            pins.root.display()
        );
    }
    found.sort();
    Ok(found)
}

/// (run time, run count) of program `id`; zeros when it is gone.
fn reading(id: u32) -> (u64, u64) {
    loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map_or((0, 0), |p: ProgramInfo| {
            (p.run_time().as_nanos() as u64, p.run_count())
        })
}

/// Profiles the datapath at `pins` for `secs` seconds.
pub fn profile(pins: &PinDir, secs: f64) -> Result<Profile> {
    let progs = programs(pins)?;
    let _on = enable_stats(Stats::RunTime).map_err(|e| {
        anyhow::anyhow!(
            "turning on the kernel's BPF run-time statistics (BPF_ENABLE_STATS, Linux 5.8 or later, CAP_SYS_ADMIN): {e}"
        )
    })?;
    let before: Vec<(u64, u64)> = progs.iter().map(|p| reading(p.1)).collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after: Vec<(u64, u64)> = progs.iter().map(|p| reading(p.1)).collect();
    let window = start.elapsed().as_secs_f64();
    let programs = progs
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(&(program, id), (b, a))| cost(program, id, *b, *a, window))
        .collect();
    Ok(Profile {
        secs: window,
        programs,
    })
}

/// A program's figures from its readings `before` and `after` (run time ns, runs), taken
/// `window` seconds apart.
fn cost(program: &str, id: u32, before: (u64, u64), after: (u64, u64), window: f64) -> ProgramCost {
    let ns = after.0.saturating_sub(before.0);
    let runs = after.1.saturating_sub(before.1);
    ProgramCost {
        program: program.to_owned(),
        id,
        runs,
        runs_per_sec: runs as f64 / window.max(1e-9),
        ns_per_run: (runs > 0).then(|| ns as f64 / runs as f64),
        cpu_pct: 100.0 * ns as f64 / 1e9 / window.max(1e-9),
    }
}

pub fn text(p: &Profile) -> String {
    let mut out = format!(
        "{:<18} {:>6} {:>12} {:>12} {:>10} {:>6}\n",
        "PROGRAM", "ID", "RUNS", "RUNS/S", "NS/RUN", "CPU%"
    );
    for c in &p.programs {
        out += &format!(
            "{:<18} {:>6} {:>12} {:>12.0} {:>10} {:>6.2}\n",
            c.program,
            c.id,
            c.runs,
            c.runs_per_sec,
            c.ns_per_run.map_or("-".into(), |n| format!("{n:.0}")),
            c.cpu_pct
        );
    }
    out += &format!(
        "over {:.1} s; NS/RUN is the kernel's timing of each run (two clock reads of it included)\n",
        p.secs
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_kernel_names_map_back_and_others_do_not() {
        assert_eq!(
            full_name("np_from_contain"),
            Some(prog_names::FROM_CONTAINER)
        );
        assert_eq!(full_name("np_from_bridge"), Some(prog_names::FROM_BRIDGE));
        assert_eq!(full_name("np_xdp_check"), Some(prog_names::XDP_CHECK));
        assert_eq!(full_name("np_xdp_uplink"), Some(prog_names::XDP_UPLINK));
        assert_eq!(full_name("cil_from_contai"), None);
        assert_eq!(full_name(""), None);
    }

    #[test]
    fn a_window_gives_ns_per_run_and_a_cpu_share() {
        let c = cost("np_from_bridge", 7, (1_000, 10), (201_000, 1_010), 2.0);
        assert_eq!(c.runs, 1000);
        assert_eq!(c.ns_per_run, Some(200.0));
        assert_eq!(c.runs_per_sec, 500.0);
        assert!((c.cpu_pct - 0.01).abs() < 1e-9);
        // A program that did not run, or was reloaded (counters smaller than before).
        let idle = cost("np_from_uplink", 8, (5, 5), (5, 5), 1.0);
        assert_eq!(idle.ns_per_run, None);
        assert_eq!(cost("x", 9, (9, 9), (1, 1), 1.0).runs, 0);
    }
}
