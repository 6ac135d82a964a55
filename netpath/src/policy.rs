//! Policies: the rules as operators write them, their compilation into the three LPM
//! tries that the datapath looks up (netpath-ebpf/src/policy.rs), and atomic changes of a
//! running datapath.
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
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
};

use anyhow::{Context, Result, bail};
use aya::maps::{LpmTrie, MapData, PerCpuValues, lpm_trie::Key};
use ipnet::Ipv4Net;
use netpath_common::{
    ACTION_ALLOW, ACTION_DENY, ACTION_REJECT, Counter, GroupMember, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, MAX_POLICY_ENTRIES, MAX_POLICY_RULES, ORIGIN_CLI, ORIGIN_CONFIG, POLICY_GEN_BITS,
    PolicyRuleInfo, PolicyState, PolicyVerdict, addr_to_be, name_bytes, name_str, policy_dst_key,
    policy_rule_key, policy_src_key,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{self, Config},
    datapath::{Maps, addr_of},
};

/// Entries one generation may use in each trie: both generations share the capacity.
pub const MAX_ENTRIES_PER_GEN: usize = (MAX_POLICY_ENTRIES / 2) as usize;
/// Default reject answers per second, per CPU.
pub const REJECT_RATE: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Reject,
}

impl Action {
    pub fn to_map(self) -> u8 {
        match self {
            Action::Allow => ACTION_ALLOW,
            Action::Deny => ACTION_DENY,
            Action::Reject => ACTION_REJECT,
        }
    }

    pub fn from_map(v: u8) -> Option<Action> {
        match v {
            ACTION_ALLOW => Some(Action::Allow),
            ACTION_DENY => Some(Action::Deny),
            ACTION_REJECT => Some(Action::Reject),
            _ => None,
        }
    }

    /// Rank at equal specificity: deny over reject over allow.
    fn rank(self) -> u8 {
        match self {
            Action::Deny => 2,
            Action::Reject => 1,
            Action::Allow => 0,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Reject => "reject",
        })
    }
}

/// The protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuleProto {
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl RuleProto {
    /// IP protocol number, 0 for any.
    pub fn number(self) -> u8 {
        match self {
            RuleProto::Any => 0,
            RuleProto::Tcp => IPPROTO_TCP,
            RuleProto::Udp => IPPROTO_UDP,
            RuleProto::Icmp => IPPROTO_ICMP,
        }
    }

    pub fn from_number(n: u8) -> Option<RuleProto> {
        match n {
            0 => Some(RuleProto::Any),
            IPPROTO_TCP => Some(RuleProto::Tcp),
            IPPROTO_UDP => Some(RuleProto::Udp),
            IPPROTO_ICMP => Some(RuleProto::Icmp),
            _ => None,
        }
    }
}

impl fmt::Display for RuleProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleProto::Any => "any",
            RuleProto::Tcp => "tcp",
            RuleProto::Udp => "udp",
            RuleProto::Icmp => "icmp",
        })
    }
}

/// One side of a rule: a CIDR (a bare address is a /32) or a named group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Cidr(Ipv4Net),
    Group(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Cidr(n) => write!(f, "{n}"),
            Endpoint::Group(g) => f.write_str(g),
        }
    }
}

/// A rule, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub from: Endpoint,
    pub to: Endpoint,
    pub proto: RuleProto,
    /// Destination ports, first and last; `None`: every port.
    pub ports: Option<(u16, u16)>,
    pub action: Action,
}

impl Rule {
    /// Whether `other` matches exactly the same packets as written (actions aside).
    pub fn same_match(&self, other: &Rule) -> bool {
        self.match_key() == other.match_key()
    }

    /// What the rule matches (actions aside), for finding rules that match the same
    /// packets in a hash rather than pair by pair.
    pub fn match_key(&self) -> (&Endpoint, &Endpoint, RuleProto, Option<(u16, u16)>) {
        (&self.from, &self.to, self.proto, self.ports)
    }

    pub fn ports_text(&self) -> String {
        match self.ports {
            None => "any".into(),
            Some((a, b)) if a == b => a.to_string(),
            Some((a, b)) => format!("{a}-{b}"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "from {} to {} proto {} port {} {}",
            self.from,
            self.to,
            self.proto,
            self.ports_text(),
            self.action
        )
    }
}

/// Named groups: name -> CIDRs.
pub type Groups = BTreeMap<String, Vec<Ipv4Net>>;

/// A `port` as written: a number or "first-last".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(i64),
    Text(String),
}

/// Parses one side of a rule: a CIDR, an address (/32), or the name of a group in
/// `groups`.
pub fn parse_endpoint(field: &str, s: &str, groups: &Groups) -> Result<Endpoint, String> {
    if s.contains('/') {
        return config::parse_subnet(field, s).map(Endpoint::Cidr);
    }
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(Endpoint::Cidr(Ipv4Net::from(a)));
    }
    if s.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{field} = {s:?} is neither a CIDR, an address nor a group name: write it like \"10.244.11.0/24\""
        ));
    }
    if groups.contains_key(s) {
        return Ok(Endpoint::Group(s.to_owned()));
    }
    let known: Vec<&str> = groups.keys().map(String::as_str).collect();
    Err(format!(
        "{field} = {s:?}: no such group{}; define it with [[group]] name = {s:?}, cidrs = [...]",
        if known.is_empty() {
            String::new()
        } else {
            format!(" (groups: {})", known.join(", "))
        }
    ))
}

/// Parses a port spec: a port, or "first-last"; never 0.
pub fn parse_ports(field: &str, p: &PortSpec) -> Result<(u16, u16), String> {
    match p {
        PortSpec::Number(n) if (1..=65535).contains(n) => Ok((*n as u16, *n as u16)),
        PortSpec::Number(n) => Err(format!("{field} = {n}: use a port from 1 to 65535")),
        PortSpec::Text(t) => {
            if let Ok(n) = t.parse::<u16>() {
                return parse_ports(field, &PortSpec::Number(n as i64));
            }
            config::parse_port_range(field, t)
        }
    }
}

/// Validates a rule as written; every problem is reported, each naming its field as
/// `field` spells it (`[[policy]] #3.port` in the config, `--port` on the command line).
pub fn parse_rule(
    field: &dyn Fn(&str) -> String,
    from: &str,
    to: &str,
    proto: RuleProto,
    port: Option<&PortSpec>,
    action: Action,
    groups: &Groups,
) -> Result<Rule, Vec<String>> {
    let mut problems = Vec::new();
    let from = parse_endpoint(&field("from"), from, groups).map_err(|e| problems.push(e));
    let to = parse_endpoint(&field("to"), to, groups).map_err(|e| problems.push(e));
    let ports = match port {
        None => Ok(None),
        Some(p) => {
            if !matches!(proto, RuleProto::Tcp | RuleProto::Udp) {
                problems.push(format!(
                    "{} is set but {} is \"{proto}\": ports need tcp or udp",
                    field("port"),
                    field("proto")
                ));
            }
            parse_ports(&field("port"), p)
                .map(Some)
                .map_err(|e| problems.push(e))
        }
    };
    match (from, to, ports) {
        (Ok(from), Ok(to), Ok(ports)) if problems.is_empty() => Ok(Rule {
            from,
            to,
            proto,
            ports,
            action,
        }),
        _ => Err(problems),
    }
}

/// Validates `[[group]]` tables: unique names that cannot be taken for addresses, at
/// least one CIDR each.
pub fn check_groups(groups: &[(String, Vec<String>)]) -> (Groups, Vec<String>) {
    let mut out = Groups::new();
    let mut problems = Vec::new();
    for (i, (name, cidrs)) in groups.iter().enumerate() {
        let field = format!("[[group]] #{} ({name:?})", i + 1);
        if let Err(e) = config::check_name(&format!("{field}.name"), name) {
            problems.push(e);
            continue;
        }
        if name.chars().next().is_some_and(|c| c.is_ascii_digit()) || name.contains('/') {
            problems.push(format!(
                "{field}.name must not start with a digit or hold '/': it would read as an address"
            ));
            continue;
        }
        if out.contains_key(name) {
            problems.push(format!("{field}: duplicate group name"));
            continue;
        }
        if cidrs.is_empty() {
            problems.push(format!(
                "{field}.cidrs is empty: list at least one CIDR, like [\"10.244.11.0/24\"]"
            ));
            continue;
        }
        let mut nets = Vec::new();
        for c in cidrs {
            let parsed = if c.contains('/') {
                config::parse_subnet(&format!("{field}.cidrs"), c)
            } else {
                config::parse_addr(&format!("{field}.cidrs"), c).map(Ipv4Net::from)
            };
            match parsed {
                Ok(n) if !nets.contains(&n) => nets.push(n),
                Ok(_) => {}
                Err(e) => problems.push(e),
            }
        }
        out.insert(name.clone(), nets);
    }
    (out, problems)
}

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

/// The rules and groups of a running datapath, from its maps.
pub struct Installed {
    pub rules: Vec<(u32, Rule, u8)>,
    pub groups: Groups,
    pub state: PolicyState,
}

fn endpoint_from(bytes: &[u8; 32]) -> Endpoint {
    let s = name_str(bytes);
    match s.parse::<Ipv4Net>() {
        Ok(n) => Endpoint::Cidr(n),
        Err(_) => Endpoint::Group(s.to_owned()),
    }
}

fn endpoint_bytes(e: &Endpoint) -> [u8; 32] {
    match e {
        Endpoint::Cidr(n) => name_bytes(&n.to_string()),
        Endpoint::Group(g) => name_bytes(g),
    }
}

fn rule_info(r: &Rule, origin: u8) -> PolicyRuleInfo {
    let (port_min, port_max) = r.ports.unwrap_or((0, 0));
    PolicyRuleInfo {
        from: endpoint_bytes(&r.from),
        to: endpoint_bytes(&r.to),
        port_min,
        port_max,
        proto: r.proto.number(),
        action: r.action.to_map(),
        origin,
        _pad: 0,
    }
}

fn rule_from(i: &PolicyRuleInfo) -> Option<Rule> {
    Some(Rule {
        from: endpoint_from(&i.from),
        to: endpoint_from(&i.to),
        proto: RuleProto::from_number(i.proto)?,
        ports: (i.port_min != 0).then_some((i.port_min, i.port_max)),
        action: Action::from_map(i.action)?,
    })
}

/// Reads the installed rules (sorted by id), groups and state.
pub fn installed(maps: &Maps) -> Result<Installed> {
    let mut rules = Vec::new();
    for item in maps.policy_info.iter() {
        let (id, info) = item?;
        if let Some(r) = rule_from(&info) {
            rules.push((id, r, info.origin));
        }
    }
    rules.sort_by_key(|(id, _, _)| *id);
    let mut groups = Groups::new();
    for item in maps.groups.keys() {
        let m = item?;
        let net = Ipv4Net::new(addr_of(m.addr), m.prefix_len).unwrap_or_default();
        groups
            .entry(name_str(&m.name).to_owned())
            .or_default()
            .push(net);
    }
    for nets in groups.values_mut() {
        nets.sort();
    }
    Ok(Installed {
        rules,
        groups,
        state: maps.policy_state.get(&0, 0)?,
    })
}

/// How a change leaves the policy: the rules compiled, how many there are, the default
/// action and the reject rate.
pub struct Target<'a> {
    pub compiled: &'a Compiled,
    pub rules: usize,
    pub default: Action,
    pub reject_rate: u32,
}

/// Writes `t` into the generation that is not live, then makes it live with one write of
/// `NP_POLICY_STATE`. Packets see the old policy or the new one, never a mix: the
/// datapath reads the generation once per packet.
pub fn apply(maps: &mut Maps, t: &Target) -> Result<()> {
    let c = t.compiled;
    let old = maps.policy_state.get(&0, 0)?;
    let next = 1 - (old.generation & 1);
    clear_generation(&mut maps.policy_src, next);
    clear_generation(&mut maps.policy_dst, next);
    clear_generation(&mut maps.policy_rules, next);
    let fail =
        |what: &str| format!("writing the policy's {what} entries (the live policy is unchanged)");
    for (net, class) in &c.src {
        let key = Key::new(
            POLICY_GEN_BITS + net.prefix_len() as u32,
            policy_src_key(next, addr_to_be(net.network().octets())),
        );
        maps.policy_src
            .insert(&key, class, 0)
            .with_context(|| fail("source"))?;
    }
    for (class, net, pair) in &c.dst {
        let key = Key::new(
            POLICY_GEN_BITS + 32 + net.prefix_len() as u32,
            policy_dst_key(next, *class, addr_to_be(net.network().octets())),
        );
        maps.policy_dst
            .insert(&key, pair, 0)
            .with_context(|| fail("destination"))?;
    }
    for e in &c.rules {
        let (len, proto) = match e.proto {
            None => (POLICY_GEN_BITS + 32, 0),
            Some(p) => (POLICY_GEN_BITS + 40 + e.port_bits as u32, p),
        };
        let key = Key::new(len, policy_rule_key(next, e.pair, proto, e.port.to_be()));
        maps.policy_rules
            .insert(&key, e.verdict, 0)
            .with_context(|| fail("rule"))?;
    }
    let state = PolicyState {
        generation: next,
        default_action: t.default.to_map(),
        enabled: (t.rules > 0 || t.default != Action::Allow) as u8,
        _pad: 0,
        reject_rate: t.reject_rate,
        rules: t.rules as u32,
        entries: c.entries() as u32,
        changed_at: crate::datapath::now(),
    };
    maps.policy_state.set(0, state, 0)?;
    Ok(())
}

/// Removes every entry of generation `generation` from `trie` (not live: it was replaced
/// at least one change ago, and a packet's lookups last microseconds).
fn clear_generation<const N: usize, V: aya::Pod>(
    trie: &mut LpmTrie<MapData, [u8; N], V>,
    generation: u8,
) {
    let stale: Vec<_> = trie
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.data()[0] == generation)
        .collect();
    for k in stale {
        let _ = trie.remove(&k);
    }
}

fn reset_stats(maps: &mut Maps, id: u32) -> Result<()> {
    maps.policy_stats
        .set(id, crate::datapath::zeroed_per_cpu()?, 0)?;
    Ok(())
}

/// Packets and bytes of rule `id` (0: the default action), summed over CPUs.
pub fn rule_stats(maps: &Maps, id: u32) -> Result<Counter> {
    let per_cpu: PerCpuValues<Counter> = maps.policy_stats.get(&id, 0)?;
    Ok(crate::datapath::sum(per_cpu.iter().copied()))
}

/// The lowest rule id not in `used` from `*next` on; `*next` moves past it, so handing
/// out n ids costs O(n), not O(n²).
fn free_id_from(used: &BTreeSet<u32>, next: &mut u32) -> Result<u32> {
    let id = ((*next).max(1)..MAX_POLICY_RULES)
        .find(|id| !used.contains(id))
        .with_context(|| {
            format!(
                "all {} rule ids are in use: remove rules first",
                MAX_POLICY_RULES - 1
            )
        })?;
    *next = id + 1;
    Ok(id)
}

/// What an agent start changed.
#[derive(Debug, Default)]
pub struct PolicyChanges {
    pub rules: usize,
    pub kept_cli: usize,
    pub entries: usize,
}

/// Makes the policy say what `cfg` says, keeping rules added with `netpath policy add`
/// (they must still name defined groups). A config rule keeps its id (and counters) when
/// it is unchanged. Everything is checked and compiled before the first write.
pub fn sync(maps: &mut Maps, cfg: &Config) -> Result<PolicyChanges> {
    let old = installed(maps)?;
    let p = &cfg.policy;
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut target: Vec<(u32, Rule, u8)> = Vec::new();
    let mut changes = PolicyChanges::default();
    let config_matches: HashSet<_> = p.rules.iter().map(Rule::match_key).collect();
    for (id, r, origin) in &old.rules {
        if *origin != ORIGIN_CLI {
            continue;
        }
        for e in [&r.from, &r.to] {
            if let Endpoint::Group(g) = e {
                if !p.groups.contains_key(g) {
                    bail!(
                        "policy rule {id} ({r}, added with `netpath policy add`) names group {g:?}, which the config no longer defines: define it again, or remove the rule with `netpath policy del {id}`"
                    );
                }
            }
        }
        if config_matches.contains(&r.match_key()) {
            // The config now says the same: the config's rule replaces it.
            continue;
        }
        used.insert(*id);
        target.push((*id, r.clone(), ORIGIN_CLI));
        changes.kept_cli += 1;
    }
    let mut reuse: HashMap<&Rule, u32> = old
        .rules
        .iter()
        .filter(|(_, _, o)| *o == ORIGIN_CONFIG)
        .map(|(id, r, _)| (r, *id))
        .collect();
    let mut fresh = Vec::new();
    let mut next = 1;
    // Ids the config keeps are taken before any is handed out.
    let kept: Vec<u32> = p
        .rules
        .iter()
        .filter_map(|r| reuse.get(r).copied())
        .collect();
    used.extend(kept);
    for r in &p.rules {
        let id = match reuse.remove(r) {
            Some(id) => id,
            None => {
                let id = free_id_from(&used, &mut next)?;
                fresh.push(id);
                id
            }
        };
        used.insert(id);
        target.push((id, r.clone(), ORIGIN_CONFIG));
    }
    target.sort_by_key(|(id, _, _)| *id);
    let rules: Vec<(u32, Rule)> = target.iter().map(|(id, r, _)| (*id, r.clone())).collect();
    // Compile first: a policy that does not fit changes nothing.
    let compiled = compile(&rules, &p.groups, MAX_ENTRIES_PER_GEN)?;

    sync_groups(maps, &p.groups)?;
    for id in &fresh {
        reset_stats(maps, *id)?;
    }
    for (id, r, origin) in &target {
        maps.policy_info.insert(id, rule_info(r, *origin), 0)?;
    }
    apply(
        maps,
        &Target {
            compiled: &compiled,
            rules: rules.len(),
            default: p.default,
            reject_rate: p.reject_rate,
        },
    )?;
    changes.entries = compiled.entries();
    for (id, _, _) in &old.rules {
        if !used.contains(id) {
            maps.policy_info.remove(id)?;
        }
    }
    changes.rules = target.len();
    Ok(changes)
}

fn sync_groups(maps: &mut Maps, groups: &Groups) -> Result<()> {
    let want: HashSet<GroupMember> = groups
        .iter()
        .flat_map(|(name, nets)| {
            nets.iter().map(move |n| GroupMember {
                name: name_bytes(name),
                addr: addr_to_be(n.network().octets()),
                prefix_len: n.prefix_len(),
                _pad: [0; 3],
            })
        })
        .collect();
    let have: Vec<GroupMember> = maps.groups.keys().filter_map(|k| k.ok()).collect();
    for m in &want {
        maps.groups.insert(m, ORIGIN_CONFIG, 0)?;
    }
    for m in have {
        if !want.contains(&m) {
            maps.groups.remove(&m)?;
        }
    }
    Ok(())
}

/// Adds a rule to a running datapath (`netpath policy add`); kept across agent restarts
/// until `policy del`. Returns its id.
/// `old` is what [`installed`] read under the same lock (the rule was parsed with its
/// groups).
pub fn add(maps: &mut Maps, old: &Installed, r: &Rule) -> Result<u32> {
    if let Some((id, other, _)) = old.rules.iter().find(|(_, o, _)| o.same_match(r)) {
        bail!(
            "rule {id} already matches the same packets ({other}): remove it first with `netpath policy del {id}`"
        );
    }
    let used: BTreeSet<u32> = old.rules.iter().map(|(id, _, _)| *id).collect();
    let id = free_id_from(&used, &mut 1)?;
    let mut rules: Vec<(u32, Rule)> = old.rules.iter().map(|(i, r, _)| (*i, r.clone())).collect();
    rules.push((id, r.clone()));
    // Compile before any write: a rule that does not fit changes nothing.
    let compiled = compile(&rules, &old.groups, MAX_ENTRIES_PER_GEN)?;
    reset_stats(maps, id)?;
    maps.policy_info.insert(id, rule_info(r, ORIGIN_CLI), 0)?;
    let applied = apply(maps, &target_of(old, &compiled, rules.len()));
    if let Err(e) = applied {
        let _ = maps.policy_info.remove(&id);
        return Err(e);
    }
    Ok(id)
}

fn target_of<'a>(old: &Installed, compiled: &'a Compiled, rules: usize) -> Target<'a> {
    Target {
        compiled,
        rules,
        default: Action::from_map(old.state.default_action).unwrap_or(Action::Allow),
        reject_rate: old.state.reject_rate,
    }
}

/// Removes rule `id` from a running datapath (`netpath policy del`). Flows it allowed
/// keep going until they end; new flows are decided without it.
pub fn del(maps: &mut Maps, id: u32) -> Result<Rule> {
    let old = installed(maps)?;
    let Some((_, rule, origin)) = old.rules.iter().find(|(i, _, _)| *i == id) else {
        let ids: Vec<String> = old.rules.iter().map(|(i, _, _)| i.to_string()).collect();
        bail!(
            "no policy rule {id}; rules: {} (see `netpath policy list`)",
            config::listed(&ids)
        );
    };
    if *origin == ORIGIN_CONFIG {
        log::warn!("rule {id} comes from the config: the next agent start will add it again");
    }
    let rules: Vec<(u32, Rule)> = old
        .rules
        .iter()
        .filter(|(i, _, _)| *i != id)
        .map(|(i, r, _)| (*i, r.clone()))
        .collect();
    let compiled = compile(&rules, &old.groups, MAX_ENTRIES_PER_GEN)?;
    apply(maps, &target_of(&old, &compiled, rules.len()))?;
    maps.policy_info.remove(&id)?;
    Ok(rule.clone())
}

/// A rule as `policy list` shows it.
#[derive(Serialize)]
pub struct RuleRow {
    pub id: u32,
    pub from: String,
    pub to: String,
    pub proto: String,
    pub port: String,
    pub action: String,
    pub origin: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Everything `policy list` and `dump policies` show.
#[derive(Serialize)]
pub struct PolicyReport {
    pub default_action: String,
    /// Whether the programs apply policy at all (a rule exists or the default is not allow).
    pub enabled: bool,
    pub reject_rate_per_cpu: u32,
    pub generation: u8,
    pub entries: u32,
    pub changed_at: u64,
    pub rules: Vec<RuleRow>,
    /// Packets and bytes that no rule matched (the default action).
    pub default_packets: u64,
    pub default_bytes: u64,
    pub groups: BTreeMap<String, Vec<String>>,
}

pub fn report(maps: &Maps) -> Result<PolicyReport> {
    let inst = installed(maps)?;
    let mut rows = Vec::new();
    for (id, r, origin) in &inst.rules {
        let c = rule_stats(maps, *id)?;
        rows.push(RuleRow {
            id: *id,
            from: r.from.to_string(),
            to: r.to.to_string(),
            proto: r.proto.to_string(),
            port: r.ports_text(),
            action: r.action.to_string(),
            origin: if *origin == ORIGIN_CLI {
                "cli"
            } else {
                "config"
            },
            packets: c.packets,
            bytes: c.bytes,
        });
    }
    let d = rule_stats(maps, 0)?;
    let s = inst.state;
    Ok(PolicyReport {
        default_action: Action::from_map(s.default_action)
            .unwrap_or(Action::Allow)
            .to_string(),
        enabled: s.enabled != 0,
        reject_rate_per_cpu: s.reject_rate,
        generation: s.generation,
        entries: s.entries,
        changed_at: s.changed_at,
        rules: rows,
        default_packets: d.packets,
        default_bytes: d.bytes,
        groups: inst
            .groups
            .iter()
            .map(|(g, nets)| (g.clone(), nets.iter().map(|n| n.to_string()).collect()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            if let Some((a, b)) = r.ports {
                if !(a..=b).contains(&port) {
                    continue;
                }
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

    #[test]
    fn rule_validation_names_the_field_and_the_fix() {
        let groups = Groups::new();
        let e = parse_rule(
            &|k| format!("[[policy]] #1.{k}"),
            "10.244.11.1/24",
            "web",
            RuleProto::Icmp,
            Some(&PortSpec::Number(80)),
            Action::Allow,
            &groups,
        )
        .unwrap_err();
        assert!(
            e.iter()
                .any(|p| p.contains("[[policy]] #1.from") && p.contains("10.244.11.0/24")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p.contains("no such group") && p.contains("[[group]]")),
            "{e:?}"
        );
        assert!(e.iter().any(|p| p.contains("[[policy]] #1.port is set but [[policy]] #1.proto is \"icmp\": ports need tcp or udp")), "{e:?}");
        let e = parse_rule(
            &|k| format!("x.{k}"),
            "10.244.11.0/24",
            "10.244.12.7",
            RuleProto::Tcp,
            Some(&PortSpec::Text("9000-8000".into())),
            Action::Deny,
            &groups,
        )
        .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        let r = parse_rule(
            &|k| format!("x.{k}"),
            "10.244.11.0/24",
            "10.244.12.7",
            RuleProto::Tcp,
            Some(&PortSpec::Text("8000-8100".into())),
            Action::Deny,
            &groups,
        )
        .unwrap();
        assert_eq!(r.to, Endpoint::Cidr(net("10.244.12.7/32")));
        assert_eq!(r.ports, Some((8000, 8100)));
        assert!(parse_ports("p", &PortSpec::Number(0)).is_err());
    }
}
