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

pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub proto: u8,
    pub payload: Vec<u8>,
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
        }
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
        f.extend(&self.payload);
        f
    }
}
