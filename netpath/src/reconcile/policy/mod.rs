//! The policy reconciler: makes the pinned policy (rule infos, groups, the live
//! generation of the three tries) say what the desired state says.
//!
//! A change is compiled first (a policy that does not fit changes nothing), written into
//! the generation that is not live and made live with one write of `NP_POLICY_STATE`, so
//! packets see the old policy or the new one, never a mix. The rule infos and groups (what
//! reports and the next reconcile read) are written after that switch: an agent killed
//! before it finds them unlike the desired policy and applies it again; one killed after
//! it finds the work done. A desired policy equal to the installed one writes nothing, so
//! a change elsewhere (one peer) does not pay for 100,000 rules.

pub mod compile;

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result};
use aya::maps::{LpmTrie, MapData, PerCpuValues, lpm_trie::Key};
use ipnet::Ipv4Net;
use netpath_common::{
    Counter, GroupMember, MAX_POLICY_RULES, ORIGIN_CONFIG, POLICY_GEN_BITS, PolicyRuleInfo,
    PolicyState, addr_to_be, name_bytes, name_str, policy_dst_key, policy_rule_key, policy_src_key,
};

use super::{Undo, fault};
use crate::{
    maps::{Maps, addr_of, now, sum, zeroed_per_cpu},
    state::{
        DesiredPolicy, DesiredRule, Origin,
        policy::{Action, Endpoint, Groups, Rule, RuleProto},
    },
};
use compile::{Compiled, MAX_ENTRIES_PER_GEN, compile};

/// The rules and groups of a running datapath, from its maps.
#[derive(Default)]
pub struct Installed {
    pub rules: Vec<(u32, Rule, u8)>,
    pub groups: Groups,
    pub state: PolicyState,
    /// `NP_POLICY_INFO` as read (`rules` are the records that decode), so that a change
    /// writes only the records that differ and removes every other, without reading
    /// them again.
    pub(crate) infos: HashMap<u32, PolicyRuleInfo>,
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
    let mut infos = HashMap::new();
    let all: Vec<(u32, PolicyRuleInfo)> =
        crate::maps::batch::lookup_all(aya::maps::IterableMap::map(&maps.policy_info))?;
    for (id, info) in all {
        if let Some(r) = rule_from(&info) {
            rules.push((id, r, info.origin));
        }
        infos.insert(id, info);
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
        infos,
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
        fault::write()?;
        maps.policy_src
            .insert(&key, class, 0)
            .with_context(|| fail("source"))?;
    }
    for (class, net, pair) in &c.dst {
        let key = Key::new(
            POLICY_GEN_BITS + 32 + net.prefix_len() as u32,
            policy_dst_key(next, *class, addr_to_be(net.network().octets())),
        );
        fault::write()?;
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
        fault::write()?;
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
        changed_at: now(),
    };
    fault::write()?;
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

/// Packets and bytes of rule `id` (0: the default action), summed over CPUs.
pub fn rule_stats(maps: &Maps, id: u32) -> Result<Counter> {
    let per_cpu: PerCpuValues<Counter> = maps.policy_stats.get(&id, 0)?;
    Ok(sum(per_cpu.iter().copied()))
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

/// What a reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PolicyChanges {
    /// Whether a new policy was compiled and made live (false: it already was).
    pub applied: bool,
    /// Rules in the policy now.
    pub rules: usize,
    /// Entries of the live generation of the tries.
    pub entries: usize,
    /// Ids given to rules that had none.
    pub added: Vec<u32>,
    /// Ids of rules that went.
    pub removed: Vec<u32>,
}

/// Rules with their ids and origins, by id.
type Numbered = Vec<(u32, Rule, Origin)>;

/// The desired policy with ids: a rule keeps the id it asks for, else the id of the same
/// installed rule of the same origin, else the lowest free one. Sorted by id; with the ids
/// newly handed out.
fn with_ids(old: &Installed, d: &DesiredPolicy) -> Result<(Numbered, Vec<u32>)> {
    let mut used: BTreeSet<u32> = d.rules.iter().filter_map(|r| r.id).collect();
    let mut reuse: HashMap<(&Rule, u8), u32> = old
        .rules
        .iter()
        .filter(|(id, _, _)| !used.contains(id))
        .map(|(id, r, o)| ((r, *o), *id))
        .collect();
    let mut out = Vec::with_capacity(d.rules.len());
    let mut unassigned = Vec::new();
    for r in &d.rules {
        match r.id.or_else(|| reuse.remove(&(&r.rule, r.origin.to_map()))) {
            Some(id) => {
                used.insert(id);
                out.push((id, r.rule.clone(), r.origin));
            }
            None => unassigned.push(r),
        }
    }
    let mut fresh = Vec::new();
    let mut next = 1;
    for r in unassigned {
        let id = free_id_from(&used, &mut next)?;
        used.insert(id);
        fresh.push(id);
        out.push((id, r.rule.clone(), r.origin));
    }
    out.sort_by_key(|(id, _, _)| *id);
    Ok((out, fresh))
}

/// Makes the pinned policy say exactly `d` (rules valid, groups they name defined,
/// matches unique: sources/ checks that). On an error the live policy is unchanged.
pub fn reconcile(maps: &mut Maps, d: &DesiredPolicy) -> Result<PolicyChanges> {
    let old = installed(maps)?;
    reconcile_from(maps, &old, d)
}

/// [`reconcile`] with the installed policy already read (under the same lock).
pub(crate) fn reconcile_from(
    maps: &mut Maps,
    old: &Installed,
    d: &DesiredPolicy,
) -> Result<PolicyChanges> {
    let (target, fresh) = with_ids(old, d)?;
    let same = old.rules.len() == target.len()
        && old
            .rules
            .iter()
            .zip(&target)
            .all(|((i, r, o), (j, s, p))| i == j && r == s && *o == p.to_map())
        && old.groups == d.groups
        && old.state.rules as usize == target.len()
        && Action::from_map(old.state.default_action) == Some(d.default)
        && old.state.reject_rate == d.reject_rate
        && old.state.changed_at != 0;
    if same {
        return Ok(PolicyChanges {
            applied: false,
            rules: target.len(),
            entries: old.state.entries as usize,
            ..Default::default()
        });
    }
    let rules: Vec<(u32, Rule)> = target.iter().map(|(id, r, _)| (*id, r.clone())).collect();
    // Compile first: a policy that does not fit changes nothing.
    let compiled = compile(&rules, &d.groups, MAX_ENTRIES_PER_GEN)?;
    for id in &fresh {
        fault::write()?;
        maps.policy_stats.set(*id, zeroed_per_cpu()?, 0)?;
    }
    apply(
        maps,
        &Target {
            compiled: &compiled,
            rules: rules.len(),
            default: d.default,
            reject_rate: d.reject_rate,
        },
    )?;
    // Live. Now what reports and the next reconcile read.
    let mut undo = Undo::default();
    let wanted: HashSet<u32> = target.iter().map(|(id, _, _)| *id).collect();
    let result = (|| -> Result<Vec<u32>> {
        let have = &old.infos;
        for (id, r, origin) in &target {
            let info = rule_info(r, origin.to_map());
            if have.get(id) != Some(&info) {
                fault::write()?;
                undo.policy_info(*id, have.get(id).copied());
                maps.policy_info.insert(id, info, 0)?;
            }
        }
        sync_groups(maps, &mut undo, &d.groups)?;
        let mut removed = Vec::new();
        for (id, info) in have {
            if !wanted.contains(id) {
                fault::write()?;
                undo.policy_info(*id, Some(*info));
                maps.policy_info.remove(id)?;
                removed.push(*id);
            }
        }
        removed.sort();
        Ok(removed)
    })();
    match result {
        Ok(removed) => Ok(PolicyChanges {
            applied: true,
            rules: target.len(),
            entries: compiled.entries(),
            added: fresh,
            removed,
        }),
        Err(e) => {
            // The new policy is live but its records are not: put the records back. They
            // then differ from the desired policy, so the next reconcile applies it again.
            undo.run(maps);
            Err(e.context("recording the policy's rules (the next agent start applies it again)"))
        }
    }
}

fn sync_groups(maps: &mut Maps, undo: &mut Undo, groups: &Groups) -> Result<()> {
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
    let have: HashSet<GroupMember> = maps.groups.keys().filter_map(|k| k.ok()).collect();
    for m in want.difference(&have) {
        fault::write()?;
        undo.group(*m, None);
        maps.groups.insert(m, ORIGIN_CONFIG, 0)?;
    }
    for m in have.difference(&want) {
        fault::write()?;
        undo.group(*m, Some(ORIGIN_CONFIG));
        maps.groups.remove(m)?;
    }
    Ok(())
}

/// The desired policy that leaves the installed one as it is but for `add` (a new rule of
/// `policy add`, its id left to the reconciler) or `remove` (an id, `policy del`).
pub fn with_change(old: &Installed, add: Option<Rule>, remove: Option<u32>) -> DesiredPolicy {
    let mut rules: Vec<DesiredRule> = old
        .rules
        .iter()
        .filter(|(id, _, _)| Some(*id) != remove)
        .map(|(id, r, o)| DesiredRule {
            rule: r.clone(),
            origin: Origin::from_map(*o),
            id: Some(*id),
        })
        .collect();
    rules.extend(add.map(|rule| DesiredRule {
        rule,
        origin: Origin::Cli,
        id: None,
    }));
    DesiredPolicy {
        groups: old.groups.clone(),
        rules,
        default: Action::from_map(old.state.default_action).unwrap_or(Action::Allow),
        reject_rate: old.state.reject_rate,
    }
}

/// `netpath policy add`: adds `r` (origin `cli`, parsed with the groups of `old`, what
/// [`installed`] read under the same lock); returns its id. A rule that matches the same
/// packets as another is refused.
pub fn add(maps: &mut Maps, old: &Installed, r: &Rule) -> Result<u32> {
    if let Some((id, other, _)) = old.rules.iter().find(|(_, o, _)| o.same_match(r)) {
        anyhow::bail!(
            "rule {id} already matches the same packets ({other}): remove it first with `netpath policy del {id}`"
        );
    }
    let changes = reconcile_from(maps, old, &with_change(old, Some(r.clone()), None))?;
    changes
        .added
        .first()
        .copied()
        .context("the new rule got no id")
}

/// `netpath policy del`: removes rule `id`. Flows it allowed go on until they end.
pub fn del(maps: &mut Maps, id: u32) -> Result<Rule> {
    let old = installed(maps)?;
    let Some((_, rule, origin)) = old.rules.iter().find(|(i, _, _)| *i == id) else {
        let ids: Vec<String> = old.rules.iter().map(|(i, _, _)| i.to_string()).collect();
        anyhow::bail!(
            "no policy rule {id}; rules: {} (see `netpath policy list`)",
            crate::state::listed(&ids)
        );
    };
    if Origin::from_map(*origin) == Origin::Config {
        log::warn!("rule {id} comes from the config: the next agent start will add it again");
    }
    reconcile_from(maps, &old, &with_change(&old, None, Some(id)))?;
    Ok(rule.clone())
}
