//! Policy: allow, deny or reject new flows between address groups, at a cost that does
//! not depend on the number of rules.
//!
//! The agent compiles the rules (netpath/src/policy.rs) into three LPM tries, so that a
//! verdict is three lookups whatever the count:
//! 1. `POLICY_SRC`: source address -> source class (the longest `from` prefix holding it);
//! 2. `POLICY_DST`: (source class, destination address) -> pair class;
//! 3. `POLICY_RULES`: (pair class, protocol, destination port) -> the rule that decides,
//!    precedence already applied by the compiler.
//!
//! A miss at any step means no rule matches: the default action. Every key starts with the
//! generation byte of `POLICY_STATE`, read once per packet: the agent writes a new policy
//! into the other generation and flips it, so no packet sees half a change.
//!
//! Stateful: the verdict is taken on a flow's first packet. An allowed flow is recorded
//! in `CT` (kind `CT_KIND_POLICY`, or the NAT entry of a translated flow), so its later
//! packets and its replies pass without a lookup, whatever the rules for the reverse
//! direction say. ICMP errors about a recorded flow pass with it. Denied packets are not
//! recorded: each is looked up and dropped.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_coarse_ns, bpf_skb_change_tail},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netpath_common::{
    ACTION_DENY, ACTION_REJECT, CT_F_SEEN_CONTAINER, CT_F_SEEN_REMOTE, CT_KIND_POLICY, CtEntry,
    CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, POLICY_GEN_BITS, PolicyState, Reason,
    policy_dst_key, policy_rule_key, policy_src_key,
};

use crate::{
    counters, ct,
    maps::{CT, POLICY_DST, POLICY_RULES, POLICY_SRC, POLICY_STATE, REJECT_LIMIT},
    parse::{self, ETH_LEN, Ipv4, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The live policy state, `None` while policy is off (no rule, default allow): then the
/// programs skip every policy step and record nothing.
#[inline(always)]
pub fn live() -> Option<&'static PolicyState> {
    match POLICY_STATE.get(0) {
        Some(s) if s.enabled != 0 => Some(s),
        _ => None,
    }
}

/// The rule deciding a packet from `src` to `dst` (network byte order) with protocol
/// `proto` and destination port `port` (network byte order; 0 where there is none), in
/// generation `generation`: `(rule << 8) | action`, or 0 when no rule matches. Three LPM lookups.
#[inline(never)]
fn lookup(generation: u32, src: u32, dst: u32, proto: u32, port: u32) -> u64 {
    let generation = generation as u8;
    let Some(class) = POLICY_SRC.get(Key::new(
        POLICY_GEN_BITS + 32,
        policy_src_key(generation, src),
    )) else {
        return 0;
    };
    let key = policy_dst_key(generation, *class, dst);
    let Some(pair) = POLICY_DST.get(Key::new(POLICY_GEN_BITS + 64, key)) else {
        return 0;
    };
    let key = policy_rule_key(generation, *pair, proto as u8, port as u16);
    match POLICY_RULES.get(Key::new(POLICY_GEN_BITS + 56, key)) {
        Some(v) => ((v.rule as u64) << 8) | v.action as u64,
        None => 0,
    }
}

/// What policy says about a packet that starts no recorded flow.
pub enum Decision {
    /// Allowed by `rule` (0: the default action).
    Allow(u32),
    /// Dropped for this reason (counted under its rule already). With `answer`, the
    /// caller turns the packet into the answer ([`answer`]) and sends it back.
    Refuse(Reason, bool),
}

/// Decides a packet from `src` to `dst` (`l4` its L4 part) that matches no recorded flow, and counts it under the
/// deciding rule. An ICMP error about a recorded flow passes with that flow; an ICMP error
/// or a fragment is never answered; a rejected packet is answered only within the rate
/// limit.
#[inline(always)]
pub fn decide(ctx: &TcContext, st: &PolicyState, src: u32, dst: u32, l4: &L4) -> Decision {
    let bytes = ctx.len();
    if l4.is_icmp_error()
        && let Some(rule) = related(ctx, l4)
    {
        counters::count_rule(rule, bytes);
        return Decision::Allow(rule);
    }
    let port = match l4.proto {
        IPPROTO_TCP | IPPROTO_UDP => l4.dport,
        _ => 0,
    };
    let found = lookup(st.generation as u32, src, dst, l4.proto as u32, port as u32);
    let (rule, action) = if found == 0 {
        (0, st.default_action)
    } else {
        ((found >> 8) as u32, found as u8)
    };
    counters::count_rule(rule, bytes);
    let by_rule = rule != 0;
    match action {
        ACTION_DENY => Decision::Refuse(
            if by_rule {
                Reason::DropPolicyDeny
            } else {
                Reason::DropDefaultDeny
            },
            false,
        ),
        ACTION_REJECT => {
            // Never answer an error with an error (RFC 1122 3.2.2), a RST with a RST, or
            // a fragment (its first part was answered, or will be).
            let answerable = !l4.fragment
                && !l4.is_icmp_error()
                && (l4.proto != IPPROTO_TCP || l4.tcp_flags & TCP_RST == 0);
            if !answerable || !within_rate(st) {
                return Decision::Refuse(Reason::DropRejectUnanswered, false);
            }
            Decision::Refuse(
                if by_rule {
                    Reason::DropPolicyReject
                } else {
                    Reason::DropDefaultReject
                },
                true,
            )
        }
        // ACTION_ALLOW, and 0 (a state written before any default): allow.
        _ => Decision::Allow(rule),
    }
}

/// The rule of the recorded flow that the ICMP error `l4` quotes, if any. The quote is a
/// packet of the flow going the other way; the `CT` key does not depend on the direction
/// once the local end is known, and either quoted end may be local.
#[inline(always)]
fn related(ctx: &TcContext, l4: &L4) -> Option<u32> {
    let inner = l4.off + 8;
    let h: [u8; 20] = ctx.load(inner).ok()?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let proto = h[9];
    let src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let p: [u8; 4] = ctx.load(inner + ihl).ok()?;
            (
                u16::from_ne_bytes([p[0], p[1]]),
                u16::from_ne_bytes([p[2], p[3]]),
            )
        }
        IPPROTO_ICMP => {
            let id: u16 = ctx.load(inner + ihl + 4).ok()?;
            (id, id)
        }
        _ => return None,
    };
    // The quoted packet went from src to dst: either end may be the container.
    let a = ct::ct_key(src, dst, sport, dport, proto);
    let b = ct::ct_key(dst, src, dport, sport, proto);
    // SAFETY: read once; a concurrent update yields another valid value.
    let e = unsafe { CT.get(a).or_else(|| CT.get(b)) }?;
    Some(e.rule)
}

/// Records an allowed flow (`key`, its local end first) so its later packets and replies
/// pass. Only what the programs look flows up for is recorded (ct::trackable: no
/// fragment, no ICMP error); the rest is decided packet by packet. Another CPU recording
/// the same flow first is no error.
#[inline(always)]
pub fn track(key: &CtKey, l4: &L4, rule: u32, from_container: bool) -> Result<(), Reason> {
    if !ct::trackable(l4) {
        return Ok(());
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        nat_port: 0,
        kind: CT_KIND_POLICY,
        flags: if from_container {
            CT_F_SEEN_CONTAINER
        } else {
            CT_F_SEEN_REMOTE
        },
        rule,
        #[cfg(feature = "layout-test")]
        layout_test: 0,
    };
    match CT.insert(key, entry, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(-17) => Ok(()),
        Err(_) => Err(Reason::DropCtInsertFailed),
    }
}

/// Whether this CPU may send one more reject answer this second.
#[inline(always)]
fn within_rate(st: &PolicyState) -> bool {
    let Some(l) = REJECT_LIMIT.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: helper without arguments; per-CPU value, no other writer on this CPU.
    unsafe {
        let now = bpf_ktime_get_coarse_ns();
        if now.wrapping_sub((*l).window_ns) >= 1_000_000_000 {
            (*l).window_ns = now;
            (*l).sent = 0;
        }
        if (*l).sent >= st.reject_rate {
            return false;
        }
        (*l).sent += 1;
    }
    true
}

/// ICMP destination unreachable, code 13: communication administratively prohibited
/// (RFC 1812 5.2.7.1), what a filtering router answers.
const ICMP_ADMIN_PROHIBITED: u8 = 13;

/// Turns the refused packet (`ip`, `l4`, not yet changed) into its answer, in place, with
/// the MACs swapped: a TCP RST (RFC 793 "Reset Generation") for TCP, else an ICMP
/// administratively prohibited quoting the packet's header and 8 bytes. The answer comes
/// from the packet's destination, as if that end refused it. The caller sends it back the
/// way the packet came. On error the packet is half-rewritten and must be dropped.
#[inline(always)]
pub fn answer(ctx: &TcContext, ip: &Ipv4, l4: &L4) -> Result<(), Reason> {
    if l4.proto == IPPROTO_TCP {
        rst(ctx, ip, l4)
    } else {
        crate::icmp::error(
            ctx,
            ip,
            ip.dst,
            parse::ICMP_DEST_UNREACH,
            ICMP_ADMIN_PROHIBITED,
            0,
        )
        .map_err(|_| Reason::DropRejectUnanswered)
    }
}

/// The RST for a TCP segment: if it had an ACK, `<SEQ=SEG.ACK><CTL=RST>`, else
/// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>` (SYN and FIN count in SEG.LEN).
#[inline(always)]
fn rst(ctx: &TcContext, ip: &Ipv4, l4: &L4) -> Result<(), Reason> {
    let fail = |_| Reason::DropRejectUnanswered;
    let tcp: [u8; 14] = ctx.load(l4.off).map_err(fail)?;
    let macs: [u8; 12] = ctx.load(0).map_err(fail)?;
    let doff = ((tcp[12] >> 4) as u32) * 4;
    let tot = u16::from_be_bytes(ip.hdr.tot_len) as u32;
    let payload = tot.saturating_sub(ip.hlen() as u32 + doff);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let flags = l4.tcp_flags;
    let (out_seq, out_ack, out_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let len = payload + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        (0, seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    let (src, dst) = (ip.dst, ip.src);

    // The kernel refuses to resize a packet that arrived in a tunnel (a BPF decap leaves
    // it marked encapsulated, with checksum offsets that no longer fit once resized): such
    // a packet is dropped unanswered.
    // SAFETY: helper on the program's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_LEN + 40) as u32, 0) } != 0 {
        return Err(Reason::DropRejectUnanswered);
    }
    let mut h = [0u8; 40];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&40u16.to_be_bytes());
    h[6] = 0x40; // DF, as Linux sends its resets
    h[8] = 64;
    h[9] = IPPROTO_TCP;
    h[12..16].copy_from_slice(&src.to_ne_bytes());
    h[16..20].copy_from_slice(&dst.to_ne_bytes());
    let mut iph = [0u8; 20];
    iph.copy_from_slice(&h[..20]);
    let c = parse::ipv4_checksum(&iph);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    // TCP: ports swapped, data offset 5, window 0.
    h[20..22].copy_from_slice(&tcp[2..4]);
    h[22..24].copy_from_slice(&tcp[0..2]);
    h[24..28].copy_from_slice(&out_seq.to_be_bytes());
    h[28..32].copy_from_slice(&out_ack.to_be_bytes());
    h[32] = 5 << 4;
    h[33] = out_flags;
    // Checksum over the pseudo header (addresses, protocol, TCP length) and the header.
    let mut sum: u64 = IPPROTO_TCP as u64 + 20;
    let mut i = 12;
    while i < 40 {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u64;
        i += 2;
    }
    h[36..38].copy_from_slice(&(!parse::fold(sum)).to_be_bytes());
    ctx.store(ETH_LEN, &h, 0).map_err(fail)?;
    parse::swap_macs(ctx, &macs).map_err(fail)
}
