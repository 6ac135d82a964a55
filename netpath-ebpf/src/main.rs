//! netpath's datapath. Only the entry points live here; each says where it is attached
//! and what it sees. The logic is in one module per feature.
#![no_std]
#![no_main]

mod arp;
mod counters;
mod ct;
mod debug;
mod events;
mod forward;
mod icmp;
mod maps;
mod mtu;
mod nat;
mod parse;
mod policy;
mod vxlan;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC ingress of the container bridge. Sees what reaches the bridge's own MAC (the
/// containers' gateway) to be routed: since np_from_container routes what containers send
/// from their veths, mostly what that program leaves to the stack. Forwards packets for
/// peer subnets (encapsulated for vxlan peers), masquerades what goes to the outside,
/// translates replies on published ports; the rest goes to the host stack.
#[classifier]
pub fn np_from_bridge(ctx: TcContext) -> i32 {
    forward::from_bridge(&ctx)
}

/// TC ingress of the uplink. Sees everything arriving from the underlay: traffic of peer
/// hosts for local containers is delivered straight into them (decapsulated when it comes
/// in the tunnel); replies to masqueraded flows and published ports are translated to
/// their containers; forged tunnel traffic and traffic for containers from elsewhere is
/// dropped; the rest goes to the host stack.
#[classifier]
pub fn np_from_uplink(ctx: TcContext) -> i32 {
    forward::from_uplink(&ctx)
}

/// TC ingress of each container's host-side veth (attached by the agent to every port of
/// the bridge, also those that appear later). Sees what the container sends before the
/// bridge does: routes what goes to peers and the outside itself (the bridge and the
/// host's netfilter are not on that path), decides by policy and delivers straight what
/// goes to another container of this host; leaves the rest to the bridge, uncounted.
#[classifier]
pub fn np_from_container(ctx: TcContext) -> i32 {
    forward::from_container(&ctx)
}

/// XDP on the uplink (`xdp = "native" | "generic"`): drops forged tunnel packets early and
/// decapsulates good ones before the stack sees them; np_from_uplink delivers them.
#[xdp]
pub fn np_xdp_uplink(ctx: XdpContext) -> u32 {
    xdp::from_uplink::<true>(&ctx)
}

/// np_xdp_uplink for kernels whose XDP has no metadata (`bpf_xdp_adjust_meta`): the same
/// checks and drops; good tunnel packets pass whole, np_from_uplink decapsulates them.
#[xdp]
pub fn np_xdp_check(ctx: XdpContext) -> u32 {
    xdp::from_uplink::<false>(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
