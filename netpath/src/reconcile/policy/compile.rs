//! The policy compiler: rules (state::policy) into the three LPM tries that the datapath
//! looks up (netpath-ebpf/src/policy.rs). Pure logic, no map is touched here.
//!
//! # Precedence
//! Where several rules match a packet, the most specific wins. Compared in this order:
//! 1. the longer `from` prefix (of the CIDR, or of the group's CIDR, that holds the
//!    source);
//! 2. the longer `to` prefix;
//! 3. a rule for one protocol over `any`;
//! 4. fewer ports: one port over a range, a narrower range over a wider one, any range
//!    over no port;
//! 5. deny over reject over allow;
//! 6. the older rule (lower id).
//!
//! The compiler applies all of it, so the datapath's lookup returns the winner directly:
//! - source classes are the distinct `from` prefixes; the source's class is the longest
//!   one holding it;
//! - under each class, the `to` prefixes of every rule whose `from` holds the class (the
//!   class's own rules and its ancestors') form pair classes;
//! - under each pair, the winner for every protocol and port range is written as LPM
//!   entries on (protocol, port).
//!
//! A lookup is three LPM lookups whatever the rule count. The price is paid at compile
//! time: a broad rule's `to` prefixes are repeated under every narrower source class, and
//! a policy that would need more entries than the tries hold is refused before anything
//! changes.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use netpath_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, MAX_POLICY_ENTRIES, PolicyVerdict};

use crate::state::policy::{Endpoint, Groups, Rule, RuleProto};

/// Entries one generation may use in each trie: both generations share the capacity.
pub const MAX_ENTRIES_PER_GEN: usize = (MAX_POLICY_ENTRIES / 2) as usize;

/// The prefixes an endpoint stands for.
fn nets(e: &Endpoint, groups: &Groups) -> Result<Vec<Ipv4Net>> {
    match e {
        Endpoint::Cidr(n) => Ok(vec![*n]),
        Endpoint::Group(g) => groups
            .get(g)
            .cloned()
            .with_context(|| format!("group {g:?} is not defined")),
    }
}

/// An LPM entry of `NP_POLICY_RULES`, before the generation byte is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleEntry {
    pub pair: u32,
    /// `None`: every protocol (prefix 40); else the protocol (prefix 48 + `port_bits`).
    pub proto: Option<u8>,
    /// First port of the block (host byte order) and how many of its bits are fixed.
    pub port: u16,
    pub port_bits: u8,
    pub verdict: PolicyVerdict,
}

/// A policy compiled into the tries' contents.
#[derive(Debug, Default)]
pub struct Compiled {
    /// `from` prefix -> source class.
    pub src: Vec<(Ipv4Net, u32)>,
    /// (source class, `to` prefix) -> pair class.
    pub dst: Vec<(u32, Ipv4Net, u32)>,
    pub rules: Vec<RuleEntry>,
}

impl Compiled {
    pub fn entries(&self) -> usize {
        self.src.len() + self.dst.len() + self.rules.len()
    }
}

/// One (from prefix, to prefix) of a rule.
struct Atom<'a> {
    from: Ipv4Net,
    to: Ipv4Net,
    id: u32,
    rule: &'a Rule,
}

impl Atom<'_> {
    /// Precedence (see the module doc): greater wins.
    fn precedence(
        &self,
    ) -> (
        u8,
        u8,
        bool,
        std::cmp::Reverse<u32>,
        u8,
        std::cmp::Reverse<u32>,
    ) {
        let width = match self.rule.ports {
            None => 65536,
            Some((a, b)) => (b - a) as u32 + 1,
        };
        (
            self.from.prefix_len(),
            self.to.prefix_len(),
            self.rule.proto != RuleProto::Any,
            std::cmp::Reverse(width),
            self.rule.action.rank(),
            std::cmp::Reverse(self.id),
        )
    }

    fn ports(&self) -> (u32, u32) {
        match self.rule.ports {
            None => (0, 65535),
            Some((a, b)) => (a as u32, b as u32),
        }
    }

    fn verdict(&self) -> PolicyVerdict {
        PolicyVerdict {
            rule: self.id,
            action: self.rule.action.to_map(),
            _pad: [0; 3],
        }
    }
}

/// The prefixes of `net` from /0 to its own length.
fn ancestors(net: Ipv4Net) -> impl Iterator<Item = Ipv4Net> {
    (0..=net.prefix_len()).map(move |l| Ipv4Net::new(net.network(), l).expect("l <= 32").trunc())
}

/// Splits the ports `a..=b` into aligned power-of-two blocks: (first port, fixed bits).
fn port_blocks(mut a: u32, b: u32, out: &mut Vec<(u16, u8)>) {
    while a <= b {
        let mut size = if a == 0 {
            1 << 16
        } else {
            1u32 << a.trailing_zeros()
        };
        while a + size - 1 > b {
            size >>= 1;
        }
        out.push((a as u16, 16 - size.trailing_zeros() as u8));
        a += size;
    }
}

/// Compiles `rules` (id, rule) with `groups`. Fails when the policy needs more than
/// `limit` entries in one trie.
pub fn compile(rules: &[(u32, Rule)], groups: &Groups, limit: usize) -> Result<Compiled> {
    let mut atoms: Vec<Atom> = Vec::new();
    for (id, r) in rules {
        for f in nets(&r.from, groups)? {
            for t in nets(&r.to, groups)? {
                atoms.push(Atom {
                    from: f,
                    to: t,
                    id: *id,
                    rule: r,
                });
            }
        }
    }
    let mut by_from: HashMap<Ipv4Net, Vec<usize>> = HashMap::new();
    for (i, a) in atoms.iter().enumerate() {
        by_from.entry(a.from).or_default().push(i);
    }
    let classes: BTreeSet<Ipv4Net> = by_from.keys().copied().collect();
    let too_many = |what: &str, n: usize| {
        anyhow::anyhow!(
            "the policy needs more than {n} {what} entries (at most {limit}): a rule with a broad `from` is repeated under every narrower `from` prefix; use fewer or broader prefixes"
        )
    };
    let mut out = Compiled::default();
    let mut pair = 0u32;
    for (class, p) in classes.iter().enumerate() {
        let class = class as u32;
        out.src.push((*p, class));
        let mut by_to: HashMap<Ipv4Net, Vec<usize>> = HashMap::new();
        for anc in ancestors(*p) {
            for &i in by_from.get(&anc).into_iter().flatten() {
                by_to.entry(atoms[i].to).or_default().push(i);
            }
        }
        let dsts: BTreeSet<Ipv4Net> = by_to.keys().copied().collect();
        for q in dsts {
            if out.dst.len() >= limit {
                return Err(too_many("destination", out.dst.len()));
            }
            out.dst.push((class, q, pair));
            let mut applicable: Vec<&Atom> = ancestors(q)
                .flat_map(|anc| by_to.get(&anc).into_iter().flatten())
                .map(|&i| &atoms[i])
                .collect();
            applicable.sort_by_key(|a| std::cmp::Reverse(a.precedence()));
            resolve(pair, &applicable, &mut out.rules);
            if out.rules.len() > limit {
                return Err(too_many("rule", out.rules.len()));
            }
            pair += 1;
        }
    }
    Ok(out)
}

/// Writes the winners of one pair class (`applicable` sorted best first) for every
/// protocol and port.
fn resolve(pair: u32, applicable: &[&Atom], out: &mut Vec<RuleEntry>) {
    let entry = |proto, port, port_bits, a: &Atom| RuleEntry {
        pair,
        proto,
        port,
        port_bits,
        verdict: a.verdict(),
    };
    // Protocols other than TCP, UDP and ICMP: only rules for any protocol match.
    if let Some(a) = applicable.iter().find(|a| a.rule.proto == RuleProto::Any) {
        out.push(entry(None, 0, 0, a));
    }
    if let Some(a) = applicable
        .iter()
        .find(|a| matches!(a.rule.proto, RuleProto::Any | RuleProto::Icmp))
    {
        out.push(entry(Some(IPPROTO_ICMP), 0, 0, a));
    }
    for proto in [RuleProto::Tcp, RuleProto::Udp] {
        let rel: Vec<&Atom> = applicable
            .iter()
            .copied()
            .filter(|a| a.rule.proto == RuleProto::Any || a.rule.proto == proto)
            .collect();
        let Some(best) = rel.first() else { continue };
        if best.rule.ports.is_none() {
            // The best rule covers every port: it wins on all of them.
            out.push(entry(Some(proto.number()), 0, 0, best));
            continue;
        }
        let mut cuts: BTreeSet<u32> = BTreeSet::from([0, 65536]);
        for a in &rel {
            let (lo, hi) = a.ports();
            cuts.insert(lo);
            cuts.insert(hi + 1);
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        // Runs of ports with the same winner, then their blocks.
        let mut runs: Vec<(u32, u32, &Atom)> = Vec::new();
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1] - 1);
            let Some(win) = rel.iter().find(|a| {
                let (a_lo, a_hi) = a.ports();
                a_lo <= lo && hi <= a_hi
            }) else {
                continue;
            };
            match runs.last_mut() {
                Some((_, end, prev)) if *end + 1 == lo && prev.id == win.id => *end = hi,
                _ => runs.push((lo, hi, win)),
            }
        }
        let mut blocks = Vec::new();
        for (lo, hi, a) in runs {
            blocks.clear();
            port_blocks(lo, hi, &mut blocks);
            for &(port, bits) in &blocks {
                out.push(entry(Some(proto.number()), port, bits, a));
            }
        }
    }
}

/// What the datapath's lookup returns for a packet, computed on `c` the way the kernel's
/// LPM tries would (longest prefix at each step). Tests compare it with the rules.
pub fn evaluate(
    c: &Compiled,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    port: u16,
) -> Option<PolicyVerdict> {
    let class = c
        .src
        .iter()
        .filter(|(n, _)| n.contains(&src))
        .max_by_key(|(n, _)| n.prefix_len())?
        .1;
    let pair = c
        .dst
        .iter()
        .filter(|(cl, n, _)| *cl == class && n.contains(&dst))
        .max_by_key(|(_, n, _)| n.prefix_len())?
        .2;
    let port = if matches!(proto, IPPROTO_TCP | IPPROTO_UDP) {
        port
    } else {
        0
    };
    c.rules
        .iter()
        .filter(|e| e.pair == pair)
        .filter_map(|e| match e.proto {
            None => Some((40, e)),
            Some(p) if p == proto => {
                let shift = 16 - e.port_bits as u32;
                let mask = if shift == 16 {
                    0
                } else {
                    (0xffffu32 >> shift) << shift
                };
                ((port as u32 & mask) == e.port as u32).then_some((48 + e.port_bits as u32, e))
            }
            _ => None,
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, e)| e.verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::policy::{Action, Endpoint, Groups, Rule, RuleProto};
    use std::net::Ipv4Addr;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn rule(
        from: &str,
        to: &str,
        proto: RuleProto,
        ports: Option<(u16, u16)>,
        action: Action,
    ) -> Rule {
        let ep = |s: &str| match s.parse::<Ipv4Net>() {
            Ok(n) => Endpoint::Cidr(n),
            Err(_) => Endpoint::Group(s.into()),
        };
        Rule {
            from: ep(from),
            to: ep(to),
            proto,
            ports,
            action,
        }
    }

    /// The reference: every matching (from, to) of every rule, best by precedence.
    fn brute(
        rules: &[(u32, Rule)],
        groups: &Groups,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> Option<(u32, Action)> {
        let mut best: Option<(_, u32, Action)> = None;
        for (id, r) in rules {
            if r.proto != RuleProto::Any && r.proto.number() != proto {
                continue;
            }
            if let Some((a, b)) = r.ports
                && !(a..=b).contains(&port)
            {
                continue;
            }
            for f in nets(&r.from, groups).unwrap() {
                for t in nets(&r.to, groups).unwrap() {
                    if !f.contains(&src) || !t.contains(&dst) {
                        continue;
                    }
                    let a = Atom {
                        from: f,
                        to: t,
                        id: *id,
                        rule: r,
                    };
                    let p = a.precedence();
                    if best.as_ref().is_none_or(|(bp, _, _)| p > *bp) {
                        best = Some((p, *id, r.action));
                    }
                }
            }
        }
        best.map(|(_, id, a)| (id, a))
    }

    fn eval(c: &Compiled, src: &str, dst: &str, proto: u8, port: u16) -> Option<(u32, Action)> {
        evaluate(c, src.parse().unwrap(), dst.parse().unwrap(), proto, port)
            .map(|v| (v.rule, Action::from_map(v.action).unwrap()))
    }

    #[test]
    fn most_specific_wins_in_the_documented_order() {
        let mut groups = Groups::new();
        groups.insert(
            "db".into(),
            vec![net("10.244.12.10/32"), net("10.244.13.0/24")],
        );
        let rules = vec![
            (
                1,
                rule(
                    "10.244.0.0/16",
                    "10.244.0.0/16",
                    RuleProto::Any,
                    None,
                    Action::Allow,
                ),
            ),
            (
                2,
                rule(
                    "10.244.11.0/24",
                    "db",
                    RuleProto::Tcp,
                    Some((5432, 5432)),
                    Action::Allow,
                ),
            ),
            (
                3,
                rule("10.244.11.0/24", "db", RuleProto::Any, None, Action::Deny),
            ),
            (
                4,
                rule(
                    "10.244.11.5/32",
                    "10.244.0.0/16",
                    RuleProto::Any,
                    None,
                    Action::Reject,
                ),
            ),
            (
                5,
                rule(
                    "10.244.11.0/24",
                    "10.244.12.10/32",
                    RuleProto::Tcp,
                    Some((8000, 8100)),
                    Action::Reject,
                ),
            ),
            (
                6,
                rule(
                    "10.244.11.0/24",
                    "10.244.12.10/32",
                    RuleProto::Tcp,
                    Some((8050, 8060)),
                    Action::Allow,
                ),
            ),
        ];
        let c = compile(&rules, &groups, 1 << 20).unwrap();
        // Longer `to` (db's /32) beats the /16; the port rule beats any at equal prefixes.
        assert_eq!(
            eval(&c, "10.244.11.1", "10.244.12.10", IPPROTO_TCP, 5432),
            Some((2, Action::Allow))
        );
        assert_eq!(
            eval(&c, "10.244.11.1", "10.244.12.10", IPPROTO_TCP, 22),
            Some((3, Action::Deny))
        );
        assert_eq!(
            eval(&c, "10.244.11.1", "10.244.12.10", IPPROTO_ICMP, 0),
            Some((3, Action::Deny))
        );
        // Narrower range wins inside the wider one.
        assert_eq!(
            eval(&c, "10.244.11.1", "10.244.12.10", IPPROTO_TCP, 8055),
            Some((6, Action::Allow))
        );
        assert_eq!(
            eval(&c, "10.244.11.1", "10.244.12.10", IPPROTO_TCP, 8049),
            Some((5, Action::Reject))
        );
        assert_eq!(
            eval(&c, "10.244.11.1", "10.244.12.10", IPPROTO_UDP, 8055),
            Some((3, Action::Deny))
        );
        // Longer `from` beats everything after it, ports included.
        assert_eq!(
            eval(&c, "10.244.11.5", "10.244.12.10", IPPROTO_TCP, 5432),
            Some((4, Action::Reject))
        );
        // The group's other CIDR; and the broad rule elsewhere.
        assert_eq!(
            eval(&c, "10.244.11.1", "10.244.13.7", IPPROTO_TCP, 5432),
            Some((2, Action::Allow))
        );
        assert_eq!(
            eval(&c, "10.244.12.1", "10.244.11.1", 47, 0),
            Some((1, Action::Allow))
        );
        // Nothing matches: the default.
        assert_eq!(eval(&c, "10.245.0.1", "10.244.11.1", IPPROTO_TCP, 80), None);
        assert_eq!(eval(&c, "10.244.11.1", "10.245.0.1", IPPROTO_TCP, 80), None);
    }

    #[test]
    fn equal_specificity_deny_beats_reject_beats_allow() {
        let mut groups = Groups::new();
        groups.insert("a".into(), vec![net("10.244.11.0/24")]);
        let rules = vec![
            (
                1,
                rule("a", "10.244.12.0/24", RuleProto::Tcp, None, Action::Allow),
            ),
            (
                2,
                rule(
                    "10.244.11.0/24",
                    "10.244.12.0/24",
                    RuleProto::Tcp,
                    None,
                    Action::Reject,
                ),
            ),
        ];
        let c = compile(&rules, &groups, 1 << 20).unwrap();
        assert_eq!(
            eval(&c, "10.244.11.1", "10.244.12.1", IPPROTO_TCP, 1),
            Some((2, Action::Reject))
        );
    }

    #[test]
    fn port_blocks_cover_exactly_the_range() {
        for (a, b) in [
            (0, 65535),
            (1, 1),
            (8000, 8100),
            (1, 65535),
            (1023, 1025),
            (65535, 65535),
        ] {
            let mut out = Vec::new();
            port_blocks(a, b, &mut out);
            let mut covered = Vec::new();
            for (p, bits) in out {
                let size = 1u32 << (16 - bits as u32);
                assert_eq!(p as u32 % size, 0, "block {p}/{bits} not aligned");
                covered.extend(p as u32..p as u32 + size);
            }
            assert_eq!(covered, (a..=b).collect::<Vec<_>>(), "{a}-{b}");
        }
    }

    /// Random policies over a small address space, checked against the reference on
    /// every address pair, protocol and a spread of ports.
    #[test]
    fn compiled_lookup_agrees_with_the_rules() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as u32
        };
        let prefix = |r: &mut dyn FnMut(u32) -> u32| {
            let len = [0, 24, 28, 30, 32][r(5) as usize];
            Ipv4Net::new(Ipv4Addr::new(10, 244, 11, r(16) as u8), len)
                .unwrap()
                .trunc()
        };
        for round in 0..200 {
            let mut groups = Groups::new();
            groups.insert("g".into(), vec![prefix(&mut rnd), prefix(&mut rnd)]);
            let mut rules = Vec::new();
            for id in 1..=(1 + rnd(8)) {
                let ep = |r: &mut dyn FnMut(u32) -> u32| {
                    if r(4) == 0 {
                        Endpoint::Group("g".into())
                    } else {
                        Endpoint::Cidr(prefix(r))
                    }
                };
                let proto = [
                    RuleProto::Any,
                    RuleProto::Tcp,
                    RuleProto::Udp,
                    RuleProto::Icmp,
                ][rnd(4) as usize];
                let ports = if matches!(proto, RuleProto::Tcp | RuleProto::Udp) && rnd(2) == 0 {
                    let a = 1 + rnd(8) as u16;
                    Some((a, a + rnd(4) as u16))
                } else {
                    None
                };
                let action = [Action::Allow, Action::Deny, Action::Reject][rnd(3) as usize];
                rules.push((
                    id,
                    Rule {
                        from: ep(&mut rnd),
                        to: ep(&mut rnd),
                        proto,
                        ports,
                        action,
                    },
                ));
            }
            let c = compile(&rules, &groups, 1 << 20).unwrap();
            for s in 0..16u8 {
                for d in 0..16u8 {
                    let (src, dst) = (Ipv4Addr::new(10, 244, 11, s), Ipv4Addr::new(10, 244, 11, d));
                    for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, 47] {
                        for port in [1u16, 2, 3, 5, 8, 11, 12, 13, 80] {
                            let got = evaluate(&c, src, dst, proto, port)
                                .map(|v| (v.rule, Action::from_map(v.action).unwrap()));
                            let want = brute(&rules, &groups, src, dst, proto, port);
                            assert_eq!(
                                got, want,
                                "round {round}: {src} -> {dst} proto {proto} port {port}\nrules: {rules:#?}\ngroups: {groups:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_policy_too_big_for_the_tries_is_refused() {
        let rules: Vec<(u32, Rule)> = (0..100u32)
            .map(|i| {
                let to = format!("10.244.{}.{}/32", i / 256, i % 256);
                (
                    i + 1,
                    rule(
                        "10.244.0.0/16",
                        &to,
                        RuleProto::Tcp,
                        Some((1, 65535)),
                        Action::Allow,
                    ),
                )
            })
            .collect();
        let err = compile(&rules, &Groups::new(), 50).unwrap_err().to_string();
        assert!(err.contains("at most 50"), "{err}");
    }
}
