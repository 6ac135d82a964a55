//! ICMP errors that netpath sends itself, as the router the containers see.
//!
//! Fragmentation-needed (RFC 792 type 3 code 4, with the next-hop MTU of RFC 1191): a
//! packet too big for the tunnel is turned, in place, into the ICMP error that a router
//! would send back, so path MTU discovery works across the tunnel for UDP and ICMP (TCP
//! is also covered by the MSS clamp, see mtu.rs).
//!
//! A router would fragment a packet without DF instead. netpath does not fragment (it
//! would have to finish offloaded checksums first); it answers those too. Linux lowers
//! the path MTU on such an answer whatever the DF bit was, and fragments what follows
//! itself, so only the first oversized packet to a destination is lost.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, helpers::bpf_skb_change_tail,
    programs::TcContext,
};
use netpath_common::{Config, IPPROTO_ICMP, Reason};

use crate::parse::{self, ETH_LEN, ICMP_DEST_UNREACH, Ipv4};

const ICMP_FRAG_NEEDED: u8 = 4;
/// New IPv4 (20) and ICMP (8) headers put in front of the quoted packet.
const ICMP_HDRS: usize = 28;
/// An ICMP error is at most 576 bytes (RFC 1812 4.3.2.3): at most 548 quoted.
const MAX_QUOTE: u32 = 576 - ICMP_HDRS as u32;

/// Whether `ip` must not cross the tunnel as it is: bigger than `cfg.tunnel_mtu`. GSO
/// packets are segmented to fit later (their MSS is clamped) and are never too big.
#[inline(always)]
pub fn too_big(ctx: &TcContext, cfg: &Config, ip: &Ipv4) -> bool {
    // SAFETY: reading a field of the program's own skb.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    gso_size == 0 && u16::from_be_bytes(ip.hdr.tot_len) > cfg.tunnel_mtu
}

/// Rewrites the packet (a frame from a local container, `ip` its IPv4 header, not yet
/// changed) into the ICMP fragmentation-needed answer, from the container's gateway
/// (`gateway`; 0 for none: the host's address) to the sender, quoting the start of the
/// original packet, with the MACs swapped. The caller sends it back out of the bridge it
/// came in on. On error the packet is half-rewritten
/// and must be dropped.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, cfg: &Config, gateway: u32, ip: &Ipv4) -> Result<(), Reason> {
    let gateway = if gateway != 0 { gateway } else { cfg.host_addr };
    error(
        ctx,
        ip,
        gateway,
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        cfg.tunnel_mtu as u32,
    )
    .map_err(|_| Reason::DropFragNeeded)
}

/// Rewrites the packet (`ip` its IPv4 header, not yet changed) into an ICMP error of
/// `ty`/`code` from `src` to the packet's sender, with `rest` as the last 16 bits of the
/// ICMP header (the next-hop MTU of fragmentation-needed, else 0), quoting as much of
/// the packet as fits in 576 bytes (RFC 1812 4.3.2.3) in whole 32-bit words, at least
/// its header and 8 bytes when it has them. The MACs are swapped. On error the packet is
/// half-rewritten and must be dropped.
#[inline(always)]
pub fn error(ctx: &TcContext, ip: &Ipv4, src: u32, ty: u8, code: u8, rest: u32) -> Result<(), ()> {
    let fail = |_| ();
    let orig_src = ip.src;
    let macs: [u8; 12] = ctx.load(0).map_err(fail)?;
    let quote = (u16::from_be_bytes(ip.hdr.tot_len) as u32).min(MAX_QUOTE) & !3;
    // Refused for a packet that arrived in a tunnel (see policy::rst): no answer then.
    // SAFETY: helper on the program's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, ETH_LEN as u32 + quote, 0) } != 0 {
        return Err(());
    }
    ctx.adjust_room(ICMP_HDRS as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(fail)?;

    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[1] = 0xc0; // precedence "internetwork control", as Linux sends its ICMP errors
    ip[2..4].copy_from_slice(&((ICMP_HDRS as u32 + quote) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = IPPROTO_ICMP;
    ip[12..16].copy_from_slice(&src.to_ne_bytes());
    ip[16..20].copy_from_slice(&orig_src.to_ne_bytes());
    let c = parse::ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let rest = rest as u16;
    let mut h = [0u8; ICMP_HDRS];
    h[..20].copy_from_slice(&ip);
    h[20] = ty;
    h[21] = code;
    h[26..28].copy_from_slice(&rest.to_be_bytes());
    let mut sum: u64 = ((ty as u64) << 8 | code as u64) + rest as u64;
    let start = ETH_LEN + ICMP_HDRS;
    for w in 0..(MAX_QUOTE as usize / 4) {
        if (w * 4) as u32 >= quote {
            break;
        }
        let word: [u8; 4] = ctx.load(start + w * 4).map_err(fail)?;
        sum += u16::from_be_bytes([word[0], word[1]]) as u64
            + u16::from_be_bytes([word[2], word[3]]) as u64;
    }
    h[22..24].copy_from_slice(&(!parse::fold(sum)).to_be_bytes());
    ctx.store(ETH_LEN, &h, 0).map_err(fail)?;
    parse::swap_macs(ctx, &macs).map_err(fail)
}
