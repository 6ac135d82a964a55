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

mod check;
mod frames;

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

pub use check::{Facts, Outcome, World, check, facts, vxlan_inner};
use check::{check_tables, ipv4};
use frames::Gen;
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
/// .13) with udp 5353 -> 10.244.11.3:53 published, rules of every action and no limit on
/// reject answers.
fn host_config() -> sources::file::Config {
    let mut cfg = crate::bench::host_config();
    // No reject answer is ever held back by the rate limit: what it lets through depends
    // on where a run meets a second's boundary, and the same seed must give the same run.
    cfg.policy.reject_rate = u32::MAX;
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
        .program_mut(crate::datapath::loaded_name(ebpf, name))
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
