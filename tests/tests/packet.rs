//! The forward path on crafted packets through BPF_PROG_TEST_RUN: verdict, output bytes
//! and counters. Each test loads its own copy of the programs with private maps, so the
//! tests run in parallel.

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use netpath::{
    config::{Config, Host, Mode, Peer, XdpMode},
    datapath::{self, Maps},
    pin,
};
use netpath_common::{Reason, map_names, prog_names};
use netpath_tests::packet::{ETH_LEN, Frame, ipv4_checksum_ok};

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

const HOST: [u8; 4] = [198, 18, 0, 11];
const LOCAL_C: [u8; 4] = [10, 244, 11, 2];
const GATEWAY: [u8; 4] = [10, 244, 11, 1];
const PEER_C: [u8; 4] = [10, 244, 12, 2];
const VXLAN_PEER_C: [u8; 4] = [10, 244, 13, 2];
const NOWHERE: [u8; 4] = [10, 244, 99, 2];

struct Dp {
    ebpf: Ebpf,
    maps: Maps,
}

fn cfg(ready: bool) -> Config {
    Config {
        host: Host {
            name: "a".into(),
            uplink: "eth0".into(),
            uplink_ifindex: 2,
            bridge: "br0".into(),
            bridge_ifindex: 3,
            subnet: "10.244.11.0/24".parse().unwrap(),
            address: HOST.into(),
            gateway: Some(GATEWAY.into()),
            vni: 42,
            xdp: XdpMode::Off,
            vxlan_port: 4789,
            vtep_mac: netpath_common::default_vtep_mac(HOST),
            uplink_mtu: 1500,
        },
        peers: if ready {
            vec![
                Peer {
                    name: "b".into(),
                    subnet: "10.244.12.0/24".parse().unwrap(),
                    underlay: [198, 18, 0, 12].into(),
                    mode: Mode::Direct,
                    vtep_mac: None,
                },
                Peer {
                    name: "c".into(),
                    subnet: "10.244.13.0/24".parse().unwrap(),
                    underlay: [198, 18, 0, 13].into(),
                    mode: Mode::Vxlan,
                    vtep_mac: None,
                },
            ]
        } else {
            vec![]
        },
    }
}

/// Loads the programs with private maps and the config above; None (test skipped) when
/// not root.
fn dp() -> Option<Dp> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let mut ebpf = datapath::load(None).expect("load programs");
    let mut maps = Maps::take(&mut ebpf).unwrap();
    let c = cfg(true);
    maps.write_config(&c).unwrap();
    datapath::sync_peers(&mut maps, &c).unwrap();
    Some(Dp { ebpf, maps })
}

impl Dp {
    fn run(&mut self, prog: &str, input: &[u8]) -> (i32, Vec<u8>) {
        let p: &mut SchedClassifier = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; input.len() + 512];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value as i32, out)
    }

    fn count(&self, r: Reason) -> u64 {
        self.maps.counters().unwrap()[r as usize].1.packets
    }

    /// Asserts that exactly one packet was counted, under `r`.
    fn only(&self, r: Reason) {
        let counted: Vec<(String, u64)> = self
            .maps
            .counters()
            .unwrap()
            .into_iter()
            .filter(|(_, c)| c.packets > 0)
            .map(|(i, c)| (Reason::from_u32(i).unwrap().name().to_owned(), c.packets))
            .collect();
        assert_eq!(counted, vec![(r.name().to_owned(), 1)]);
    }
}

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
    let peers = netpath::report::peer_rows(&dp.maps).unwrap();
    let b = peers.iter().find(|p| p.name == "b").unwrap();
    assert_eq!(
        (b.tx_packets, b.tx_bytes, b.rx_packets),
        (1, input.len() as u64, 0)
    );
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
        (VXLAN_PEER_C, Reason::PassUnsupportedMode),
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
    let peers = netpath::report::peer_rows(&dp.maps).unwrap();
    let b = peers.iter().find(|p| p.name == "b").unwrap();
    assert_eq!((b.rx_packets, b.tx_packets), (1, 0));
}

#[test]
fn uplink_leaves_the_rest_to_the_stack() {
    let Some(mut dp) = dp() else { return };
    for (src, dst, reason) in [
        (PEER_C, [198, 18, 0, 11], Reason::PassNotForUs),
        (PEER_C, GATEWAY, Reason::PassNotForUs),
        (NOWHERE, LOCAL_C, Reason::PassUnknownSrc),
        // A tunnel peer's containers must come through the tunnel, not in the clear.
        (VXLAN_PEER_C, LOCAL_C, Reason::PassUnknownSrc),
    ] {
        let before = dp.count(reason);
        let input = Frame::icmp(src, dst).build();
        let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &input);
        assert_eq!(
            (verdict, &out[..]),
            (TC_ACT_UNSPEC, &input[..]),
            "{src:?} -> {dst:?}"
        );
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
    let mut ebpf = datapath::load(None).unwrap();
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
    let ebpf = datapath::load(None).unwrap();
    let mut names: Vec<&str> = ebpf.maps().map(|(n, _)| n).collect();
    names.sort();
    let mut want = map_names::ALL.to_vec();
    want.sort();
    assert_eq!(names, want);
    for (name, layout) in pin::expected_layouts() {
        let map = ebpf.map(name).unwrap();
        let fd = match map {
            aya::maps::Map::Array(m)
            | aya::maps::Map::LpmTrie(m)
            | aya::maps::Map::PerCpuArray(m) => m,
            _ => panic!("{name}: unexpected map kind"),
        };
        let info = fd.info().unwrap();
        assert_eq!(pin::layout_of(&info).unwrap(), layout, "{name}");
    }
}
