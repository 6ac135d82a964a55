//! Docker's networks of one host on crafted packets through BPF_PROG_TEST_RUN: isolation
//! between networks, internal networks, masquerade per network, a network outside the
//! host's subnet, delivery into each network's containers with its bridge's MAC.

mod common;

use common::*;
use netpath::packet::{ETH_LEN, Frame};
use netpath::{
    reconcile,
    state::{Endpoint, Network, Origin},
};
use netpath_common::{Reason, prog_names};

/// The host's subnet: docker0's 10.244.11.0/24 and the three networks below; peers b
/// and c (10.244.12.0/24, 10.244.13.0/24) are outside it.
const RANGE: &str = "10.244.8.0/22";
const APP_C: [u8; 4] = [10, 244, 10, 2];
const APP_C2: [u8; 4] = [10, 244, 10, 3];
const APP_GW: [u8; 4] = [10, 244, 10, 1];
const SEALED_C: [u8; 4] = [10, 244, 9, 2];
const QUIET_C: [u8; 4] = [10, 244, 8, 2];
const FAR_C: [u8; 4] = [172, 30, 0, 2];
const APP_MAC: [u8; 6] = [2, 0, 0, 0, 10, 1];
const OUTSIDE: [u8; 4] = [198, 18, 0, 99];

fn net(name: &str, subnet: &str, ifindex: u32, internal: bool, masquerade: bool) -> Network {
    let subnet = netpath::state::parse_subnet("", subnet).unwrap();
    Network {
        name: name.into(),
        docker_id: format!("{name:0<12}"),
        bridge: format!("br-{name}"),
        bridge_ifindex: ifindex,
        bridge_mac: if name == "app" {
            APP_MAC
        } else {
            [2, 0, 0, 0, 0, ifindex as u8]
        },
        gateway: subnet.hosts().next(),
        subnet,
        internal,
        masquerade,
        origin: Origin::Docker,
        span: None,
    }
}

/// The programs with docker0 and Docker's networks app, sealed (internal), quiet (no
/// masquerade) and far (outside the host's subnet); masquerade on; a port published to
/// app's container; endpoints for docker0's and app's containers.
fn dp_networks() -> Option<Dp> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let mut c = cfg(true);
    c.host.subnet = RANGE.parse().unwrap();
    c.host.masquerade = true;
    c.publish.push(netpath::state::Publish {
        proto: netpath::state::Proto::Tcp,
        host_port: 8080,
        container: APP_C.into(),
        port: 80,
    });
    let mut d = netpath::sources::from_config(&c);
    d.networks.extend([
        net("app", "10.244.10.0/24", 50, false, true),
        net("sealed", "10.244.9.0/24", 51, true, true),
        net("quiet", "10.244.8.0/24", 52, false, false),
        net("far", "172.30.0.0/24", 53, false, true),
    ]);
    let (ebpf, mut maps) = reconcile::private(&d).expect("load programs");
    let mut eps = endpoints();
    eps.push(Endpoint {
        addr: APP_C.into(),
        ifindex: 60,
        mac: CONTAINER_MAC,
    });
    reconcile::endpoints::reconcile(&mut maps, &Default::default(), &eps).expect("endpoints");
    Some(Dp { ebpf, maps })
}

#[test]
fn containers_of_two_networks_do_not_reach_each_other() {
    let Some(mut dp) = dp_networks() else { return };
    for (src, dst) in [
        (APP_C, LOCAL_C),
        (LOCAL_C, APP_C),
        (APP_C, SEALED_C),
        (SEALED_C, QUIET_C),
        (FAR_C, APP_C),
    ] {
        let input = Frame::tcp(src, dst, 1000, 80, 0x02).build();
        let (verdict, _) = dp.run(prog_names::FROM_CONTAINER, &input);
        assert_eq!(verdict, TC_ACT_SHOT, "{src:?} -> {dst:?}");
    }
    assert_eq!(dp.count(Reason::DropNetworkIsolated), 5);
    assert_eq!(dp.total(), 5);
    assert_eq!(dp.maps.ct.keys().count(), 0, "nothing tracked");
}

#[test]
fn containers_of_one_network_and_the_host_are_reached() {
    let Some(mut dp) = dp_networks() else { return };
    // The same network: straight into the container when its endpoint is known, else
    // through the bridge.
    let input = Frame::icmp(APP_C2, APP_C).build();
    assert_eq!(
        dp.run(prog_names::FROM_CONTAINER, &input).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(dp.count(Reason::FwdSameHost), 1);
    let input = Frame::icmp(APP_C, APP_C2).build();
    assert_eq!(dp.run(prog_names::FROM_CONTAINER, &input).0, TC_ACT_UNSPEC);
    assert_eq!(dp.count(Reason::FwdViaBridge), 1);
    // An internal network's containers reach each other.
    let input = Frame::icmp(SEALED_C, [10, 244, 9, 3]).build();
    assert_eq!(dp.run(prog_names::FROM_CONTAINER, &input).0, TC_ACT_UNSPEC);
    assert_eq!(dp.count(Reason::FwdViaBridge), 2);
    // Another network's gateway, the host's address, a network's broadcast: the stack's,
    // unchanged and uncounted.
    for (src, dst) in [
        (APP_C, GATEWAY),
        (LOCAL_C, APP_GW),
        (SEALED_C, HOST),
        (APP_C, [10, 244, 10, 255]),
    ] {
        let input = Frame::icmp(src, dst).build();
        let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
        assert_eq!((verdict, &out[..]), (TC_ACT_UNSPEC, &input[..]), "{dst:?}");
    }
    assert_eq!(dp.total(), 3);
}

#[test]
fn an_internal_network_has_no_way_out_nor_in() {
    let Some(mut dp) = dp_networks() else { return };
    for dst in [PEER_C, VXLAN_PEER_C, OUTSIDE, [8, 8, 8, 8]] {
        let input = Frame::tcp(SEALED_C, dst, 1000, 80, 0x02).build();
        for prog in [prog_names::FROM_CONTAINER, prog_names::FROM_BRIDGE] {
            assert_eq!(dp.run(prog, &input).0, TC_ACT_SHOT, "{prog} {dst:?}");
        }
    }
    assert_eq!(dp.count(Reason::DropNetworkInternal), 8);
    // From a direct peer, to a container of it: dropped too.
    let input = Frame::tcp(PEER_C, SEALED_C, 1000, 80, 0x02).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &input).0, TC_ACT_SHOT);
    assert_eq!(dp.count(Reason::DropNetworkInternal), 9);
    assert_eq!(dp.total(), 9);
    assert_eq!(dp.maps.nat.keys().count(), 0, "no port taken");
}

#[test]
fn masquerade_follows_each_networks_option() {
    let Some(mut dp) = dp_networks() else { return };
    let input = Frame::tcp(APP_C, OUTSIDE, 1000, 80, 0x02).build();
    let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &out[ETH_LEN + 12..ETH_LEN + 16],
        &HOST,
        "source is the host's"
    );
    assert_eq!(dp.count(Reason::FwdMasquerade), 1);
    // A network outside the host's subnet is masqueraded as well.
    let input = Frame::tcp(FAR_C, OUTSIDE, 1000, 80, 0x02).build();
    assert_eq!(
        dp.run(prog_names::FROM_CONTAINER, &input).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(dp.count(Reason::FwdMasquerade), 2);
    // enable_ip_masquerade=false: left to the stack, as Docker routes it.
    let input = Frame::tcp(QUIET_C, OUTSIDE, 1000, 80, 0x02).build();
    let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
    assert_eq!((verdict, &out[..]), (TC_ACT_UNSPEC, &input[..]));
    let (verdict, _) = dp.run(prog_names::FROM_BRIDGE, &input);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(dp.count(Reason::PassUnknownDst), 1);
    assert_eq!(dp.total(), 3);
}

#[test]
fn only_networks_inside_the_hosts_subnet_go_to_peers() {
    let Some(mut dp) = dp_networks() else { return };
    let input = Frame::icmp(APP_C, PEER_C).build();
    assert_eq!(
        dp.run(prog_names::FROM_CONTAINER, &input).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(dp.count(Reason::FwdDirect), 1);
    let input = Frame::icmp(QUIET_C, VXLAN_PEER_C).build();
    assert_eq!(
        dp.run(prog_names::FROM_CONTAINER, &input).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(dp.count(Reason::FwdVxlanEncap), 1);
    for dst in [PEER_C, VXLAN_PEER_C] {
        let input = Frame::icmp(FAR_C, dst).build();
        assert_eq!(dp.run(prog_names::FROM_CONTAINER, &input).0, TC_ACT_SHOT);
    }
    assert_eq!(dp.count(Reason::DropOutsideRange), 2);
    // A network's gateway is the host's, not a container: never a peer's business.
    let input = Frame::icmp(APP_GW, PEER_C).build();
    assert_eq!(dp.run(prog_names::FROM_BRIDGE, &input).0, TC_ACT_SHOT);
    assert_eq!(dp.count(Reason::DropForeignSrc), 1);
    assert_eq!(dp.total(), 5);
}

#[test]
fn peers_and_published_ports_reach_every_network_with_its_bridges_mac() {
    let Some(mut dp) = dp_networks() else { return };
    let input = Frame::tcp(PEER_C, APP_C, 1000, 80, 0x02).build();
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdDeliver), 1);
    assert_eq!(&out[..6], &CONTAINER_MAC, "to the container");
    assert_eq!(&out[6..12], &APP_MAC, "from app's bridge");
    // A container of a network without an endpoint yet: through its bridge.
    let input = Frame::tcp(PEER_C, QUIET_C, 1000, 80, 0x02).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &input).0, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdViaBridge), 1);
    // A network's gateway: the host's own address, the stack's.
    let input = Frame::tcp(PEER_C, APP_GW, 1000, 80, 0x02).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &input).0, TC_ACT_UNSPEC);
    assert_eq!(dp.count(Reason::PassNotForUs), 1);
    // The published port leads into app's container.
    let input = Frame::tcp(OUTSIDE, HOST, 40000, 8080, 0x02).build();
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdPublished), 1);
    assert_eq!(&out[ETH_LEN + 16..ETH_LEN + 20], &APP_C);
    assert_eq!(&out[6..12], &APP_MAC);
    assert_eq!(dp.total(), 4);
}
