//! `netpath monitor`: drop events as they happen, from the `NP_EVENTS` ring buffer the
//! programs write (netpath-ebpf events.rs), with the interface and peer resolved here.
//! The programs report at most `[monitor] rate` drops per second and CPU; the rest are
//! counted as suppressed, and this reports how many. With `--debug`, the decision log
//! too (inspect/decisions.rs).

use std::{
    net::Ipv4Addr,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::RingBuf;
use netpath_common::{DropEvent, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Reason, map_names};
use serde::Serialize;

use crate::{
    inspect::{decisions, report},
    maps::{Maps, addr_of},
    pin::PinDir,
};

#[derive(Serialize, Debug, Clone)]
pub struct DropReport {
    pub event: &'static str,
    /// Wall-clock time of the drop, RFC 3339 with milliseconds.
    pub time: String,
    pub reason: String,
    pub interface: String,
    pub ifindex: u32,
    /// "tcp", "udp", "icmp" or the protocol number.
    pub proto: String,
    pub src: String,
    pub dst: String,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
    /// The peer the packet came from or went to, by its container subnet or underlay.
    pub peer: Option<String>,
    pub len: u32,
    /// Dropped by the XDP program (else TC).
    pub xdp: bool,
}

/// Drops the kernel did not report since the last line: over the rate, or the ring
/// buffer was full.
#[derive(Serialize, Debug)]
pub struct Suppressed {
    pub event: &'static str,
    pub suppressed: u64,
    pub lost: u64,
    pub rate_per_cpu: u32,
}

pub fn describe(ev: &DropEvent, peers_of: impl Fn(Ipv4Addr) -> Option<String>) -> DropReport {
    let (src, dst) = (addr_of(ev.src), addr_of(ev.dst));
    let ago = Duration::from_nanos(crate::maps::flows::monotonic_ns().saturating_sub(ev.ts_ns));
    let at = std::time::SystemTime::now() - ago;
    let ports = matches!(ev.proto, IPPROTO_TCP | IPPROTO_UDP);
    // ICMP: type and code where the ports would be.
    let icmp_tc = ev.sport.to_ne_bytes();
    DropReport {
        event: "drop",
        time: humantime::format_rfc3339_millis(at).to_string(),
        reason: Reason::from_u32(ev.reason)
            .map(|r| r.name().to_owned())
            .unwrap_or_else(|| format!("reason-{}", ev.reason)),
        interface: crate::iface::name_of(ev.ifindex).unwrap_or_else(|| ev.ifindex.to_string()),
        ifindex: ev.ifindex,
        proto: crate::inspect::flows::proto_name(ev.proto),
        src: src.to_string(),
        dst: dst.to_string(),
        sport: ports.then(|| u16::from_be(ev.sport)),
        dport: ports.then(|| u16::from_be(ev.dport)),
        icmp: (ev.proto == IPPROTO_ICMP).then_some((icmp_tc[0], icmp_tc[1])),
        peer: peers_of(src).or_else(|| peers_of(dst)),
        len: ev.len,
        xdp: ev.xdp != 0,
    }
}

pub fn drop_text(d: &DropReport) -> String {
    let ep = |a: &str, p: Option<u16>| match p {
        Some(p) => format!("{a}:{p}"),
        None => a.to_owned(),
    };
    let what = match d.icmp {
        Some((t, c)) => format!(" type {t} code {c}"),
        None => String::new(),
    };
    // The clock part of the RFC 3339 time: the date is today's.
    let clock = d.time.get(11..23).unwrap_or(&d.time);
    format!(
        "{clock}  {:<24} {:<8} {} {} -> {}{what}{}  len {}{}",
        d.reason,
        d.interface,
        d.proto,
        ep(&d.src, d.sport),
        ep(&d.dst, d.dport),
        d.peer
            .as_deref()
            .map(|p| format!("  peer {p}"))
            .unwrap_or_default(),
        d.len,
        if d.xdp { "  (xdp)" } else { "" }
    )
}

/// Runs until Ctrl-C, `count` drops (and decisions), or `duration`. One reader at a
/// time: two monitors on one host share the events between them. With `debug`, the
/// decision log too (`netpath debug on`), followed across agent restarts.
pub fn run(
    pins: &PinDir,
    json: bool,
    count: Option<u64>,
    duration: Option<Duration>,
    debug: bool,
) -> Result<()> {
    let maps = Maps::open(pins)?;
    let mut log = if debug {
        let state = maps.debug.get(&0, 0)?;
        if !json {
            eprintln!("{}", decisions::state_text(&state));
            if state.flags & netpath_common::DEBUG_F_ON == 0 {
                eprintln!("note: switch it on with `netpath debug on [--match CIDR]`");
            }
        }
        Some(decisions::Reader::open(pins)?)
    } else {
        None
    };
    let rate = maps.monitor.get(&0, 0)?.rate;
    let map = pins.open(map_names::EVENTS)?;
    let mut ring = RingBuf::try_from(map).context("opening the drop-event ring buffer")?;
    if rate == 0 && !json {
        eprintln!(
            "note: [monitor] rate = 0 on this host: no drop is reported, only counted (netpath stats)"
        );
    }
    if !json {
        eprintln!(
            "watching drops at {} (up to {rate} events per second and CPU; Ctrl-C stops)",
            pins.root.display()
        );
    }
    let mut peers = report::peer_rows(&maps)?;
    let mut peers_read = Instant::now();
    let mut last = maps.event_totals()?;
    let start = Instant::now();
    let mut seen = 0u64;
    loop {
        let left = match duration {
            Some(d) => match d.checked_sub(start.elapsed()) {
                Some(l) => l,
                None => break,
            },
            None => Duration::from_secs(1),
        };
        let wait = left.min(Duration::from_millis(250));
        let mut fds = vec![nix::poll::PollFd::new(
            ring.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if let Some(l) = &log {
            fds.push(nix::poll::PollFd::new(l.fd(), nix::poll::PollFlags::POLLIN));
        }
        match nix::poll::poll(
            &mut fds,
            nix::poll::PollTimeout::try_from(wait).unwrap_or(nix::poll::PollTimeout::MAX),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("waiting for drop events"),
        }
        drop(fds);
        if peers_read.elapsed() > Duration::from_secs(5) {
            peers = report::peer_rows(&maps)?;
            peers_read = Instant::now();
            // A restarted agent loaded other programs, with their own log.
            if let Some(l) = &log
                && decisions::running_prog(pins).is_ok_and(|id| id != l.prog_id)
            {
                log = Some(decisions::Reader::open(pins)?);
            }
        }
        if let Some(l) = &mut log {
            for r in l.take() {
                let d = decisions::describe(&r, |id| {
                    peers.iter().find(|p| p.id == id).map(|p| p.name.clone())
                });
                if json {
                    println!("{}", serde_json::to_string(&d)?);
                } else {
                    println!("{}", decisions::text(&d));
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        while let Some(item) = ring.next() {
            let Some(ev) = bytemuck::try_pod_read_unaligned::<DropEvent>(&item).ok() else {
                continue;
            };
            let d = describe(&ev, |a| {
                report::peer_of(&peers, a, true).map(|p| p.name.clone())
            });
            if json {
                println!("{}", serde_json::to_string(&d)?);
            } else {
                println!("{}", drop_text(&d));
            }
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                break;
            }
        }
        let now = maps.event_totals()?;
        report_suppressed(&last, &now, rate, json)?;
        last = now;
        use std::io::Write;
        std::io::stdout().flush()?;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

fn report_suppressed(
    last: &netpath_common::EventLimit,
    now: &netpath_common::EventLimit,
    rate: u32,
    json: bool,
) -> Result<()> {
    let s = Suppressed {
        event: "suppressed",
        suppressed: now.suppressed.saturating_sub(last.suppressed),
        lost: now.lost.saturating_sub(last.lost),
        rate_per_cpu: rate,
    };
    if s.suppressed + s.lost == 0 {
        return Ok(());
    }
    if json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "-- {} drops not shown: {} over the rate ({rate}/s per CPU), {} lost (ring buffer full); `netpath stats` counts them all",
            s.suppressed + s.lost,
            s.suppressed,
            s.lost
        );
    }
    Ok(())
}
