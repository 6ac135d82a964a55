//! Masquerade and published ports: netpath's own NAT, on a conntrack of its own (neither
//! iptables nor nf_conntrack is involved, so flushing the nat table changes nothing).
//!
//! A flow is two LRU entries. `CT`, by the tuple on the container's side (container,
//! remote, ports, protocol), holds the port on the host's address and what has been seen
//! of the flow; `NAT`, by the tuple on the uplink (remote, remote port, host port,
//! protocol), leads back to the container. Reserving the `NAT` key is how a port is
//! allocated, so one port serves flows to different remote ends. Masquerade creates both
//! on a container's first packet to the outside, a published port on a client's first
//! packet. Then:
//! - out (bridge ingress): source container:port -> host address:port;
//! - in (uplink ingress): destination host address:port -> container:port;
//! - ICMP errors coming in about a flow are translated, the quoted header included.
//!
//! For ICMP echo the identifier plays the container's port and the remote port is 0.
//! The agent owns the timeouts: it expires idle flows and removes a half that the LRU
//! left alone when it evicted the other.
//!
//! Header rewrites go through bpf_l3/l4_csum_replace: on a CHECKSUM_PARTIAL packet (a
//! container's TCP or UDP with checksum offload) they update only the pseudo-header part,
//! which is what the device or GSO completes later.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use netpath_common::{
    CONFIG_F_MASQUERADE, CT_F_FIN_CONTAINER, CT_F_FIN_REMOTE, CT_F_RST, CT_F_SEEN_CONTAINER,
    CT_F_SEEN_REMOTE, CT_KIND_MASQUERADE, CT_KIND_PUBLISHED, Config, CtEntry, CtKey, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, NatKey, NatValue, PublishKey, Reason,
};

use crate::{
    maps::{CT, NAT, PUBLISH},
    parse::{
        ETH_LEN, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHO_REPLY, ICMP_PARAMETERPROB,
        ICMP_TIME_EXCEEDED, Ipv4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, csum_replace2, csum_replace4,
    },
};

const EEXIST: i32 = 17;
/// Ports tried for a new masqueraded flow after its own: consecutive ones from a random
/// start, so that in a range of up to this many every port is tried.
const PORT_TRIES: u32 = 32;
/// `last_seen_ns` is rewritten at most this often (every packet would bounce the entry's
/// cache line between CPUs); timeouts are in seconds.
const REFRESH_NS: u64 = 1_000_000_000;

/// Offsets of the IPv4 header fields rewritten here.
const IP_CHECK: usize = ETH_LEN + 10;
const IP_SRC: usize = ETH_LEN + 12;
const IP_DST: usize = ETH_LEN + 16;

/// The L4 part of a packet that NAT looks at. Ports as they sit in the packet (network
/// byte order); for ICMP echo both ports are the identifier.
#[derive(Clone, Copy)]
struct L4 {
    proto: u8,
    /// Offset of the L4 header.
    off: usize,
    sport: u16,
    dport: u16,
    /// TCP flags, 0 for other protocols.
    tcp_flags: u8,
}

impl L4 {
    /// Offset of the L4 checksum.
    #[inline(always)]
    fn check_off(&self) -> usize {
        match self.proto {
            IPPROTO_TCP => self.off + 16,
            IPPROTO_UDP => self.off + 6,
            _ => self.off + 2,
        }
    }

    /// Offset of the source (`src`) or destination port; the identifier for ICMP echo.
    #[inline(always)]
    fn port_off(&self, src: bool) -> usize {
        match self.proto {
            IPPROTO_ICMP => self.off + 4,
            _ if src => self.off,
            _ => self.off + 2,
        }
    }
}

/// Reads what NAT needs of `ip`'s payload: TCP or UDP ports, or the identifier of an ICMP
/// echo of type `echo_type` (requests go out, replies come in). `None` for anything else:
/// other protocols or ICMP types, and fragments (only the first carries the ports, and the
/// others would not be translated with it).
#[inline(always)]
fn l4(ctx: &TcContext, ip: &Ipv4, echo_type: u8) -> Result<Option<L4>, Reason> {
    if u16::from_be_bytes(ip.hdr.frags) & 0x3fff != 0 {
        return Ok(None);
    }
    let off = ETH_LEN + ip.hlen();
    let bad = |_| Reason::DropMalformed;
    let l4 = match ip.hdr.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            // One load per packet: TCP's ports and flags (bytes 0-13) together.
            let (h, tcp_flags) = if ip.hdr.proto == IPPROTO_TCP {
                let h: [u8; 14] = ctx.load(off).map_err(bad)?;
                ([h[0], h[1], h[2], h[3]], h[13])
            } else {
                (ctx.load::<[u8; 4]>(off).map_err(bad)?, 0)
            };
            L4 {
                proto: ip.hdr.proto,
                off,
                sport: u16::from_ne_bytes([h[0], h[1]]),
                dport: u16::from_ne_bytes([h[2], h[3]]),
                tcp_flags,
            }
        }
        IPPROTO_ICMP => {
            let icmp: [u8; 8] = ctx.load(off).map_err(bad)?;
            if icmp[0] != echo_type || icmp[1] != 0 {
                return Ok(None);
            }
            let id = u16::from_ne_bytes([icmp[4], icmp[5]]);
            L4 {
                proto: IPPROTO_ICMP,
                off,
                sport: id,
                dport: id,
                tcp_flags: 0,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(l4))
}

/// Records a packet of the flow `e`: what it saw (`seen`: `CT_F_SEEN_*`) and the TCP
/// flags that move it towards closing. A SYN on a closing flow is a new connection on the
/// same tuple (the client reused its port): the flow starts again.
#[inline(always)]
fn touch(e: *mut CtEntry, l4: &L4, from_container: bool) {
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a value of an LRU hash map; concurrent writers race only on these plain
    // fields, and any of their values is valid.
    unsafe {
        let old = (*e).flags;
        let mut flags = old
            | if from_container {
                CT_F_SEEN_CONTAINER
            } else {
                CT_F_SEEN_REMOTE
            };
        if l4.proto == IPPROTO_TCP {
            let f = l4.tcp_flags;
            if f & TCP_SYN != 0
                && f & TCP_ACK == 0
                && flags & (CT_F_FIN_CONTAINER | CT_F_FIN_REMOTE | CT_F_RST) != 0
            {
                flags &= !(CT_F_FIN_CONTAINER | CT_F_FIN_REMOTE | CT_F_RST);
            }
            if f & TCP_RST != 0 {
                flags |= CT_F_RST;
            }
            if f & TCP_FIN != 0 {
                flags |= if from_container {
                    CT_F_FIN_CONTAINER
                } else {
                    CT_F_FIN_REMOTE
                };
            }
        }
        if flags != old || now.wrapping_sub((*e).last_seen_ns) > REFRESH_NS {
            (*e).flags = flags;
            (*e).last_seen_ns = now;
        }
    }
}

/// Rewrites one address and the matching port of the packet (`src`: the source, else the
/// destination) with every checksum that covers them. An error leaves the packet half
/// rewritten: the caller drops it.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    l4: &L4,
    src: bool,
    addr: (u32, u32),
    port: (u16, u16),
) -> Result<(), Reason> {
    let fail = |_| Reason::DropMalformed;
    let check = l4.check_off();
    ctx.l3_csum_replace(IP_CHECK, addr.0 as u64, addr.1 as u64, 4)
        .map_err(fail)?;
    // ICMP's checksum covers no pseudo header: only the identifier matters to it. A UDP
    // checksum of 0 means none and stays 0 (BPF_F_MARK_MANGLED_0).
    let mangled = if l4.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    if l4.proto != IPPROTO_ICMP {
        let flags = 4 | BPF_F_PSEUDO_HDR as u64 | mangled;
        ctx.l4_csum_replace(check, addr.0 as u64, addr.1 as u64, flags)
            .map_err(fail)?;
    }
    ctx.store(if src { IP_SRC } else { IP_DST }, &addr.1, 0)
        .map_err(fail)?;
    if port.0 != port.1 {
        ctx.l4_csum_replace(check, port.0 as u64, port.1 as u64, 2 | mangled)
            .map_err(fail)?;
        ctx.store(l4.port_off(src), &port.1, 0).map_err(fail)?;
    }
    Ok(())
}

/// A packet from a local container that leaves this host: to a peer (`to_peer`) or, with
/// no peer route, to the outside. Translates its source when it belongs to a flow (a
/// reply on a published port, or a masqueraded flow), or starts a masqueraded flow when
/// it goes to the outside. Returns the reason to count if it translated the packet (then
/// the caller reparses it); `Ok(None)` when a packet to a peer is not NAT's business.
/// Without a peer route the packet is never left untranslated: it is the stack's (`Err`)
/// or dropped. Nothing is changed before every check has passed.
#[inline(always)]
pub fn egress(
    ctx: &TcContext,
    cfg: &Config,
    ip: &Ipv4,
    to_peer: bool,
) -> Result<Option<Reason>, Reason> {
    let masquerade = cfg.flags & CONFIG_F_MASQUERADE != 0;
    let not_ours = if to_peer {
        Ok(None)
    } else if masquerade {
        Err(Reason::PassNatUnsupported)
    } else {
        Err(Reason::PassUnknownDst)
    };
    let Some(l4) = l4(ctx, ip, ICMP_ECHO)? else {
        return not_ours;
    };
    let key = CtKey {
        container: ip.src,
        remote: ip.dst,
        container_port: l4.sport,
        remote_port: if l4.proto == IPPROTO_ICMP {
            0
        } else {
            l4.dport
        },
        proto: l4.proto,
        _pad: [0; 3],
    };
    let (nat_port, reason) = match CT.get_ptr_mut(&key) {
        Some(e) => {
            if ip.hdr.ttl <= 1 {
                return Err(Reason::PassTtlExpired);
            }
            touch(e, &l4, true);
            // SAFETY: as in `touch`.
            let (nat_port, kind) = unsafe { ((*e).nat_port, (*e).kind) };
            let reason = if kind == CT_KIND_PUBLISHED {
                Reason::FwdPublishedReply
            } else {
                Reason::FwdMasquerade
            };
            (nat_port, reason)
        }
        None => {
            if to_peer || !masquerade {
                return not_ours;
            }
            // Only the local subnet's containers are masqueraded, and only to unicast
            // addresses.
            let first = u32::from_be(ip.dst) >> 24;
            if ip.src & cfg.subnet_mask != cfg.subnet_addr
                || ip.src == cfg.gateway_addr
                || first == 0
                || first == 127
                || first >= 224
            {
                return Err(Reason::PassUnknownDst);
            }
            if ip.hdr.ttl <= 1 {
                return Err(Reason::PassTtlExpired);
            }
            (new_flow(cfg, &key)?, Reason::FwdMasquerade)
        }
    };
    rewrite(
        ctx,
        &l4,
        true,
        (ip.src, cfg.host_addr),
        (l4.sport, nat_port),
    )?;
    Ok(Some(reason))
}

/// Allocates a port on the host's address for the masqueraded flow `key` and records the
/// flow. The container's own port is tried first when it is in the range, then up to
/// PORT_TRIES others. Returns the port (network byte order). A port is taken when a flow
/// to the same remote address and port holds it: reservation is an insert that fails on
/// an existing key, so no existing flow is ever replaced.
#[inline(always)]
fn new_flow(cfg: &Config, key: &CtKey) -> Result<u16, Reason> {
    let min = cfg.nat_port_min as u32;
    let max = cfg.nat_port_max as u32;
    if max < min {
        return Err(Reason::DropNatNoPort);
    }
    let range = max - min + 1;
    if range == 0 {
        // Cannot happen (16-bit ports); tells the compiler the modulo below is safe.
        return Err(Reason::DropNatNoPort);
    }
    let value = NatValue {
        container: key.container,
        container_port: key.container_port,
        _pad: [0; 2],
    };
    let mut nat = NatKey {
        remote: key.remote,
        remote_port: key.remote_port,
        nat_port: 0,
        proto: key.proto,
        _pad: [0; 3],
    };
    let own = u16::from_be(key.container_port) as u32;
    // SAFETY: helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % range;
    let mut port = 0u16;
    for i in 0..=PORT_TRIES {
        let p = if i == 0 {
            if own < min || own - min >= range {
                continue;
            }
            own
        } else {
            min + (start + i) % range
        };
        nat.nat_port = (p as u16).to_be();
        match NAT.insert(&nat, &value, BPF_NOEXIST as u64) {
            Ok(()) => {
                port = nat.nat_port;
                break;
            }
            Err(e) if e == -EEXIST => {}
            Err(_) => return Err(Reason::DropCtInsertFailed),
        }
    }
    if port == 0 {
        return Err(Reason::DropNatNoPort);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_port: port,
        kind: CT_KIND_MASQUERADE,
        flags: CT_F_SEEN_CONTAINER,
        _pad: [0; 4],
    };
    if CT.insert(key, &entry, BPF_NOEXIST as u64).is_err() {
        // Another CPU recorded the same flow first (its first packets raced), or the
        // table refused: give the port back. The next packet finds that CPU's entry.
        let _ = NAT.remove(&nat);
        return Err(Reason::DropCtInsertFailed);
    }
    Ok(port)
}

/// A packet from the uplink for the host's own address. Translates it to its container
/// when it belongs to a flow (a reply to a masqueraded flow, or a published port's flow),
/// starts a flow when it comes to a published port, or translates an ICMP error about a
/// flow. Returns the reason to count (the caller reparses and delivers it);
/// `Err(PassNotForUs)` when it is the host's own traffic.
#[inline(always)]
pub fn ingress(ctx: &TcContext, cfg: &Config, ip: &Ipv4) -> Result<Reason, Reason> {
    if ip.hdr.proto == IPPROTO_ICMP && u16::from_be_bytes(ip.hdr.frags) & 0x3fff == 0 {
        let off = ETH_LEN + ip.hlen();
        let ty: u8 = ctx.load(off).map_err(|_| Reason::DropMalformed)?;
        if ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAMETERPROB {
            return icmp_error(ctx, cfg, ip, off);
        }
    }
    let Some(l4) = l4(ctx, ip, ICMP_ECHO_REPLY)? else {
        return Err(Reason::PassNotForUs);
    };
    let remote_port = if l4.proto == IPPROTO_ICMP {
        0
    } else {
        l4.sport
    };
    let nat = NatKey {
        remote: ip.src,
        remote_port,
        nat_port: l4.dport,
        proto: l4.proto,
        _pad: [0; 3],
    };
    // SAFETY: read once into a copy; a concurrent update yields another valid value.
    let (value, created) = match unsafe { NAT.get(&nat) } {
        Some(v) => (*v, false),
        None => (published(&nat)?, true),
    };
    if ip.hdr.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    let key = CtKey {
        container: value.container,
        remote: ip.src,
        container_port: value.container_port,
        remote_port,
        proto: l4.proto,
        _pad: [0; 3],
    };
    let reason = if created {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        let entry = CtEntry {
            created_ns: now,
            last_seen_ns: now,
            nat_port: l4.dport,
            kind: CT_KIND_PUBLISHED,
            flags: CT_F_SEEN_REMOTE,
            _pad: [0; 4],
        };
        if NAT.insert(&nat, &value, BPF_NOEXIST as u64).is_err() {
            return Err(Reason::DropCtInsertFailed);
        }
        if CT.insert(&key, &entry, BPF_NOEXIST as u64).is_err() {
            let _ = NAT.remove(&nat);
            return Err(Reason::DropCtInsertFailed);
        }
        Reason::FwdPublished
    } else {
        // The NAT half without its CT half (evicted): not a flow any more.
        let e = CT.get_ptr_mut(&key).ok_or(Reason::PassNotForUs)?;
        touch(e, &l4, false);
        // SAFETY: as in `touch`.
        if unsafe { (*e).kind } == CT_KIND_PUBLISHED {
            Reason::FwdPublished
        } else {
            Reason::FwdMasqueradeReply
        }
    };
    rewrite(
        ctx,
        &l4,
        false,
        (ip.dst, value.container),
        (l4.dport, value.container_port),
    )?;
    Ok(reason)
}

/// The container behind a published port, for a client's first packet `nat` (its
/// `nat_port` is the host port); `Err(PassNotForUs)` when the port is not published.
#[inline(always)]
fn published(nat: &NatKey) -> Result<NatValue, Reason> {
    if nat.proto == IPPROTO_ICMP {
        return Err(Reason::PassNotForUs);
    }
    let key = PublishKey {
        host_port: nat.nat_port,
        proto: nat.proto,
        _pad: 0,
    };
    // SAFETY: read once into a copy.
    let p = unsafe { PUBLISH.get(&key) }.ok_or(Reason::PassNotForUs)?;
    Ok(NatValue {
        container: p.container,
        container_port: p.container_port,
        _pad: [0; 2],
    })
}

/// An ICMP error for the host's address (`ip`, its ICMP header at `icmp`) that quotes a
/// packet of a translated flow, as the host sent it: from the host's address and port to
/// the remote end. Translates the outer destination and the quoted source (address, port
/// or echo identifier, and the quoted IPv4 and L4 checksums when the quote holds them)
/// back to the container, and patches the ICMP checksum for every change, so that the
/// container's stack matches the error to its socket (PMTU discovery, ECONNREFUSED).
#[inline(always)]
fn icmp_error(ctx: &TcContext, cfg: &Config, ip: &Ipv4, icmp: usize) -> Result<Reason, Reason> {
    let not_ours = |_| Reason::PassNotForUs;
    let fail = |_| Reason::DropMalformed;
    let inner = icmp + 8;
    let vihl: u8 = ctx.load(inner).map_err(not_ours)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::PassNotForUs);
    }
    let proto: u8 = ctx.load(inner + 9).map_err(not_ours)?;
    let src: u32 = ctx.load(inner + 12).map_err(not_ours)?;
    let dst: u32 = ctx.load(inner + 16).map_err(not_ours)?;
    if src != cfg.host_addr {
        return Err(Reason::PassNotForUs);
    }
    let il4 = inner + ihl;
    let (port_off, check_off, remote_port) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let dport: u16 = ctx.load(il4 + 2).map_err(not_ours)?;
            let check = if proto == IPPROTO_TCP {
                il4 + 16
            } else {
                il4 + 6
            };
            (il4, check, dport)
        }
        IPPROTO_ICMP => {
            let ty: u8 = ctx.load(il4).map_err(not_ours)?;
            if ty != ICMP_ECHO {
                return Err(Reason::PassNotForUs);
            }
            (il4 + 4, il4 + 2, 0)
        }
        _ => return Err(Reason::PassNotForUs),
    };
    let nat_port: u16 = ctx.load(port_off).map_err(not_ours)?;
    let nat = NatKey {
        remote: dst,
        remote_port,
        nat_port,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: read once into a copy.
    let v = *unsafe { NAT.get(&nat) }.ok_or(Reason::PassNotForUs)?;
    if ip.hdr.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    let outer_check = icmp + 2;
    // Every change inside the ICMP message, as (offset, old, new) 16-bit words for the
    // ICMP checksum; the outer IPv4 header is patched by the l3 helper.
    let patch = |old: u16, new: u16| {
        ctx.l4_csum_replace(outer_check, old as u64, new as u64, 2)
            .map_err(fail)
    };
    // The quoted L4 checksum, when the quote holds it (a UDP checksum of 0 means none).
    if let Ok(old) = ctx.load::<u16>(check_off) {
        if !(proto == IPPROTO_UDP && old == 0) {
            let mut new = csum_replace2(old, nat_port, v.container_port);
            if proto != IPPROTO_ICMP {
                new = csum_replace4(new, src, v.container);
                if proto == IPPROTO_UDP && new == 0 {
                    new = 0xffff;
                }
            }
            ctx.store(check_off, &new, 0).map_err(fail)?;
            patch(old, new)?;
        }
    }
    ctx.store(port_off, &v.container_port, 0).map_err(fail)?;
    patch(nat_port, v.container_port)?;
    let old_check: u16 = ctx.load(inner + 10).map_err(fail)?;
    let new_check = csum_replace4(old_check, src, v.container);
    ctx.store(inner + 10, &new_check, 0).map_err(fail)?;
    patch(old_check, new_check)?;
    ctx.store(inner + 12, &v.container, 0).map_err(fail)?;
    ctx.l4_csum_replace(outer_check, src as u64, v.container as u64, 4)
        .map_err(fail)?;
    ctx.l3_csum_replace(IP_CHECK, ip.dst as u64, v.container as u64, 4)
        .map_err(fail)?;
    ctx.store(IP_DST, &v.container, 0).map_err(fail)?;
    Ok(Reason::FwdNatIcmpError)
}
