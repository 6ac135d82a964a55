//! The host settings reconciler: `NP_CONFIG` (addresses, subnet, VNI, tunnel MTU,
//! masquerade), `NP_MONITOR` (the drop event rate) and the timeouts in `NP_CT_INFO`. Each
//! is one array slot written in one go: the programs see the old value or the new one.

use anyhow::Result;
use netpath_common::{CONFIG_F_MASQUERADE, CONFIG_F_READY, CtInfo, MonitorState, addr_to_be};

use super::fault;
use crate::{
    maps::Maps,
    state::{Conntrack, Host, Monitor},
};

/// Which of the host's slots a reconcile rewrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostChanges {
    pub config: bool,
    pub monitor: bool,
    pub conntrack: bool,
}

impl HostChanges {
    pub fn any(&self) -> bool {
        self.config || self.monitor || self.conntrack
    }
}

/// `NP_CONFIG` as `h` says it.
pub fn config_value(h: &Host) -> netpath_common::Config {
    netpath_common::Config {
        host_addr: addr_to_be(h.address.octets()),
        subnet_addr: addr_to_be(h.subnet.network().octets()),
        subnet_mask: addr_to_be(h.subnet.netmask().octets()),
        uplink_ifindex: h.uplink_ifindex,
        bridge_ifindex: h.bridge_ifindex,
        vni: h.vni,
        flags: CONFIG_F_READY | if h.masquerade { CONFIG_F_MASQUERADE } else { 0 },
        gateway_addr: h.gateway.map(|g| addr_to_be(g.octets())).unwrap_or(0),
        vtep_mac: h.vtep_mac,
        vxlan_port: h.vxlan_port.to_be(),
        tunnel_mss: h.tunnel_mss(),
        tunnel_mtu: h.tunnel_mtu().min(u16::MAX as u32) as u16,
        nat_port_min: h.masquerade_ports.0,
        nat_port_max: h.masquerade_ports.1,
        bridge_mac: h.bridge_mac,
        _pad: [0; 2],
    }
}

/// Writes the slots whose value differs from what `h`, `c` and `m` say; the programs act
/// on them from the next packet. The collector's running totals in `NP_CT_INFO` are kept.
pub fn reconcile(maps: &mut Maps, h: &Host, c: &Conntrack, m: &Monitor) -> Result<HostChanges> {
    let mut changes = HostChanges::default();
    let config = config_value(h);
    if maps.config()? != config {
        fault::write()?;
        maps.config.set(0, config, 0)?;
        changes.config = true;
    }
    let monitor = MonitorState {
        rate: m.rate,
        _pad: 0,
    };
    if maps.monitor.get(&0, 0)? != monitor {
        fault::write()?;
        maps.monitor.set(0, monitor, 0)?;
        changes.monitor = true;
    }
    changes.conntrack = conntrack(maps, c)?;
    Ok(changes)
}

/// Writes the timeouts of `c` into `NP_CT_INFO` where they differ, keeping the collector's
/// running totals. Returns whether it wrote.
pub fn conntrack(maps: &mut Maps, c: &Conntrack) -> Result<bool> {
    let old = maps.ct_info.get(&0, 0)?;
    let info = CtInfo {
        tcp_syn: c.tcp_syn,
        tcp_established: c.tcp_established,
        tcp_closing: c.tcp_closing,
        udp: c.udp,
        icmp: c.icmp,
        gc_interval: c.gc_interval,
        ..old
    };
    if info == old {
        return Ok(false);
    }
    fault::write()?;
    maps.ct_info.set(0, info, 0)?;
    Ok(true)
}
