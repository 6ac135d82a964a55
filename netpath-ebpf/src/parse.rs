//! Bounds-checked header access shared by every program, TC and XDP alike.

use aya_ebpf::programs::{TcContext, XdpContext};
use netpath_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// Length of an Ethernet header: where the IPv4 header starts.
pub const ETH_LEN: usize = EthHdr::LEN;

/// Ethertype of IPv4, as it sits in the frame (network byte order read as native u16).
pub const ETH_P_IP_BE: u16 = u16::from_ne_bytes([0x08, 0x00]);

/// ICMP types (RFC 792) and TCP flags that the programs look at.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the parsers need of a program's context: the directly accessible bytes.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Length of the whole packet (more than data_end - data for a non-linear skb).
    fn len(&self) -> u32;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
}

/// Returns a pointer to a `T` at `offset` in the packet, or `None` when the packet is
/// shorter than that: the verifier needs this check before any access.
#[inline(always)]
pub fn ptr_at<T, P: Packet>(ctx: &P, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The IPv4 packet of an Ethernet frame, validated.
pub struct Ipv4<'a> {
    pub hdr: &'a mut Ipv4Hdr,
    /// Source address, network byte order.
    pub src: u32,
    /// Destination address, network byte order.
    pub dst: u32,
}

/// Parses Ethernet + IPv4. `Err(PassNotIpv4)` for other ethertypes; `Err(DropMalformed)`
/// for a truncated frame, a version other than 4, a header length under 20 bytes, or a
/// total length shorter than the header or longer than the frame. A total length of 0 is
/// accepted: the kernel uses it for IPv4 BIG TCP super-packets (> 64 KiB).
#[inline(always)]
pub fn ipv4<P: Packet>(ctx: &P) -> Result<Ipv4<'_>, Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::DropMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != ETH_P_IP_BE {
        return Err(Reason::PassNotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(Reason::DropMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let hdr = unsafe { &mut *ip };
    let hlen = ((hdr.vihl & 0x0f) as u32) * 4;
    if hdr.vihl >> 4 != 4 || hlen < Ipv4Hdr::LEN as u32 {
        return Err(Reason::DropMalformed);
    }
    let tot_len = u16::from_be_bytes(hdr.tot_len) as u32;
    let l3_len = ctx.len().saturating_sub(ETH_LEN as u32);
    if tot_len != 0 && (tot_len < hlen || tot_len > l3_len) {
        return Err(Reason::DropMalformed);
    }
    let src = u32::from_ne_bytes(hdr.src_addr);
    let dst = u32::from_ne_bytes(hdr.dst_addr);
    Ok(Ipv4 { hdr, src, dst })
}

impl Ipv4<'_> {
    /// Header length in bytes (20 to 60).
    #[inline(always)]
    pub fn hlen(&self) -> usize {
        ((self.hdr.vihl & 0x0f) as usize) * 4
    }
}

/// The L4 part of a packet that NAT and policy look at. Ports as they sit in the packet
/// (network byte order); for ICMP echo and echo reply both ports are the identifier.
#[derive(Clone, Copy)]
pub struct L4 {
    pub proto: u8,
    /// Offset of the L4 header.
    pub off: usize,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP type and code, 0 for other protocols.
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Part of a fragmented datagram. A later fragment (offset > 0) carries no L4 header:
    /// its ports and ICMP type read as 0.
    pub fragment: bool,
}

impl L4 {
    /// Whether this is an ICMP error (it quotes a packet of some flow).
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.proto == IPPROTO_ICMP
            && !self.fragment
            && matches!(
                self.icmp_type,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
            )
    }

    /// A TCP SYN that opens a connection (no ACK).
    #[inline(always)]
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// Whether this is an ICMP echo or echo reply (no fragment).
    #[inline(always)]
    pub fn is_echo(&self) -> bool {
        self.proto == IPPROTO_ICMP
            && !self.fragment
            && self.icmp_code == 0
            && (self.icmp_type == ICMP_ECHO || self.icmp_type == ICMP_ECHO_REPLY)
    }
}

/// Reads the L4 header of `ip` with one load: TCP's ports and flags (bytes 0-13), UDP's
/// ports, ICMP's type, code and identifier. `Err(DropMalformed)` when the packet is
/// shorter than that header.
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv4) -> Result<L4, Reason> {
    let frags = u16::from_be_bytes(ip.hdr.frags);
    let mut l4 = L4 {
        proto: ip.hdr.proto,
        off: ETH_LEN + ip.hlen(),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        fragment: frags & 0x3fff != 0,
    };
    if frags & 0x1fff != 0 {
        return Ok(l4);
    }
    match ip.hdr.proto {
        IPPROTO_TCP => {
            let h: [u8; 14] = read(ctx, l4.off)?;
            l4.sport = u16::from_ne_bytes([h[0], h[1]]);
            l4.dport = u16::from_ne_bytes([h[2], h[3]]);
            l4.tcp_flags = h[13];
        }
        IPPROTO_UDP => {
            let h: [u8; 4] = read(ctx, l4.off)?;
            l4.sport = u16::from_ne_bytes([h[0], h[1]]);
            l4.dport = u16::from_ne_bytes([h[2], h[3]]);
        }
        IPPROTO_ICMP => {
            let h: [u8; 8] = read(ctx, l4.off)?;
            l4.icmp_type = h[0];
            l4.icmp_code = h[1];
            if h[0] == ICMP_ECHO || h[0] == ICMP_ECHO_REPLY {
                let id = u16::from_ne_bytes([h[4], h[5]]);
                l4.sport = id;
                l4.dport = id;
            }
        }
        _ => {}
    }
    Ok(l4)
}

/// `N` bytes at `off`: straight from the linear data when they are in it, else through
/// bpf_skb_load_bytes (a non-linear skb); `Err(DropMalformed)` past the packet's end.
#[inline(always)]
pub fn read<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], Reason> {
    match ptr_at::<[u8; N], _>(ctx, off) {
        // SAFETY: ptr_at checked the bounds.
        Some(p) => Ok(unsafe { *p }),
        None => ctx.load(off).map_err(|_| Reason::DropMalformed),
    }
}

/// Writes the frame's MACs (`macs`: destination then source, as read from offset 0)
/// back swapped: the frame goes back to where it came from.
#[inline(always)]
pub fn swap_macs(ctx: &TcContext, macs: &[u8; 12]) -> Result<(), i64> {
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..12]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0)
}

/// Folds a one's complement sum into 16 bits (RFC 1071).
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Internet checksum of a 20-byte IPv4 header (its checksum field zeroed).
#[inline(always)]
pub fn ipv4_checksum(h: &[u8; 20]) -> u16 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    !fold(sum)
}

/// Decrements the TTL and patches the header checksum incrementally, as the kernel's
/// `ip_decrease_ttl` does (RFC 1624: TTL is the high byte of its 16-bit word, so the sum
/// changes by 0x0100). The caller has checked that TTL > 1.
#[inline(always)]
pub fn decrement_ttl(hdr: &mut Ipv4Hdr) {
    let mut check = u16::from_ne_bytes(hdr.check) as u32;
    check += u16::to_be(0x0100) as u32;
    let folded = (check + (check >= 0xffff) as u32) as u16;
    hdr.check = folded.to_ne_bytes();
    hdr.ttl -= 1;
}

/// RFC 1624 (eqn. 3) update of an Internet checksum for a 16-bit field changing from
/// `old` to `new`. Every value is as it sits in the packet (network byte order).
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum =
        (!u16::from_be(check)) as u64 + (!u16::from_be(old)) as u64 + u16::from_be(new) as u64;
    (!fold(sum)).to_be()
}

/// As [`csum_replace2`], for a 32-bit field (an IPv4 address).
#[inline(always)]
pub fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let (o, n) = (u32::from_be(old), u32::from_be(new));
    let sum = (!u16::from_be(check)) as u64
        + ((!o) >> 16) as u64
        + ((!o) & 0xffff) as u64
        + (n >> 16) as u64
        + (n & 0xffff) as u64;
    (!fold(sum)).to_be()
}

/// A packet's addresses, protocol and ports, as a log or an event shows them (network
/// byte order; ports 0 where the packet has none: a later fragment, another protocol).
#[derive(Clone, Copy, Default)]
pub struct Tuple {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The tuple of an IPv4 frame, read without validating it (the programs do that): None
/// for another ethertype or a frame too short for an IPv4 header.
#[inline(always)]
pub fn tuple<P: Packet>(ctx: &P) -> Option<Tuple> {
    let proto = ptr_at::<u16, P>(ctx, 12)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { *proto } != ETH_P_IP_BE {
        return None;
    }
    let ip = ptr_at::<[u8; 20], P>(ctx, ETH_LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let mut t = Tuple {
        proto: ip[9],
        src: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        dst: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        ..Tuple::default()
    };
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    // Later fragments carry no ports.
    if ip[6] & 0x1f != 0 || ip[7] != 0 || !(20..=60).contains(&ihl) {
        return Some(t);
    }
    if !matches!(t.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
        return Some(t);
    }
    if let Some(l4) = ptr_at::<[u8; 4], P>(ctx, ETH_LEN + ihl) {
        // SAFETY: bounds checked by ptr_at.
        let l4 = unsafe { &*l4 };
        t.sport = u16::from_ne_bytes([l4[0], l4[1]]);
        t.dport = u16::from_ne_bytes([l4[2], l4[3]]);
    }
    Some(t)
}
