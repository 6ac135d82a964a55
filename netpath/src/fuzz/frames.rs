//! The seeded generator: frames of every kind a host sees, then mutated (see the parent's
//! doc). The same seed gives the same frames.

use super::*;

/// Frames from a seed.
pub(super) struct Gen {
    pub(super) rng: ChaCha8Rng,
    /// Masqueraded flows seen leaving: (remote, remote port, port on the host, protocol).
    pub(super) masq: Vec<([u8; 4], u16, u16, u8)>,
}

impl Gen {
    pub(super) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.random_range(0..from.len())]
    }

    /// One of the masqueraded flows seen (there is one: callers check).
    pub(super) fn masq_flow(&mut self) -> ([u8; 4], u16, u16, u8) {
        self.masq[self.rng.random_range(0..self.masq.len())]
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.random()).collect()
    }

    pub(super) fn port(&mut self) -> u16 {
        if self.chance(0.7) {
            self.pick(&PORTS)
        } else {
            self.rng.random()
        }
    }

    pub(super) fn addr(&mut self) -> [u8; 4] {
        if self.chance(0.4) {
            self.pick(&LOCAL)
        } else {
            self.pick(&REMOTE)
        }
    }

    /// An IPv4 frame from `src` to `dst` of a random protocol.
    pub(super) fn ip(&mut self, src: [u8; 4], dst: [u8; 4]) -> Frame {
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
    pub(super) fn icmp(&mut self, src: [u8; 4], dst: [u8; 4]) -> Frame {
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
    pub(super) fn bridge_frame(&mut self) -> Vec<u8> {
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
    pub(super) fn uplink_frame(&mut self) -> Vec<u8> {
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
    pub(super) fn vxlan(&mut self) -> Vec<u8> {
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
    pub(super) fn mutate(&mut self, f: &mut Vec<u8>) {
        if self.chance(0.5) {
            return;
        }
        for _ in 0..self.rng.random_range(1..=3) {
            self.mutate_once(f);
        }
    }

    pub(super) fn mutate_once(&mut self, f: &mut Vec<u8>) {
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
