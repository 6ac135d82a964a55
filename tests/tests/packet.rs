//! The forward path on crafted packets through BPF_PROG_TEST_RUN: verdict, output bytes
//! and counters. Each test loads its own copy of the programs with private maps, so the
//! tests run in parallel.

mod common;

use common::*;
use netpath::packet::{ETH_LEN, Frame, ipv4_checksum_ok};
use netpath::{
    datapath,
    maps::Maps,
    pin, reconcile,
    state::{Mode, Peer},
};
use netpath_common::{Reason, map_names, prog_names};

/// What the forward path must do to a frame: only TTL and checksum change.
fn assert_routed(input: &[u8], out: &[u8]) {
    assert_eq!(out.len(), input.len());
    assert_eq!(out[ETH_LEN + 8], input[ETH_LEN + 8] - 1, "TTL decremented");
    assert!(
        ipv4_checksum_ok(out),
        "IPv4 checksum valid after the TTL change"
    );
    let mut expect = input.to_vec();
    expect[ETH_LEN + 8] -= 1;
    expect[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&out[ETH_LEN + 10..ETH_LEN + 12]);
    assert_eq!(out, &expect[..], "nothing but TTL and checksum changes");
}

#[test]
fn bridge_to_direct_peer_is_routed() {
    let Some(mut dp) = dp() else { return };
    let input = Frame::icmp(LOCAL_C, PEER_C).build();
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed(&input, &out);
    dp.only(Reason::FwdDirect);
    let b = dp.peer("b");
    assert_eq!(
        (b.tx_packets, b.tx_bytes, b.rx_packets),
        (1, input.len() as u64, 0)
    );
}

#[test]
fn a_source_that_is_not_this_hosts_is_not_forwarded_to_a_peer() {
    // A container sending with another address (no container of this host's subnet, the
    // gateway's, a peer's, none): a peer would take it for this host's; found by
    // `netpath fuzz`, which also saw such packets make conntrack entries.
    let Some(dp) = dp() else { return };
    let mut dp = dp;
    let sources = [NOWHERE, GATEWAY, [10, 244, 12, 7], [0, 0, 0, 0]];
    for src in sources {
        for dst in [PEER_C, VXLAN_PEER_C] {
            let input = Frame::tcp(src, dst, 1000, 80, 0x02).build();
            let (verdict, _) = dp.run(prog_names::FROM_BRIDGE, &input);
            assert_eq!(verdict, TC_ACT_SHOT, "{src:?} -> {dst:?}");
        }
    }
    assert_eq!(dp.count(Reason::DropForeignSrc), 8);
    assert_eq!(dp.total(), 8);
    assert_eq!(dp.maps.ct.keys().count(), 0, "nothing tracked");
    // This host's container is forwarded as before.
    let input = Frame::tcp(LOCAL_C, PEER_C, 1000, 80, 0x02).build();
    assert_eq!(dp.run(prog_names::FROM_BRIDGE, &input).0, TC_ACT_REDIRECT);
}

#[test]
fn checksum_carry_is_folded() {
    // A header whose checksum is 0xfeff or 0xffff exercises the end-around carry of the
    // incremental update; try TTLs until both branches have been seen valid.
    let Some(mut dp) = dp() else { return };
    for ttl in 2..=255u8 {
        let mut f = Frame::icmp(LOCAL_C, PEER_C).ttl(ttl);
        f.payload[4] = ttl;
        let input = f.build();
        let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_routed(&input, &out);
    }
    assert_eq!(dp.count(Reason::FwdDirect), 254);
}

#[test]
fn ttl_one_goes_to_the_stack_unchanged() {
    let Some(mut dp) = dp() else { return };
    for ttl in [0, 1] {
        let input = Frame::icmp(LOCAL_C, PEER_C).ttl(ttl).build();
        let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &input);
        assert_eq!((verdict, &out[..]), (TC_ACT_UNSPEC, &input[..]));
    }
    assert_eq!(dp.count(Reason::PassTtlExpired), 2);
}

#[test]
fn unknown_and_local_destinations_go_to_the_stack_unchanged() {
    let Some(mut dp) = dp() else { return };
    for (dst, reason) in [
        (NOWHERE, Reason::PassUnknownDst),
        ([8, 8, 8, 8], Reason::PassUnknownDst),
        (GATEWAY, Reason::PassLocal),
        ([10, 244, 11, 3], Reason::PassLocal),
        (HOST, Reason::PassLocal),
    ] {
        let before = dp.count(reason);
        let input = Frame::icmp(LOCAL_C, dst).build();
        let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &input);
        assert_eq!((verdict, &out[..]), (TC_ACT_UNSPEC, &input[..]), "{dst:?}");
        assert_eq!(
            dp.count(reason),
            before + 1,
            "{dst:?} counted as {}",
            reason.name()
        );
    }
}

#[test]
fn malformed_headers_are_dropped_and_counted() {
    let Some(mut dp) = dp() else { return };
    let good = Frame::icmp(LOCAL_C, PEER_C).build();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut ihl4 = good.clone();
    ihl4[ETH_LEN] = 0x44;
    cases.push(("header length 16", ihl4));
    let mut v6 = good.clone();
    v6[ETH_LEN] = 0x65;
    cases.push(("version 6 in an IPv4 ethertype", v6));
    let mut long = good.clone();
    long[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&1500u16.to_be_bytes());
    cases.push(("total length past the frame", long));
    let mut short = good.clone();
    short[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&12u16.to_be_bytes());
    cases.push(("total length under the header", short));
    // A frame shorter than Ethernet + 20 bytes cannot be crafted here: BPF_PROG_TEST_RUN
    // refuses it (EINVAL). A header that claims more than the packet holds can.
    let mut ihl15 = good[..ETH_LEN + 40].to_vec();
    ihl15[ETH_LEN] = 0x4f;
    ihl15[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&40u16.to_be_bytes());
    cases.push(("header length 60 in a 40-byte packet", ihl15));
    for (what, input) in &cases {
        let (verdict, _) = dp.run(prog_names::FROM_BRIDGE, input);
        assert_eq!(verdict, TC_ACT_SHOT, "{what}");
    }
    assert_eq!(dp.count(Reason::DropMalformed), cases.len() as u64);
}

#[test]
fn non_ipv4_goes_to_the_stack() {
    let Some(mut dp) = dp() else { return };
    let mut arp = Frame::icmp(LOCAL_C, PEER_C).build();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &arp);
    assert_eq!((verdict, &out[..]), (TC_ACT_UNSPEC, &arp[..]));
    dp.only(Reason::PassNotIpv4);
}

#[test]
fn uplink_delivers_from_direct_peer() {
    let Some(mut dp) = dp() else { return };
    let input = Frame::icmp(PEER_C, LOCAL_C).build();
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed(&input, &out);
    dp.only(Reason::FwdDeliver);
    let b = dp.peer("b");
    assert_eq!((b.rx_packets, b.tx_packets), (1, 0));
}

#[test]
fn uplink_leaves_the_host_its_traffic_and_drops_strangers_to_containers() {
    let Some(mut dp) = dp() else { return };
    for (src, dst, reason, verdict) in [
        (PEER_C, HOST, Reason::PassNotForUs, TC_ACT_UNSPEC),
        (PEER_C, GATEWAY, Reason::PassNotForUs, TC_ACT_UNSPEC),
        // From outside, containers are reached through published ports only.
        (NOWHERE, LOCAL_C, Reason::DropNotPublished, TC_ACT_SHOT),
        // A tunnel peer's containers must come through the tunnel, not in the clear.
        (VXLAN_PEER_C, LOCAL_C, Reason::DropNotPublished, TC_ACT_SHOT),
    ] {
        let before = dp.count(reason);
        let input = Frame::icmp(src, dst).build();
        let (got, out) = dp.run(prog_names::FROM_UPLINK, &input);
        assert_eq!(got, verdict, "{src:?} -> {dst:?}");
        if verdict == TC_ACT_UNSPEC {
            assert_eq!(out, input, "{src:?} -> {dst:?} unchanged");
        }
        assert_eq!(dp.count(reason), before + 1);
    }
    let input = Frame::icmp(PEER_C, LOCAL_C).ttl(1).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &input).0, TC_ACT_UNSPEC);
    assert_eq!(dp.count(Reason::PassTtlExpired), 1);
}

#[test]
fn nothing_is_forwarded_before_the_agent_writes_the_config() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let mut ebpf = datapath::load(None, netpath_common::DEFAULT_CT_SIZE).unwrap();
    let maps = Maps::take(&mut ebpf).unwrap();
    let mut dp = Dp { ebpf, maps };
    let input = Frame::icmp(LOCAL_C, PEER_C).build();
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &input),
        (TC_ACT_UNSPEC, input.clone())
    );
    dp.only(Reason::PassNoConfig);
}

#[test]
fn object_maps_match_common_names_and_layouts() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let ebpf = datapath::load(None, netpath_common::DEFAULT_CT_SIZE).unwrap();
    let mut names: Vec<&str> = ebpf.maps().map(|(n, _)| n).collect();
    names.sort();
    let mut want = map_names::ALL.to_vec();
    want.extend(datapath::PRIVATE_MAPS);
    want.sort();
    assert_eq!(names, want);
    for (name, layout) in pin::expected_layouts() {
        let map = ebpf.map(name).unwrap();
        let fd = match map {
            aya::maps::Map::Array(m)
            | aya::maps::Map::LpmTrie(m)
            | aya::maps::Map::PerCpuArray(m)
            | aya::maps::Map::HashMap(m)
            | aya::maps::Map::LruHashMap(m)
            | aya::maps::Map::RingBuf(m) => m,
            _ => panic!("{name}: unexpected map kind"),
        };
        let info = fd.info().unwrap();
        assert_eq!(pin::layout_of(&info).unwrap(), layout, "{name}");
    }
}

#[test]
fn encap_writes_exact_outer_headers() {
    let Some(mut dp) = dp() else { return };
    let inner = Frame::icmp(LOCAL_C, VXLAN_PEER_C).build();
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &inner);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    dp.only(Reason::FwdVxlanEncap);
    assert_eq!(out.len(), inner.len() + 50);
    let ip = &out[ETH_LEN..ETH_LEN + 20];
    assert_eq!(&out[12..14], &[0x08, 0x00], "outer ethertype");
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        u16::from_be_bytes([ip[2], ip[3]]) as usize,
        inner.len() - ETH_LEN + 50,
        "tot_len"
    );
    assert_eq!(ip[6] & 0x40, 0x40, "DF");
    assert_eq!((ip[8], ip[9]), (64, 17), "TTL, UDP");
    assert_eq!(&ip[12..16], &HOST);
    assert_eq!(&ip[16..20], &VXLAN_PEER);
    assert!(ipv4_checksum_ok(&out), "outer IPv4 checksum");
    let udp = &out[34..42];
    assert!(
        u16::from_be_bytes([udp[0], udp[1]]) >= 49152,
        "source port from the flow hash"
    );
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        inner.len() - ETH_LEN + 30
    );
    assert_eq!(
        &udp[6..8],
        &[0, 0],
        "no UDP checksum, as Linux's vxlan over IPv4"
    );
    assert_eq!(
        &out[42..50],
        &[0x08, 0, 0, 0, 0, 0, 42, 0],
        "I flag, VNI 42"
    );
    assert_eq!(
        &out[50..56],
        &[0x02, 0x4e, 198, 18, 0, 13],
        "inner dst: the peer's VTEP MAC"
    );
    assert_eq!(
        &out[56..62],
        &[0x02, 0x4e, 198, 18, 0, 11],
        "inner src: our VTEP MAC"
    );
    // The inner packet follows, routed: TTL-1, valid checksum, nothing else changed.
    let mut want = inner.clone();
    want[ETH_LEN + 8] -= 1;
    assert_routed(&inner, &[&inner[..ETH_LEN], &out[64..]].concat());
    assert_eq!(out[64 + 8], want[ETH_LEN + 8]);
}

/// `frame` (an IPv4 frame) made a fragment: at `offset` (8-byte units), more to come or
/// not; its IPv4 checksum made right again.
fn fragment(frame: &[u8], offset: u16, more: bool) -> Vec<u8> {
    let mut f = frame.to_vec();
    let field = offset | if more { 0x2000 } else { 0 };
    f[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&field.to_be_bytes());
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
    let c = netpath::packet::checksum(&f[ETH_LEN..ETH_LEN + 20]);
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn encap_source_ports_follow_the_flow() {
    let Some(mut dp) = dp() else { return };
    let mut sport = |frame: &[u8]| {
        let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, frame);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let p = u16::from_be_bytes([out[34], out[35]]);
        assert!(p >= 49152, "source port {p} in 49152-65535");
        p
    };
    let udp = |sport, dport| Frame::udp(LOCAL_C, VXLAN_PEER_C, sport, dport, b"x", true).build();
    // One flow: one port, packet after packet.
    let first = sport(&udp(40000, 53));
    assert_eq!(
        sport(&udp(40000, 53)),
        first,
        "the same flow, the same port"
    );
    // Flows that differ in one port each spread over the range.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..64 {
        seen.insert(sport(&udp(40000 + i, 53)));
        seen.insert(sport(&udp(40000, 1000 + i)));
    }
    assert!(
        seen.len() >= 120,
        "128 flows took only {} source ports",
        seen.len()
    );
    // Every fragment of a datagram takes the same port (the later ones carry no ports),
    // and it is not mistaken for the unfragmented flow's.
    let whole = udp(40000, 53);
    let head = sport(&fragment(&whole, 0, true));
    let tail = sport(&fragment(&whole, 185, false));
    assert_eq!(head, tail, "the first fragment and a later one");
    let other = sport(&fragment(&udp(40001, 54), 0, true));
    assert_eq!(head, other, "fragments hash on the addresses alone");
    // Other addresses, other ports.
    let elsewhere = Frame::udp([10, 244, 11, 3], VXLAN_PEER_C, 40000, 53, b"x", true).build();
    assert_ne!(sport(&elsewhere), first, "another container");
}

#[test]
fn encap_clamps_the_mss_of_syns() {
    let Some(mut dp) = dp() else { return };
    // TCP SYN with MSS 1460: 20-byte TCP header + MSS option (4 bytes).
    let mut tcp = vec![
        0x30, 0x39, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    tcp.extend([2, 4, 0x05, 0xb4]);
    let mut pseudo = Vec::new();
    pseudo.extend(LOCAL_C);
    pseudo.extend(VXLAN_PEER_C);
    pseudo.extend([0, 6, 0, tcp.len() as u8]);
    pseudo.extend(&tcp);
    let c = netpath::packet::checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut f = Frame::icmp(LOCAL_C, VXLAN_PEER_C);
    f.proto = 6;
    f.payload = tcp;
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &f.build());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let tcp_out = &out[64 + 20..];
    assert_eq!(
        &tcp_out[20..24],
        &[2, 4, 0x05, 0x82],
        "MSS 1460 clamped to 1410 (1500 - 50 - 40)"
    );
    let mut pseudo = Vec::new();
    pseudo.extend(LOCAL_C);
    pseudo.extend(VXLAN_PEER_C);
    pseudo.extend([0, 6, 0, tcp_out.len() as u8]);
    pseudo.extend(tcp_out);
    assert_eq!(netpath::packet::checksum(&pseudo), 0, "TCP checksum valid");
}

#[test]
fn decap_restores_the_inner_frame() {
    let Some(mut dp) = dp() else { return };
    let inner = Frame::icmp(VXLAN_PEER_C, LOCAL_C).build();
    let input = vxlan_frame(VXLAN_PEER, 42, 0x08, &inner);
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    dp.only(Reason::FwdVxlanDecap);
    // Outer Ethernet header, then the inner IP packet routed (TTL-1).
    assert_eq!(&out[..ETH_LEN], &input[..ETH_LEN]);
    assert_routed(&[&input[..ETH_LEN], &inner[ETH_LEN..]].concat(), &out);
    let c = dp.peer("c");
    assert_eq!((c.rx_packets, c.tx_packets), (1, 0));
}

/// Tunnel frames that must be dropped, each with the reason it must be counted under.
fn bad_tunnel_frames() -> Vec<(&'static str, Vec<u8>, Reason)> {
    let good_inner = Frame::icmp(VXLAN_PEER_C, LOCAL_C).build();
    let cases = vec![
        (
            "vxlan_decap_wrong_vni",
            vxlan_frame(VXLAN_PEER, 43, 0x08, &good_inner),
            Reason::DropVxlanWrongVni,
        ),
        (
            "vxlan_decap_no_i_flag",
            vxlan_frame(VXLAN_PEER, 42, 0x00, &good_inner),
            Reason::DropVxlanWrongVni,
        ),
        (
            "vxlan_decap_unknown_peer",
            vxlan_frame([198, 18, 0, 99], 42, 0x08, &good_inner),
            Reason::DropVxlanUnknownPeer,
        ),
        // A direct peer's underlay is not a tunnel endpoint.
        (
            "vxlan_decap_direct_peer",
            vxlan_frame([198, 18, 0, 12], 42, 0x08, &good_inner),
            Reason::DropVxlanUnknownPeer,
        ),
        (
            "vxlan_decap_spoofed_src",
            vxlan_frame(VXLAN_PEER, 42, 0x08, &Frame::icmp(PEER_C, LOCAL_C).build()),
            Reason::DropVxlanSpoofedSrc,
        ),
        (
            "vxlan_decap_inner_dst_not_local",
            vxlan_frame(
                VXLAN_PEER,
                42,
                0x08,
                &Frame::icmp(VXLAN_PEER_C, PEER_C).build(),
            ),
            Reason::DropVxlanBadInnerDst,
        ),
        (
            "vxlan_decap_inner_dst_gateway",
            vxlan_frame(
                VXLAN_PEER,
                42,
                0x08,
                &Frame::icmp(VXLAN_PEER_C, GATEWAY).build(),
            ),
            Reason::DropVxlanBadInnerDst,
        ),
        (
            "vxlan_decap_truncated",
            vxlan_frame(VXLAN_PEER, 42, 0x08, &good_inner)[..70].to_vec(),
            Reason::DropVxlanMalformed,
        ),
    ];
    let mut out = Vec::new();
    for (name, mut input, reason) in cases {
        if name == "vxlan_decap_truncated" {
            // Keep the outer lengths consistent with the cut frame.
            let l = (input.len() - ETH_LEN) as u16;
            input[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&l.to_be_bytes());
            input[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
            let c = netpath::packet::checksum(&input[ETH_LEN..ETH_LEN + 20]);
            input[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
        }
        out.push((name, input, reason));
    }
    out
}

#[test]
fn decap_drops_what_is_not_our_tunnel() {
    let Some(mut dp) = dp() else { return };
    let good_inner = Frame::icmp(VXLAN_PEER_C, LOCAL_C).build();
    for (name, input, reason) in bad_tunnel_frames() {
        let before = dp.count(reason);
        let (verdict, _) = dp.run(prog_names::FROM_UPLINK, &input);
        assert_eq!(verdict, TC_ACT_SHOT, "{name}");
        assert_eq!(
            dp.count(reason),
            before + 1,
            "{name} counted as {}",
            reason.name()
        );
    }
    // UDP to another port is not tunnel traffic: untouched.
    let mut other = vxlan_frame(VXLAN_PEER, 42, 0x08, &good_inner);
    other[ETH_LEN + 22..ETH_LEN + 24].copy_from_slice(&53u16.to_be_bytes());
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &other);
    assert_eq!((verdict, &out[..]), (TC_ACT_UNSPEC, &other[..]));
}

#[test]
fn peers_swapping_subnets_and_underlays_keep_every_entry() {
    let Some(mut dp) = dp() else { return };
    let mut c = cfg(true);
    // b and c trade subnets and underlay addresses in one config change.
    let (b, cc) = (c.peers[0].clone(), c.peers[1].clone());
    c.peers[0].subnet = cc.subnet;
    c.peers[0].underlay = cc.underlay;
    c.peers[1].subnet = b.subnet;
    c.peers[1].underlay = b.underlay;
    let changes =
        reconcile::peers::reconcile(&mut dp.maps, &netpath::sources::from_config(&c).peers)
            .unwrap();
    assert_eq!(changes.updated, vec!["b", "c"]);
    let owner = |dp: &Dp, addr: [u8; 4]| {
        dp.maps
            .underlay
            .get(&u32::from_ne_bytes(addr), 0)
            .ok()
            .map(|v| v.id)
    };
    let id = |dp: &Dp, name: &str| dp.peer(name).id;
    assert_eq!(owner(&dp, [198, 18, 0, 13]), Some(id(&dp, "b")));
    assert_eq!(owner(&dp, [198, 18, 0, 12]), Some(id(&dp, "c")));
    // 10.244.12.0/24 now belongs to c (vxlan via .12), 10.244.13.0/24 to b (direct).
    let (verdict, out) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::icmp(LOCAL_C, PEER_C).build(),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &out[ETH_LEN + 16..ETH_LEN + 20],
        &[198, 18, 0, 12],
        "encapsulated to c"
    );
    let (verdict, _) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::icmp(LOCAL_C, VXLAN_PEER_C).build(),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdDirect), 1);
    assert_eq!(dp.count(Reason::FwdVxlanEncap), 1);

    // Deleting c removes its route and its tunnel end: its traffic is refused after.
    reconcile::peers::del(&mut dp.maps, "c").unwrap();
    assert_eq!(owner(&dp, [198, 18, 0, 12]), None);
    let inner = Frame::icmp(PEER_C, LOCAL_C).build();
    let (verdict, _) = dp.run(
        prog_names::FROM_UPLINK,
        &vxlan_frame([198, 18, 0, 12], 42, 0x08, &inner),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.count(Reason::DropVxlanUnknownPeer), 1);
    let (verdict, _) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::icmp(LOCAL_C, PEER_C).build(),
    );
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(dp.count(Reason::PassUnknownDst), 1);
}

#[test]
fn peer_add_refuses_this_hosts_own_address() {
    let Some(mut dp) = dp() else { return };
    let p = Peer {
        name: "self".into(),
        subnet: "10.244.50.0/24".parse().unwrap(),
        underlay: HOST.into(),
        mode: Mode::Direct,
        vtep_mac: None,
    };
    let err = reconcile::peers::add(&mut dp.maps, &p)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("underlay = \"198.18.0.11\" is this host's own address"),
        "{err}"
    );
}

/// An ICMP echo of `size` bytes of IPv4 from a local container to the vxlan peer.
fn big_ping(size: usize, df: bool) -> Vec<u8> {
    let mut f = Frame::icmp(LOCAL_C, VXLAN_PEER_C);
    f.payload.resize(size - 20, 0x5a);
    let mut frame = f.build();
    if !df {
        frame[ETH_LEN + 6] = 0;
        frame[ETH_LEN + 10..ETH_LEN + 12].fill(0);
        let c = netpath::packet::checksum(&frame[ETH_LEN..ETH_LEN + 20]);
        frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    }
    frame
}

#[test]
fn df_packet_too_big_for_the_tunnel_gets_frag_needed() {
    let Some(mut dp) = dp() else { return };
    // Uplink MTU 1500: the tunnel carries 1450 bytes of inner IPv4.
    let input = big_ping(1451, true);
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out of the bridge");
    dp.only(Reason::DropFragNeeded);
    assert_eq!(&out[..6], &input[6..12], "to the sender's MAC");
    assert_eq!(&out[6..12], &input[..6], "from the gateway's MAC");
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    // 20 + 8 + a quote of 548 bytes: 576, the most an ICMP error may carry.
    assert_eq!(out.len(), ETH_LEN + 576);
    let ip = &out[ETH_LEN..ETH_LEN + 20];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 576, "tot_len");
    assert_eq!((ip[8], ip[9]), (64, 1), "TTL, ICMP");
    assert_eq!(&ip[12..16], &GATEWAY, "from the containers' gateway");
    assert_eq!(&ip[16..20], &LOCAL_C, "to the sender");
    assert!(ipv4_checksum_ok(&out), "IPv4 checksum");
    let icmp = &out[ETH_LEN + 20..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "destination unreachable, frag needed"
    );
    assert_eq!(&icmp[4..8], &[0, 0, 0x05, 0xaa], "next-hop MTU 1450");
    assert_eq!(netpath::packet::checksum(icmp), 0, "ICMP checksum");
    assert_eq!(
        &icmp[8..],
        &input[ETH_LEN..ETH_LEN + 548],
        "the original packet quoted as it arrived (TTL unchanged)"
    );
    let c = dp.peer("c");
    assert_eq!(c.tx_packets, 0, "nothing was sent to the peer");
}

#[test]
fn what_fits_the_tunnel_is_encapsulated_and_the_rest_answered() {
    let Some(mut dp) = dp() else { return };
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &big_ping(1450, true));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), ETH_LEN + 1450 + 50, "exactly the uplink MTU");
    dp.only(Reason::FwdVxlanEncap);

    // Without DF: answered all the same (netpath does not fragment).
    let mut dp = self::dp().unwrap();
    let input = big_ping(1451, false);
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((out[ETH_LEN + 20], out[ETH_LEN + 21]), (3, 4));
    assert_eq!(&out[ETH_LEN + 28..], &input[ETH_LEN..ETH_LEN + 548]);
    dp.only(Reason::DropFragNeeded);

    // The limit is the tunnel's: a direct peer gets big packets as they are.
    let mut dp = self::dp().unwrap();
    let mut f = Frame::icmp(LOCAL_C, PEER_C);
    f.payload.resize(1480, 0);
    let input = f.build();
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed(&input, &out);
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

#[test]
fn xdp_decap_hands_the_inner_frame_to_tc() {
    let Some(mut dp) = dp() else { return };
    if !netpath::datapath::xdp_decaps(&dp.ebpf) {
        eprintln!(
            "skipped: this kernel gives XDP programs no metadata, np_xdp_check runs instead (xdp_check_leaves_tunnel_packets_whole)"
        );
        return;
    }
    let inner = Frame::icmp(VXLAN_PEER_C, LOCAL_C).build();
    let input = vxlan_frame(VXLAN_PEER, 42, 0x08, &inner);
    let (action, out) = dp.run_xdp(&input);
    assert_eq!(action, XDP_PASS);
    // BPF_PROG_TEST_RUN returns the metadata in front of the frame: "NPXD", peer id.
    let c = dp.peer("c").id;
    assert_eq!(&out[..4], &0x4e50_5844u32.to_ne_bytes(), "metadata magic");
    assert_eq!(&out[4..8], &c.to_ne_bytes(), "metadata: the sending peer");
    // Then what TC decap leaves (outer Ethernet header, inner packet), before routing.
    assert_eq!(out[8..], [&input[..ETH_LEN], &inner[ETH_LEN..]].concat());
    assert!(
        dp.maps
            .counters()
            .unwrap()
            .iter()
            .all(|(_, c)| c.packets == 0),
        "XDP counts only its drops: TC counts the delivery"
    );
}

/// np_xdp_check, which runs where the kernel refuses np_xdp_uplink (loaded here on any
/// kernel): good tunnel packets pass whole and uncounted, forged ones are dropped with
/// TC's reasons.
#[test]
fn xdp_check_leaves_tunnel_packets_whole() {
    let Some(mut dp) = dp() else { return };
    let inner = Frame::icmp(VXLAN_PEER_C, LOCAL_C).build();
    let input = vxlan_frame(VXLAN_PEER, 42, 0x08, &inner);
    let (action, out) = dp.run_xdp_check(&input);
    assert_eq!((action, &out[..]), (XDP_PASS, &input[..]));
    assert_eq!(dp.total(), 0, "TC counts the delivery");
    for (name, input, reason) in bad_tunnel_frames() {
        let before = dp.count(reason);
        let (action, _) = dp.run_xdp_check(&input);
        assert_eq!(action, XDP_DROP, "{name}");
        assert_eq!(dp.count(reason), before + 1, "{name}");
    }
}

#[test]
fn xdp_drops_what_is_not_our_tunnel_with_the_tc_reasons() {
    let Some(mut dp) = dp() else { return };
    for (name, input, reason) in bad_tunnel_frames() {
        let before = dp.count(reason);
        let (action, _) = dp.run_xdp(&input);
        assert_eq!(action, XDP_DROP, "{name}");
        assert_eq!(
            dp.count(reason),
            before + 1,
            "{name} counted as {}",
            reason.name()
        );
    }
    // Not tunnel traffic: passed untouched, and uncounted (TC counts it).
    let good_inner = Frame::icmp(VXLAN_PEER_C, LOCAL_C).build();
    let mut other = vxlan_frame(VXLAN_PEER, 42, 0x08, &good_inner);
    other[ETH_LEN + 22..ETH_LEN + 24].copy_from_slice(&53u16.to_be_bytes());
    let plain = Frame::icmp(PEER_C, LOCAL_C).build();
    let mut arp = plain.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let before = dp.total();
    for f in [other, plain, arp] {
        let (action, out) = dp.run_xdp(&f);
        assert_eq!((action, &out[..]), (XDP_PASS, &f[..]));
    }
    let after = dp.total();
    assert_eq!(before, after);
}

/// `f` with MACs that are neither a container's nor the bridge's.
fn foreign_macs(mut f: Frame) -> Frame {
    f.dst_mac = [2, 0xaa, 0, 0, 0, 1];
    f.src_mac = [2, 0xbb, 0, 0, 0, 2];
    f
}

#[test]
fn delivery_goes_straight_into_the_container_with_the_bridges_macs() {
    let Some(mut dp) = dp() else { return };
    let direct = foreign_macs(Frame::icmp(PEER_C, LOCAL_C)).build();
    let tunnel = vxlan_frame(
        VXLAN_PEER,
        42,
        0x08,
        &foreign_macs(Frame::icmp(VXLAN_PEER_C, LOCAL_C)).build(),
    );
    for (input, reason) in [
        (&direct, Reason::FwdDeliver),
        (&tunnel, Reason::FwdVxlanDecap),
    ] {
        let (verdict, out) = dp.run(prog_names::FROM_UPLINK, input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{}", reason.name());
        assert_eq!(dp.count(reason), 1);
        // As the bridge, the container's gateway, would have sent it.
        assert_eq!(
            &out[..6],
            &CONTAINER_MAC,
            "{}: destination MAC",
            reason.name()
        );
        assert_eq!(&out[6..12], &BRIDGE_MAC, "{}: source MAC", reason.name());
        assert_eq!(&out[12..14], &[0x08, 0x00]);
        assert!(ipv4_checksum_ok(&out));
    }
    assert_eq!(dp.count(Reason::FwdViaBridge), 0);

    // Before the agent has learned the container: through the bridge (the kernel fills
    // the MACs there), counted under its own reason.
    dp.forget_endpoints();
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &direct);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed(&direct, &out);
    let (verdict, _) = dp.run(prog_names::FROM_UPLINK, &tunnel);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdViaBridge), 2);
    assert_eq!(
        (
            dp.count(Reason::FwdDeliver),
            dp.count(Reason::FwdVxlanDecap)
        ),
        (1, 1)
    );
}

#[test]
fn the_container_program_routes_what_containers_send() {
    let Some(mut dp) = dp() else { return };
    // To a direct peer: routed from the veth, the bridge is not on the path.
    let input = Frame::icmp(LOCAL_C, PEER_C).build();
    let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_routed(&input, &out);
    dp.only(Reason::FwdDirect);
    assert_eq!(dp.peer("b").tx_packets, 1);
    // To a vxlan peer: encapsulated there.
    let input = Frame::icmp(LOCAL_C, VXLAN_PEER_C).build();
    let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), input.len() + 50);
    assert_eq!(dp.count(Reason::FwdVxlanEncap), 1);
    // What netpath leaves to the stack goes on to the bridge unchanged and uncounted:
    // the bridge program decides and counts it.
    let total = dp.total();
    for input in [
        Frame::icmp(LOCAL_C, HOST).build(),
        Frame::icmp(LOCAL_C, GATEWAY).build(),
        Frame::icmp(LOCAL_C, NOWHERE).build(),
        Frame::icmp(LOCAL_C, PEER_C).ttl(1).build(),
        Frame::icmp(NOWHERE, PEER_C).build(),
    ] {
        let (verdict, out) = dp.run(prog_names::FROM_CONTAINER, &input);
        assert_eq!((verdict, &out), (TC_ACT_UNSPEC, &input));
    }
    assert_eq!(dp.total(), total, "nothing counted twice");
}
