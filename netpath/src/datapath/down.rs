//! Removing a datapath, and the agent that looks after it.

use anyhow::{Result, bail};
use aya::programs::{
    TcAttachType,
    links::PinnedLink,
    tc::{self},
};
use netpath_common::{AGENT_F_TCX, name_str, prog_names};

use crate::{maps::Maps, pin::PinDir};

/// Removes everything netpath attached and pinned under `pins`. Collects every error and
/// reports them together, after trying every step.
pub fn down(pins: &PinDir) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    if !pins.root.exists() {
        return Ok(done);
    }
    // Netlink filters (no TCX) are not pinned: find them through the agent record.
    if let Ok(agent) = Maps::pinned_agent(pins) {
        if agent.flags & AGENT_F_TCX == 0 && agent.agent_pid != 0 {
            for (iface, prog) in [
                (name_str(&agent.bridge), prog_names::FROM_BRIDGE),
                (name_str(&agent.uplink), prog_names::FROM_UPLINK),
            ] {
                match tc::qdisc_detach_program(iface, TcAttachType::Ingress, prog) {
                    Ok(()) => done.push(format!("detached {prog} from {iface} (netlink)")),
                    Err(e) => errors.push(format!("detaching {prog} from {iface}: {e}")),
                }
            }
        }
        stop_agent(agent.agent_pid, &mut done);
    }
    if let Ok(entries) = std::fs::read_dir(pins.links()) {
        for e in entries.flatten() {
            let path = e.path();
            match PinnedLink::from_pin(&path)
                .map_err(anyhow::Error::from)
                .and_then(|l| l.unpin().map_err(anyhow::Error::from))
            {
                // Dropping the last fd of the link detaches the program.
                Ok(fd) => {
                    drop(fd);
                    done.push(format!("detached {}", e.file_name().to_string_lossy()));
                }
                Err(err) => {
                    // Not a link (or already defunct): the file must go all the same.
                    let _ = std::fs::remove_file(&path);
                    errors.push(format!("{}: {err:#}", path.display()));
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(pins.maps()) {
        for e in entries.flatten() {
            match std::fs::remove_file(e.path()) {
                Ok(()) => done.push(format!("unpinned {}", e.file_name().to_string_lossy())),
                Err(err) => errors.push(format!("{}: {err}", e.path().display())),
            }
        }
    }
    if let Err(err) = pins.remove_marks() {
        errors.push(format!("{err:#}"));
    }
    for dir in [pins.links(), pins.maps(), pins.root.clone()] {
        if let Err(err) = std::fs::remove_dir(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("{}: {err}", dir.display()));
        }
    }
    if errors.is_empty() {
        Ok(done)
    } else {
        bail!(
            "netpath down left things behind:\n  {}",
            errors.join("\n  ")
        )
    }
}

/// Whether `pid` (from `NP_AGENT`) is still a running netpath process. A pid the kernel
/// has since given to another program is not, and neither is a killed agent that nobody
/// has reaped yet (a zombie, state Z or X): it must not block the next agent.
pub fn agent_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "<pid> (<comm>) <state> ...": comm is in parentheses and may hold spaces.
    let (Some((_, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
        return false;
    };
    let comm = &stat[open + 1..stat.len() - rest.len() - 1];
    let state = rest.trim_start().chars().next();
    pid != 0 && comm == "netpath" && !matches!(state, Some('Z' | 'X') | None)
}

/// Stops a running agent of this datapath.
fn stop_agent(pid: u32, done: &mut Vec<String>) {
    if pid == std::process::id() || !agent_alive(pid) {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
        done.push(format!("stopped agent (pid {pid})"));
    }
}
