//! Masquerade, published ports and the conntrack behind them, on crafted packets through
//! BPF_PROG_TEST_RUN: exact output bytes (every checksum recomputed from scratch by the
//! frame builder), verdicts, counters and the tables.

mod common;

use common::*;
use netpath::packet::{ETH_LEN, Frame, ipv4_checksum_ok, l4_checksum_ok};
use netpath::state::{Proto, Publish};
use netpath_common::{IPPROTO_TCP, IPPROTO_UDP, Reason, prog_names};

const OUTSIDE: [u8; 4] = [198, 18, 0, 250];
const OUTSIDE2: [u8; 4] = [198, 18, 0, 251];
const ROUTER: [u8; 4] = [198, 18, 0, 1];
const LOCAL_C2: [u8; 4] = [10, 244, 11, 3];
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;

/// The datapath with `masquerade = true` and masquerade ports `ports`.
fn masq(ports: (u16, u16)) -> Option<Dp> {
    dp_with(|c| {
        c.host.masquerade = true;
        c.host.masquerade_ports = ports;
    })
}

fn masq_default() -> Option<Dp> {
    masq(netpath::state::MASQUERADE_PORTS)
}

fn from_bridge(dp: &mut Dp, f: &Frame) -> (i32, Vec<u8>) {
    dp.run(prog_names::FROM_BRIDGE, &f.build())
}

fn from_uplink(dp: &mut Dp, f: &Frame) -> (i32, Vec<u8>) {
    dp.run(prog_names::FROM_UPLINK, &f.build())
}

/// The source port (or echo identifier) of an output frame.
fn sport(out: &[u8]) -> u16 {
    let l4 = ETH_LEN + 20;
    let at = if out[ETH_LEN + 9] == 1 { l4 + 4 } else { l4 };
    u16::from_be_bytes([out[at], out[at + 1]])
}

fn dst(out: &[u8]) -> [u8; 4] {
    out[ETH_LEN + 16..ETH_LEN + 20].try_into().unwrap()
}

fn assert_checksums(out: &[u8]) {
    assert!(ipv4_checksum_ok(out), "IPv4 checksum");
    assert!(l4_checksum_ok(out), "L4 checksum");
}

/// A flow's conntrack entry.
fn ct(
    dp: &Dp,
    proto: u8,
    container: ([u8; 4], u16),
    remote: ([u8; 4], u16),
) -> netpath_common::CtEntry {
    dp.maps
        .ct
        .get(&ct_key(proto, container, remote), 0)
        .expect("conntrack entry")
}

#[test]
fn masquerade_tcp_rewrites_the_source_and_replies_come_back() {
    let Some(mut dp) = masq_default() else { return };
    let syn = Frame::tcp(LOCAL_C, OUTSIDE, 40001, 80, SYN);
    let (verdict, out) = from_bridge(&mut dp, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // The container's port is free and in the range: it is kept.
    let want = Frame::tcp(HOST, OUTSIDE, 40001, 80, SYN).ttl(63).build();
    assert_eq!(out, want, "source is the host's address, checksums valid");
    assert_checksums(&out);
    dp.only(Reason::FwdMasquerade);
    let e = ct(&dp, IPPROTO_TCP, (LOCAL_C, 40001), (OUTSIDE, 80));
    assert_eq!(
        (u16::from_be(e.nat_port), e.kind),
        (40001, netpath_common::CT_KIND_MASQUERADE)
    );

    let (verdict, back) = from_uplink(&mut dp, &Frame::tcp(OUTSIDE, HOST, 80, 40001, SYN_ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        back,
        Frame::tcp(OUTSIDE, LOCAL_C, 80, 40001, SYN_ACK)
            .ttl(63)
            .build()
    );
    assert_eq!(dp.count(Reason::FwdMasqueradeReply), 1);
    let rows = netpath::inspect::flows::flow_rows(&dp.maps).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].state,
            rows[0].container.as_str(),
            rows[0].remote.as_str()
        ),
        ("established", "10.244.11.2:40001", "198.18.0.250:80")
    );
    // A FIN moves it to closing.
    from_bridge(&mut dp, &Frame::tcp(LOCAL_C, OUTSIDE, 40001, 80, 0x11));
    assert_eq!(
        netpath::inspect::flows::flow_rows(&dp.maps).unwrap()[0].state,
        "closing"
    );
}

#[test]
fn masquerade_udp_with_and_without_checksum() {
    let Some(mut dp) = masq_default() else { return };
    for (sport, with_csum) in [(33000, true), (33001, false)] {
        let f = Frame::udp(LOCAL_C, OUTSIDE, sport, 53, b"query", with_csum);
        let (verdict, out) = from_bridge(&mut dp, &f);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let want = Frame::udp(HOST, OUTSIDE, sport, 53, b"query", with_csum)
            .ttl(63)
            .build();
        assert_eq!(out, want, "checksum {with_csum}");
        if !with_csum {
            assert_eq!(
                &out[ETH_LEN + 26..ETH_LEN + 28],
                &[0, 0],
                "no checksum stays none"
            );
        }
        let reply = Frame::udp(OUTSIDE, HOST, 53, sport, b"answer", with_csum);
        let (verdict, back) = from_uplink(&mut dp, &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let want = Frame::udp(OUTSIDE, LOCAL_C, 53, sport, b"answer", with_csum)
            .ttl(63)
            .build();
        assert_eq!(back, want);
    }
    assert_eq!(dp.count(Reason::FwdMasquerade), 2);
    assert_eq!(dp.count(Reason::FwdMasqueradeReply), 2);
}

#[test]
fn masquerade_icmp_echo_by_identifier() {
    let Some(mut dp) = masq((40000, 40009)) else {
        return;
    };
    // Identifier 0x1234 is outside the range: it gets one from the range.
    let (verdict, out) = from_bridge(&mut dp, &Frame::icmp(LOCAL_C, OUTSIDE));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let id = sport(&out);
    assert!((40000..=40009).contains(&id), "identifier {id}");
    assert_eq!(out, Frame::icmp(HOST, OUTSIDE).ports(id, 0).ttl(63).build());
    let reply = Frame::echo_reply(OUTSIDE, HOST).ports(id, 0);
    let (verdict, back) = from_uplink(&mut dp, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(back, Frame::echo_reply(OUTSIDE, LOCAL_C).ttl(63).build());
    // An echo request to the host is the host's to answer.
    let ping_host = Frame::icmp(OUTSIDE, HOST).build();
    assert_eq!(
        dp.run(prog_names::FROM_UPLINK, &ping_host),
        (TC_ACT_UNSPEC, ping_host.clone())
    );
    assert_eq!(dp.count(Reason::PassNotForUs), 1);
}

#[test]
fn two_containers_with_the_same_source_port_to_the_same_server() {
    let Some(mut dp) = masq_default() else { return };
    let (_, a) = from_bridge(&mut dp, &Frame::udp(LOCAL_C, OUTSIDE, 40001, 7, b"a", true));
    let (_, b) = from_bridge(
        &mut dp,
        &Frame::udp(LOCAL_C2, OUTSIDE, 40001, 7, b"b", true),
    );
    let (pa, pb) = (sport(&a), sport(&b));
    assert_eq!(pa, 40001);
    assert_ne!(pb, 40001, "the second flow must get another port");
    assert!((32768..=60999).contains(&pb));
    for (port, container) in [(pa, LOCAL_C), (pb, LOCAL_C2)] {
        let (verdict, back) = from_uplink(&mut dp, &Frame::udp(OUTSIDE, HOST, 7, port, b"r", true));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(dst(&back), container, "reply to port {port}");
        assert_eq!(
            u16::from_be_bytes([back[ETH_LEN + 22], back[ETH_LEN + 23]]),
            40001
        );
        assert_checksums(&back);
    }
}

#[test]
fn port_exhaustion_drops_and_counts_and_leaves_existing_flows_alone() {
    let Some(mut dp) = masq((40000, 40003)) else {
        return;
    };
    let mut ports = Vec::new();
    for sp in 1000..1004 {
        let (verdict, out) = from_bridge(&mut dp, &Frame::tcp(LOCAL_C, OUTSIDE, sp, 80, SYN));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        ports.push(sport(&out));
    }
    ports.sort();
    assert_eq!(ports, vec![40000, 40001, 40002, 40003]);
    let nat_before = netpath::inspect::flows::nat_rows(&dp.maps).unwrap();
    let snapshot = |rows: &[netpath::inspect::flows::NatRow]| -> Vec<String> {
        rows.iter()
            .map(|r| format!("{} {} {} {}", r.proto, r.remote, r.host_port, r.container))
            .collect()
    };
    let syn = Frame::tcp(LOCAL_C, OUTSIDE, 1004, 80, SYN).build();
    let (verdict, _) = dp.run(prog_names::FROM_BRIDGE, &syn);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.count(Reason::DropNatNoPort), 1);
    assert_eq!(
        snapshot(&netpath::inspect::flows::nat_rows(&dp.maps).unwrap()),
        snapshot(&nat_before),
        "no existing flow was touched"
    );
    assert_eq!(
        netpath::inspect::flows::flow_rows(&dp.maps).unwrap().len(),
        4
    );
    // The ports are taken only towards that server and port.
    let (verdict, _) = from_bridge(&mut dp, &Frame::tcp(LOCAL_C, OUTSIDE2, 1004, 80, SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // The existing flows still work both ways.
    let (verdict, back) = from_uplink(&mut dp, &Frame::tcp(OUTSIDE, HOST, 80, 40002, SYN_ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dst(&back), LOCAL_C);
}

#[test]
fn a_new_connection_takes_the_port_of_one_that_has_ended() {
    // One port: the second container's flow to the same server must wait for the first.
    let Some(mut dp) = masq((40000, 40000)) else {
        return;
    };
    const FIN_ACK: u8 = 0x11;
    const RST: u8 = 0x04;
    let first = Frame::tcp(LOCAL_C, OUTSIDE, 1000, 80, SYN);
    assert_eq!(from_bridge(&mut dp, &first).0, TC_ACT_REDIRECT);
    let second = Frame::tcp(LOCAL_C2, OUTSIDE, 2000, 80, SYN);
    let refused = |dp: &mut Dp, f: &Frame, n: u64| {
        assert_eq!(from_bridge(dp, f).0, TC_ACT_SHOT);
        assert_eq!(dp.count(Reason::DropNatNoPort), n);
    };
    // Open, and half closed: the port stays the first flow's.
    refused(&mut dp, &second, 1);
    from_bridge(&mut dp, &Frame::tcp(LOCAL_C, OUTSIDE, 1000, 80, FIN_ACK));
    refused(&mut dp, &second, 2);
    // A FIN each way: the flow has ended, a new connection may have its port.
    let (v, _) = from_uplink(&mut dp, &Frame::tcp(OUTSIDE, HOST, 80, 40000, FIN_ACK));
    assert_eq!(v, TC_ACT_REDIRECT);
    // Not an ACK, not a later packet: only a SYN opens a connection.
    refused(&mut dp, &Frame::tcp(LOCAL_C2, OUTSIDE, 2000, 80, 0x10), 3);
    let (v, out) = from_bridge(&mut dp, &second);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(sport(&out), 40000);
    let has = |dp: &Dp, c| {
        dp.maps
            .ct
            .get(&ct_key(IPPROTO_TCP, c, (OUTSIDE, 80)), 0)
            .is_ok()
    };
    assert!(!has(&dp, (LOCAL_C, 1000)), "the ended flow's entry is gone");
    assert_eq!(
        ct(&dp, IPPROTO_TCP, (LOCAL_C2, 2000), (OUTSIDE, 80)).nat_port,
        40000u16.to_be()
    );
    // Replies on the port now reach the second container.
    let (v, back) = from_uplink(&mut dp, &Frame::tcp(OUTSIDE, HOST, 80, 40000, SYN_ACK));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(dst(&back), LOCAL_C2);
    // A RST ends a flow too.
    from_uplink(&mut dp, &Frame::tcp(OUTSIDE, HOST, 80, 40000, RST));
    let (v, out) = from_bridge(&mut dp, &first);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(sport(&out), 40000);
    assert_eq!(
        netpath::inspect::flows::flow_rows(&dp.maps).unwrap().len(),
        1
    );
    assert_eq!(
        netpath::inspect::flows::nat_rows(&dp.maps).unwrap().len(),
        1
    );
}

/// An ICMP error from `from` about `quoted` (an IPv4 packet as it left the host), with
/// the given type, code and 4 bytes of "rest of header".
fn icmp_error(from: [u8; 4], to: [u8; 4], ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Frame {
    let mut payload = vec![ty, code, 0, 0];
    payload.extend(rest);
    payload.extend(quoted);
    Frame {
        proto: 1,
        payload,
        ..Frame::icmp(from, to)
    }
}

#[test]
fn icmp_errors_about_a_flow_are_translated_with_the_quoted_packet() {
    let Some(mut dp) = masq((40000, 40009)) else {
        return;
    };
    // Three flows whose ports (1234, 1235, identifier 0x1234) are outside the range, so
    // that the quoted port changes too.
    let udp = Frame::udp(LOCAL_C, OUTSIDE, 1234, 53, b"query", true);
    let tcp = Frame::tcp(LOCAL_C, OUTSIDE, 1235, 80, SYN);
    let echo = Frame::icmp(LOCAL_C, OUTSIDE);
    let mut sent = Vec::new();
    for f in [&udp, &tcp, &echo] {
        let (verdict, out) = from_bridge(&mut dp, f);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        sent.push(out);
    }
    let cases = [
        // Port unreachable from the server, quoting the whole datagram (its checksum too).
        (
            "port unreachable",
            OUTSIDE,
            3,
            3,
            [0; 4],
            &sent[0][ETH_LEN..],
            udp.ttl(63).build()[ETH_LEN..].to_vec(),
        ),
        // Fragmentation needed from a router, quoting the header and 8 bytes (no TCP
        // checksum in the quote).
        (
            "fragmentation needed",
            ROUTER,
            3,
            4,
            [0, 0, 0x05, 0x78],
            &sent[1][ETH_LEN..ETH_LEN + 28],
            tcp.ttl(63).build()[ETH_LEN..ETH_LEN + 28].to_vec(),
        ),
        // TTL exceeded for a ping: the quoted echo's identifier and checksum.
        (
            "ttl exceeded",
            ROUTER,
            11,
            0,
            [0; 4],
            &sent[2][ETH_LEN..ETH_LEN + 28],
            echo.ttl(63).build()[ETH_LEN..ETH_LEN + 28].to_vec(),
        ),
    ];
    for (what, from, ty, code, rest, quoted, want_quote) in cases {
        let err = icmp_error(from, HOST, ty, code, rest, quoted);
        let (verdict, out) = from_uplink(&mut dp, &err);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
        let want = icmp_error(from, LOCAL_C, ty, code, rest, &want_quote)
            .ttl(63)
            .build();
        assert_eq!(
            out, want,
            "{what}: outer and quoted headers translated back"
        );
        assert_checksums(&out);
        // The quoted header sits 28 bytes further than the outer one.
        assert!(ipv4_checksum_ok(&out[28..]), "{what}: quoted IPv4 checksum");
    }
    // A frame longer than its datagram (here the rest of the quoted segment follows
    // it): the quote ends where the datagram does; what follows is neither translated
    // nor counted in the ICMP checksum (found by `netpath fuzz`).
    let rest = [0, 0, 0x05, 0x78];
    let mut padded = icmp_error(ROUTER, HOST, 3, 4, rest, &sent[1][ETH_LEN..ETH_LEN + 28]).build();
    padded.extend(&sent[1][ETH_LEN + 28..]);
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &padded);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let tcp = Frame::tcp(LOCAL_C, OUTSIDE, 1235, 80, SYN).ttl(63).build();
    let want = icmp_error(ROUTER, LOCAL_C, 3, 4, rest, &tcp[ETH_LEN..ETH_LEN + 28])
        .ttl(63)
        .build();
    assert_eq!(&out[..want.len()], &want[..], "the datagram translated");
    assert_eq!(
        &out[want.len()..],
        &sent[1][ETH_LEN + 28..],
        "the rest as it was"
    );
    assert_eq!(dp.count(Reason::FwdNatIcmpError), 4);
    // An error about a flow netpath does not know is the host's.
    let stranger = Frame::udp(HOST, OUTSIDE, 45000, 53, b"x", true).build();
    let err = icmp_error(OUTSIDE, HOST, 3, 3, [0; 4], &stranger[ETH_LEN..]).build();
    assert_eq!(
        dp.run(prog_names::FROM_UPLINK, &err),
        (TC_ACT_UNSPEC, err.clone())
    );
}

fn published() -> Option<Dp> {
    dp_with(|c| {
        c.publish = vec![
            Publish {
                proto: Proto::Tcp,
                host_port: 8080,
                container: LOCAL_C.into(),
                port: 80,
            },
            Publish {
                proto: Proto::Udp,
                host_port: 5353,
                container: LOCAL_C2.into(),
                port: 53,
            },
        ]
    })
}

#[test]
fn published_ports_lead_to_their_container_and_replies_go_back() {
    let Some(mut dp) = published() else { return };
    let (verdict, out) = from_uplink(&mut dp, &Frame::tcp(OUTSIDE, HOST, 5555, 8080, SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        Frame::tcp(OUTSIDE, LOCAL_C, 5555, 80, SYN).ttl(63).build()
    );
    dp.only(Reason::FwdPublished);
    let (verdict, out) = from_bridge(&mut dp, &Frame::tcp(LOCAL_C, OUTSIDE, 80, 5555, SYN_ACK));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        Frame::tcp(HOST, OUTSIDE, 8080, 5555, SYN_ACK)
            .ttl(63)
            .build()
    );
    assert_eq!(dp.count(Reason::FwdPublishedReply), 1);
    assert_eq!(
        ct(&dp, IPPROTO_TCP, (LOCAL_C, 80), (OUTSIDE, 5555)).kind,
        netpath_common::CT_KIND_PUBLISHED
    );

    let (verdict, out) = from_uplink(&mut dp, &Frame::udp(OUTSIDE, HOST, 6000, 5353, b"q", false));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        Frame::udp(OUTSIDE, LOCAL_C2, 6000, 53, b"q", false)
            .ttl(63)
            .build()
    );
    assert_eq!(
        ct(&dp, IPPROTO_UDP, (LOCAL_C2, 53), (OUTSIDE, 6000)).nat_port,
        5353u16.to_be()
    );

    // Not published: the host's own port (its stack answers or refuses).
    let other = Frame::tcp(OUTSIDE, HOST, 5555, 8081, SYN).build();
    assert_eq!(
        dp.run(prog_names::FROM_UPLINK, &other),
        (TC_ACT_UNSPEC, other.clone())
    );
    // A container's address from outside: dropped, whatever the port.
    for port in [80, 22] {
        let direct = Frame::tcp(OUTSIDE, LOCAL_C, 5555, port, SYN).build();
        assert_eq!(dp.run(prog_names::FROM_UPLINK, &direct).0, TC_ACT_SHOT);
    }
    assert_eq!(dp.count(Reason::DropNotPublished), 2);
    // Without masquerade, a container's own new flows to the outside stay the stack's.
    let out_flow = Frame::tcp(LOCAL_C, OUTSIDE, 40000, 443, SYN).build();
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &out_flow),
        (TC_ACT_UNSPEC, out_flow.clone())
    );
    assert_eq!(dp.count(Reason::PassUnknownDst), 1);

    // Unpublishing cuts the flows through the port.
    let cut = netpath::reconcile::publish::del(&mut dp.maps, Proto::Tcp, 8080)
        .unwrap()
        .flows_cut;
    assert_eq!(cut, 1);
    let again = Frame::tcp(OUTSIDE, HOST, 5555, 8080, 0x10).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &again).0, TC_ACT_UNSPEC);
}

#[test]
fn what_masquerade_cannot_translate_goes_to_the_stack_unchanged() {
    let Some(mut dp) = masq_default() else { return };
    let mut gre = Frame::icmp(LOCAL_C, OUTSIDE);
    gre.proto = 47;
    gre.l4_csum = false;
    let timestamp = {
        let mut f = Frame::icmp(LOCAL_C, OUTSIDE);
        f.payload[0] = 13;
        f
    };
    let mut fragment = Frame::udp(LOCAL_C, OUTSIDE, 40000, 53, b"x", true).build();
    fragment[ETH_LEN + 6] = 0x20; // more fragments
    fragment[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
    let c = netpath::packet::checksum(&fragment[ETH_LEN..ETH_LEN + 20]);
    fragment[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    for (what, input) in [
        ("gre", gre.build()),
        ("icmp timestamp", timestamp.build()),
        ("fragment", fragment),
    ] {
        assert_eq!(
            dp.run(prog_names::FROM_BRIDGE, &input),
            (TC_ACT_UNSPEC, input.clone()),
            "{what}"
        );
    }
    assert_eq!(dp.count(Reason::PassNatUnsupported), 3);
    // Multicast is never masqueraded; TTL 1 is the stack's and creates no flow.
    let mcast = Frame::udp(LOCAL_C, [239, 1, 1, 1], 40000, 53, b"x", true).build();
    assert_eq!(dp.run(prog_names::FROM_BRIDGE, &mcast).0, TC_ACT_UNSPEC);
    let ttl1 = Frame::udp(LOCAL_C, OUTSIDE, 40000, 53, b"x", true)
        .ttl(1)
        .build();
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &ttl1),
        (TC_ACT_UNSPEC, ttl1.clone())
    );
    assert!(
        netpath::inspect::flows::flow_rows(&dp.maps)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_collector_expires_idle_flows_and_removes_orphaned_halves() {
    let Some(mut dp) = masq_default() else { return };
    from_bridge(
        &mut dp,
        &Frame::udp(LOCAL_C, OUTSIDE, 40001, 53, b"q", true),
    );
    from_bridge(
        &mut dp,
        &Frame::udp(LOCAL_C, OUTSIDE, 40002, 53, b"q", true),
    );
    let g = netpath::agent::collector::gc(&mut dp.maps).unwrap();
    assert_eq!(
        (g.expired, g.orphans, g.ct_entries, g.nat_entries),
        (0, 0, 2, 2)
    );
    // One flow loses its NAT half (as an LRU eviction would do): its CT half goes too.
    let nk = netpath_common::NatKey {
        remote: u32::from_ne_bytes(OUTSIDE),
        remote_port: 53u16.to_be(),
        nat_port: 40002u16.to_be(),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    dp.maps.nat.remove(&nk).unwrap();
    let g = netpath::agent::collector::gc(&mut dp.maps).unwrap();
    assert_eq!((g.orphans, g.ct_entries, g.nat_entries), (1, 1, 1));
    // With a 1 s UDP timeout the other expires.
    let c = netpath::state::Conntrack {
        udp: 1,
        ..Default::default()
    };
    netpath::reconcile::host::conntrack(&mut dp.maps, &c).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let g = netpath::agent::collector::gc(&mut dp.maps).unwrap();
    assert_eq!((g.expired, g.ct_entries, g.nat_entries), (1, 0, 0));
    assert!(
        netpath::inspect::flows::nat_rows(&dp.maps)
            .unwrap()
            .is_empty()
    );
    let s = netpath::inspect::flows::summary(&dp.maps).unwrap();
    assert_eq!((s.expired_total, s.orphans_total), (1, 1));
}
