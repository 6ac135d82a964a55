//! Crafted frames for BPF_PROG_TEST_RUN, and checks on what comes out.

pub const ETH_LEN: usize = 14;

/// Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the IPv4 header of `frame` has a valid checksum.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = (frame[ETH_LEN] & 0x0f) as usize * 4;
    checksum(&frame[ETH_LEN..ETH_LEN + ihl]) == 0
}

/// Whether the L4 checksum of `frame` (TCP, UDP or ICMP, whole datagram in the frame)
/// is valid; a UDP checksum of 0 (none) counts as valid.
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = (frame[ETH_LEN] & 0x0f) as usize * 4;
    let ip = &frame[ETH_LEN..];
    // A total length of 0 (BIG TCP) is the whole frame; one that does not fit is wrong.
    let tot = match u16::from_be_bytes([ip[2], ip[3]]) as usize {
        0 => ip.len(),
        t => t,
    };
    let Some(l4) = ip.get(ihl..tot) else {
        return false;
    };
    match ip[9] {
        17 if l4.get(6..8) == Some(&[0, 0]) => true,
        6 | 17 => {
            checksum(&pseudo(
                ip[12..16].try_into().unwrap(),
                ip[16..20].try_into().unwrap(),
                ip[9],
                l4,
            )) == 0
        }
        _ => checksum(l4) == 0,
    }
}

/// The pseudo header and `l4`, for TCP and UDP checksums.
fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(src);
    v.extend(dst);
    v.extend([0, proto]);
    v.extend((l4.len() as u16).to_be_bytes());
    v.extend(l4);
    v
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub proto: u8,
    pub payload: Vec<u8>,
    /// Compute the L4 checksum in `build` (TCP, UDP, ICMP); else keep the payload's.
    pub l4_csum: bool,
}

impl Frame {
    /// An ICMP echo request (payload: 8-byte ICMP header + 32 bytes) from `src` to `dst`.
    pub fn icmp(src: [u8; 4], dst: [u8; 4]) -> Frame {
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        icmp.extend((0..32u8).collect::<Vec<_>>());
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        Frame {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            ttl: 64,
            proto: 1,
            payload: icmp,
            l4_csum: true,
        }
    }

    /// A TCP segment with `flags` (0x02 SYN, 0x12 SYN-ACK, ...) and 8 bytes of data.
    pub fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Frame {
        let mut tcp = Vec::new();
        tcp.extend(sport.to_be_bytes());
        tcp.extend(dport.to_be_bytes());
        tcp.extend(1000u32.to_be_bytes());
        tcp.extend(0u32.to_be_bytes());
        tcp.extend([0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
        tcp.extend(b"netpath!");
        Frame {
            proto: 6,
            payload: tcp,
            ..Frame::icmp(src, dst)
        }
    }

    /// A UDP datagram with `data`; `checksum` false sends it without one (0).
    pub fn udp(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        data: &[u8],
        checksum: bool,
    ) -> Frame {
        let mut udp = Vec::new();
        udp.extend(sport.to_be_bytes());
        udp.extend(dport.to_be_bytes());
        udp.extend(((8 + data.len()) as u16).to_be_bytes());
        udp.extend([0, 0]);
        udp.extend(data);
        Frame {
            proto: 17,
            payload: udp,
            l4_csum: checksum,
            ..Frame::icmp(src, dst)
        }
    }

    /// An ICMP echo reply (type 0) matching [`Frame::icmp`].
    pub fn echo_reply(src: [u8; 4], dst: [u8; 4]) -> Frame {
        let mut f = Frame::icmp(src, dst);
        f.payload[0] = 0;
        f
    }

    /// Source and destination ports (the echo identifier, for ICMP: `dport` is ignored).
    pub fn ports(mut self, sport: u16, dport: u16) -> Frame {
        if self.proto == 1 {
            self.payload[4..6].copy_from_slice(&sport.to_be_bytes());
        } else {
            self.payload[0..2].copy_from_slice(&sport.to_be_bytes());
            self.payload[2..4].copy_from_slice(&dport.to_be_bytes());
        }
        self
    }

    pub fn addrs(mut self, src: [u8; 4], dst: [u8; 4]) -> Frame {
        self.src = src;
        self.dst = dst;
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Frame {
        self.ttl = ttl;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        f.extend([0x08, 0x00]);
        let tot = (20 + self.payload.len()) as u16;
        let mut ip = vec![
            0x45, 0, 0, 0, 0xab, 0xcd, 0x40, 0, self.ttl, self.proto, 0, 0,
        ];
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip.extend(self.src);
        ip.extend(self.dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend(ip);
        let mut l4 = self.payload.clone();
        if self.l4_csum {
            let at = match self.proto {
                6 => 16,
                17 => 6,
                _ => 2,
            };
            l4[at..at + 2].copy_from_slice(&[0, 0]);
            let c = match self.proto {
                6 | 17 => checksum(&pseudo(self.src, self.dst, self.proto, &l4)),
                _ => checksum(&l4),
            };
            // UDP sends a computed 0 as 0xffff (0 means "no checksum").
            let c = if self.proto == 17 && c == 0 {
                0xffff
            } else {
                c
            };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        f.extend(l4);
        f
    }
}

/// `inner` (an Ethernet frame) wrapped the way a VXLAN peer at `outer_src` (or Linux's
/// vxlan device) sends it to `outer_dst`: VXLAN `flags` and `vni`, UDP to port 4789
/// without a checksum, inner MACs the two hosts' default VTEP MACs.
pub fn vxlan(outer_src: [u8; 4], outer_dst: [u8; 4], vni: u32, flags: u8, inner: &[u8]) -> Vec<u8> {
    let mut udp_payload = vec![flags, 0, 0, 0];
    udp_payload.extend(&vni.to_be_bytes()[1..]);
    udp_payload.push(0);
    udp_payload.extend(netpath_common::default_vtep_mac(outer_dst));
    udp_payload.extend(netpath_common::default_vtep_mac(outer_src));
    udp_payload.extend(&inner[12..]);
    let mut udp = vec![0xc0, 0x01, 0x12, 0xb5];
    udp.extend(((8 + udp_payload.len()) as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(udp_payload);
    let mut f = Frame::icmp(outer_src, outer_dst);
    f.proto = 17;
    f.payload = udp;
    f.build()
}
