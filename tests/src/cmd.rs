//! Running commands with errors that show what ran and what it said.

use std::{
    borrow::BorrowMut,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Runs `cmd`; on failure the error carries the command line, status and stderr.
pub fn run(cmd: impl BorrowMut<Command>) -> Result<()> {
    output(cmd).map(|_| ())
}

/// Runs `cmd` and returns its stdout.
pub fn output(mut cmd: impl BorrowMut<Command>) -> Result<String> {
    let cmd = cmd.borrow_mut();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
