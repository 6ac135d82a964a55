//! The invariants every frame must keep, and the tables' (see the parent's doc): what a
//! frame is, what a program may do with it, what conntrack and NAT may hold.

use super::*;

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
pub(super) fn ipv4(f: &[u8]) -> Option<(usize, usize)> {
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

pub(super) fn is_fragment(f: &[u8]) -> bool {
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
    pub(super) fn peer_subnet(&self, underlay: [u8; 4]) -> Option<Ipv4Net> {
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
pub(super) fn out_vxlan_dst(f: &[u8]) -> Option<[u8; 4]> {
    let (ihl, tot) = ipv4(f)?;
    let ip = &f[ETH_LEN..];
    (ip[9] == 17 && tot >= ihl + 16 && u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]) == VXLAN_PORT)
        .then(|| ip[16..20].try_into().expect("4 bytes"))
}

/// A frame that leaves: parses; IPv4 checksum right when the input's was (always for
/// netpath's own answers); L4 checksum right when the input's was; VXLAN only to a
/// peer, with netpath's outer header right and the inner frame held to the same.
pub(super) fn check_frame(
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

/// The conntrack and NAT tables hold only TCP, UDP and ICMP flows of local containers,
/// and no more new entries than `trackable` frames could make (each makes at most one
/// of each). `seen_*`: the keys of the previous check.
pub(super) fn check_tables(
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
