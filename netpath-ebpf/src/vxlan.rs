//! VXLAN (RFC 7348) built from BPF maps, interoperable with Linux's vxlan device.
//!
//! Encap grows the packet after its Ethernet header with bpf_skb_adjust_room and the
//! ENCAP flags, which tell GSO that the packet is now UDP-tunnelled Ethernet, so a 64 KiB
//! TCP super-packet is segmented after the tunnel headers are on (by the device, or by
//! software GSO), never cut into MTU-sized packets before. The outer Ethernet header is
//! the original one; bpf_redirect_neigh rewrites its MACs.
//!
//! Decap accepts only what our tunnel may carry: UDP to our port and address, the I flag
//! and our VNI, from the underlay address of a vxlan peer, an inner IPv4 source inside
//! that same peer's subnet and an inner destination that is a local container. A network
//! across hosts has a VNI of its own: with it, both inner ends must be containers of that
//! network (the source one of the peer's, by its /32 route); with the host's VNI, neither
//! may be.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_xdp_adjust_head,
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use netpath_common::{
    Config, IPPROTO_UDP, MODE_VXLAN, PEER_F_ENDPOINT, PeerValue, Reason, VXLAN_OVERHEAD,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::{self, PEERS, UNDERLAY},
    parse::{self, ETH_LEN, ETH_P_IP_BE, Packet, ptr_at},
};

const IP_LEN: usize = Ipv4Hdr::LEN;
/// Offsets in a VXLAN frame whose outer IPv4 header has no options.
const UDP_OFF: usize = ETH_LEN + IP_LEN;
const VXLAN_OFF: usize = UDP_OFF + 8;
const INNER_ETH_OFF: usize = VXLAN_OFF + 8;
const INNER_IP_OFF: usize = INNER_ETH_OFF + ETH_LEN;

/// The I flag of the VXLAN header: the VNI is valid.
const VXLAN_I: u8 = 0x08;

/// Wraps the packet (inner TTL already decremented) in VXLAN to `peer`.
///
/// UDP source port: from `flow` (a hash of the inner flow, [`flow_hash`]: RFC 7348
/// entropy, so the underlay can spread flows), in 49152-65535. UDP checksum 0, as Linux's
/// vxlan sends over IPv4 by default.
/// Outer IPv4: DF set (fragmenting tunnel packets is what MTU handling must avoid), TTL 64.
///
/// `offload`: mark the packet as UDP-tunnelled for GSO and checksum offload (the ENCAP
/// flags). The kernel refuses that on a packet that is already marked (one that arrived
/// in a tunnel: a BPF decap leaves the mark); an answer netpath builds itself is never
/// GSO and is encapsulated without it.
#[inline(always)]
pub fn encap(
    ctx: &TcContext,
    cfg: &Config,
    peer: &PeerValue,
    vni: u32,
    flow: u32,
    offload: bool,
) -> Result<(), Reason> {
    let inner_len = ctx.len().saturating_sub(ETH_LEN as u32);
    let sport = 49152u16 | ((flow ^ (flow >> 16)) as u16 & 0x3fff);
    // Only a GSO super-packet can exceed 64 KiB here; GSO rewrites the outer lengths of
    // every segment it makes, so the clamp never reaches the wire.
    let tot_len = (inner_len + VXLAN_OVERHEAD).min(0xffff) as u16;
    let udp_len = tot_len - IP_LEN as u16;

    let flags = if offload {
        (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH)
            as u64
            | ((ETH_LEN as u64) << 56)
    } else {
        0
    };
    ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| Reason::DropAdjustFailed)?;

    // The room is in the linear data, right after the Ethernet header: written in place.
    let h: *mut [u8; VXLAN_OVERHEAD as usize] =
        ptr_at(ctx, ETH_LEN).ok_or(Reason::DropAdjustFailed)?;
    // SAFETY: ptr_at checked the bounds; the program owns the packet while it runs.
    let h = unsafe { &mut *h };
    // Every byte, the ones left 0 (IP id and fragment offset, UDP checksum, reserved)
    // included: the room's content is the kernel's business.
    *h = [0u8; VXLAN_OVERHEAD as usize];
    let mut ip = [0u8; 20];
    let src = cfg.host_addr.to_ne_bytes();
    let dst = peer.underlay.to_ne_bytes();
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = parse::ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    h[..20].copy_from_slice(&ip);
    h[20..22].copy_from_slice(&sport.to_be_bytes());
    h[22..24].copy_from_slice(&cfg.vxlan_port.to_ne_bytes());
    h[24..26].copy_from_slice(&udp_len.to_be_bytes());
    h[28] = VXLAN_I;
    let vni = vni.to_be_bytes();
    h[32..35].copy_from_slice(&vni[1..4]);
    h[36..42].copy_from_slice(&peer.vtep_mac);
    h[42..48].copy_from_slice(&cfg.vtep_mac);
    h[48..50].copy_from_slice(&ETH_P_IP_BE.to_ne_bytes());
    Ok(())
}

/// A hash of the flow of `src` and `dst` (network byte order) and, unless the packet is a
/// fragment, its ports `sport` and `dport` and protocol `proto`: every fragment of a
/// datagram hashes alike (the later ones have no ports), as in the kernel's own flow
/// hash. Computed from what the program has parsed already; the kernel's
/// (`bpf_get_hash_recalc`) ran its flow dissector over the packet again, most of what
/// an encapsulation cost besides the copy (docs/measured.md).
#[inline(always)]
pub fn flow_hash(src: u32, dst: u32, ports: Option<(u16, u16, u8)>) -> u32 {
    let mut h = src ^ dst.rotate_left(16);
    if let Some((sport, dport, proto)) = ports {
        h ^= ((sport as u32) << 16 | dport as u32).rotate_left(7) ^ proto as u32;
    }
    // The finalizer of MurmurHash3: every input bit moves about half the output bits.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Whether `ip` is addressed to our tunnel endpoint: UDP to our port on our underlay
/// address. Everything else, UDP to other ports included, is not tunnel traffic. The UDP
/// header must be in the linear data (`pull` it in TC).
#[inline(always)]
pub fn is_tunnel<P: Packet>(ctx: &P, cfg: &Config, ip: &parse::Ipv4) -> bool {
    if ip.hdr.proto != IPPROTO_UDP || ip.dst != cfg.host_addr {
        return false;
    }
    // The destination port, past a header of any length (options included).
    match ptr_at::<u16, P>(ctx, ETH_LEN + ip.hlen() + 2) {
        // SAFETY: ptr_at checked the bounds.
        Some(port) => (unsafe { *port }) == cfg.vxlan_port,
        None => false,
    }
}

/// Makes the first [`CHECKED_LEN`] bytes of a TC packet directly accessible if the
/// packet has them (a non-linear skb may hold headers in its fragments). Returns whether
/// it had to: the verifier then forgets every packet pointer, and the caller parses again.
#[inline(always)]
pub fn pull(ctx: &TcContext) -> bool {
    let len = CHECKED_LEN;
    if ctx.data() + len > ctx.data_end() && ctx.len() >= len as u32 {
        let _ = ctx.pull_data(len as u32);
        return true;
    }
    false
}

/// How many bytes of a tunnel packet [`check`] reads: everything up to the inner IPv4
/// header, included.
pub const CHECKED_LEN: usize = INNER_IP_OFF + IP_LEN;

/// Checks a tunnel packet (see the module comment), the same way in TC and XDP. Returns
/// the sending peer's id. The first [`CHECKED_LEN`] bytes must be in the linear data.
#[inline(always)]
pub fn check<P: Packet>(ctx: &P, cfg: &Config, outer: &parse::Ipv4) -> Result<u32, Reason> {
    if outer.hdr.vihl != 0x45 {
        // Linux never sends tunnel packets with IP options; neither may anyone else.
        return Err(Reason::DropVxlanMalformed);
    }
    let src = outer.src;
    let vx: *const [u8; 8] = ptr_at(ctx, VXLAN_OFF).ok_or(Reason::DropVxlanMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let vx = unsafe { *vx };
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    if vx[0] & VXLAN_I == 0 {
        return Err(Reason::DropVxlanWrongVni);
    }
    // The host's VNI, or that of the network across hosts of the inner destination.
    let spanning = if vni == cfg.vni {
        None
    } else {
        let inner: *const Ipv4Hdr = ptr_at(ctx, INNER_IP_OFF).ok_or(Reason::DropVxlanWrongVni)?;
        // SAFETY: ptr_at checked the bounds.
        let idst = u32::from_ne_bytes(unsafe { (*inner).dst_addr });
        match maps::network(idst) {
            Some(n) if n.spans() && n.vni() == vni => Some(n),
            _ => return Err(Reason::DropVxlanWrongVni),
        }
    };
    let peer = match UNDERLAY.get_ptr(src) {
        // SAFETY: map value pointer, valid for this program run. A network across hosts
        // has its own mode, whatever the peer's own subnet is reached in.
        Some(p) if spanning.is_some() || unsafe { (*p).mode } == MODE_VXLAN => unsafe { &*p },
        _ => return Err(Reason::DropVxlanUnknownPeer),
    };
    let inner_type: *const u16 =
        ptr_at(ctx, INNER_ETH_OFF + 12).ok_or(Reason::DropVxlanMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    if unsafe { *inner_type } != ETH_P_IP_BE {
        return Err(Reason::DropVxlanMalformed);
    }
    let inner: *const Ipv4Hdr = ptr_at(ctx, INNER_IP_OFF).ok_or(Reason::DropVxlanMalformed)?;
    // SAFETY: ptr_at checked the bounds.
    let (vihl, isrc, idst) = unsafe { ((*inner).vihl, (*inner).src_addr, (*inner).dst_addr) };
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(Reason::DropVxlanMalformed);
    }
    let isrc = u32::from_ne_bytes(isrc);
    let idst = u32::from_ne_bytes(idst);
    let from = match PEERS.get(Key::new(32, isrc)) {
        Some(p) if p.id == peer.id => p,
        _ => return Err(Reason::DropVxlanSpoofedSrc),
    };
    let own = from.flags & PEER_F_ENDPOINT != 0;
    match spanning {
        // Only the network's own containers, on both ends.
        Some(n) if !own || from.mode != MODE_VXLAN || !n.holds(isrc) || !n.holds(idst) => {
            return Err(Reason::DropNetworkIsolated);
        }
        Some(_) => {}
        None if own => return Err(Reason::DropNetworkIsolated),
        None if !cfg.is_container(idst) => return Err(Reason::DropVxlanBadInnerDst),
        None => {}
    }
    Ok(peer.id)
}

/// Decap keeps the GSO size (the inner segments do not change: only the outer headers
/// go) and tells the kernel that the packet is plain IPv4 again.
const DECAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) as u64;

/// Checks a tunnel packet in TC (already [`pull`]ed) and strips its outer headers,
/// keeping the outer Ethernet header. Returns the sending peer's id and the inner IPv4 packet, now right after the
/// Ethernet header.
#[inline(always)]
pub fn decap<'a>(
    ctx: &'a TcContext,
    cfg: &Config,
    outer: parse::Ipv4,
) -> Result<(u32, parse::Ipv4<'a>), Reason> {
    if ctx.len() < CHECKED_LEN as u32 {
        return Err(Reason::DropVxlanMalformed);
    }
    let id = check(ctx, cfg, &outer)?;
    ctx.adjust_room(-(VXLAN_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
        .map_err(|_| Reason::DropAdjustFailed)?;
    let inner = parse::ipv4(ctx)?;
    Ok((id, inner))
}

/// Strips the outer headers in XDP: the inner frame takes the outer Ethernet header's
/// addresses (so the stack sees a frame for this host, as after a TC decap). The caller
/// has checked the packet.
#[inline(always)]
pub fn strip_xdp(ctx: &XdpContext) -> Result<(), ()> {
    let outer: *const [u8; 12] = ptr_at(ctx, 0).ok_or(())?;
    // SAFETY: ptr_at checked the bounds.
    let macs = unsafe { *outer };
    // SAFETY: helper on the program's own xdp_buff.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, VXLAN_OVERHEAD as i32) } != 0 {
        return Err(());
    }
    let inner: *mut [u8; 12] = ptr_at(ctx, 0).ok_or(())?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { *inner = macs };
    Ok(())
}
