//! What the packet tests share: the programs loaded with private maps and a host's
//! config, BPF_PROG_TEST_RUN, counters.
#![allow(dead_code, unused_imports)]

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use netpath::packet::{ETH_LEN, Frame, ipv4_checksum_ok};
use netpath::{
    datapath,
    maps::Maps,
    pin, reconcile,
    sources::file::Config,
    state::{Host, Mode, Peer, XdpMode},
};
use netpath_common::{Reason, map_names, prog_names};

pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub const HOST: [u8; 4] = [198, 18, 0, 11];
pub const LOCAL_C: [u8; 4] = [10, 244, 11, 2];
pub const GATEWAY: [u8; 4] = [10, 244, 11, 1];
pub const PEER_C: [u8; 4] = [10, 244, 12, 2];
pub const VXLAN_PEER_C: [u8; 4] = [10, 244, 13, 2];
pub const NOWHERE: [u8; 4] = [10, 244, 99, 2];

pub struct Dp {
    pub ebpf: Ebpf,
    pub maps: Maps,
}

pub fn cfg(ready: bool) -> Config {
    Config {
        host: Host {
            name: "a".into(),
            uplink: "eth0".into(),
            uplink_ifindex: 2,
            bridge: "br0".into(),
            bridge_ifindex: 3,
            subnet: "10.244.11.0/24".parse().unwrap(),
            address: HOST.into(),
            gateway: Some(GATEWAY.into()),
            bridge_subnet: "10.244.11.0/24".parse().unwrap(),
            vni: 42,
            xdp: XdpMode::Off,
            vxlan_port: 4789,
            vtep_mac: netpath_common::default_vtep_mac(HOST),
            uplink_mtu: 1500,
            bridge_mac: BRIDGE_MAC,
            masquerade: false,
            masquerade_ports: netpath::state::MASQUERADE_PORTS,
        },
        peers: if ready {
            vec![
                Peer {
                    name: "b".into(),
                    subnet: "10.244.12.0/24".parse().unwrap(),
                    underlay: [198, 18, 0, 12].into(),
                    mode: Mode::Direct,
                    vtep_mac: None,
                },
                Peer {
                    name: "c".into(),
                    subnet: "10.244.13.0/24".parse().unwrap(),
                    underlay: [198, 18, 0, 13].into(),
                    mode: Mode::Vxlan,
                    vtep_mac: None,
                },
            ]
        } else {
            vec![]
        },
        publish: vec![],
        conntrack: Default::default(),
        policy: Default::default(),
        monitor: Default::default(),
        metrics: None,
        etcd: None,
        docker: None,
    }
}

/// Loads the programs with private maps and the config above; None (test skipped) when
/// not root.
pub fn dp() -> Option<Dp> {
    dp_with(|_| {})
}

/// As [`dp`], with the config changed by `change` first.
pub fn dp_with(change: impl FnOnce(&mut Config)) -> Option<Dp> {
    if !netpath_tests::can_run_lab() {
        return None;
    }
    let mut c = cfg(true);
    change(&mut c);
    let (ebpf, mut maps) =
        reconcile::private(&netpath::sources::from_config(&c)).expect("load programs");
    reconcile::endpoints::reconcile(&mut maps, &Default::default(), &endpoints())
        .expect("endpoints");
    Some(Dp { ebpf, maps })
}

/// The MAC of the test's containers (as their endpoints have it) and of the bridge: the
/// MACs [`Frame`] gives a packet by default, so what is delivered straight into a
/// container has the frame's own MACs.
pub const CONTAINER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
pub const BRIDGE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// The local containers the packet tests send to (10.244.11.2 and .3), as the agent
/// learns them: on veths 40 and 41.
pub fn endpoints() -> Vec<netpath::state::Endpoint> {
    [(LOCAL_C, 40), ([10, 244, 11, 3], 41)]
        .into_iter()
        .map(|(addr, ifindex)| netpath::state::Endpoint {
            addr: addr.into(),
            ifindex,
            mac: CONTAINER_MAC,
        })
        .collect()
}

impl Dp {
    /// Forgets every endpoint, as before the agent has learned any.
    pub fn forget_endpoints(&mut self) {
        let installed = reconcile::endpoints::observe(&self.maps).unwrap();
        reconcile::endpoints::reconcile(&mut self.maps, &installed, &[]).unwrap();
    }
}

/// BPF_PROG_TEST_RUN of `p` on `input`: the return value and the output frame.
pub fn test_run<P>(p: &mut P, input: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; input.len() + 512];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

impl Dp {
    pub fn run(&mut self, prog: &str, input: &[u8]) -> (i32, Vec<u8>) {
        let p: &mut SchedClassifier = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        let (r, out) = test_run(p, input);
        (r as i32, out)
    }

    /// Runs the XDP program; returns the XDP action and the frame it passes on.
    pub fn run_xdp(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        test_run(netpath::datapath::xdp(&mut self.ebpf).unwrap(), input)
    }

    /// Runs np_xdp_check (loaded here if the datapath's loading did not need it).
    pub fn run_xdp_check(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog_names::XDP_CHECK)
            .unwrap()
            .try_into()
            .unwrap();
        if p.fd().is_err() {
            p.load().unwrap();
        }
        test_run(p, input)
    }

    /// The peer named `name`, with its counters.
    pub fn peer(&self, name: &str) -> netpath::inspect::report::PeerRow {
        netpath::inspect::report::peer_rows(&self.maps)
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
    }

    /// Packets counted under every reason together.
    pub fn total(&self) -> u64 {
        self.maps
            .counters()
            .unwrap()
            .iter()
            .map(|(_, c)| c.packets)
            .sum()
    }

    pub fn count(&self, r: Reason) -> u64 {
        self.maps.counters().unwrap()[r as usize].1.packets
    }

    /// Asserts that exactly one packet was counted, under `r`.
    pub fn only(&self, r: Reason) {
        let counted: Vec<(String, u64)> = self
            .maps
            .counters()
            .unwrap()
            .into_iter()
            .filter(|(_, c)| c.packets > 0)
            .map(|(i, c)| (Reason::from_u32(i).unwrap().name().to_owned(), c.packets))
            .collect();
        assert_eq!(counted, vec![(r.name().to_owned(), 1)]);
    }
}

pub const VXLAN_PEER: [u8; 4] = [198, 18, 0, 13];

/// `inner` wrapped the way a VXLAN peer (or Linux's vxlan device) sends it to us.
pub fn vxlan_frame(outer_src: [u8; 4], vni: u32, flags: u8, inner: &[u8]) -> Vec<u8> {
    netpath::packet::vxlan(outer_src, HOST, vni, flags, inner)
}

/// The `NP_CT` key of a flow: (address, port) of the local end and of the other end.
pub fn ct_key(
    proto: u8,
    container: ([u8; 4], u16),
    remote: ([u8; 4], u16),
) -> netpath_common::CtKey {
    netpath_common::CtKey {
        container: u32::from_ne_bytes(container.0),
        remote: u32::from_ne_bytes(remote.0),
        container_port: container.1.to_be(),
        remote_port: remote.1.to_be(),
        proto,
        _pad: [0; 3],
    }
}
