//! Interface facts (ifindex, IPv4 addresses) of the current network namespace.

use ipnet::Ipv4Net;

/// What config validation needs to know about interfaces; faked in unit tests.
pub trait Interfaces {
    fn ifindex(&self, name: &str) -> std::io::Result<u32>;
    fn ipv4_addrs(&self, name: &str) -> Vec<Ipv4Net>;
    /// The interface's MTU; 1500 when it cannot be read.
    fn mtu(&self, name: &str) -> u32;
    /// The interface's MAC address, if it has one.
    fn mac(&self, name: &str) -> Option<[u8; 6]>;
}

/// The real interfaces of the calling thread's network namespace.
pub struct System;

impl Interfaces for System {
    fn mtu(&self, name: &str) -> u32 {
        // SIOCGIFMTU on a socket of the calling thread's network namespace (sysfs would
        // show the mount namespace's, which nsenter --net does not change).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *d = s as libc::c_char;
        }
        // SAFETY: plain socket and ioctl calls with a valid ifreq; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                return 1500;
            }
            let r = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req);
            libc::close(fd);
            if r < 0 {
                1500
            } else {
                req.ifr_ifru.ifru_mtu as u32
            }
        }
    }

    fn ifindex(&self, name: &str) -> std::io::Result<u32> {
        nix::net::if_::if_nametoindex(name).map_err(std::io::Error::from)
    }

    fn mac(&self, name: &str) -> Option<[u8; 6]> {
        nix::ifaddrs::getifaddrs()
            .ok()?
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address?.as_link_addr()?.addr())
    }

    fn ipv4_addrs(&self, name: &str) -> Vec<Ipv4Net> {
        self.try_ipv4_addrs(name).unwrap_or_default()
    }
}

impl System {
    /// The interface's IPv4 addresses; an error when they could not be read (not the same
    /// as having none: the agent must not take a failed read for a removed address).
    pub fn try_ipv4_addrs(&self, name: &str) -> nix::Result<Vec<Ipv4Net>> {
        Ok(nix::ifaddrs::getifaddrs()?
            .filter(|a| a.interface_name == name)
            .filter_map(|a| {
                let addr = a.address?.as_sockaddr_in()?.ip();
                let mask = a.netmask?.as_sockaddr_in()?.ip();
                let prefix = u32::from(mask).leading_ones() as u8;
                Ipv4Net::new(addr, prefix).ok()
            })
            .collect())
    }
}

/// Name of the interface with `ifindex`, if it exists.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
pub mod fake {
    use super::*;

    /// Interfaces by name: ifindex and addresses; every MTU is `.1` (1500 by default).
    pub struct Fake(Vec<(String, u32, Vec<Ipv4Net>)>, pub u32);

    impl Default for Fake {
        fn default() -> Fake {
            Fake(Vec::new(), 1500)
        }
    }

    impl Fake {
        pub fn new() -> Fake {
            Fake::default()
        }

        pub fn with(mut self, name: &str, ifindex: u32, addrs: &[&str]) -> Fake {
            self.0.push((
                name.into(),
                ifindex,
                addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ));
            self
        }
    }

    impl Interfaces for Fake {
        fn mtu(&self, _name: &str) -> u32 {
            self.1
        }

        fn mac(&self, name: &str) -> Option<[u8; 6]> {
            self.ifindex(name).ok().map(|i| [2, 0, 0, 0, 0, i as u8])
        }

        fn ifindex(&self, name: &str) -> std::io::Result<u32> {
            self.0
                .iter()
                .find(|i| i.0 == name)
                .map(|i| i.1)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }

        fn ipv4_addrs(&self, name: &str) -> Vec<Ipv4Net> {
            self.0
                .iter()
                .find(|i| i.0 == name)
                .map(|i| i.2.clone())
                .unwrap_or_default()
        }
    }
}
