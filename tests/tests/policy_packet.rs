//! Policy on crafted packets through BPF_PROG_TEST_RUN: each verdict, precedence, state,
//! the answers that reject builds (exact bytes, checksums recomputed from scratch), what
//! is never answered, the rate limit, and the counters per rule.

mod common;

use common::*;
use netpath::packet::{ETH_LEN, Frame, checksum, ipv4_checksum_ok, l4_checksum_ok};
use netpath::{
    reconcile::policy,
    sources::file::Config,
    state::{
        Proto, Publish,
        policy::{Action, Endpoint, Rule, RuleProto},
    },
};
use netpath_common::{CT_KIND_POLICY, IPPROTO_TCP, Reason, prog_names};

const LOCAL_C2: [u8; 4] = [10, 244, 11, 3];
const OUTSIDE: [u8; 4] = [198, 18, 0, 250];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;
const RST: u8 = 0x04;

fn cidr(s: &str) -> Endpoint {
    Endpoint::Cidr(s.parse().unwrap())
}

fn rule(from: &str, to: &str, proto: RuleProto, port: Option<u16>, action: Action) -> Rule {
    Rule {
        from: cidr(from),
        to: cidr(to),
        proto,
        ports: port.map(|p| (p, p)),
        action,
    }
}

/// The datapath with these rules (ids 1, 2, ... in order) and default action.
fn with_rules(rules: Vec<Rule>, default: Action) -> Option<Dp> {
    with(rules, default, |_| {})
}

fn with(rules: Vec<Rule>, default: Action, change: impl FnOnce(&mut Config)) -> Option<Dp> {
    dp_with(|c| {
        c.policy.rules = rules;
        c.policy.default = default;
        change(c);
    })
}

/// `netpath policy add` on the test's datapath.
fn add_rule(dp: &mut Dp, r: &Rule) -> anyhow::Result<u32> {
    let old = policy::installed(&dp.maps)?;
    policy::add(&mut dp.maps, &old, r)
}

fn hits(dp: &Dp, id: u32) -> u64 {
    policy::rule_stats(&dp.maps, id).unwrap().packets
}

/// An Ethernet + IPv4 frame as netpath's answers are built: no options, id 0.
fn answer_frame(
    macs: ([u8; 6], [u8; 6]),
    tos: u8,
    df: bool,
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(macs.0);
    f.extend(macs.1);
    f.extend([0x08, 0x00]);
    let mut ip = vec![
        0x45,
        tos,
        0,
        0,
        0,
        0,
        if df { 0x40 } else { 0 },
        0,
        64,
        proto,
        0,
        0,
    ];
    ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip.extend(src);
    ip.extend(dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    f.extend(payload);
    f
}

/// The RST netpath answers a segment with (see policy.rs): ports swapped, window 0.
fn rst_frame(to: &Frame, sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend(sport.to_be_bytes());
    tcp.extend(dport.to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.extend([0x50, flags, 0, 0, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend(to.dst);
    pseudo.extend(to.src);
    pseudo.extend([0, IPPROTO_TCP, 0, 20]);
    pseudo.extend(&tcp);
    let c = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    answer_frame(
        (to.src_mac, to.dst_mac),
        0,
        true,
        to.dst,
        to.src,
        IPPROTO_TCP,
        &tcp,
    )
}

/// The ICMP administratively prohibited answer to `to`, quoting it whole (it is short).
fn prohibited_frame(to: &Frame) -> Vec<u8> {
    let orig = to.build();
    let quote = &orig[ETH_LEN..ETH_LEN + ((orig.len() - ETH_LEN) & !3)];
    let mut icmp = vec![3, 13, 0, 0, 0, 0, 0, 0];
    icmp.extend(quote);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    answer_frame(
        (to.src_mac, to.dst_mac),
        0xc0,
        false,
        to.dst,
        to.src,
        1,
        &icmp,
    )
}

/// An ICMP port unreachable from `src` to `dst` quoting the header and 8 bytes of `about`.
fn port_unreachable(src: [u8; 4], dst: [u8; 4], about: &Frame) -> Frame {
    let mut err = Frame::icmp(src, dst);
    err.payload = vec![3, 3, 0, 0, 0, 0, 0, 0];
    err.payload.extend(&about.build()[ETH_LEN..ETH_LEN + 28]);
    err
}

#[test]
fn policy_off_by_default_records_nothing() {
    let Some(mut dp) = dp() else { return };
    let (verdict, _) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::tcp(LOCAL_C, PEER_C, 40000, 80, SYN).build(),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    dp.only(Reason::FwdDirect);
    assert_eq!(
        netpath::maps::flows::flows(&dp.maps).unwrap().len(),
        0,
        "no conntrack without policy"
    );
    assert_eq!(dp.maps.policy_state.get(&0, 0).unwrap().enabled, 0);
}

#[test]
fn deny_drops_silently_and_counts_the_rule() {
    let Some(mut dp) = with_rules(
        vec![rule(
            "10.244.11.0/24",
            "10.244.12.0/24",
            RuleProto::Tcp,
            Some(5432),
            Action::Deny,
        )],
        Action::Allow,
    ) else {
        return;
    };
    let syn = Frame::tcp(LOCAL_C, PEER_C, 40000, 5432, SYN).build();
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &syn);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(out, syn, "a denied packet is not changed");
    dp.only(Reason::DropPolicyDeny);
    assert_eq!(hits(&dp, 1), 1);
    assert_eq!(
        policy::rule_stats(&dp.maps, 1).unwrap().bytes,
        syn.len() as u64
    );
    // Another port: the default (allow), counted under "default" (id 0), and recorded.
    let (verdict, _) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::tcp(LOCAL_C, PEER_C, 40000, 5433, SYN).build(),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdDirect), 1);
    assert_eq!(hits(&dp, 0), 1);
    let e = dp
        .maps
        .ct
        .get(&ct_key(IPPROTO_TCP, (LOCAL_C, 40000), (PEER_C, 5433)), 0)
        .unwrap();
    assert_eq!((e.kind, e.rule), (CT_KIND_POLICY, 0));
    // Denied flows are never recorded: the next packet is looked up and dropped again.
    let (verdict, _) = dp.run(prog_names::FROM_BRIDGE, &syn);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(hits(&dp, 1), 2);
}

#[test]
fn most_specific_rule_wins() {
    let Some(mut dp) = with_rules(
        vec![
            rule(
                "10.244.11.0/24",
                "10.244.12.0/24",
                RuleProto::Any,
                None,
                Action::Deny,
            ),
            rule(
                "10.244.11.2/32",
                "10.244.12.2/32",
                RuleProto::Tcp,
                Some(80),
                Action::Allow,
            ),
            rule(
                "10.244.11.2/32",
                "10.244.12.0/24",
                RuleProto::Tcp,
                None,
                Action::Reject,
            ),
        ],
        Action::Allow,
    ) else {
        return;
    };
    let send = |dp: &mut Dp, src, dport| {
        dp.run(
            prog_names::FROM_BRIDGE,
            &Frame::tcp(src, PEER_C, 40000, dport, SYN).build(),
        )
        .0
    };
    assert_eq!(
        send(&mut dp, LOCAL_C, 80),
        TC_ACT_REDIRECT,
        "the /32 to /32 port rule"
    );
    assert_eq!(
        send(&mut dp, LOCAL_C, 81),
        TC_ACT_REDIRECT,
        "the /32 to /24 reject, answered"
    );
    assert_eq!(send(&mut dp, LOCAL_C2, 80), TC_ACT_SHOT, "the /24 deny");
    assert_eq!((hits(&dp, 1), hits(&dp, 2), hits(&dp, 3)), (1, 1, 1));
    assert_eq!(
        (
            dp.count(Reason::FwdDirect),
            dp.count(Reason::DropPolicyReject),
            dp.count(Reason::DropPolicyDeny)
        ),
        (1, 1, 1)
    );
}

#[test]
fn reject_answers_a_syn_with_an_exact_rst() {
    let Some(mut dp) = with_rules(
        vec![rule(
            "10.244.11.0/24",
            "10.244.12.0/24",
            RuleProto::Tcp,
            None,
            Action::Reject,
        )],
        Action::Allow,
    ) else {
        return;
    };
    let syn = Frame::tcp(LOCAL_C, PEER_C, 40000, 80, SYN);
    let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &syn.build());
    assert_eq!(verdict, TC_ACT_REDIRECT, "sent back out of the bridge");
    // No ACK in the segment: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; 8 bytes + SYN.
    assert_eq!(out, rst_frame(&syn, 80, 40000, 0, 1000 + 8 + 1, RST | ACK));
    assert!(ipv4_checksum_ok(&out) && l4_checksum_ok(&out));
    dp.only(Reason::DropPolicyReject);

    // With an ACK: <SEQ=SEG.ACK><CTL=RST>.
    let mut ack = Frame::tcp(LOCAL_C, PEER_C, 40001, 80, ACK);
    ack.payload[8..12].copy_from_slice(&777u32.to_be_bytes());
    let (_, out) = dp.run(prog_names::FROM_BRIDGE, &ack.build());
    assert_eq!(out, rst_frame(&ack, 80, 40001, 777, 0, RST));
    assert!(l4_checksum_ok(&out));
}

#[test]
fn reject_answers_udp_and_icmp_with_admin_prohibited() {
    let Some(mut dp) = with_rules(vec![], Action::Reject) else {
        return;
    };
    for f in [
        Frame::udp(LOCAL_C, PEER_C, 40000, 53, b"query", true),
        Frame::icmp(LOCAL_C, PEER_C),
    ] {
        let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &f.build());
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, prohibited_frame(&f));
        assert!(ipv4_checksum_ok(&out) && l4_checksum_ok(&out));
    }
    assert_eq!(dp.count(Reason::DropDefaultReject), 2);
    assert_eq!(hits(&dp, 0), 2);
}

#[test]
fn reject_never_answers_icmp_errors_or_resets() {
    let Some(mut dp) = with_rules(vec![], Action::Reject) else {
        return;
    };
    // A port unreachable from the container, quoting something the peer sent.
    let err = port_unreachable(
        LOCAL_C,
        PEER_C,
        &Frame::udp(PEER_C, LOCAL_C, 53, 40000, b"x", true),
    );
    let rst = Frame::tcp(LOCAL_C, PEER_C, 40000, 80, RST | ACK);
    for f in [err, rst] {
        let input = f.build();
        let (verdict, out) = dp.run(prog_names::FROM_BRIDGE, &input);
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(out, input, "not turned into an answer");
    }
    assert_eq!(dp.count(Reason::DropRejectUnanswered), 2);
    assert_eq!(dp.count(Reason::DropDefaultReject), 0);
}

#[test]
fn reject_answers_are_rate_limited() {
    let Some(mut dp) = with(vec![], Action::Reject, |c| c.policy.reject_rate = 2) else {
        return;
    };
    let verdicts: Vec<i32> = (0..3)
        .map(|i| {
            dp.run(
                prog_names::FROM_BRIDGE,
                &Frame::tcp(LOCAL_C, PEER_C, 40000 + i, 80, SYN).build(),
            )
            .0
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![TC_ACT_REDIRECT, TC_ACT_REDIRECT, TC_ACT_SHOT]
    );
    assert_eq!(dp.count(Reason::DropDefaultReject), 2);
    assert_eq!(dp.count(Reason::DropRejectUnanswered), 1);
}

#[test]
fn replies_of_an_allowed_flow_pass_and_the_reverse_is_decided_apart() {
    let Some(mut dp) = with_rules(
        vec![rule(
            "10.244.11.0/24",
            "10.244.12.0/24",
            RuleProto::Tcp,
            None,
            Action::Allow,
        )],
        Action::Deny,
    ) else {
        return;
    };
    let (verdict, _) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::tcp(LOCAL_C, PEER_C, 40000, 80, SYN).build(),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // The reply from the direct peer: no rule allows 10.244.12.0/24 -> 10.244.11.0/24.
    let (verdict, _) = dp.run(
        prog_names::FROM_UPLINK,
        &Frame::tcp(PEER_C, LOCAL_C, 80, 40000, SYN_ACK).build(),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdDeliver), 1);
    assert_eq!(
        hits(&dp, 1),
        2,
        "the reply is counted under the rule that allowed the flow"
    );
    // The same hosts, a flow started from the other side: the default (deny).
    let (verdict, _) = dp.run(
        prog_names::FROM_UPLINK,
        &Frame::tcp(PEER_C, LOCAL_C, 41000, 22, SYN).build(),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(dp.count(Reason::DropDefaultDeny), 1);
    // UDP is not allowed at all.
    let (verdict, _) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::udp(LOCAL_C, PEER_C, 1, 2, b"x", true).build(),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
}

#[test]
fn an_icmp_error_about_an_allowed_flow_passes_with_it() {
    let Some(mut dp) = with_rules(
        vec![
            rule(
                "10.244.11.0/24",
                "10.244.12.0/24",
                RuleProto::Udp,
                None,
                Action::Allow,
            ),
            rule(
                "10.244.12.0/24",
                "10.244.11.0/24",
                RuleProto::Udp,
                Some(5353),
                Action::Allow,
            ),
        ],
        Action::Deny,
    ) else {
        return;
    };
    // A flow the peer started; the container's port unreachable about it goes out with it.
    let came = Frame::udp(PEER_C, LOCAL_C, 41000, 5353, b"ask", true);
    assert_eq!(
        dp.run(prog_names::FROM_UPLINK, &came.build()).0,
        TC_ACT_REDIRECT
    );
    let unreach = port_unreachable(LOCAL_C, PEER_C, &came.ttl(63));
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &unreach.build()).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(dp.count(Reason::FwdDirect), 1);

    let sent = Frame::udp(LOCAL_C, PEER_C, 40000, 53, b"query", true);
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &sent.build()).0,
        TC_ACT_REDIRECT
    );
    let err = port_unreachable(PEER_C, LOCAL_C, &sent.ttl(63));
    let (verdict, _) = dp.run(prog_names::FROM_UPLINK, &err.build());
    assert_eq!(verdict, TC_ACT_REDIRECT, "delivered, related to the flow");
    assert_eq!(dp.count(Reason::FwdDeliver), 2);
    // An error about no known flow: decided as ICMP (denied), never answered.
    let stray = port_unreachable(
        PEER_C,
        LOCAL_C,
        &Frame::udp(LOCAL_C, PEER_C, 9, 9, b"zz", true),
    );
    assert_eq!(
        dp.run(prog_names::FROM_UPLINK, &stray.build()).0,
        TC_ACT_SHOT
    );
    assert_eq!(dp.count(Reason::DropDefaultDeny), 1);
}

#[test]
fn reject_from_the_uplink_answers_back_out_of_it() {
    let Some(mut dp) = with_rules(vec![], Action::Reject) else {
        return;
    };
    let syn = Frame::tcp(PEER_C, LOCAL_C, 41000, 22, SYN);
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &syn.build());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, rst_frame(&syn, 22, 41000, 0, 1009, RST | ACK));
    dp.only(Reason::DropDefaultReject);
}

#[test]
fn reject_in_the_tunnel_answers_in_the_tunnel() {
    let Some(mut dp) = with_rules(vec![], Action::Reject) else {
        return;
    };
    let inner = Frame::tcp(VXLAN_PEER_C, LOCAL_C, 41000, 22, SYN);
    let (verdict, out) = dp.run(
        prog_names::FROM_UPLINK,
        &vxlan_frame(VXLAN_PEER, 42, 0x08, &inner.build()),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    dp.only(Reason::DropDefaultReject);
    // Outer IPv4/UDP/VXLAN to the peer, then the RST from the local container.
    let ip = &out[ETH_LEN..ETH_LEN + 20];
    assert_eq!((&ip[12..16], &ip[16..20]), (&HOST[..], &VXLAN_PEER[..]));
    let inner_out = &out[ETH_LEN + 36..];
    let want = rst_frame(&inner, 22, 41000, 0, 1009, RST | ACK);
    assert_eq!(
        &inner_out[12..],
        &want[12..],
        "the inner RST (MACs are the VTEPs')"
    );
    assert_eq!(
        &inner_out[..6],
        &netpath_common::default_vtep_mac(VXLAN_PEER)
    );
}

#[test]
fn published_port_rejects_from_the_host_address() {
    let Some(mut dp) = with(
        vec![rule(
            "198.18.0.250/32",
            "10.244.11.2/32",
            RuleProto::Tcp,
            Some(7000),
            Action::Reject,
        )],
        Action::Allow,
        |c| {
            c.publish = vec![Publish {
                proto: Proto::Tcp,
                host_port: 8080,
                container: LOCAL_C.into(),
                port: 7000,
            }];
        },
    ) else {
        return;
    };
    let syn = Frame::tcp(OUTSIDE, HOST, 41000, 8080, SYN);
    let (verdict, out) = dp.run(prog_names::FROM_UPLINK, &syn.build());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // The rule names the container's port; the answer comes from the address the client used.
    assert_eq!(out, rst_frame(&syn, 8080, 41000, 0, 1009, RST | ACK));
    dp.only(Reason::DropPolicyReject);
    assert_eq!(
        netpath::inspect::flows::nat_rows(&dp.maps).unwrap().len(),
        0,
        "no NAT entry for it"
    );
    // From elsewhere the port works.
    let (verdict, _) = dp.run(
        prog_names::FROM_UPLINK,
        &Frame::tcp([198, 18, 0, 251], HOST, 41000, 8080, SYN).build(),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdPublished), 1);
}

#[test]
fn masquerade_denied_before_a_port_is_taken() {
    let Some(mut dp) = with(
        vec![rule(
            "10.244.11.2/32",
            "0.0.0.0/0",
            RuleProto::Any,
            None,
            Action::Deny,
        )],
        Action::Allow,
        |c| c.host.masquerade = true,
    ) else {
        return;
    };
    let (verdict, _) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::tcp(LOCAL_C, OUTSIDE, 40000, 80, SYN).build(),
    );
    assert_eq!(verdict, TC_ACT_SHOT);
    dp.only(Reason::DropPolicyDeny);
    assert_eq!(
        netpath::inspect::flows::nat_rows(&dp.maps).unwrap().len(),
        0
    );
    let (verdict, _) = dp.run(
        prog_names::FROM_BRIDGE,
        &Frame::tcp(LOCAL_C2, OUTSIDE, 40000, 80, SYN).build(),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(dp.count(Reason::FwdMasquerade), 1);
}

#[test]
fn same_host_traffic_is_decided_on_the_container_program() {
    let Some(mut dp) = with_rules(
        vec![rule(
            "10.244.11.2/32",
            "10.244.11.3/32",
            RuleProto::Tcp,
            Some(80),
            Action::Allow,
        )],
        Action::Deny,
    ) else {
        return;
    };
    let run = |dp: &mut Dp, f: Frame| dp.run(prog_names::FROM_CONTAINER, &f.build());
    let syn = Frame::tcp(LOCAL_C, LOCAL_C2, 40000, 80, SYN);
    assert_eq!(
        run(&mut dp, syn.clone()),
        (TC_ACT_REDIRECT, syn.build()),
        "allowed: straight into the other container, the frame as the bridge forwards it"
    );
    assert_eq!(
        run(&mut dp, Frame::tcp(LOCAL_C2, LOCAL_C, 80, 40000, SYN_ACK)).0,
        TC_ACT_REDIRECT,
        "its reply"
    );
    assert_eq!(dp.count(Reason::FwdSameHost), 2);
    assert_eq!(
        run(&mut dp, Frame::tcp(LOCAL_C2, LOCAL_C, 40000, 80, SYN)).0,
        TC_ACT_SHOT,
        "the other way"
    );
    assert_eq!(dp.count(Reason::DropDefaultDeny), 1);
    // An endpoint not learned yet: the bridge forwards it, counted as such.
    dp.forget_endpoints();
    assert_eq!(
        run(&mut dp, Frame::tcp(LOCAL_C, LOCAL_C2, 40000, 80, ACK)).0,
        TC_ACT_UNSPEC
    );
    assert_eq!(dp.count(Reason::FwdViaBridge), 1);
    assert_eq!(dp.count(Reason::FwdSameHost), 2);
    // To a peer: routed here too (the bridge is not on its path), so decided here.
    assert_eq!(
        run(&mut dp, Frame::tcp(LOCAL_C, PEER_C, 40000, 80, SYN)).0,
        TC_ACT_SHOT
    );
    assert_eq!(dp.count(Reason::DropDefaultDeny), 2);
    // For the host itself: the bridge program's, not counted here.
    let before = dp.total();
    assert_eq!(
        run(&mut dp, Frame::tcp(LOCAL_C, GATEWAY, 40000, 80, SYN)).0,
        TC_ACT_UNSPEC
    );
    assert_eq!(dp.total(), before);
}

#[test]
fn a_rule_added_live_decides_new_flows_and_spares_allowed_ones() {
    let Some(mut dp) = dp() else { return };
    let old = Frame::tcp(LOCAL_C, PEER_C, 40000, 80, SYN);
    // Policy is off: turn it on with a rule that allows nothing of this.
    add_rule(
        &mut dp,
        &rule(
            "10.244.11.0/24",
            "10.244.99.0/24",
            RuleProto::Any,
            None,
            Action::Allow,
        ),
    )
    .unwrap();
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &old.build()).0,
        TC_ACT_REDIRECT,
        "flow recorded under the default"
    );
    let gen_before = dp.maps.policy_state.get(&0, 0).unwrap().generation;
    let id = add_rule(
        &mut dp,
        &rule(
            "10.244.11.0/24",
            "10.244.12.0/24",
            RuleProto::Tcp,
            Some(80),
            Action::Deny,
        ),
    )
    .unwrap();
    assert_eq!(id, 2);
    assert_ne!(
        dp.maps.policy_state.get(&0, 0).unwrap().generation,
        gen_before,
        "a new generation went live"
    );
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &old.build()).0,
        TC_ACT_REDIRECT,
        "the allowed flow goes on"
    );
    let new = Frame::tcp(LOCAL_C, PEER_C, 40001, 80, SYN);
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &new.build()).0,
        TC_ACT_SHOT,
        "a new flow is denied"
    );
    assert!(
        add_rule(
            &mut dp,
            &rule(
                "10.244.11.0/24",
                "10.244.12.0/24",
                RuleProto::Tcp,
                Some(80),
                Action::Allow
            )
        )
        .is_err(),
        "same match twice"
    );
    policy::del(&mut dp.maps, id).unwrap();
    assert_eq!(
        dp.run(prog_names::FROM_BRIDGE, &new.build()).0,
        TC_ACT_REDIRECT,
        "deleted: allowed again"
    );
    let r = netpath::inspect::policy::report(&dp.maps).unwrap();
    assert_eq!(r.rules.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
}
