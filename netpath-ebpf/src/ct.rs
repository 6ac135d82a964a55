//! Conntrack primitives shared by NAT and policy: the `NP_CT` key of a packet, which
//! packets can be tracked, and how a packet moves its flow's state. Both `nat` and
//! `policy` record flows in the same table; neither needs the other for this.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use netpath_common::{
    CT_F_FIN_CONTAINER, CT_F_FIN_REMOTE, CT_F_RST, CT_F_SEEN_CONTAINER, CT_F_SEEN_REMOTE, CtEntry,
    CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::parse::{L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// `last_seen_ns` is rewritten at most this often (every packet would bounce the entry's
/// cache line between CPUs); timeouts are in seconds.
const REFRESH_NS: u64 = 1_000_000_000;

/// The `NP_CT` key of a packet from local container `container` to `remote`, whose
/// own port is `container_port` (ICMP: the echo identifier, and the remote port is 0).
#[inline(always)]
pub fn ct_key(
    container: u32,
    remote: u32,
    container_port: u16,
    remote_port: u16,
    proto: u8,
) -> CtKey {
    CtKey {
        container,
        remote,
        container_port,
        remote_port: if proto == IPPROTO_ICMP {
            0
        } else {
            remote_port
        },
        proto,
        _pad: [0; 3],
    }
}

/// Whether a packet can belong to a flow of `CT`: TCP, UDP or ICMP echo, not fragmented.
#[inline(always)]
pub fn trackable(l4: &L4) -> bool {
    !l4.fragment && (l4.proto == IPPROTO_TCP || l4.proto == IPPROTO_UDP || l4.is_echo())
}

/// Records a packet of the flow `e`: what it saw (`seen`: `CT_F_SEEN_*`) and the TCP
/// flags that move it towards closing. A SYN on a closing flow is a new connection on the
/// same tuple (the client reused its port): the flow starts again.
#[inline(always)]
pub fn touch(e: *mut CtEntry, l4: &L4, from_container: bool) {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
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
