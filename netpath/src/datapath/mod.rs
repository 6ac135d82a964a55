//! Loading the datapath's programs (maps opened from their pins or created), attaching
//! and adopting them (attach), and removing everything (down).
//!
//! The datapath outlives the agent: maps are pinned under `<pin-dir>/maps`, TCX links
//! under `<pin-dir>/links`. An agent that starts where a datapath is already pinned
//! reuses the maps (aya opens pinned maps by name) and swaps its freshly loaded programs
//! into the existing links with BPF_LINK_UPDATE, which is atomic: no packet is ever
//! without a program.

pub mod attach;
pub mod down;

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};
use netpath_common::{map_names, prog_names};

use crate::pin::PinDir;

/// Maps of the object that are not netpath's: aya-log's ring buffer of the decision log
/// and its level (`.rodata`). Each loading process has its own; never pinned (`netpath
/// monitor --debug` finds the running programs' ring buffer by their id).
pub const PRIVATE_MAPS: &[&str] = &[".rodata", "AYA_LOGS"];

/// The compiled programs, built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath"));

/// Loads the object. With a pin dir, maps are opened from it when pinned there, or
/// created and pinned; without one (packet tests), they are private to this process.
/// `ct_size` sizes the conntrack and NAT tables it creates (pinned ones keep their size).
pub fn load(pins: Option<&PinDir>, ct_size: u32) -> Result<Ebpf> {
    load_with(|name| pins.map(|p| p.map_path(name)), ct_size)
}

/// Loads the object, each map `pin` gives a path for opened from (or pinned at) that
/// path, the others private to this process (`netpath trace` shares only the maps the
/// programs read).
pub fn load_with(pin: impl Fn(&str) -> Option<std::path::PathBuf>, ct_size: u32) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_names::CT, ct_size)
        .map_max_entries(map_names::NAT, ct_size);
    for name in map_names::ALL {
        if let Some(path) = pin(name) {
            loader.map_pin_path(name, path);
        }
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| no_memory(&e, ct_size).unwrap_or_else(|| e.into()))
        .context("loading the eBPF object")?;
    // XDP is loaded even with `xdp = "off"`: a config change needs no other object.
    for name in [
        prog_names::FROM_BRIDGE,
        prog_names::FROM_UPLINK,
        prog_names::FROM_CONTAINER,
    ] {
        program::<SchedClassifier>(&mut ebpf, name)?
            .load()
            .with_context(|| format!("loading program {name} (the verifier's log says why)"))?;
    }
    load_xdp(&mut ebpf)?;
    Ok(ebpf)
}

/// Loads np_xdp_uplink, or np_xdp_check where the kernel refuses XDP metadata to XDP
/// programs (its verifier: "cannot use helper bpf_xdp_adjust_meta"): the same checks and
/// drops, TC decapsulating every tunnel packet. Said once, as a warning.
fn load_xdp(ebpf: &mut Ebpf) -> Result<()> {
    let why = |name: &str| format!("loading program {name} (the verifier's log says why)");
    let first = program::<Xdp>(ebpf, prog_names::XDP_UPLINK)?.load();
    let Err(e) = first else {
        return Ok(());
    };
    let no_meta = matches!(&e, aya::programs::ProgramError::LoadError { verifier_log, .. }
        if verifier_log.to_string().contains("cannot use helper bpf_xdp_adjust_meta"));
    if !no_meta {
        return Err(e).with_context(|| why(prog_names::XDP_UPLINK));
    }
    program::<Xdp>(ebpf, prog_names::XDP_CHECK)?
        .load()
        .with_context(|| why(prog_names::XDP_CHECK))?;
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log::warn!(
            "this kernel gives XDP programs no metadata (bpf_xdp_adjust_meta): XDP on the uplink checks and drops, TC decapsulates ({} instead of {})",
            prog_names::XDP_CHECK,
            prog_names::XDP_UPLINK
        )
    });
    Ok(())
}

/// Whether the XDP program loaded decapsulates (np_xdp_uplink), or only checks
/// (np_xdp_check, see [`load_xdp`]).
pub fn xdp_decaps(ebpf: &Ebpf) -> bool {
    ebpf.program(prog_names::XDP_UPLINK)
        .is_some_and(|p| p.fd().is_ok())
}

/// The XDP program loaded (see [`load_xdp`]).
pub fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let name = loaded_name(ebpf, prog_names::XDP_UPLINK);
    program::<Xdp>(ebpf, name)
}

/// The program of `ebpf` that runs as `name`: the XDP program loaded for
/// [`prog_names::XDP_UPLINK`], `name` itself otherwise.
pub fn loaded_name<'a>(ebpf: &Ebpf, name: &'a str) -> &'a str {
    if name == prog_names::XDP_UPLINK && !xdp_decaps(ebpf) {
        prog_names::XDP_CHECK
    } else {
        name
    }
}

/// A map the kernel would not create for want of memory (charged to the creating
/// process's memory cgroup) or of permission (root, or RLIMIT_MEMLOCK before Linux 5.11),
/// said with its size and what to do; None for other errors.
fn no_memory(e: &aya::EbpfError, ct_size: u32) -> Option<anyhow::Error> {
    use netpath_common::{CtEntry, CtKey, NatKey, NatValue};
    let chain = std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source());
    let (name, io) = chain.into_iter().find_map(|e| match e.downcast_ref() {
        Some(aya::maps::MapError::CreateError { name, io_error }) => Some((name, io_error)),
        _ => None,
    })?;
    match io.raw_os_error() {
        Some(libc::ENOMEM) => {}
        Some(libc::EPERM) => {
            return Some(anyhow::anyhow!(
                "the kernel did not permit creating map {name} ({io}): the agent needs root (CAP_BPF and CAP_NET_ADMIN); before Linux 5.11 a too small RLIMIT_MEMLOCK gives this too"
            ));
        }
        _ => return None,
    }
    let entry = match name.as_str() {
        map_names::CT => size_of::<CtKey>() + size_of::<CtEntry>(),
        map_names::NAT => size_of::<NatKey>() + size_of::<NatValue>(),
        _ => {
            return Some(anyhow::anyhow!(
                "the kernel has no memory for map {name} ({io}): give the agent more (its memory cgroup's limit)"
            ));
        }
    };
    let mib = (ct_size as u64 * entry as u64) >> 20;
    Some(anyhow::anyhow!(
        "the kernel has no memory for map {name} ({io}): {ct_size} entries of {entry} bytes, at least {mib} MiB; lower [conntrack].size (default {}) or give the agent more memory (its memory cgroup's limit)",
        netpath_common::DEFAULT_CT_SIZE
    ))
}

/// The program `name` of the object, as its type.
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    Ok(prog.try_into()?)
}

/// FNV-1a 64 of the eBPF object this binary carries: tells which build's programs run.
pub fn object_digest() -> u64 {
    OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(name: &str, errno: i32) -> aya::EbpfError {
        aya::maps::MapError::CreateError {
            name: name.into(),
            io_error: std::io::Error::from_raw_os_error(errno),
        }
        .into()
    }

    #[test]
    fn a_map_refused_for_memory_or_permission_is_explained_and_others_are_left_alone() {
        let ct = no_memory(&refused(map_names::CT, libc::ENOMEM), 1 << 24).unwrap();
        let ct = ct.to_string();
        assert!(
            ct.starts_with(&format!(
                "the kernel has no memory for map {}",
                map_names::CT
            )) && ct.contains("16777216 entries of")
                && ct.contains("lower [conntrack].size (default 65536)"),
            "{ct}"
        );
        let other = no_memory(&refused(map_names::PEERS, libc::ENOMEM), 1 << 24).unwrap();
        let other = other.to_string();
        assert!(
            other.contains(map_names::PEERS) && !other.contains("[conntrack]"),
            "{other}"
        );
        let perm = no_memory(&refused(map_names::NAT, libc::EPERM), 1024).unwrap();
        assert!(perm.to_string().contains("needs root"), "{perm}");
        assert!(no_memory(&refused(map_names::CT, libc::EINVAL), 1024).is_none());
    }
}
