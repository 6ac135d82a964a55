//! Fault injection for tests: makes the N-th map write of the reconcilers fail, or kills
//! the process there with SIGKILL; or kills it at a named point ([`at`]). Off unless a
//! test turns it on, in-process with [`set`] or for an agent with
//! `NETPATH_TEST_FAULT=fail-after:N`, `abort-after:N` or `abort-at:POINT` (read once,
//! by `netpath run`). Costs two relaxed atomic operations per write when off;
//! the same hook counts the writes for `netpath bench`.

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
};

use anyhow::{Result, bail};

/// Writes left before the fault; negative: off.
static LEFT: AtomicI64 = AtomicI64::new(-1);
/// Writes since the last [`take_writes`] (what `netpath bench` reports).
static WRITES: AtomicU64 = AtomicU64::new(0);
/// What the fault does: abort the process (true) or fail the write.
static ABORT: AtomicBool = AtomicBool::new(false);

/// The point [`at`] kills the process at (`abort-at:POINT`).
static POINT: OnceLock<String> = OnceLock::new();

/// The environment variable `netpath run` reads.
pub const ENV: &str = "NETPATH_TEST_FAULT";

/// Arms the fault: the write after `after` more writes fails (or aborts); None disarms.
pub fn set(after: Option<u64>, abort: bool) {
    ABORT.store(abort, Ordering::SeqCst);
    LEFT.store(after.map_or(-1, |n| n as i64), Ordering::SeqCst);
}

/// Arms the fault from [`ENV`], if set. A malformed value is an error (a test that means
/// to inject a fault must not silently run without one).
pub fn from_env() -> Result<()> {
    let Ok(v) = std::env::var(ENV) else {
        return Ok(());
    };
    let parsed = v
        .split_once(':')
        .and_then(|(kind, n)| Some((kind, n.parse::<u64>().ok()?)));
    match parsed {
        Some(("fail-after", n)) => set(Some(n), false),
        Some(("abort-after", n)) => set(Some(n), true),
        _ => match v.split_once(':') {
            Some(("abort-at", point)) if POINTS.contains(&point) => {
                let _ = POINT.set(point.to_owned());
            }
            _ => bail!(
                "{ENV}={v:?}: use fail-after:N, abort-after:N or abort-at:POINT ({})",
                POINTS.join(", ")
            ),
        },
    }
    log::warn!("{ENV}={v}: a test fault is armed");
    Ok(())
}

/// The named points: `swapped` (a migration's programs swapped, its old maps not yet
/// unpinned).
pub const POINTS: &[&str] = &["swapped"];

/// Kills the process (SIGKILL) when the armed point is `point`.
pub fn at(point: &str) {
    if POINT.get().is_some_and(|p| p == point) {
        die();
    }
}

/// kill -9 of this process: no destructor, no flush, no core file.
fn die() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort();
}

/// Called before each map write of a reconciler.
pub fn write() -> Result<()> {
    WRITES.fetch_add(1, Ordering::Relaxed);
    if LEFT.load(Ordering::Relaxed) < 0 {
        return Ok(());
    }
    if LEFT.fetch_sub(1, Ordering::SeqCst) == 0 {
        if ABORT.load(Ordering::SeqCst) {
            die();
        }
        LEFT.store(-1, Ordering::SeqCst);
        bail!("injected fault ({ENV})");
    }
    Ok(())
}

/// The reconcilers' map writes since the last call.
pub fn take_writes() -> u64 {
    WRITES.swap(0, Ordering::Relaxed)
}
