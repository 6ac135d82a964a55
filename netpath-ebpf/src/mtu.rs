//! Fitting TCP into the tunnel: the MSS option of SYNs that cross it is lowered to what
//! the tunnel carries (uplink MTU - 50 - 40), in both directions, so neither end ever
//! sends a segment that would not fit once encapsulated, whatever its own MTU.

use aya_ebpf::programs::TcContext;

use netpath_common::IPPROTO_TCP;

use crate::parse::{ETH_LEN, Ipv4, TCP_SYN, read};

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// Options are at most 40 bytes: at most 40 option kinds to look at (all NOPs).
const MAX_OPTIONS: usize = 40;

/// If `ip` (right after the Ethernet header) is a TCP SYN (or SYN-ACK) with an MSS option
/// above `mss`, lowers it and patches the TCP checksum (bpf_l4_csum_replace, which leaves
/// a CHECKSUM_PARTIAL packet for the device or GSO to finish). Any other packet, or one
/// whose options cannot be read, is left alone. Only a SYN's options cost helper calls;
/// other segments are told apart from the linear data.
#[inline(always)]
pub fn clamp_mss(ctx: &TcContext, ip: &Ipv4, mss: u16) {
    // Only the first fragment carries the TCP header.
    if ip.hdr.proto != IPPROTO_TCP || u16::from_be_bytes(ip.hdr.frags) & 0x1fff != 0 {
        return;
    }
    let tcp = ETH_LEN + ip.hlen();
    // Data offset (high nibble) and flags are adjacent: one load for both.
    let Ok([doff, flags]) = read::<2>(ctx, tcp + 12) else {
        return;
    };
    if flags & TCP_SYN == 0 {
        return;
    }
    let end = tcp + ((doff >> 4) as usize) * 4;
    let mut off = tcp + 20;
    for _ in 0..MAX_OPTIONS {
        if off + 4 > end {
            return;
        }
        let Ok(kind) = ctx.load::<u8>(off) else {
            return;
        };
        match kind {
            TCPOPT_EOL => return,
            TCPOPT_NOP => off += 1,
            _ => {
                let Ok(len) = ctx.load::<u8>(off + 1) else {
                    return;
                };
                if kind == TCPOPT_MSS && len == 4 {
                    let Ok(old) = ctx.load::<u16>(off + 2) else {
                        return;
                    };
                    let new = mss.to_be();
                    if u16::from_be(old) > mss && ctx.store(off + 2, &new, 0).is_ok() {
                        let _ = ctx.l4_csum_replace(tcp + 16, old as u64, new as u64, 2);
                    }
                    return;
                }
                if len < 2 {
                    return;
                }
                off += len as usize;
            }
        }
    }
}
