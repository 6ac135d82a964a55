//! Networks across hosts on crafted packets through BPF_PROG_TEST_RUN: ARP answered for a
//! network's containers on other hosts, their /32 routes in the network's mode and VNI,
//! and every other network kept from them, sending and receiving.

mod common;

use common::*;
use netpath::packet::{ETH_LEN, Frame};
use netpath::{
    reconcile,
    state::{Endpoint, Mode, Network, Origin, Remote, Span},
};
use netpath_common::{Reason, prog_names};

/// net1 (vxlan, vni 4096) and net2 (direct, vni 4097), across hosts.
const NET1_C: [u8; 4] = [10, 244, 64, 3];
const NET1_ON_B: [u8; 4] = [10, 244, 64, 4];
const NET1_ON_C: [u8; 4] = [10, 244, 64, 5];
const NET1_GW: [u8; 4] = [10, 244, 64, 1];
const NET2_C: [u8; 4] = [10, 244, 65, 3];
const NET2_ON_B: [u8; 4] = [10, 244, 65, 4];
const NET1_MAC: [u8; 6] = [2, 0, 0, 0, 64, 1];

fn across(name: &str, subnet: &str, ifindex: u32, vni: u32, mode: Mode) -> Network {
    let subnet = netpath::state::parse_subnet("", subnet).unwrap();
    Network {
        name: name.into(),
        docker_id: format!("{name:0<12}"),
        bridge: format!("br-{name}"),
        bridge_ifindex: ifindex,
        bridge_mac: if name == "net1" {
            NET1_MAC
        } else {
            [2, 0, 0, 0, 0, ifindex as u8]
        },
        gateway: subnet.hosts().next(),
        subnet,
        internal: false,
        masquerade: true,
        origin: Origin::Docker,
        span: Some(Span { vni, mode }),
    }
}

fn remote(addr: [u8; 4], network: &str, host: &str, mode: Mode) -> Remote {
    Remote {
        addr: addr.into(),
        network: network.into(),
        host: host.into(),
        mode,
    }
}

/// The programs with docker0, net1 and net2; net1's containers on peers b and c, net2's
/// on b; local endpoints on both networks.
fn dp_across() -> Option<Dp> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let mut c = cfg(true);
    c.host.masquerade = true;
    let mut d = netpath::sources::from_config(&c);
    d.networks.extend([
        across("net1", "10.244.64.0/24", 70, 4096, Mode::Vxlan),
        across("net2", "10.244.65.0/24", 71, 4097, Mode::Direct),
    ]);
    d.remote = vec![
        remote(NET1_ON_B, "net1", "b", Mode::Vxlan),
        remote(NET1_ON_C, "net1", "c", Mode::Vxlan),
        remote(NET2_ON_B, "net2", "b", Mode::Direct),
    ];
    let (ebpf, mut maps) = reconcile::private(&d).expect("load programs");
    let mut eps = endpoints();
    eps.extend([(NET1_C, 61), (NET2_C, 62)].map(|(a, ifindex)| Endpoint {
        addr: a.into(),
        ifindex,
        mac: CONTAINER_MAC,
    }));
    reconcile::endpoints::reconcile(&mut maps, &Default::default(), &eps).expect("endpoints");
    Some(Dp { ebpf, maps })
}

/// An ARP request from `spa` (MAC `sha`) for `tpa`, broadcast.
fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(sha);
    f.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend(sha);
    f.extend(spa);
    f.extend([0; 6]);
    f.extend(tpa);
    f
}

#[test]
fn a_containers_arp_for_one_on_another_host_is_answered_with_the_bridges_mac() {
    let Some(mut dp) = dp_across() else { return };
    let input = arp_request(CONTAINER_MAC, NET1_C, NET1_ON_B);
    let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let mut want = CONTAINER_MAC.to_vec();
    want.extend(NET1_MAC);
    want.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    want.extend(NET1_MAC);
    want.extend(NET1_ON_B);
    want.extend(CONTAINER_MAC);
    want.extend(NET1_C);
    assert_eq!(&out[..42], &want[..]);
    dp.only(Reason::FwdArpAnswered);
    // Left to the bridge, unchanged and uncounted: an address nobody holds, a container
    // of this host (it answers itself), the gateway, another network's container on a
    // peer, a request from a container of no network across hosts, a reply.
    let mut reply = arp_request(CONTAINER_MAC, NET1_C, NET1_ON_B);
    reply[21] = 2;
    for input in [
        arp_request(CONTAINER_MAC, NET1_C, [10, 244, 64, 99]),
        arp_request(CONTAINER_MAC, NET1_C, [10, 244, 64, 3]),
        arp_request(CONTAINER_MAC, [10, 244, 64, 6], NET1_C),
        arp_request(CONTAINER_MAC, NET1_C, NET1_GW),
        arp_request(CONTAINER_MAC, NET1_C, NET2_ON_B),
        arp_request(CONTAINER_MAC, LOCAL_C, NET1_ON_B),
        reply,
    ] {
        let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
        assert_eq!((verdict, &out[..input.len()]), (TC_ACT_UNSPEC, &input[..]));
    }
    assert_eq!(dp.total(), 1);
}

#[test]
fn a_networks_containers_on_other_hosts_are_reached_in_its_mode_and_vni() {
    let Some(mut dp) = dp_across() else { return };
    // Frames to the bridge's MAC, as the answered ARP has it.
    let mut f = Frame::icmp(NET1_C, NET1_ON_C);
    f.dst_mac = NET1_MAC;
    let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &f.build());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdVxlanEncap), 1);
    assert_eq!(
        &out[ETH_LEN + 16..ETH_LEN + 20],
        &VXLAN_PEER,
        "to c's underlay"
    );
    let vni = &out[ETH_LEN + 20 + 8 + 4..ETH_LEN + 20 + 8 + 7];
    assert_eq!(vni, &4096u32.to_be_bytes()[1..], "net1's VNI");
    // net2 is direct: to b's underlay, unencapsulated.
    let input = Frame::icmp(NET2_C, NET2_ON_B).build();
    let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
    assert_eq!((verdict, out.len()), (TC_ACT_REDIRECT, input.len()));
    assert_eq!(dp.count(Reason::FwdDirect), 1);
    // A container of this host on the same network: straight into it, its own MAC written
    // over the bridge's.
    let mut f = Frame::icmp([10, 244, 64, 7], NET1_C);
    f.dst_mac = NET1_MAC;
    let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &f.build());
    assert_eq!((verdict, &out[..6]), (TC_ACT_REDIRECT, &CONTAINER_MAC[..]));
    assert_eq!(dp.count(Reason::FwdSameHost), 1);
    assert_eq!(dp.peer("c").tx_packets, 1);
    assert_eq!(dp.peer("b").tx_packets, 1);
}

#[test]
fn other_networks_are_kept_from_a_network_across_hosts_both_ways() {
    let Some(mut dp) = dp_across() else { return };
    // Sending: docker0's container to net1's on b; net1's to net2's on b; net1's to b's own
    // subnet.
    for (src, dst) in [
        (LOCAL_C, NET1_ON_B),
        (NET1_C, NET2_ON_B),
        (NET1_C, PEER_C),
        (NET2_C, VXLAN_PEER_C),
    ] {
        let input = Frame::tcp(src, dst, 1000, 80, 0x02).build();
        let (verdict, _) = dp.run(prog_names::FROM_CONTAINER, &input);
        assert_eq!(verdict, TC_ACT_SHOT, "{src:?} -> {dst:?}");
    }
    assert_eq!(dp.count(Reason::DropNetworkIsolated), 4);
    // Receiving in net1's VNI from c: its container, to this host's net1 container: in.
    let inner = Frame::icmp(NET1_ON_C, NET1_C).build();
    let (verdict, _) = dp.run(
        prog_names::FROM_UPLINK,
        &vxlan_frame(VXLAN_PEER, 4096, 0x08, &inner),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdVxlanDecap), 1);
    // Not in: net1's VNI to docker0's container; the host's VNI with net1's ends; net1's
    // VNI from c's own subnet; another VNI.
    for (vni, src, dst, reason) in [
        (4096, NET1_ON_C, LOCAL_C, Reason::DropVxlanWrongVni),
        (42, NET1_ON_C, NET1_C, Reason::DropNetworkIsolated),
        (4096, VXLAN_PEER_C, NET1_C, Reason::DropNetworkIsolated),
        (4097, NET1_ON_C, NET1_C, Reason::DropVxlanWrongVni),
    ] {
        let inner = Frame::icmp(src, dst).build();
        let input = vxlan_frame(VXLAN_PEER, vni, 0x08, &inner);
        let before = dp.count(reason);
        let (verdict, _) = dp.run(prog_names::FROM_UPLINK, &input);
        assert_eq!(verdict, TC_ACT_SHOT, "vni {vni} {src:?} -> {dst:?}");
        assert_eq!(dp.count(reason), before + 1, "vni {vni} {src:?} -> {dst:?}");
        // XDP checks the same way.
        assert_eq!(
            dp.run_xdp(&input).0,
            1,
            "XDP_DROP: vni {vni} {src:?} -> {dst:?}"
        );
    }
    // Direct, from b: net2's container to this host's: in; b's own subnet to net2's, and
    // net1's (a vxlan network) in the clear: not.
    let input = Frame::icmp(NET2_ON_B, NET2_C).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &input).0, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdDeliver), 1);
    let before = dp.count(Reason::DropNetworkIsolated);
    let input = Frame::icmp(PEER_C, NET2_C).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &input).0, TC_ACT_SHOT);
    assert_eq!(dp.count(Reason::DropNetworkIsolated), before + 1);
    let input = Frame::icmp(NET1_ON_B, NET1_C).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &input).0, TC_ACT_SHOT);
    assert_eq!(dp.count(Reason::DropNotPublished), 1);
}
