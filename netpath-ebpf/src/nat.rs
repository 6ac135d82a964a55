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
//! Addresses, ports and the IPv4 header's checksum are written in place; L4 checksums go
//! through bpf_l4_csum_replace, which knows how the skb's checksum is done: on a
//! CHECKSUM_PARTIAL packet (a container's TCP or UDP with checksum offload) it updates
//! only the pseudo-header part, which the device or GSO completes later; on any other it
//! patches the whole sum (the lab's wire check, tests/tests/wire.rs, sends those).

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    programs::TcContext,
};
use netpath_common::{
    CONFIG_F_MASQUERADE, CT_F_FIN_CONTAINER, CT_F_FIN_REMOTE, CT_F_RST, CT_F_SEEN_CONTAINER,
    CT_F_SEEN_REMOTE, CT_KIND_MASQUERADE, CT_KIND_PUBLISHED, Config, CtEntry, CtKey, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, NET_F_MASQUERADE, NatKey, NatValue, Network, PublishKey, Reason,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    counters,
    ct::{ct_key, touch},
    maps::{CT, NAT, PUBLISH},
    parse::{
        self, ETH_LEN, ICMP_ECHO, ICMP_ECHO_REPLY, Ipv4, L4, csum_replace2, csum_replace4, ptr_at,
    },
    policy::{self, Decision},
};

const EEXIST: i32 = 17;
/// Ports tried for a new masqueraded flow after its own: consecutive ones from a random
/// start, so that in a range of up to this many every port is tried.
const PORT_TRIES: u32 = 32;

/// Offsets of the IPv4 header fields rewritten here.
const IP_CHECK: usize = ETH_LEN + 10;
const IP_DST: usize = ETH_LEN + 16;

/// Offsets of the L4 fields NAT rewrites.
trait Offsets {
    /// Offset of the L4 checksum.
    fn check_off(&self) -> usize;
    /// Offset of the source (`src`) or destination port; the identifier for ICMP echo.
    fn port_off(&self, src: bool) -> usize;
}

impl Offsets for L4 {
    #[inline(always)]
    fn check_off(&self) -> usize {
        match self.proto {
            IPPROTO_TCP => self.off + 16,
            IPPROTO_UDP => self.off + 6,
            _ => self.off + 2,
        }
    }

    #[inline(always)]
    fn port_off(&self, src: bool) -> usize {
        match self.proto {
            IPPROTO_ICMP => self.off + 4,
            _ if src => self.off,
            _ => self.off + 2,
        }
    }
}

/// Whether NAT can translate `l4`: TCP, UDP, or an ICMP echo of type `echo_type`
/// (requests go out, replies come in); never a fragment (only the first carries the
/// ports, and the others would not be translated with it).
#[inline(always)]
fn translatable(l4: &L4, echo_type: u8) -> bool {
    !l4.fragment
        && match l4.proto {
            IPPROTO_TCP | IPPROTO_UDP => true,
            IPPROTO_ICMP => l4.is_echo() && l4.icmp_type == echo_type,
            _ => false,
        }
}

/// Rewrites one address and the matching port of the packet (`src`: the source, else the
/// destination) with every checksum that covers them. An error leaves the packet half
/// rewritten: the caller drops it.
///
/// The address, the IPv4 header's checksum and the port are written in place (the
/// header sum stays the same, so a CHECKSUM_COMPLETE skb's sum holds, as with
/// bpf_skb_store_bytes); only the L4 checksum goes through the kernel
/// (bpf_l4_csum_replace), which knows how the skb's checksum is being done. They come
/// last: a helper that changes the packet ends the verifier's trust in packet pointers.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    l4: &L4,
    src: bool,
    addr: (u32, u32),
    port: (u16, u16),
) -> Result<(), Reason> {
    let fail = |_| Reason::DropMalformed;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(Reason::DropMalformed)?;
    // SAFETY: ptr_at checked the bounds; the program owns the packet while it runs.
    unsafe {
        let check = u16::from_ne_bytes((*ip).check);
        (*ip).check = csum_replace4(check, addr.0, addr.1).to_ne_bytes();
        if src {
            (*ip).src_addr = addr.1.to_ne_bytes();
        } else {
            (*ip).dst_addr = addr.1.to_ne_bytes();
        }
    }
    let moved = port.0 != port.1;
    if moved {
        let at = l4.port_off(src);
        match ptr_at::<[u8; 2], _>(ctx, at) {
            // SAFETY: as above.
            Some(p) => unsafe { *p = port.1.to_ne_bytes() },
            // The L4 header beyond the linear data (a non-linear skb).
            None => ctx.store(at, &port.1, 0).map_err(fail)?,
        }
    }
    // ICMP's checksum covers no pseudo header: only the identifier matters to it. A UDP
    // checksum of 0 means none and stays 0 (BPF_F_MARK_MANGLED_0).
    let mangled = if l4.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let check = l4.check_off();
    if l4.proto != IPPROTO_ICMP {
        let flags = 4 | BPF_F_PSEUDO_HDR as u64 | mangled;
        ctx.l4_csum_replace(check, addr.0 as u64, addr.1 as u64, flags)
            .map_err(fail)?;
    }
    if moved {
        ctx.l4_csum_replace(check, port.0 as u64, port.1 as u64, 2 | mangled)
            .map_err(fail)?;
    }
    Ok(())
}

/// A packet that a local container sends in a known flow `e` (its `CT` entry by the
/// container-side tuple). Records it, counts it under the flow's policy rule, and
/// translates its source if the flow is translated (a reply on a published port, or a
/// masqueraded flow): then returns the reason to count and the caller reparses. A flow
/// that policy alone records is left as it is (`Ok(None)`).
#[inline(always)]
pub fn egress_known(
    ctx: &TcContext,
    cfg: &Config,
    ip: &Ipv4,
    l4: &L4,
    e: *mut CtEntry,
) -> Result<Option<Reason>, Reason> {
    if ip.hdr.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    touch(e, l4, true);
    // SAFETY: as in `touch`.
    let (nat_port, kind, rule) = unsafe { ((*e).nat_port, (*e).kind, (*e).rule) };
    if policy::live().is_some() {
        counters::count_rule(rule, ctx.len());
    }
    let reason = match kind {
        CT_KIND_PUBLISHED => Reason::FwdPublishedReply,
        CT_KIND_MASQUERADE => Reason::FwdMasquerade,
        _ => return Ok(None),
    };
    rewrite(ctx, l4, true, (ip.src, cfg.host_addr), (l4.sport, nat_port))?;
    Ok(Some(reason))
}

/// Whether a container's packet to the outside (no peer route, no known flow) is to be
/// masqueraded: `Err` with the reason it is the stack's instead. Only with masquerade on,
/// only TCP, UDP and ICMP echo requests that are not fragments, only from containers of a
/// local network `net` that masquerades, only to unicast addresses.
#[inline(always)]
pub fn masqueradable(
    cfg: &Config,
    net: Option<&Network>,
    ip: &Ipv4,
    l4: &L4,
) -> Result<(), Reason> {
    // Only a container of a local network that masquerades (Docker's
    // `enable_ip_masquerade` per network), never its gateway.
    let masquerades = match net {
        Some(n) => n.flags & NET_F_MASQUERADE != 0 && ip.src != n.gateway_addr,
        None => false,
    };
    if cfg.flags & CONFIG_F_MASQUERADE == 0 || !masquerades {
        return Err(Reason::PassUnknownDst);
    }
    if !translatable(l4, ICMP_ECHO) {
        return Err(Reason::PassNatUnsupported);
    }
    let first = u32::from_be(ip.dst) >> 24;
    if first == 0 || first == 127 || first >= 224 {
        return Err(Reason::PassUnknownDst);
    }
    Ok(())
}

/// Starts the masqueraded flow `key` (a packet that [`masqueradable`] accepted and policy
/// allowed under `rule`) and translates the packet's source. Nothing is changed when it
/// fails. The caller reparses the packet.
#[inline(always)]
pub fn masquerade(
    ctx: &TcContext,
    cfg: &Config,
    ip: &Ipv4,
    l4: &L4,
    key: &CtKey,
    rule: u32,
) -> Result<Reason, Reason> {
    if ip.hdr.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    let nat_port = new_flow(cfg, key, rule, l4.is_tcp_syn())?;
    rewrite(ctx, l4, true, (ip.src, cfg.host_addr), (l4.sport, nat_port))?;
    Ok(Reason::FwdMasquerade)
}

/// Allocates a port on the host's address for the masqueraded flow `key` and records the
/// flow. The container's own port is tried first when it is in the range, then up to
/// PORT_TRIES others. Returns the port (network byte order). A port is taken when a flow
/// to the same remote address and port holds it: reservation is an insert that fails on
/// an existing key, so no live flow is ever replaced. A TCP SYN (`syn`) may take the port
/// of a TCP flow that has ended (a RST, or a FIN each way) or whose conntrack entry is
/// gone, as Linux's NAT reuses a tuple in TIME_WAIT or CLOSE: otherwise clients that
/// open and close connections to one server port faster than `tcp_closing` expires them
/// run out of ports.
#[inline(always)]
fn new_flow(cfg: &Config, key: &CtKey, rule: u32, syn: bool) -> Result<u16, Reason> {
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
        match NAT.insert(nat, value, BPF_NOEXIST as u64) {
            Ok(()) => {
                port = nat.nat_port;
                break;
            }
            Err(e) if e == -EEXIST => {
                if syn && reclaim(&nat, &value) {
                    port = nat.nat_port;
                    break;
                }
            }
            Err(_) => return Err(Reason::DropCtInsertFailed),
        }
    }
    if port == 0 {
        return Err(Reason::DropNatNoPort);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_port: port,
        kind: CT_KIND_MASQUERADE,
        flags: CT_F_SEEN_CONTAINER,
        rule,
        #[cfg(feature = "layout-test")]
        layout_test: 0,
    };
    if CT.insert(key, entry, BPF_NOEXIST as u64).is_err() {
        // Another CPU recorded the same flow first (its first packets raced), or the
        // table refused: give the port back. The next packet finds that CPU's entry.
        let _ = NAT.remove(nat);
        return Err(Reason::DropCtInsertFailed);
    }
    Ok(port)
}

/// Takes the port of the NAT entry `nat` for a new flow (`value`) when the flow holding it
/// has ended: TCP with a RST or a FIN each way, or no conntrack entry any more (evicted).
/// Its conntrack entry goes; the port's entry then leads to the new flow. A holder that
/// changed meanwhile (another CPU took the port first) keeps it.
#[inline(always)]
fn reclaim(nat: &NatKey, value: &NatValue) -> bool {
    // SAFETY: a value of an LRU hash map, copied out at once.
    let Some(holder) = (unsafe { NAT.get(nat) }).copied() else {
        return false;
    };
    let old = ct_key(
        holder.container,
        nat.remote,
        holder.container_port,
        nat.remote_port,
        nat.proto,
    );
    // SAFETY: as above.
    if let Some(e) = unsafe { CT.get(old) } {
        let ended = e.flags & CT_F_RST != 0
            || e.flags & (CT_F_FIN_CONTAINER | CT_F_FIN_REMOTE)
                == CT_F_FIN_CONTAINER | CT_F_FIN_REMOTE;
        if e.kind != CT_KIND_MASQUERADE || e.nat_port != nat.nat_port || !ended {
            return false;
        }
        let _ = CT.remove(old);
    }
    if NAT.insert(nat, value, BPF_EXIST as u64).is_err() {
        return false;
    }
    // SAFETY: as above.
    matches!(unsafe { NAT.get(nat) }, Some(v) if v.container == value.container && v.container_port == value.container_port)
}

/// What [`ingress`] did with a packet for the host's address.
pub enum Ingress {
    /// Translated to its container: deliver it, counted under this reason.
    Deliver(Reason),
    /// A new flow to a published port that policy refused, the packet unchanged: drop
    /// it, or with the flag, answer it (forward::refuse).
    Refused(Reason, bool, L4),
}

/// A packet from the uplink for the host's own address. Translates it to its container
/// when it belongs to a flow (a reply to a masqueraded flow, or a published port's flow),
/// starts a flow when it comes to a published port, or translates an ICMP error about a
/// flow. Returns the reason to count (the caller reparses and delivers it);
/// `Err(PassNotForUs)` when it is the host's own traffic.
#[inline(always)]
pub fn ingress(ctx: &TcContext, cfg: &Config, ip: &Ipv4) -> Result<Ingress, Reason> {
    let l4 = parse::l4(ctx, ip)?;
    if l4.is_icmp_error() {
        return icmp_error(ctx, cfg, ip, l4.off).map(Ingress::Deliver);
    }
    if !translatable(&l4, ICMP_ECHO_REPLY) {
        return Err(Reason::PassNotForUs);
    }
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
    let (value, created) = match unsafe { NAT.get(nat) } {
        Some(v) => (*v, false),
        None => (published(&nat)?, true),
    };
    if ip.hdr.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    let key = ct_key(
        value.container,
        ip.src,
        value.container_port,
        remote_port,
        l4.proto,
    );
    let live = policy::live();
    let reason = if created {
        // Policy sees the flow as the container will: from the client to its own port.
        let rule = match live {
            None => 0,
            Some(st) => {
                let mut inner = l4;
                inner.dport = value.container_port;
                match policy::decide(ctx, st, ip.src, value.container, &inner) {
                    Decision::Allow(rule) => rule,
                    // Nothing is changed yet: an answer to the packet as it is comes
                    // from the host's address and port, as the client addressed it.
                    Decision::Refuse(reason, answer) => {
                        return Ok(Ingress::Refused(reason, answer, l4));
                    }
                }
            }
        };
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let entry = CtEntry {
            created_ns: now,
            last_seen_ns: now,
            nat_port: l4.dport,
            kind: CT_KIND_PUBLISHED,
            flags: CT_F_SEEN_REMOTE,
            rule,
            #[cfg(feature = "layout-test")]
            layout_test: 0,
        };
        if NAT.insert(nat, value, BPF_NOEXIST as u64).is_err() {
            return Err(Reason::DropCtInsertFailed);
        }
        if CT.insert(key, entry, BPF_NOEXIST as u64).is_err() {
            let _ = NAT.remove(nat);
            return Err(Reason::DropCtInsertFailed);
        }
        Reason::FwdPublished
    } else {
        // The NAT half without its CT half (evicted): not a flow any more.
        let e = CT.get_ptr_mut(key).ok_or(Reason::PassNotForUs)?;
        touch(e, &l4, false);
        // SAFETY: as in `touch`.
        let (kind, rule) = unsafe { ((*e).kind, (*e).rule) };
        if live.is_some() {
            counters::count_rule(rule, ctx.len());
        }
        if kind == CT_KIND_PUBLISHED {
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
    Ok(Ingress::Deliver(reason))
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
    let p = unsafe { PUBLISH.get(key) }.ok_or(Reason::PassNotForUs)?;
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
    // The datagram's end: what follows it in the frame (padding, anything) is not part
    // of the quote, nor of what the ICMP checksum covers.
    let end = match u16::from_be_bytes(ip.hdr.tot_len) as usize {
        0 => ctx.len() as usize,
        tot => ETH_LEN + tot,
    };
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
    if port_off + 2 > end {
        return Err(Reason::PassNotForUs);
    }
    let nat_port: u16 = ctx.load(port_off).map_err(not_ours)?;
    let nat = NatKey {
        remote: dst,
        remote_port,
        nat_port,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: read once into a copy.
    let v = *unsafe { NAT.get(nat) }.ok_or(Reason::PassNotForUs)?;
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
    if check_off + 2 <= end
        && let Ok(old) = ctx.load::<u16>(check_off)
        && !(proto == IPPROTO_UDP && old == 0)
    {
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
