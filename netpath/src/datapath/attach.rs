//! Attaching the programs: TC ingress (TCX, or clsact through netlink), XDP, the
//! container programs on the bridge's ports; adopting pinned links.

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
    },
};
use netpath_common::{AGENT_F_XDP_GENERIC, AGENT_F_XDP_NATIVE, AgentInfo, prog_names};

use super::program;
use crate::{
    pin::PinDir,
    state::{self as config, Host},
};

/// Where a TC program goes.
pub struct Attachment {
    pub prog: &'static str,
    pub iface: String,
    /// Name of its pinned link under `<pin-dir>/links`.
    pub pin: String,
    /// Whether a pinned link of this program may be adopted: it is attached to this same
    /// interface (by the agent that `before` records).
    pub adopt: bool,
}

/// The programs and their interfaces; `before` is the `NP_AGENT` record of the datapath
/// being adopted (zeroed for a new one, whose ifindexes never match).
pub fn attachments(h: &Host, before: &AgentInfo) -> Vec<Attachment> {
    vec![
        Attachment {
            prog: prog_names::FROM_BRIDGE,
            iface: h.bridge.clone(),
            pin: prog_names::FROM_BRIDGE.into(),
            adopt: before.bridge_ifindex == h.bridge_ifindex,
        },
        Attachment {
            prog: prog_names::FROM_UPLINK,
            iface: h.uplink.clone(),
            pin: prog_names::FROM_UPLINK.into(),
            adopt: before.uplink_ifindex == h.uplink_ifindex,
        },
    ]
}

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new TCX link, pinned.
    NewLink,
    /// The program replaced the one in an existing pinned link (agent restart).
    Replaced,
    /// A clsact filter through netlink (kernels without TCX).
    Netlink,
}

/// Attaches `a` at TC ingress. Where a link for the same interface is pinned, the new
/// program is swapped into it atomically; a pinned link for another interface (the config
/// changed) is replaced by a new one.
pub fn attach(ebpf: &mut Ebpf, pins: &PinDir, a: &Attachment) -> Result<Attached> {
    let prog = program::<SchedClassifier>(ebpf, a.prog)?;
    let pin = pins.link_path(&a.pin);
    if pin.exists() {
        let old = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        if a.adopt {
            let link = SchedClassifierLink::try_from(FdLink::from(old))?;
            let id = prog
                .attach_to_link(link)
                .with_context(|| format!("replacing the program of {} on {}", a.prog, a.iface))?;
            // The pin keeps the link; dropping our handle must not detach it.
            let link = prog.take_link(id)?;
            std::mem::forget(link);
            return Ok(Attached::Replaced);
        }
        // Another interface: detach the old link (unpin, then close the last fd).
        drop(old.unpin()?);
    }
    let id = prog.attach(&a.iface, TcAttachType::Ingress).or_else(|e| {
        // Kernels without TCX: aya uses netlink, which needs the clsact qdisc.
        let _ = tc::qdisc_add_clsact(&a.iface);
        prog.attach(&a.iface, TcAttachType::Ingress)
            .with_context(|| {
                format!(
                    "attaching {} to {} ingress (first error: {e})",
                    a.prog, a.iface
                )
            })
    })?;
    let link = prog.take_link(id)?;
    match FdLink::try_from(link) {
        Ok(fd_link) => {
            fd_link
                .pin(&pin)
                .with_context(|| format!("pinning link {}", pin.display()))?;
            Ok(Attached::NewLink)
        }
        Err(_) => {
            // A netlink filter stays attached after we exit; `down` removes it by name.
            Ok(Attached::Netlink)
        }
    }
}

/// Name of the pinned link of `prog` on the interface `ifindex` (np_from_container on a
/// bridge port, np_from_bridge on the bridge of a network other than the `[host].bridge`).
fn iface_pin(prog: &str, ifindex: u32) -> String {
    format!("{prog}@{ifindex}")
}

/// What a sync of the container programs did.
#[derive(Debug, Default)]
pub struct PortChanges {
    pub attached: Vec<String>,
    pub adopted: usize,
    pub removed: usize,
}

/// Puts `prog` on every interface of `ifaces` (np_from_container on every port of the
/// networks' bridges, from sources::neigh::bridge_ports; np_from_bridge on the networks'
/// bridges): an interface whose pinned link exists gets the new program in it (agent restart, atomic),
/// those in `done` (known to have one already) are left alone, others get a new link;
/// links of `prog` on interfaces that are gone are unpinned. Returns what changed; an
/// attach that fails is reported and the rest go on.
pub fn sync_iface_links(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    prog: &'static str,
    ifaces: &[(u32, String)],
    done: &mut std::collections::HashSet<u32>,
) -> (PortChanges, Vec<String>) {
    let (mut changes, errors) = attach_ifaces(ebpf, pins, prog, ifaces, done);
    let live: std::collections::HashSet<u32> = ifaces.iter().map(|(i, _)| *i).collect();
    done.retain(|i| live.contains(i));
    let prefix = format!("{prog}@");
    if let Ok(entries) = std::fs::read_dir(pins.links()) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(idx) = file
                .strip_prefix(&prefix)
                .and_then(|i| i.parse::<u32>().ok())
            else {
                continue;
            };
            if !live.contains(&idx) {
                // The interface is gone (its link with it), a veth left its bridge, or a
                // network is no longer served: drop the pin, which detaches a link that
                // is still attached.
                drop_pin(&e.path());
                changes.removed += 1;
            }
        }
    }
    (changes, errors)
}

/// Puts `prog` on each interface of `ifaces` not in `done` (see [`sync_iface_links`]),
/// adding it to `done`; leaves every other interface alone.
pub fn attach_ifaces(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    prog: &'static str,
    ifaces: &[(u32, String)],
    done: &mut std::collections::HashSet<u32>,
) -> (PortChanges, Vec<String>) {
    let mut changes = PortChanges::default();
    let mut errors = Vec::new();
    for (ifindex, name) in ifaces {
        if done.contains(ifindex) {
            continue;
        }
        let a = Attachment {
            prog,
            iface: name.clone(),
            pin: iface_pin(prog, *ifindex),
            adopt: true,
        };
        match attach(ebpf, pins, &a) {
            Ok(Attached::Replaced) => {
                changes.adopted += 1;
                done.insert(*ifindex);
            }
            Ok(_) => {
                changes.attached.push(name.clone());
                done.insert(*ifindex);
            }
            Err(e) => errors.push(format!("{name}: {e:#}")),
        }
    }
    (changes, errors)
}

/// Takes `prog` off interface `ifindex` (gone, or no longer a port of a network's bridge):
/// drops its pinned link, which detaches a link that is still attached. True when there
/// was one.
pub fn detach_iface(
    pins: &PinDir,
    prog: &'static str,
    ifindex: u32,
    done: &mut std::collections::HashSet<u32>,
) -> bool {
    done.remove(&ifindex);
    let path = pins.link_path(&iface_pin(prog, ifindex));
    if !path.exists() {
        return false;
    }
    drop_pin(&path);
    true
}

/// Unpins the link pinned at `path` (a file that is no link: removed).
fn drop_pin(path: &std::path::Path) {
    match PinnedLink::from_pin(path) {
        Ok(l) => {
            let _ = l.unpin();
        }
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The `AGENT_F_XDP_*` bit of an XDP mode (0 for off).
pub fn xdp_flag(mode: config::XdpMode) -> u32 {
    match mode {
        config::XdpMode::Off => 0,
        config::XdpMode::Generic => AGENT_F_XDP_GENERIC,
        config::XdpMode::Native => AGENT_F_XDP_NATIVE,
    }
}

/// Whether an `NP_AGENT` record's flags say XDP decapsulates: it is attached, and is
/// not np_xdp_check (checks only, TC decapsulating).
pub fn xdp_decap(flags: u32) -> bool {
    xdp_mode(flags) != config::XdpMode::Off && flags & netpath_common::AGENT_F_XDP_CHECK == 0
}

/// The XDP mode an `NP_AGENT` record's flags say is attached.
pub fn xdp_mode(flags: u32) -> config::XdpMode {
    if flags & AGENT_F_XDP_NATIVE != 0 {
        config::XdpMode::Native
    } else if flags & AGENT_F_XDP_GENERIC != 0 {
        config::XdpMode::Generic
    } else {
        config::XdpMode::Off
    }
}

/// Puts the XDP program on the uplink as the config says. A pinned XDP link on the same
/// interface in the same mode gets the new program atomically; one in another mode or on
/// another interface (or with `xdp = "off"`) is detached first: the kernel cannot change
/// the mode of a link. Returns how it is attached, None for off.
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    h: &Host,
    before: &AgentInfo,
) -> Result<Option<Attached>> {
    let name = prog_names::XDP_UPLINK;
    let pin = pins.link_path(name);
    let had = xdp_mode(before.flags);
    let prog = super::xdp(ebpf)?;
    if pin.exists() {
        let old = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?;
        if h.xdp != config::XdpMode::Off
            && h.xdp == had
            && before.uplink_ifindex == h.uplink_ifindex
        {
            let link = XdpLink::try_from(FdLink::from(old))?;
            let id = prog
                .attach_to_link(link)
                .with_context(|| format!("replacing the XDP program on {}", h.uplink))?;
            std::mem::forget(prog.take_link(id)?);
            return Ok(Some(Attached::Replaced));
        }
        drop(old.unpin()?);
    }
    let mode = match h.xdp {
        config::XdpMode::Off => return Ok(None),
        config::XdpMode::Generic => aya::programs::XdpMode::Skb,
        config::XdpMode::Native => aya::programs::XdpMode::Driver,
    };
    let id = prog.attach(&h.uplink, mode).with_context(|| {
        format!(
            "attaching XDP to {} in {} mode{}",
            h.uplink,
            h.xdp,
            if h.xdp == config::XdpMode::Native {
                " (the driver may not support it: try xdp = \"generic\", or \"off\")"
            } else {
                ""
            }
        )
    })?;
    let Ok(link) = FdLink::try_from(prog.take_link(id)?) else {
        // aya fell back to netlink: such an attachment cannot be pinned or adopted.
        bail!("this kernel has no XDP links (Linux 5.9+): set xdp = \"off\"");
    };
    link.pin(&pin)
        .with_context(|| format!("pinning link {}", pin.display()))?;
    Ok(Some(Attached::NewLink))
}
