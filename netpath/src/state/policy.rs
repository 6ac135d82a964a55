//! Policy as operators write it: actions, protocols, endpoints (CIDRs and groups), rules
//! and their validation. Shared by every source (the config file, `policy add`) and by
//! the policy reconciler, which compiles these into the datapath's tries
//! (reconcile/policy). The precedence rules are documented there.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use anyhow::Result;
use ipnet::Ipv4Net;
use netpath_common::{
    ACTION_ALLOW, ACTION_DENY, ACTION_REJECT, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
};
use serde::{Deserialize, Serialize};

use super::{check_name, parse_addr, parse_port_range, parse_subnet};

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
    pub fn rank(self) -> u8 {
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
        return parse_subnet(field, s).map(Endpoint::Cidr);
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
            parse_port_range(field, t)
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
        if let Err(e) = check_name(&format!("{field}.name"), name) {
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
                parse_subnet(&format!("{field}.cidrs"), c)
            } else {
                parse_addr(&format!("{field}.cidrs"), c).map(Ipv4Net::from)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
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
