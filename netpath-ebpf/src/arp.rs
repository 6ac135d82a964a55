//! ARP for networks across hosts (`NET_F_SPANS`): a container asks for the MAC of a
//! container of its network that lives on another host, and nobody on its bridge has that
//! address. `np_from_container` answers for it with the bridge's MAC (the frames then come
//! to netpath, which routes them to that host), the way a router answers proxy ARP.
//! Only for a container the agent has a route to (a /32 of `NP_PEERS` marked
//! `PEER_F_ENDPOINT`) and that is not on this host: an unknown address gets no answer, as
//! on a LAN, and a local container answers for itself.

use aya_ebpf::{helpers::bpf_redirect, maps::lpm_trie::Key, programs::TcContext};
use netpath_common::{PEER_F_ENDPOINT, Reason};

use crate::{
    maps::{self, ENDPOINTS, PEERS},
    parse::ptr_at,
};

/// Ethernet (14) and an IPv4-over-Ethernet ARP body (28).
const FRAME_LEN: usize = 42;
const ETH_P_ARP_BE: u16 = 0x0806u16.to_be();

/// The answer to an ARP request from a container of a network across hosts for one of
/// its containers on another host: the request turned into the reply, in place, sent back
/// out of the veth it came in on. None: not such a request (the bridge has it).
#[inline(always)]
pub fn answer(ctx: &TcContext, ifindex: u32) -> Option<Result<(i32, Reason), Reason>> {
    let frame: *mut [u8; FRAME_LEN] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds; copied out at once.
    let mut f = unsafe { *frame };
    if u16::from_ne_bytes([f[12], f[13]]) != ETH_P_ARP_BE
        // hardware Ethernet, protocol IPv4, 6- and 4-byte addresses, a request
        || f[14..22] != [0, 1, 8, 0, 6, 4, 0, 1]
    {
        return None;
    }
    let spa = u32::from_ne_bytes([f[28], f[29], f[30], f[31]]);
    let tpa = u32::from_ne_bytes([f[38], f[39], f[40], f[41]]);
    let net = maps::network(spa)?;
    if !net.spans() || !net.holds(tpa) || tpa == net.gateway_addr || tpa == spa {
        return None;
    }
    // SAFETY: a value of a hash map, only tested for presence.
    if unsafe { ENDPOINTS.get(tpa) }.is_some() {
        return None;
    }
    match PEERS.get(Key::new(32, tpa)) {
        Some(p) if p.flags & PEER_F_ENDPOINT != 0 => {}
        _ => return None,
    }
    let mut sha = [0u8; 6];
    sha.copy_from_slice(&f[22..28]);
    // Ethernet: back to the asker, from the bridge.
    f[0..6].copy_from_slice(&sha);
    f[6..12].copy_from_slice(&net.bridge_mac);
    // ARP reply: "tpa is at the bridge's MAC", to the asker's MAC and address.
    f[21] = 2;
    f[22..28].copy_from_slice(&net.bridge_mac);
    f[28..32].copy_from_slice(&tpa.to_ne_bytes());
    f[32..38].copy_from_slice(&sha);
    f[38..42].copy_from_slice(&spa.to_ne_bytes());
    if ctx.store(0, &f, 0).is_err() {
        return Some(Err(Reason::DropMalformed));
    }
    // SAFETY: helper call with scalar arguments.
    let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
    Some(Ok((action, Reason::FwdArpAnswered)))
}
