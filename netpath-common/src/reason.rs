//! Why a program did what it did with a packet. Every program outcome is counted under
//! exactly one reason, in the per-CPU `NP_COUNTERS` array indexed by the reason's value.
//! The CLI prints [`Reason::name`], so kernel and user side can never disagree.

/// What happened to the packet, for grouping in stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Sent on by netpath (redirected).
    Forward,
    /// Left to the host's own stack, unchanged.
    Pass,
    /// Dropped by netpath.
    Drop,
}

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident = $value:literal, $name:literal, $verdict:ident; )*) => {
        /// The outcome of one program run. Values are indexes into `NP_COUNTERS`:
        /// never reuse or renumber one (append, and stay below `MAX_REASONS`).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $( $(#[doc = $doc])* $variant = $value, )*
        }

        impl Reason {
            /// Every reason, in value order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )* ];

            /// Stable, kebab-case name used by the CLI, JSON output and metrics labels.
            pub const fn name(self) -> &'static str {
                match self { $( Reason::$variant => $name, )* }
            }

            /// Whether this outcome forwards, passes or drops.
            pub const fn verdict(self) -> Verdict {
                match self { $( Reason::$variant => Verdict::$verdict, )* }
            }

            /// One sentence for operators.
            pub const fn description(self) -> &'static str {
                match self { $( Reason::$variant => concat!($($doc),*), )* }
            }

            pub const fn from_u32(v: u32) -> Option<Reason> {
                match v { $( $value => Some(Reason::$variant), )* _ => None }
            }
        }
    };
}

reasons! {
    /// Routed to a peer host's container subnet, unencapsulated (direct mode).
    FwdDirect = 0, "fwd-direct", Forward;
    /// Received from a peer and delivered to a local container.
    FwdDeliver = 1, "fwd-deliver", Forward;
    /// Not IPv4 (ARP, IPv6, ...): left to the host stack.
    PassNotIpv4 = 2, "pass-not-ipv4", Pass;
    /// From a container to this host or its own subnet: left to the host stack.
    PassLocal = 3, "pass-local", Pass;
    /// Destination is neither local nor a known peer subnet: left to the host stack.
    PassUnknownDst = 4, "pass-unknown-dst", Pass;
    /// TTL would expire here: left to the host stack, unchanged.
    PassTtlExpired = 5, "pass-ttl-expired", Pass;
    /// On the uplink, not for the local container subnet: left to the host stack.
    PassNotForUs = 6, "pass-not-for-us", Pass;
    /// No longer counted: traffic for a container from anywhere but a direct peer is now `drop-not-published`.
    PassUnknownSrc = 7, "pass-unknown-src", Pass;
    /// The agent has not written the config yet: left to the host stack.
    PassNoConfig = 8, "pass-no-config", Pass;
    /// Peer uses a mode this program does not handle yet: left to the host stack.
    PassUnsupportedMode = 9, "pass-unsupported-mode", Pass;
    /// Truncated Ethernet frame or malformed IPv4 header: dropped.
    DropMalformed = 10, "drop-malformed", Drop;
    /// Routed to a vxlan peer: encapsulated in VXLAN to its underlay address.
    FwdVxlanEncap = 11, "fwd-vxlan-encap", Forward;
    /// Received in VXLAN from a vxlan peer, decapsulated and delivered to a local container.
    FwdVxlanDecap = 12, "fwd-vxlan-decap", Forward;
    /// VXLAN to our port with another VNI, or without the I flag: dropped.
    DropVxlanWrongVni = 13, "drop-vxlan-wrong-vni", Drop;
    /// VXLAN from an underlay address that is not a vxlan peer: dropped.
    DropVxlanUnknownPeer = 14, "drop-vxlan-unknown-peer", Drop;
    /// VXLAN whose inner source is not in the sending peer's subnet (spoofed): dropped.
    DropVxlanSpoofedSrc = 15, "drop-vxlan-spoofed-src", Drop;
    /// VXLAN whose inner destination is not a local container: dropped.
    DropVxlanBadInnerDst = 16, "drop-vxlan-bad-inner-dst", Drop;
    /// VXLAN too short for its headers, with outer IP options, or with a non-IPv4 inner frame: dropped.
    DropVxlanMalformed = 17, "drop-vxlan-malformed", Drop;
    /// The kernel refused to grow or shrink the packet for the tunnel: dropped.
    DropAdjustFailed = 18, "drop-adjust-failed", Drop;
    /// Too big for the tunnel: dropped and answered with ICMP fragmentation-needed carrying the tunnel MTU, so the sender fragments or shrinks what follows.
    DropFragNeeded = 19, "drop-frag-needed", Drop;
    /// Decapsulated in XDP, then delivered to a local container by TC.
    FwdVxlanDecapXdp = 20, "fwd-vxlan-decap-xdp", Forward;
    /// From a container to the outside: source translated to the host's address and a port (masquerade), sent out of the uplink.
    FwdMasquerade = 21, "fwd-masquerade", Forward;
    /// A reply to a masqueraded flow: translated back and delivered to its container.
    FwdMasqueradeReply = 22, "fwd-masquerade-reply", Forward;
    /// To a published port of the host: translated to its container and delivered.
    FwdPublished = 23, "fwd-published", Forward;
    /// A container's reply on a published port: translated back to the host's address and port, sent out.
    FwdPublishedReply = 24, "fwd-published-reply", Forward;
    /// An ICMP error about a translated flow (port unreachable, fragmentation needed, TTL exceeded): translated, quoted header included, and delivered to its container.
    FwdNatIcmpError = 25, "fwd-nat-icmp-error", Forward;
    /// Masquerade found no free port in the range for this destination: dropped; no existing flow is touched.
    DropNatNoPort = 26, "drop-nat-no-port", Drop;
    /// The conntrack or NAT table refused a new entry: dropped.
    DropCtInsertFailed = 27, "drop-ct-insert-failed", Drop;
    /// To the outside with masquerade on, but not TCP, UDP or ICMP echo, or a fragment: left to the host stack.
    PassNatUnsupported = 28, "pass-nat-unsupported", Pass;
    /// On the uplink, for a container but neither from a direct peer nor through a published port: dropped (as Docker 28's raw-table rules do).
    DropNotPublished = 29, "drop-not-published", Drop;
    /// Between two containers of this host (allowed by policy when there is one): delivered straight into the destination container.
    FwdSameHost = 30, "fwd-same-host", Forward;
    /// A new flow that a deny rule matches: dropped silently.
    DropPolicyDeny = 31, "drop-policy-deny", Drop;
    /// A new flow that a reject rule matches: dropped and answered (TCP RST, or ICMP administratively prohibited).
    DropPolicyReject = 32, "drop-policy-reject", Drop;
    /// A new flow that no rule matches, with the default action deny: dropped silently.
    DropDefaultDeny = 33, "drop-default-deny", Drop;
    /// A new flow that no rule matches, with the default action reject: dropped and answered.
    DropDefaultReject = 34, "drop-default-reject", Drop;
    /// Rejected but not answered: an ICMP error or a fragment (never answered), or over the reject rate limit: dropped.
    DropRejectUnanswered = 35, "drop-reject-unanswered", Drop;
    /// For a local container whose endpoint (veth, MAC) netpath has not learned yet: delivered through the bridge instead of straight into the container.
    FwdViaBridge = 36, "fwd-via-bridge", Forward;
    /// From the bridge for a peer's subnet with a source that is not of this host's containers (a container sending with another address): not forwarded, so that no peer gets forged traffic from this host.
    DropForeignSrc = 37, "drop-foreign-src", Drop;
    /// Between containers of two different networks of this host (neither is on the other's network): dropped, as Docker's isolation chains do. A container on both networks reaches each through its address there.
    DropNetworkIsolated = 38, "drop-network-isolated", Drop;
    /// To or from a container of an internal network (`docker network create --internal`) across the host's edge (peers, the outside, published ports): dropped.
    DropNetworkInternal = 39, "drop-network-internal", Drop;
    /// From a container of a network outside this host's subnet to a peer: not forwarded, since no peer routes that network back (give the network a subnet inside the host's).
    DropOutsideRange = 40, "drop-outside-range", Drop;
    /// A container's ARP request for a container of its network (a network across hosts) that lives on another host: answered with the bridge's MAC, so that the container sends to it as on one LAN and netpath routes it to that host.
    FwdArpAnswered = 41, "fwd-arp-answered", Forward;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_dense_unique_and_fit_the_counters_map() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{} out of order", r.name());
            assert!((*r as u32) < crate::MAX_REASONS);
            assert_eq!(Reason::from_u32(*r as u32), Some(*r));
            assert!(!r.description().is_empty());
        }
        assert_eq!(Reason::from_u32(crate::MAX_REASONS), None);
    }

    #[test]
    fn names_are_unique_and_kebab_case() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            assert!(
                a.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
