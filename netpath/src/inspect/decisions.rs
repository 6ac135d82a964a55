//! The decision log (`netpath debug on`, shown by `netpath monitor --debug`): what each
//! program decided about each matching packet. The programs write a `DebugRecord` per
//! decision through aya-log (netpath-ebpf debug.rs) into the ring buffer of the running
//! object, which is not pinned: it is found here from the program in the pinned link.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, BorrowedFd},
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};
use aya_log::EbpfLogger;
use netpath_common::{
    DEBUG_F_ON, DebugRecord, DebugState, PROG_FROM_BRIDGE, PROG_FROM_CONTAINER, PROG_FROM_UPLINK,
    PROG_XDP_UPLINK, Reason, prog_names,
};
use serde::Serialize;

use crate::{maps::Maps, pin::PinDir, sys};

/// What `describe` makes of a record.
#[derive(Serialize, Debug, Clone)]
pub struct DecisionReport {
    pub event: &'static str,
    pub program: &'static str,
    pub reason: String,
    /// The program's action: "forward" (redirected), "pass", "drop", or the number.
    pub action: String,
    pub proto: String,
    /// The packet as it came in.
    pub src: String,
    pub dst: String,
    /// As it left (translated, decapsulated), where that differs.
    pub out: Option<String>,
    pub peer: Option<String>,
    /// The policy rule of its flow (0: the default action).
    pub rule: Option<u32>,
}

/// aya-log hands each record to a `log::Log`; this one keeps the messages for the
/// reader.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if let Ok(mut v) = self.0.lock() {
            v.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// The decision log of the programs running now at a pin dir.
pub struct Reader {
    logger: EbpfLogger<Collect>,
    got: Collect,
    /// The program whose object's ring buffer this reads (an agent restart loads others).
    pub prog_id: u32,
}

/// The id of the program in the pinned link of np_from_bridge (every program of one
/// load shares the object's log).
pub fn running_prog(pins: &PinDir) -> Result<u32> {
    let link = pins.link_path(prog_names::FROM_BRIDGE);
    let fd = sys::obj_get(&link).with_context(|| {
        format!(
            "no pinned link at {}: the decision log needs the programs attached with TCX",
            link.display()
        )
    })?;
    Ok(sys::link_facts(fd.as_fd())?.prog_id)
}

impl Reader {
    pub fn open(pins: &PinDir) -> Result<Reader> {
        let prog_id = running_prog(pins)?;
        let got = Collect::default();
        let logger = EbpfLogger::init_from_id_with_logger(prog_id, got.clone())
            .with_context(|| format!("opening the decision log of program {prog_id}"))?;
        Ok(Reader {
            logger,
            got,
            prog_id,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }

    /// The records written since the last call.
    pub fn take(&mut self) -> Vec<DebugRecord> {
        self.logger.flush();
        let msgs = self
            .got
            .0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        msgs.iter().filter_map(|m| decode(m)).collect()
    }
}

/// A record from its aya-log message, `np <hex bytes>`; None for anything else.
pub fn decode(msg: &str) -> Option<DebugRecord> {
    let hex = msg.strip_prefix("np ")?;
    if hex.len() != 2 * size_of::<DebugRecord>() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    bytemuck::try_pod_read_unaligned(&bytes?).ok()
}

fn prog_name(p: u8) -> &'static str {
    match p {
        PROG_FROM_BRIDGE => prog_names::FROM_BRIDGE,
        PROG_FROM_UPLINK => prog_names::FROM_UPLINK,
        PROG_FROM_CONTAINER => prog_names::FROM_CONTAINER,
        PROG_XDP_UPLINK => prog_names::XDP_UPLINK,
        _ => "unknown",
    }
}

/// TC actions (and XDP_DROP for the XDP program) by name.
fn action_name(prog: u8, a: i32) -> String {
    match (prog, a) {
        (PROG_XDP_UPLINK, 1) => "drop".into(),
        (_, -1) | (_, 0) => "pass".into(),
        (_, 2) => "drop".into(),
        (_, 7) => "forward".into(),
        (_, n) => n.to_string(),
    }
}

pub fn describe(r: &DebugRecord, peer_name: impl Fn(u32) -> Option<String>) -> DecisionReport {
    let proto = crate::inspect::flows::proto_name(r.proto);
    let ports = matches!(r.proto, 6 | 17);
    let ep = |a: u32, p: u16| {
        let a = Ipv4Addr::from(u32::from_be(a));
        if ports {
            format!("{a}:{}", u16::from_be(p))
        } else {
            a.to_string()
        }
    };
    let (src, dst) = (ep(r.src, r.sport), ep(r.dst, r.dport));
    let (osrc, odst) = (ep(r.out_src, r.out_sport), ep(r.out_dst, r.out_dport));
    DecisionReport {
        event: "decision",
        program: prog_name(r.prog),
        reason: Reason::from_u32(r.reason as u32)
            .map(|x| x.name().to_owned())
            .unwrap_or_else(|| format!("reason-{}", r.reason)),
        action: action_name(r.prog, r.action),
        proto,
        out: (osrc != src || odst != dst).then(|| format!("{osrc} -> {odst}")),
        src,
        dst,
        peer: (r.peer != u32::MAX)
            .then(|| peer_name(r.peer).unwrap_or_else(|| format!("#{}", r.peer))),
        rule: (r.rule != u32::MAX).then_some(r.rule),
    }
}

pub fn text(d: &DecisionReport) -> String {
    format!(
        "{:<18} {:<24} {:<7} {} {} -> {}{}{}{}",
        d.program,
        d.reason,
        d.action,
        d.proto,
        d.src,
        d.dst,
        d.out
            .as_deref()
            .map(|o| format!("  out {o}"))
            .unwrap_or_default(),
        d.peer
            .as_deref()
            .map(|p| format!("  peer {p}"))
            .unwrap_or_default(),
        d.rule.map(|r| format!("  rule {r}")).unwrap_or_default(),
    )
}

/// `NP_DEBUG`, readable (`dump debug`).
#[derive(Serialize, Debug)]
pub struct DebugView {
    pub on: bool,
    /// The network packets must come from or go to; None: every packet.
    pub matching: Option<String>,
}

pub fn view(s: &DebugState) -> DebugView {
    DebugView {
        on: s.flags & DEBUG_F_ON != 0,
        matching: (s.match_mask != 0).then(|| {
            ipnet::Ipv4Net::with_netmask(
                Ipv4Addr::from(u32::from_be(s.match_addr)),
                Ipv4Addr::from(u32::from_be(s.match_mask)),
            )
            .map_or_else(|_| "?".into(), |n| n.to_string())
        }),
    }
}

/// The switch as `netpath debug` shows it.
pub fn state_text(s: &DebugState) -> String {
    match view(s) {
        DebugView { on: false, .. } => "the decision log is off".into(),
        DebugView { matching: None, .. } => "the decision log is on, for every packet".into(),
        DebugView {
            matching: Some(net),
            ..
        } => format!("the decision log is on, for packets from or to {net}"),
    }
}

/// The `NP_DEBUG` entry for the log on (for packets from or to `matching`, or every
/// packet) or off.
pub fn state(on: bool, matching: Option<ipnet::Ipv4Net>) -> DebugState {
    DebugState {
        flags: if on { DEBUG_F_ON } else { 0 },
        match_addr: matching.map_or(0, |n| u32::from(n.network()).to_be()),
        match_mask: matching.map_or(0, |n| u32::from(n.netmask()).to_be()),
        _pad: 0,
    }
}

/// Switches the log: `on` with an optional network to match, or off.
pub fn set(pins: &PinDir, on: bool, matching: Option<ipnet::Ipv4Net>) -> Result<DebugState> {
    if !on && matching.is_some() {
        bail!("--match goes with `debug on`");
    }
    let _lock = pins.lock()?;
    let mut maps = Maps::open(pins)?;
    let s = state(on, matching);
    maps.debug.set(0, s, 0)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_its_trip_through_aya_logs_hex() {
        let r = DebugRecord {
            prog: PROG_FROM_BRIDGE,
            reason: Reason::FwdDirect as u8,
            proto: 6,
            action: 7,
            src: u32::from(Ipv4Addr::new(10, 244, 11, 2)).to_be(),
            dst: u32::from(Ipv4Addr::new(10, 244, 12, 2)).to_be(),
            sport: 40000u16.to_be(),
            dport: 7000u16.to_be(),
            out_src: u32::from(Ipv4Addr::new(10, 244, 11, 2)).to_be(),
            out_dst: u32::from(Ipv4Addr::new(10, 244, 12, 2)).to_be(),
            out_sport: 40000u16.to_be(),
            out_dport: 7000u16.to_be(),
            peer: 3,
            rule: u32::MAX,
            ..DebugRecord::default()
        };
        let msg = format!(
            "np {}",
            bytemuck::bytes_of(&r)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        assert_eq!(decode(&msg), Some(r));
        for bad in ["", "np", "np 00", "xx 0000", &msg[..msg.len() - 1]] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        let d = describe(&r, |id| (id == 3).then(|| "h2".to_owned()));
        assert_eq!(
            text(&d),
            format!(
                "{:<18} {:<24} {:<7} tcp 10.244.11.2:40000 -> 10.244.12.2:7000  peer h2",
                "np_from_bridge", "fwd-direct", "forward"
            )
        );
    }
}
