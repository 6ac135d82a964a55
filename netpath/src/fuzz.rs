//! `netpath fuzz`: generated and mutated frames through every program, with the
//! datapath's invariants checked on each.
//!
//! A private copy of the datapath (nothing attached, no map pinned; BPF_PROG_TEST_RUN) is
//! set up with the agent's own code for a host like the lab's first one: a direct and a
//! vxlan peer, masquerade, two published ports, policy rules of every action, an
//! endpoint; the default action is allow, deny and reject for a third of the frames each,
//! and the decision log (`netpath debug`) is on for every other thousand. Frames are made
//! from a seeded generator (the same seed gives the same frames and the same outcome):
//! containers' traffic to every kind of destination, traffic from the underlay (peers'
//! containers, the outside, replies to flows the fuzz saw masqueraded, VXLAN with good
//! and wrong flags, VNI, peers and inner frames), ICMP errors quoting such packets,
//! every TCP flag combination; then mutated: truncated, grown, bad IHL, IP options,
//! fragments, wrong checksums and lengths, flipped bytes.
//!
//! Checked on every frame: exactly one reason counted (np_from_container: at most one,
//! exactly one when it acts; XDP: one only when it drops); the verdict is the reason's
//! (forward: redirected; pass: left to the stack unchanged; drop: dropped, or answered);
//! a frame that leaves parses, its IPv4 checksum is right and its L4 checksum is right
//! when the input's was (netpath's own answers and outer headers always); VXLAN leaves
//! only for a peer's underlay address; a decapsulated frame is delivered only from a
//! peer and only with a source of that peer's subnet. Every 8192 frames and at the end,
//! the conntrack and NAT tables: only TCP, UDP and ICMP flows of local containers, and
//! no more new entries than there were trackable frames.

use std::{
    collections::{BTreeMap, HashSet},
    os::fd::AsFd,
    time::Instant,
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::IterableMap,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use ipnet::Ipv4Net;
use netpath_common::{CtEntry, CtKey, NatKey, NatValue, Reason, prog_names, reason::Verdict};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{
    maps::Maps,
    packet::{self, ETH_LEN, Frame},
    reconcile, sources,
    state::{
        Proto, Publish,
        policy::{Action, Endpoint, Rule, RuleProto},
    },
};

// bench's host (see host_config).
use crate::bench::{
    CONTAINER as C1, HOST, OUTSIDE, TC_ACT_REDIRECT, TC_ACT_SHOT, VXLAN_PEER, XDP_PASS,
};
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const XDP_DROP: u32 = 1;
const C2: [u8; 4] = [10, 244, 11, 3];
const DIRECT_PEER: [u8; 4] = [198, 18, 0, 12];
const VNI: u32 = 42;
const VXLAN_PORT: u16 = netpath_common::VXLAN_PORT;
const BRIDGE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// Addresses on this host's side: containers (one with an endpoint), the gateway, the
/// subnet's network and broadcast, one nobody has.
const LOCAL: [[u8; 4]; 6] = [
    C1,
    C2,
    [10, 244, 11, 1],
    [10, 244, 11, 255],
    [10, 244, 11, 0],
    [10, 244, 11, 77],
];
/// Addresses elsewhere: the peers' containers, a subnet no peer has, the outside, this
/// host, the peers' and an unknown underlay address, broadcast, zero, multicast.
const REMOTE: [[u8; 4]; 13] = [
    [10, 244, 12, 2],
    [10, 244, 12, 9],
    [10, 244, 13, 2],
    [10, 244, 13, 200],
    [10, 244, 99, 2],
    OUTSIDE,
    [198, 18, 0, 251],
    HOST,
    DIRECT_PEER,
    VXLAN_PEER,
    [198, 18, 0, 99],
    [255, 255, 255, 255],
    [0, 0, 0, 0],
];
const PORTS: [u16; 10] = [80, 22, 8080, 1500, 53, 5353, VXLAN_PORT, 0, 33000, 65535];

/// The fuzz's host: bench's (198.18.0.11, 10.244.11.0/24, masquerade, tcp 8080 ->
/// 10.244.11.2:80, a direct peer 10.244.12.0/24 at .12, a vxlan peer 10.244.13.0/24 at
/// .13) with udp 5353 -> 10.244.11.3:53 published and rules of every action.
fn host_config() -> sources::file::Config {
    let mut cfg = crate::bench::host_config();
    cfg.publish.push(Publish {
        proto: Proto::Udp,
        host_port: 5353,
        container: C2.into(),
        port: 53,
    });
    let net = |s: &str| Endpoint::Cidr(s.parse().expect("cidr"));
    let rule = |from, to, proto, ports, action| Rule {
        from: net(from),
        to: net(to),
        proto,
        ports,
        action,
    };
    cfg.policy.rules = vec![
        rule(
            "10.244.13.0/24",
            "10.244.11.0/24",
            RuleProto::Tcp,
            Some((22, 22)),
            Action::Deny,
        ),
        rule(
            "10.244.12.0/24",
            "10.244.11.3/32",
            RuleProto::Tcp,
            Some((1000, 2000)),
            Action::Reject,
        ),
        rule(
            "10.244.11.0/24",
            "198.18.0.250/32",
            RuleProto::Udp,
            Some((53, 53)),
            Action::Reject,
        ),
        rule(
            "10.244.11.3/32",
            "10.244.12.0/24",
            RuleProto::Icmp,
            None,
            Action::Deny,
        ),
        rule(
            "0.0.0.0/0",
            "10.244.11.2/32",
            RuleProto::Tcp,
            Some((80, 80)),
            Action::Allow,
        ),
    ];
    cfg
}

/// The programs, and which side of the host their frames come from.
const PROGRAMS: [&str; 4] = [
    prog_names::FROM_BRIDGE,
    prog_names::FROM_CONTAINER,
    prog_names::FROM_UPLINK,
    prog_names::XDP_UPLINK,
];

#[derive(Serialize)]
pub struct Failure {
    pub frame: u64,
    pub program: &'static str,
    pub what: String,
    /// The input frame, hex.
    pub input: String,
    /// What the program made of it, hex.
    pub output: String,
}

#[derive(Serialize)]
pub struct Report {
    pub seed: u64,
    pub frames: u64,
    pub seconds: f64,
    /// Frames run, by program.
    pub programs: BTreeMap<&'static str, u64>,
    /// Frames counted under each reason (all programs).
    pub reasons: BTreeMap<&'static str, u64>,
    /// Reasons no frame reached.
    pub reasons_missed: Vec<&'static str>,
    /// Frames the kernel's test run refuses (an IPv4 or IPv6 frame shorter than its
    /// network header), not counted in `programs`.
    pub refused: u64,
    /// Frames that left (redirected, or changed by XDP), all checked.
    pub frames_out: u64,
    /// Conntrack and NAT entries at the end (the tables are LRU: old ones are evicted).
    pub ct_entries: usize,
    pub nat_entries: usize,
    pub table_checks: u64,
    /// Every invariant broken (the first 20 in `failures`).
    pub failures_total: u64,
    pub failures: Vec<Failure>,
}

/// What a frame is, as far as the invariants need to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// Ethernet + IPv4 with a header that fits, a total length that fits, right checksum.
    pub ip_ok: bool,
    /// `ip_ok`, not a fragment, the whole datagram there, its TCP/UDP/ICMP checksum right
    /// (other protocols: true).
    pub l4_ok: bool,
    /// Can make a flow: TCP, UDP or ICMP echo, not a fragment, header complete.
    pub trackable: bool,
}

/// The IPv4 header of an Ethernet frame: (header length, total length), if it parses.
fn ipv4(f: &[u8]) -> Option<(usize, usize)> {
    if f.len() < ETH_LEN + 20 || f[12..14] != [0x08, 0x00] || f[ETH_LEN] >> 4 != 4 {
        return None;
    }
    let ihl = (f[ETH_LEN] & 0x0f) as usize * 4;
    // A total length of 0 is netpath's (and the kernel's) for a BIG TCP super-packet:
    // the whole frame.
    let tot = match u16::from_be_bytes([f[ETH_LEN + 2], f[ETH_LEN + 3]]) as usize {
        0 => f.len() - ETH_LEN,
        t => t,
    };
    if ihl < 20 || tot < ihl || ETH_LEN + tot > f.len() {
        return None;
    }
    Some((ihl, tot))
}

fn is_fragment(f: &[u8]) -> bool {
    let v = u16::from_be_bytes([f[ETH_LEN + 6], f[ETH_LEN + 7]]);
    v & 0x3fff != 0
}

pub fn facts(f: &[u8]) -> Facts {
    let Some((ihl, tot)) = ipv4(f) else {
        return Facts::default();
    };
    let ip_ok = packet::checksum(&f[ETH_LEN..ETH_LEN + ihl]) == 0;
    let proto = f[ETH_LEN + 9];
    let l4 = &f[ETH_LEN + ihl..ETH_LEN + tot];
    let frag = is_fragment(f);
    let complete = match proto {
        6 => l4.len() >= 20 && l4.len() >= (l4[12] >> 4) as usize * 4,
        17 => l4.len() >= 8 && u16::from_be_bytes([l4[4], l4[5]]) as usize == l4.len(),
        1 => l4.len() >= 8,
        _ => true,
    };
    let l4_ok = ip_ok
        && !frag
        && complete
        && match proto {
            6 | 17 | 1 => packet::l4_checksum_ok(&f[..ETH_LEN + tot]),
            _ => true,
        };
    let trackable = ip_ok
        && !frag
        && complete
        && match proto {
            6 | 17 => true,
            1 => matches!(l4[0], 0 | 8),
            _ => false,
        };
    Facts {
        ip_ok,
        l4_ok,
        trackable,
    }
}

/// The inner frame of a VXLAN packet for this host (UDP to the VXLAN port on the host's
/// address), and the outer source; None for anything else.
pub fn vxlan_inner(f: &[u8], host: [u8; 4]) -> Option<(&[u8], [u8; 4])> {
    let (ihl, tot) = ipv4(f)?;
    let ip = &f[ETH_LEN..];
    if ip[9] != 17 || ip[16..20] != host || tot < ihl + 16 {
        return None;
    }
    let udp = &ip[ihl..tot];
    if u16::from_be_bytes([udp[2], udp[3]]) != VXLAN_PORT {
        return None;
    }
    let src: [u8; 4] = ip[12..16].try_into().ok()?;
    Some((&udp[16..], src))
}

/// The host's peers, as the checks need them: underlay address and subnet.
#[derive(Clone)]
pub struct World {
    pub host: [u8; 4],
    pub subnet: Ipv4Net,
    pub peers: Vec<([u8; 4], Ipv4Net)>,
}

impl World {
    fn peer_subnet(&self, underlay: [u8; 4]) -> Option<Ipv4Net> {
        self.peers
            .iter()
            .find(|(u, _)| *u == underlay)
            .map(|(_, s)| *s)
    }
}

/// What one run of a program did.
pub struct Outcome<'a> {
    pub program: &'static str,
    pub verdict: u32,
    /// The reasons counted, with how many packets each.
    pub counted: &'a [(Reason, u64)],
    pub input: &'a [u8],
    pub output: &'a [u8],
}

/// Every invariant the outcome breaks (empty: none).
pub fn check(w: &World, o: &Outcome) -> Vec<String> {
    let mut bad = Vec::new();
    let n: u64 = o.counted.iter().map(|(_, k)| k).sum();
    let reason = o.counted.first().map(|(r, _)| *r);
    let xdp = o.program == prog_names::XDP_UPLINK;
    let container = o.program == prog_names::FROM_CONTAINER;
    // Exactly one reason.
    let want_one = if xdp {
        o.verdict == XDP_DROP
    } else {
        !container || o.verdict != TC_ACT_UNSPEC
    };
    if (want_one && n != 1) || (!want_one && n > usize::from(container) as u64) {
        bad.push(format!(
            "{n} reasons counted ({:?}), verdict {}",
            o.counted, o.verdict as i32
        ));
        return bad;
    }
    // The verdict is the reason's.
    if xdp {
        if !matches!(o.verdict, XDP_PASS | XDP_DROP) {
            bad.push(format!("XDP verdict {}", o.verdict));
        }
        if let Some(r) = reason
            && r.verdict() != Verdict::Drop
        {
            bad.push(format!("XDP counted {} and did not drop", r.name()));
        }
    } else if let Some(r) = reason {
        let ok = match r.verdict() {
            // fwd-via-bridge on a container's veth: the bridge forwards it, as it is.
            Verdict::Forward if r == Reason::FwdViaBridge && container => {
                o.verdict == TC_ACT_REDIRECT || o.verdict == TC_ACT_UNSPEC
            }
            Verdict::Forward => o.verdict == TC_ACT_REDIRECT,
            Verdict::Pass => o.verdict == TC_ACT_UNSPEC,
            Verdict::Drop => matches!(o.verdict, TC_ACT_SHOT | TC_ACT_REDIRECT),
        };
        if !ok {
            bad.push(format!("{} with verdict {}", r.name(), o.verdict as i32));
        }
        // Left to the stack: as it came, or (a tunnel packet whose inner TTL expires
        // here) its inner frame, for the stack to answer.
        let decapped = vxlan_inner(o.input, w.host).is_some_and(|(inner, _)| {
            // What followed the outer datagram in the frame stays behind it.
            let (out, inner) = (o.output.get(12..), inner.get(12..));
            out.zip(inner).is_some_and(|(o, i)| o.starts_with(i))
        });
        if o.verdict == TC_ACT_UNSPEC && o.output != o.input && !decapped {
            bad.push(format!(
                "{} changed the frame it left to the stack",
                r.name()
            ));
        }
    }
    let left = if xdp {
        o.verdict == XDP_PASS && o.output != o.input
    } else {
        o.verdict == TC_ACT_REDIRECT
    };
    if !left {
        return bad;
    }
    let answer = reason.is_some_and(|r| r.verdict() == Verdict::Drop);
    let tunnel_in = vxlan_inner(o.input, w.host);
    // netpath's own VXLAN: an encapsulated forward, or an answer back into the tunnel.
    let encap = reason == Some(Reason::FwdVxlanEncap)
        || (answer
            && tunnel_in.is_some()
            && out_vxlan_dst(o.output).is_some()
            && o.output.get(ETH_LEN + 12..ETH_LEN + 16) == Some(&w.host[..]));
    // What the output's checksums are held to: the input's (the inner frame's when
    // it came in the tunnel and leaves without it).
    let before = match tunnel_in {
        Some((inner, _)) if !encap => facts(inner),
        _ => facts(o.input),
    };
    // XDP hands what it decapsulated to np_from_uplink, which checks the inner frame
    // itself: only where it came from is XDP's to check.
    if !xdp {
        check_frame(w, o.output, before, answer, encap, &mut bad);
    }
    // A decapsulated frame: from a peer, with a source of that peer's subnet.
    if let Some((_, outer_src)) = tunnel_in
        && !answer
        && !encap
        && o.output.len() >= ETH_LEN + 20
    {
        let src: [u8; 4] = o.output[ETH_LEN + 12..ETH_LEN + 16]
            .try_into()
            .expect("4 bytes");
        match w.peer_subnet(outer_src) {
            None => bad.push(format!(
                "delivered a tunnel frame from {outer_src:?}, not a peer"
            )),
            Some(s) if !s.contains(&std::net::Ipv4Addr::from(src)) => bad.push(format!(
                "delivered a tunnel frame from {outer_src:?} with inner source {src:?}, outside its subnet {s}"
            )),
            Some(_) => {}
        }
    }
    bad
}

/// The outer destination of a VXLAN frame (UDP to the VXLAN port).
fn out_vxlan_dst(f: &[u8]) -> Option<[u8; 4]> {
    let (ihl, tot) = ipv4(f)?;
    let ip = &f[ETH_LEN..];
    (ip[9] == 17 && tot >= ihl + 16 && u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]) == VXLAN_PORT)
        .then(|| ip[16..20].try_into().expect("4 bytes"))
}

/// A frame that leaves: parses; IPv4 checksum right when the input's was (always for
/// netpath's own answers); L4 checksum right when the input's was; VXLAN only to a
/// peer, with netpath's outer header right and the inner frame held to the same.
fn check_frame(
    w: &World,
    out: &[u8],
    before: Facts,
    answer: bool,
    encap: bool,
    bad: &mut Vec<String>,
) {
    if ipv4(out).is_none() {
        bad.push(format!("left unparsable ({} bytes)", out.len()));
        return;
    }
    let after = facts(out);
    if encap {
        let Some(dst) = out_vxlan_dst(out) else {
            bad.push("encapsulated, but not VXLAN".into());
            return;
        };
        if out[ETH_LEN + 12..ETH_LEN + 16] != w.host {
            bad.push("VXLAN from another address than the host's".into());
        }
        if w.peer_subnet(dst).is_none() {
            bad.push(format!("VXLAN sent to {dst:?}, not a peer"));
        }
        if !after.ip_ok {
            bad.push("VXLAN outer IPv4 header wrong".into());
        }
        let (ihl, _) = ipv4(out).expect("parsed above");
        let inner = &out[ETH_LEN + ihl + 16..];
        check_frame(w, inner, before, answer, false, bad);
        return;
    }
    if (before.ip_ok || answer) && !after.ip_ok {
        bad.push("IPv4 header checksum or lengths wrong".into());
    }
    let whole = !is_fragment(out);
    if (before.l4_ok || answer) && whole && !after.l4_ok {
        bad.push(format!("L4 checksum wrong (protocol {})", out[ETH_LEN + 9]));
    }
}

/// Frames from a seed.
struct Gen {
    rng: ChaCha8Rng,
    /// Masqueraded flows seen leaving: (remote, remote port, port on the host, protocol).
    masq: Vec<([u8; 4], u16, u16, u8)>,
}

impl Gen {
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.random_range(0..from.len())]
    }

    /// One of the masqueraded flows seen (there is one: callers check).
    fn masq_flow(&mut self) -> ([u8; 4], u16, u16, u8) {
        self.masq[self.rng.random_range(0..self.masq.len())]
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.random()).collect()
    }

    fn port(&mut self) -> u16 {
        if self.chance(0.7) {
            self.pick(&PORTS)
        } else {
            self.rng.random()
        }
    }

    fn addr(&mut self) -> [u8; 4] {
        if self.chance(0.4) {
            self.pick(&LOCAL)
        } else {
            self.pick(&REMOTE)
        }
    }

    /// An IPv4 frame from `src` to `dst` of a random protocol.
    fn ip(&mut self, src: [u8; 4], dst: [u8; 4]) -> Frame {
        let kind = self.rng.random_range(0..100);
        let mut f = if kind < 3 {
            // Too big for the tunnel: DF set or not, TCP or UDP.
            let n = self.rng.random_range(1400..1480);
            let data = self.bytes(n);
            let (sport, dport) = (self.port(), self.port());
            let mut f = Frame::udp(src, dst, sport, dport, &data, true);
            if self.chance(0.5) {
                f.proto = 6;
                f.payload = Frame::tcp(src, dst, sport, dport, 0x10).payload;
                f.payload.extend(&data);
            }
            f
        } else if kind < 35 {
            let flags = self.rng.random();
            let mut f = Frame::tcp(src, dst, self.port(), self.port(), flags);
            if self.chance(0.3) {
                // TCP options: an MSS (clamped on the tunnel path) or random bytes.
                let opts = if self.chance(0.5) {
                    let mss: u16 = self.pick(&[536, 1460, 8960, 65535]);
                    let m = mss.to_be_bytes();
                    vec![2, 4, m[0], m[1]]
                } else {
                    let n = 4 * self.rng.random_range(1..=10);
                    self.bytes(n)
                };
                let words = opts.len() / 4;
                f.payload[12] = ((5 + words) as u8) << 4;
                let data = f.payload.split_off(20);
                f.payload.extend(opts);
                f.payload.extend(data);
            }
            f
        } else if kind < 60 {
            let n = self.rng.random_range(0..64);
            let data = self.bytes(n);
            let sport = self.port();
            let dport = self.port();
            Frame::udp(src, dst, sport, dport, &data, self.chance(0.8))
        } else if kind < 88 {
            self.icmp(src, dst)
        } else {
            let mut f = Frame::icmp(src, dst);
            f.proto = self.pick(&[0, 4, 47, 50, 132, 255]);
            f.l4_csum = false;
            let n = self.rng.random_range(0..48);
            f.payload = self.bytes(n);
            f
        };
        f.src_mac = [2, 0, 0, 0, 0, self.rng.random()];
        f.dst_mac = BRIDGE_MAC;
        if self.chance(0.05) {
            f.ttl = self.pick(&[0, 1, 2]);
        }
        f
    }

    /// ICMP: echo request or reply, or an error quoting a packet (one the fuzz saw
    /// masqueraded, as the remote end got it, or any).
    fn icmp(&mut self, src: [u8; 4], dst: [u8; 4]) -> Frame {
        if self.chance(0.5) {
            let f = if self.chance(0.5) {
                Frame::icmp(src, dst)
            } else {
                Frame::echo_reply(src, dst)
            };
            let id = self.port();
            return f.ports(id, 0);
        }
        let quoted = if !self.masq.is_empty() && self.chance(0.5) {
            let (remote, rport, nat, proto) = self.masq_flow();
            let f = match proto {
                6 => Frame::tcp(HOST, remote, nat, rport, 0x02),
                17 => Frame::udp(HOST, remote, nat, rport, b"q", true),
                _ => Frame::icmp(HOST, remote).ports(nat, 0),
            };
            f.build()
        } else {
            let (a, b) = (self.addr(), self.addr());
            self.ip(a, b).build()
        };
        // The quoted IPv4 header and 8 bytes of what follows, sometimes less.
        let mut q = quoted[ETH_LEN..].to_vec();
        let keep = if self.chance(0.8) {
            28.min(q.len())
        } else {
            self.rng.random_range(0..=q.len())
        };
        q.truncate(keep);
        let (t, c) = self.pick(&[
            (3u8, 1u8),
            (3, 3),
            (3, 4),
            (11, 0),
            (12, 0),
            (5, 1),
            (3, 13),
        ]);
        let mut icmp = vec![t, c, 0, 0, 0, 0, 0x05, 0xdc];
        icmp.extend(q);
        let mut f = Frame::icmp(src, dst);
        f.payload = icmp;
        f
    }

    /// What a container (or something on the bridge) sends.
    fn bridge_frame(&mut self) -> Vec<u8> {
        let src = if self.chance(0.85) {
            self.pick(&[C1, C2])
        } else {
            self.addr()
        };
        let dst = self.addr();
        let mut f = self.ip(src, dst).build();
        self.mutate(&mut f);
        f
    }

    /// What arrives from the underlay.
    fn uplink_frame(&mut self) -> Vec<u8> {
        let kind = self.rng.random_range(0..100);
        let mut f = if kind < 35 {
            let src = self.pick(&REMOTE);
            let dst = if self.chance(0.5) {
                HOST
            } else {
                self.pick(&LOCAL)
            };
            let mut f = self.ip(src, dst);
            if dst == HOST && matches!(f.proto, 6 | 17) && self.chance(0.6) {
                let dport = self.pick(&[8080, 5353, 32768, 40000, 60999]);
                let sport = self.port();
                f = f.ports(sport, dport);
            }
            f.build()
        } else if kind < 50 && !self.masq.is_empty() {
            // A reply to a masqueraded flow.
            let (remote, rport, nat, proto) = self.masq_flow();
            let f = match proto {
                6 => {
                    let flags = self.rng.random();
                    Frame::tcp(remote, HOST, rport, nat, flags)
                }
                17 => Frame::udp(remote, HOST, rport, nat, b"reply", true),
                _ if self.chance(0.7) => Frame::echo_reply(remote, HOST).ports(nat, 0),
                _ => self.icmp(remote, HOST),
            };
            f.build()
        } else {
            self.vxlan()
        };
        self.mutate(&mut f);
        f
    }

    /// A VXLAN packet: mostly from the vxlan peer with its own containers' traffic for
    /// this host's, else wrong in one way or another.
    fn vxlan(&mut self) -> Vec<u8> {
        let outer_src = if self.chance(0.7) {
            VXLAN_PEER
        } else {
            self.pick(&[DIRECT_PEER, [198, 18, 0, 99], OUTSIDE])
        };
        let inner_src = if self.chance(0.8) {
            self.pick(&[[10, 244, 13, 2], [10, 244, 13, 200]])
        } else {
            self.addr()
        };
        let inner_dst = if self.chance(0.8) {
            self.pick(&[C1, C2])
        } else {
            self.addr()
        };
        let mut inner = self.ip(inner_src, inner_dst).build();
        if self.chance(0.3) {
            self.mutate(&mut inner);
        }
        if self.chance(0.03) {
            inner[12..14].copy_from_slice(&[0x86, 0xdd]);
        }
        let flags = if self.chance(0.85) {
            0x08
        } else {
            self.rng.random()
        };
        let vni = if self.chance(0.85) {
            VNI
        } else {
            self.rng.random_range(0..1 << 24)
        };
        let dst = if self.chance(0.95) { HOST } else { OUTSIDE };
        let mut f = packet::vxlan(outer_src, dst, vni, flags, &inner);
        if self.chance(0.05) {
            // Another UDP port.
            let p = self.port();
            f[ETH_LEN + 22..ETH_LEN + 24].copy_from_slice(&p.to_be_bytes());
        }
        f
    }

    /// Up to three mutations, none half the time.
    fn mutate(&mut self, f: &mut Vec<u8>) {
        if self.chance(0.5) {
            return;
        }
        for _ in 0..self.rng.random_range(1..=3) {
            self.mutate_once(f);
        }
    }

    fn mutate_once(&mut self, f: &mut Vec<u8>) {
        let ip = ETH_LEN;
        let fix_ip_csum = |f: &mut Vec<u8>| {
            let ihl = ((f[ip] & 0x0f) as usize * 4).max(20);
            if f.len() >= ip + ihl {
                f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
                let c = packet::checksum(&f[ip..ip + ihl]);
                f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
            }
        };
        let has_ip = f.len() >= ip + 20;
        match self.rng.random_range(0..11) {
            // Truncated (never below an Ethernet header: the kernel refuses those).
            0 if f.len() > ETH_LEN => {
                let n = self.rng.random_range(ETH_LEN..f.len());
                f.truncate(n);
            }
            // Grown: trailing bytes the lengths do not cover.
            1 => {
                let n = self.rng.random_range(1..=64);
                let extra = self.bytes(n);
                f.extend(extra);
            }
            // A bad IHL.
            2 if has_ip => f[ip] = 0x40 | self.rng.random_range(0..16u8),
            // IP options, lengths and checksum right.
            3 if has_ip && f[ip] == 0x45 => {
                let words = self.rng.random_range(1..=10usize);
                let opts = if self.chance(0.5) {
                    vec![1; words * 4] // NOPs
                } else {
                    self.bytes(words * 4)
                };
                let tail = f.split_off(ip + 20);
                f.extend(opts);
                f.extend(tail);
                f[ip] = 0x40 | (5 + words as u8);
                let tot =
                    u16::from_be_bytes([f[ip + 2], f[ip + 3]]).wrapping_add((words * 4) as u16);
                f[ip + 2..ip + 4].copy_from_slice(&tot.to_be_bytes());
                fix_ip_csum(f);
            }
            // A fragment: more fragments, an offset, or both.
            4 if has_ip => {
                let v: u16 = self.pick(&[0x2000, 0x0001, 0x2010, 0x1fff, 0x4000 | 0x2000]);
                f[ip + 6..ip + 8].copy_from_slice(&v.to_be_bytes());
                if self.chance(0.8) {
                    fix_ip_csum(f);
                }
            }
            // A wrong IPv4 checksum.
            5 if has_ip => f[ip + 11] ^= self.rng.random_range(1..=255u8),
            // A wrong L4 checksum (or any byte of the L4 header).
            6 if f.len() > ip + 28 => {
                let at = self.rng.random_range(ip + 20..f.len().min(ip + 40));
                f[at] ^= self.rng.random_range(1..=255u8);
            }
            // A wrong total length.
            7 if has_ip => {
                let v: u16 = self.rng.random();
                f[ip + 2..ip + 4].copy_from_slice(&v.to_be_bytes());
                if self.chance(0.5) {
                    fix_ip_csum(f);
                }
            }
            // Another ethertype.
            8 => {
                let t: [u8; 2] = self.pick(&[[0x86, 0xdd], [0x81, 0x00], [0x08, 0x06], [0, 0]]);
                f[12..14].copy_from_slice(&t);
            }
            // A TTL that expires here, checksum right.
            9 if has_ip => {
                f[ip + 8] = self.pick(&[0, 1]);
                fix_ip_csum(f);
            }
            // Flipped bytes anywhere.
            _ => {
                for _ in 0..self.rng.random_range(1..=4) {
                    let at = self.rng.random_range(0..f.len());
                    f[at] ^= self.rng.random_range(1..=255u8);
                }
            }
        }
    }
}

/// The counters, per reason, summed over CPUs (one BPF_MAP_LOOKUP_BATCH).
fn counter_packets(maps: &Maps, cpus: usize) -> Result<Vec<u64>> {
    // Per possible CPU, each value rounded up to 8 bytes (a Counter is 16).
    let each = size_of::<netpath_common::Counter>().next_multiple_of(8);
    let value = each * cpus;
    let fd = maps.counters.map().fd().as_fd();
    let (keys, values, n) =
        crate::sys::lookup_batch(fd, 4, value, netpath_common::MAX_REASONS as usize)?;
    let mut out = vec![0u64; netpath_common::MAX_REASONS as usize];
    for i in 0..n {
        let key = u32::from_ne_bytes(keys[i * 4..i * 4 + 4].try_into()?) as usize;
        let v = &values[i * value..(i + 1) * value];
        let packets: u64 = (0..cpus)
            .map(|c| {
                let cpu: netpath_common::Counter = bytemuck::pod_read_unaligned(
                    &v[c * each..c * each + size_of::<netpath_common::Counter>()],
                );
                cpu.packets
            })
            .sum();
        if let Some(slot) = out.get_mut(key) {
            *slot = packets;
        }
    }
    Ok(out)
}

type Tables = (Vec<(CtKey, CtEntry)>, Vec<(NatKey, NatValue)>);

/// The conntrack and NAT tables' keys and values (BPF_MAP_LOOKUP_BATCH).
fn tables(maps: &Maps) -> Result<Tables> {
    fn read<K: bytemuck::Pod, V: bytemuck::Pod>(
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Vec<(K, V)>> {
        let (ks, vs) = (size_of::<K>(), size_of::<V>());
        let (keys, values, n) = crate::sys::lookup_batch(fd, ks, vs, 4096)?;
        Ok((0..n)
            .map(|i| {
                (
                    bytemuck::pod_read_unaligned(&keys[i * ks..(i + 1) * ks]),
                    bytemuck::pod_read_unaligned(&values[i * vs..(i + 1) * vs]),
                )
            })
            .collect())
    }
    Ok((
        read(maps.ct.map().fd().as_fd())?,
        read(maps.nat.map().fd().as_fd())?,
    ))
}

/// The conntrack and NAT tables hold only TCP, UDP and ICMP flows of local containers,
/// and no more new entries than `trackable` frames could make (each makes at most one
/// of each). `seen_*`: the keys of the previous check.
fn check_tables(
    maps: &Maps,
    subnet: Ipv4Net,
    trackable: u64,
    seen_ct: &mut HashSet<CtKey>,
    seen_nat: &mut HashSet<NatKey>,
) -> Result<(Vec<String>, usize, usize)> {
    let (ct, nat) = tables(maps)?;
    let mut bad = Vec::new();
    let local = |be: u32| subnet.contains(&crate::maps::addr_of(be));
    for (k, _) in &ct {
        if !matches!(k.proto, 1 | 6 | 17) || !local(k.container) {
            bad.push(format!(
                "conntrack entry {k:?}: not a TCP, UDP or ICMP flow of a local container"
            ));
        }
    }
    for (k, v) in &nat {
        if !matches!(k.proto, 1 | 6 | 17) || !local(v.container) {
            bad.push(format!(
                "NAT entry {k:?} -> {v:?}: not a TCP, UDP or ICMP flow of a local container"
            ));
        }
    }
    let new_ct = ct.iter().filter(|(k, _)| !seen_ct.contains(k)).count() as u64;
    let new_nat = nat.iter().filter(|(k, _)| !seen_nat.contains(k)).count() as u64;
    if new_ct > trackable || new_nat > trackable {
        bad.push(format!(
            "{new_ct} new conntrack and {new_nat} new NAT entries from {trackable} trackable frames"
        ));
    }
    *seen_ct = ct.iter().map(|(k, _)| *k).collect();
    *seen_nat = nat.iter().map(|(k, _)| *k).collect();
    Ok((bad, ct.len(), nat.len()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// An IPv4 or IPv6 frame shorter than its network header.
fn short_l3(f: &[u8]) -> bool {
    match f.get(12..14) {
        Some([0x08, 0x00]) => f.len() < ETH_LEN + 20,
        Some([0x86, 0xdd]) => f.len() < ETH_LEN + 40,
        _ => false,
    }
}

/// BPF_PROG_TEST_RUN of `name` on `input`: the verdict, the output's length in `out`,
/// and where the frame starts in it (XDP's output begins with the metadata it wrote in
/// front of a frame it decapsulated; 0 otherwise).
fn test_run(
    ebpf: &mut Ebpf,
    name: &str,
    input: &[u8],
    out: &mut [u8],
) -> Result<(u32, usize, usize)> {
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(out),
        repeat: 1,
        ..Default::default()
    };
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name}"))?;
    if name == prog_names::XDP_UPLINK {
        let p: &mut Xdp = prog.try_into()?;
        let r = p.test_run(opts)?;
        let len = r.data_size_out as usize;
        // The metadata: magic "NPXD" and the peer's id (xdp.rs).
        let meta = if len > 8 && out[..4] == 0x4e50_5844u32.to_ne_bytes() {
            8
        } else {
            0
        };
        Ok((r.return_value, len, meta))
    } else {
        let p: &mut SchedClassifier = prog.try_into()?;
        let r = p.test_run(opts)?;
        Ok((r.return_value, r.data_size_out as usize, 0))
    }
}

/// Runs `frames` frames from `seed`. Never fails on a broken invariant: the report has it.
pub fn run(frames: u64, seed: u64) -> Result<Report> {
    let cfg = host_config();
    let (mut ebpf, mut maps) = reconcile::private(&sources::from_config(&cfg))?;
    // One container delivered to straight (an endpoint), the other through the bridge.
    maps.endpoints.insert(
        netpath_common::addr_to_be(C1),
        netpath_common::Endpoint {
            ifindex: 7,
            mac: [2, 0, 0, 0, 0, 0x22],
            _pad: [0; 2],
        },
        0,
    )?;
    let world = World {
        host: HOST,
        subnet: cfg.host.subnet,
        peers: cfg
            .peers
            .iter()
            .map(|p| (p.underlay.octets(), p.subnet))
            .collect(),
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        masq: Vec::new(),
    };
    let mut report = Report {
        seed,
        frames,
        seconds: 0.0,
        programs: BTreeMap::new(),
        reasons: BTreeMap::new(),
        reasons_missed: Vec::new(),
        refused: 0,
        frames_out: 0,
        ct_entries: 0,
        nat_entries: 0,
        table_checks: 0,
        failures_total: 0,
        failures: Vec::new(),
    };
    let fail = |report: &mut Report,
                frame: u64,
                program: &'static str,
                what: String,
                input: &[u8],
                output: &[u8]| {
        report.failures_total += 1;
        if report.failures.len() < 20 {
            report.failures.push(Failure {
                frame,
                program,
                what,
                input: hex(input),
                output: hex(output),
            });
        }
    };
    let start = Instant::now();
    let mut before = counter_packets(&maps, cpus)?;
    let mut out = vec![0u8; 4096];
    let (mut seen_ct, mut seen_nat) = (HashSet::new(), HashSet::new());
    let mut trackable = 0u64;
    for i in 0..frames {
        // The default action changes at each third: allow, deny, reject.
        let phase = (i * 3 / frames) as usize;
        if i == 0 || (i * 3 / frames) != ((i - 1) * 3 / frames) {
            let mut c = cfg.clone();
            c.policy.default = [Action::Allow, Action::Deny, Action::Reject][phase.min(2)];
            reconcile::all(&mut maps, &sources::from_config(&c))
                .context("setting the default action")?;
        }
        // The decision log on for every other 1000 frames: logging must change no verdict
        // and no output (nobody reads its ring buffer, so it soon refuses records, as on a
        // host where nobody watches).
        if i % 1000 == 0 {
            let on = (i / 1000) % 2 == 1;
            maps.debug
                .set(0, crate::inspect::decisions::state(on, None), 0)?;
        }
        let program = g.pick(&PROGRAMS);
        let input = if program == prog_names::FROM_BRIDGE || program == prog_names::FROM_CONTAINER {
            g.bridge_frame()
        } else {
            g.uplink_frame()
        };
        let f = facts(&input);
        let inner = vxlan_inner(&input, HOST).map(|(i, _)| facts(i));
        if f.trackable || inner.is_some_and(|i| i.trackable) {
            trackable += 1;
        }
        let (verdict, len, meta) = match test_run(&mut ebpf, program, &input, &mut out) {
            Ok(r) => r,
            // The kernel's test run refuses an IPv4 or IPv6 frame too short for the
            // network header (the stack never hands TC such a frame either).
            Err(_) if short_l3(&input) => {
                report.refused += 1;
                continue;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "frame {i} through {program} ({} bytes: {})",
                    input.len(),
                    hex(&input)
                )));
            }
        };
        let output = &out[meta..len.min(out.len())];
        let after = counter_packets(&maps, cpus)?;
        let counted: Vec<(Reason, u64)> = after
            .iter()
            .zip(&before)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(r, (a, b))| {
                (
                    Reason::from_u32(r as u32).unwrap_or(Reason::DropMalformed),
                    a.wrapping_sub(*b),
                )
            })
            .collect();
        before = after;
        *report.programs.entry(program).or_default() += 1;
        for (r, _) in &counted {
            *report.reasons.entry(r.name()).or_default() += 1;
        }
        let o = Outcome {
            program,
            verdict,
            counted: &counted,
            input: &input,
            output,
        };
        for what in check(&world, &o) {
            fail(&mut report, i, program, what, &input, output);
        }
        let left = if program == prog_names::XDP_UPLINK {
            verdict == XDP_PASS && output != input.as_slice()
        } else {
            verdict == TC_ACT_REDIRECT
        };
        report.frames_out += left as u64;
        // Remember masqueraded flows, to reply to them.
        if counted
            .first()
            .is_some_and(|(r, _)| *r == Reason::FwdMasquerade)
            && let Some((ihl, _)) = ipv4(output)
            && output.len() >= ETH_LEN + ihl + 8
        {
            let ip = &output[ETH_LEN..];
            let remote: [u8; 4] = ip[16..20].try_into()?;
            let (nat, rport) = if ip[9] == 1 {
                (u16::from_be_bytes([ip[ihl + 4], ip[ihl + 5]]), 0)
            } else {
                (
                    u16::from_be_bytes([ip[ihl], ip[ihl + 1]]),
                    u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]),
                )
            };
            if g.masq.len() >= 256 {
                let at = g.rng.random_range(0..g.masq.len());
                g.masq.swap_remove(at);
            }
            g.masq.push((remote, rport, nat, ip[9]));
        }
        if (i + 1) % 8192 == 0 || i + 1 == frames {
            let (bad, ct, nat) =
                check_tables(&maps, world.subnet, trackable, &mut seen_ct, &mut seen_nat)?;
            for what in bad {
                fail(&mut report, i, "tables", what, &[], &[]);
            }
            report.ct_entries = ct;
            report.nat_entries = nat;
            report.table_checks += 1;
            trackable = 0;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.reasons_missed = Reason::ALL
        .iter()
        .map(|r| r.name())
        .filter(|n| !report.reasons.contains_key(n))
        .collect();
    Ok(report)
}

/// The report for people.
pub fn text(r: &Report) -> String {
    let mut s = format!(
        "{} frames from seed {} in {:.1} s ({:.0} frames/s); {} left and were checked; {} too short for the kernel's test run\n",
        r.frames,
        r.seed,
        r.seconds,
        r.frames as f64 / r.seconds.max(1e-9),
        r.frames_out,
        r.refused
    );
    for (p, n) in &r.programs {
        s += &format!("  {p:<20} {n:>10} frames\n");
    }
    s += "reasons counted:\n";
    for (reason, n) in &r.reasons {
        s += &format!("  {reason:<26} {n:>10}\n");
    }
    if !r.reasons_missed.is_empty() {
        s += &format!(
            "reasons no frame reached: {}\n",
            r.reasons_missed.join(", ")
        );
    }
    s += &format!(
        "conntrack {} entries, NAT {} entries at the end; tables checked {} times\n",
        r.ct_entries, r.nat_entries, r.table_checks
    );
    if r.failures_total == 0 {
        s += "every invariant held\n";
    } else {
        s += &format!(
            "{} invariants broken (`netpath fuzz --seed {} --frames {}` gives the same):\n",
            r.failures_total, r.seed, r.frames
        );
        for f in &r.failures {
            s += &format!(
                "  frame {} ({}): {}\n    in:  {}\n    out: {}\n",
                f.frame, f.program, f.what, f.input, f.output
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World {
            host: HOST,
            subnet: "10.244.11.0/24".parse().unwrap(),
            peers: vec![
                (DIRECT_PEER, "10.244.12.0/24".parse().unwrap()),
                (VXLAN_PEER, "10.244.13.0/24".parse().unwrap()),
            ],
        }
    }

    fn outcome<'a>(
        program: &'static str,
        verdict: u32,
        counted: &'a [(Reason, u64)],
        input: &'a [u8],
        output: &'a [u8],
    ) -> Outcome<'a> {
        Outcome {
            program,
            verdict,
            counted,
            input,
            output,
        }
    }

    #[test]
    fn a_good_forward_passes_every_check() {
        let f = Frame::tcp(C1, [10, 244, 12, 2], 1000, 80, 0x02).build();
        let one = [(Reason::FwdDirect, 1)];
        let o = outcome(prog_names::FROM_BRIDGE, TC_ACT_REDIRECT, &one, &f, &f);
        assert!(check(&world(), &o).is_empty());
    }

    #[test]
    fn two_reasons_or_none_are_caught() {
        let f = Frame::tcp(C1, [10, 244, 12, 2], 1000, 80, 0x02).build();
        let two = [(Reason::FwdDirect, 1), (Reason::PassLocal, 1)];
        let o = outcome(prog_names::FROM_BRIDGE, TC_ACT_REDIRECT, &two, &f, &f);
        assert!(check(&world(), &o)[0].contains("2 reasons"));
        let o = outcome(prog_names::FROM_UPLINK, TC_ACT_UNSPEC, &[], &f, &f);
        assert!(check(&world(), &o)[0].contains("0 reasons"));
        // np_from_container leaves what it does not route uncounted; XDP passes uncounted.
        let o = outcome(prog_names::FROM_CONTAINER, TC_ACT_UNSPEC, &[], &f, &f);
        assert!(check(&world(), &o).is_empty());
        let o = outcome(prog_names::XDP_UPLINK, XDP_PASS, &[], &f, &f);
        assert!(check(&world(), &o).is_empty());
    }

    #[test]
    fn a_verdict_other_than_the_reasons_is_caught() {
        let f = Frame::tcp(C1, [10, 244, 12, 2], 1000, 80, 0x02).build();
        let pass = [(Reason::PassLocal, 1)];
        let o = outcome(prog_names::FROM_BRIDGE, TC_ACT_REDIRECT, &pass, &f, &f);
        assert!(check(&world(), &o)[0].contains("pass-local with verdict 7"));
        let mut changed = f.clone();
        changed[ETH_LEN + 8] -= 1;
        let o = outcome(prog_names::FROM_BRIDGE, TC_ACT_UNSPEC, &pass, &f, &changed);
        assert!(check(&world(), &o)[0].contains("changed the frame"));
    }

    #[test]
    fn a_wrong_checksum_out_of_a_right_one_is_caught() {
        let f = Frame::tcp(C1, [10, 244, 12, 2], 1000, 80, 0x02).build();
        let mut out = f.clone();
        out[ETH_LEN + 8] -= 1; // TTL without the checksum
        let one = [(Reason::FwdDirect, 1)];
        let o = outcome(prog_names::FROM_BRIDGE, TC_ACT_REDIRECT, &one, &f, &out);
        assert!(check(&world(), &o)[0].contains("IPv4 header checksum"));
        let mut out = f.clone();
        out[ETH_LEN + 20] ^= 1; // the source port without the checksum
        let o = outcome(prog_names::FROM_BRIDGE, TC_ACT_REDIRECT, &one, &f, &out);
        assert!(check(&world(), &o)[0].contains("L4 checksum"));
        // Forwarded as it came (already wrong): not netpath's doing.
        let o = outcome(prog_names::FROM_BRIDGE, TC_ACT_REDIRECT, &one, &out, &out);
        assert!(check(&world(), &o).is_empty());
    }

    #[test]
    fn vxlan_to_a_stranger_and_a_forged_inner_source_are_caught() {
        let inner = Frame::tcp(C1, [10, 244, 13, 2], 1000, 80, 0x10).build();
        let out = packet::vxlan(HOST, [198, 18, 0, 99], VNI, 0x08, &inner);
        let one = [(Reason::FwdVxlanEncap, 1)];
        let o = outcome(prog_names::FROM_BRIDGE, TC_ACT_REDIRECT, &one, &inner, &out);
        assert!(check(&world(), &o)[0].contains("not a peer"));
        let good = packet::vxlan(HOST, VXLAN_PEER, VNI, 0x08, &inner);
        let o = outcome(
            prog_names::FROM_BRIDGE,
            TC_ACT_REDIRECT,
            &one,
            &inner,
            &good,
        );
        assert!(check(&world(), &o).is_empty());
        // Decapsulated: the inner source must be of the sending peer's subnet.
        let forged = Frame::tcp([10, 244, 12, 2], C1, 80, 1000, 0x10).build();
        let decap = [(Reason::FwdVxlanDecap, 1)];
        for (sender, want) in [
            (VXLAN_PEER, "outside its subnet"),
            ([198, 18, 0, 99], "not a peer"),
        ] {
            let input = packet::vxlan(sender, HOST, VNI, 0x08, &forged);
            let o = outcome(
                prog_names::FROM_UPLINK,
                TC_ACT_REDIRECT,
                &decap,
                &input,
                &forged,
            );
            assert!(check(&world(), &o)[0].contains(want), "{sender:?}");
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_frames() {
        let frames = |seed| {
            let mut g = Gen {
                rng: ChaCha8Rng::seed_from_u64(seed),
                masq: Vec::new(),
            };
            (0..200)
                .map(|k| {
                    if k % 2 == 0 {
                        g.bridge_frame()
                    } else {
                        g.uplink_frame()
                    }
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(frames(7), frames(7));
        assert_ne!(frames(7), frames(8));
    }

    #[test]
    fn facts_of_mutated_frames() {
        let f = Frame::udp(C1, OUTSIDE, 1, 2, b"abc", true).build();
        assert_eq!(
            facts(&f),
            Facts {
                ip_ok: true,
                l4_ok: true,
                trackable: true
            }
        );
        let mut frag = f.clone();
        frag[ETH_LEN + 6] = 0x20; // MF, checksum now wrong
        assert!(!facts(&frag).ip_ok && !facts(&frag).trackable);
        let mut short = f.clone();
        short.truncate(ETH_LEN + 10);
        assert_eq!(facts(&short), Facts::default());
    }
}
