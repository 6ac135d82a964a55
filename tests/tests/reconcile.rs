//! The reconcilers on a private datapath (real maps, no network): a second run changes
//! nothing, a failed write leaves the previous state whole, a run after a change cut
//! short finishes it, stray entries are removed. The fault is process-wide, so every
//! case that arms it lives in one test of this binary, and the others do not write
//! while it runs (they are in this one function too).

mod common;

use common::*;
use netpath::{
    maps::Maps,
    reconcile::{self, fault},
    sources::{self, file::Config},
    state::{
        Mode, Peer, Proto, Publish,
        policy::{Action, Endpoint, Rule, RuleProto},
    },
};
use netpath_common::prog_names;

/// Everything the reconcilers own, as comparable text: peers (slot, info, route, underlay
/// entries), published ports, policy rules with ids and origins, groups and the state's
/// generation and rule count.
fn snapshot(maps: &Maps) -> String {
    let mut s = String::new();
    for (id, p) in reconcile::peers::observe(maps).unwrap() {
        s += &format!("peer {id} {:?} {}\n", p.item, p.origin);
    }
    let mut routes: Vec<String> = maps
        .peers
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            format!("route {}/{} -> {:?}", k.data(), k.prefix_len(), v)
        })
        .collect();
    routes.sort();
    let mut underlay: Vec<String> = maps
        .underlay
        .iter()
        .map(|kv| format!("underlay {:?}", kv.unwrap()))
        .collect();
    underlay.sort();
    for line in routes.into_iter().chain(underlay) {
        s += &line;
        s += "\n";
    }
    for p in reconcile::publish::observe(maps).unwrap() {
        s += &format!("publish {:?} {}\n", p.item, p.origin);
    }
    let inst = reconcile::policy::installed(maps).unwrap();
    for (id, r, o) in &inst.rules {
        s += &format!("rule {id} {r} {o}\n");
    }
    s += &format!(
        "groups {:?} generation {} rules {}\n",
        inst.groups, inst.state.generation, inst.state.rules
    );
    s
}

fn rule(from: &str, port: u16, action: Action) -> Rule {
    Rule {
        from: Endpoint::Cidr(from.parse().unwrap()),
        to: Endpoint::Cidr("10.244.11.0/24".parse().unwrap()),
        proto: RuleProto::Tcp,
        ports: Some((port, port)),
        action,
    }
}

/// The second config: c goes, b becomes vxlan, d and e come, a port and rules appear.
fn changed(mut c: Config) -> Config {
    c.peers.retain(|p| p.name != "c");
    c.peers[0].mode = Mode::Vxlan;
    for (name, n) in [("d", 14u8), ("e", 15)] {
        c.peers.push(Peer {
            name: name.into(),
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            underlay: [198, 18, 0, n].into(),
            mode: Mode::Direct,
            vtep_mac: None,
        });
    }
    c.publish.push(Publish {
        proto: Proto::Tcp,
        host_port: 8080,
        container: LOCAL_C.into(),
        port: 80,
    });
    c.policy.rules = (0..50)
        .map(|i| rule(&format!("10.244.14.{i}/32"), 5432, Action::Deny))
        .collect();
    c
}

#[test]
fn reconcilers_are_idempotent_undo_failed_writes_and_finish_cut_short_changes() {
    let Some(mut dp) = dp() else { return };

    // 1. A second run of the same desired state writes nothing.
    let first = sources::from_config(&cfg(true));
    let again = reconcile::all(&mut dp.maps, &first).unwrap();
    assert!(again.is_empty(), "second run changed {again:?}");

    // 2. The change, failing at each of its first writes: every family stays as it was.
    let before = snapshot(&dp.maps);
    let next = sources::from_config(&changed(cfg(true)));
    for n in [0u64, 1, 2, 3, 5, 8, 13] {
        fault::set(Some(n), false);
        let peers = reconcile::peers::reconcile(&mut dp.maps, &next.peers);
        fault::set(Some(0), false);
        let publish = reconcile::publish::reconcile(&mut dp.maps, &next.publish);
        fault::set(Some(n), false);
        let policy = reconcile::policy::reconcile(&mut dp.maps, &next.policy);
        fault::set(None, false);
        assert!(
            peers.is_err() && publish.is_err() && policy.is_err(),
            "fault {n} was not hit"
        );
        assert!(
            peers
                .unwrap_err()
                .to_string()
                .contains("previous peers are restored"),
            "fault {n}"
        );
        assert_eq!(
            snapshot(&dp.maps),
            before,
            "after a failed change at write {n}"
        );
    }
    // The old policy still decides: nothing was denied before and nothing is now.
    let syn = netpath::packet::Frame::tcp(PEER_C, LOCAL_C, 40000, 5432, 0x02).build();
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &syn).0, TC_ACT_REDIRECT);

    // 3. The change applied, then again: nothing more to do.
    let done = reconcile::all(&mut dp.maps, &next).unwrap();
    assert_eq!(done.peers.added, ["d", "e"]);
    assert_eq!(done.peers.updated, ["b"]);
    assert_eq!(done.peers.removed, ["c"]);
    assert_eq!(done.publish.added, ["tcp/8080"]);
    assert!(done.policy.applied);
    assert_eq!(done.policy.rules, 50);
    let after = snapshot(&dp.maps);
    assert!(reconcile::all(&mut dp.maps, &next).unwrap().is_empty());
    assert_eq!(snapshot(&dp.maps), after);
    // From d (direct, 10.244.14.0/24), whose first addresses the new rules deny.
    let syn = netpath::packet::Frame::tcp([10, 244, 14, 2], LOCAL_C, 40000, 5432, 0x02).build();
    let denied = dp.count(netpath_common::Reason::DropPolicyDeny);
    assert_eq!(dp.run(prog_names::FROM_UPLINK, &syn).0, TC_ACT_SHOT);
    assert_eq!(
        dp.count(netpath_common::Reason::DropPolicyDeny),
        denied + 1,
        "a rule denies"
    );

    // 4. Level-triggered: a route lost (a change cut short) is put back, a stray route
    //    and a stray underlay entry (no peer owns them) are removed.
    let d = dp.peer("d");
    let key = aya::maps::lpm_trie::Key::new(24, u32::from_ne_bytes([10, 244, 14, 0]));
    dp.maps.peers.remove(&key).unwrap();
    let stray = aya::maps::lpm_trie::Key::new(24, u32::from_ne_bytes([10, 244, 77, 0]));
    let v = dp
        .maps
        .underlay
        .get(&u32::from_ne_bytes([198, 18, 0, 14]), 0)
        .unwrap();
    dp.maps.peers.insert(&stray, v, 0).unwrap();
    dp.maps
        .underlay
        .insert(u32::from_ne_bytes([198, 18, 0, 77]), v, 0)
        .unwrap();
    let fixed = reconcile::peers::reconcile(&mut dp.maps, &next.peers).unwrap();
    assert_eq!(fixed.orphans, 2, "{fixed:?}");
    assert_eq!(fixed.restored, ["d"], "{fixed:?}");
    assert!(fixed.added.is_empty() && fixed.updated.is_empty() && fixed.removed.is_empty());
    assert_eq!(snapshot(&dp.maps), after);
    assert_eq!(dp.peer("d").id, d.id);

    // 5. The precedence: a CLI peer and port of the same identity as the config's are
    //    replaced by the config's; other CLI entries are kept.
    let cli = sources::Part {
        peers: vec![
            Peer {
                name: "d".into(),
                subnet: "10.244.40.0/24".parse().unwrap(),
                underlay: [198, 18, 0, 40].into(),
                mode: Mode::Direct,
                vtep_mac: None,
            },
            Peer {
                name: "z".into(),
                subnet: "10.244.41.0/24".parse().unwrap(),
                underlay: [198, 18, 0, 41].into(),
                mode: Mode::Direct,
                vtep_mac: None,
            },
        ],
        publish: vec![Publish {
            proto: Proto::Tcp,
            host_port: 8080,
            container: [10, 244, 11, 9].into(),
            port: 9,
        }],
        rules: vec![(Some(900), rule("10.244.14.0/32", 5432, Action::Allow))],
    };
    let (d2, merge) = sources::desired(
        &changed(cfg(true)),
        &cli,
        &[],
        &[],
        &[],
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        merge.replaced_cli,
        sources::Counts {
            peers: 1,
            publish: 1,
            rules: 1
        }
    );
    assert_eq!(merge.kept_cli.peers, 1);
    let d_peer = d2.peers.iter().find(|p| p.item.name == "d").unwrap();
    assert_eq!(
        d_peer.item.subnet.to_string(),
        "10.244.14.0/24",
        "the config's d"
    );
    assert_eq!(
        d2.publish
            .iter()
            .filter(|p| p.item.host_port == 8080)
            .count(),
        1
    );
    // A CLI peer that overlaps a config peer is refused with how to remove it.
    let clash = sources::Part {
        peers: vec![Peer {
            name: "y".into(),
            subnet: "10.244.14.0/25".parse().unwrap(),
            underlay: [198, 18, 0, 42].into(),
            mode: Mode::Direct,
            vtep_mac: None,
        }],
        ..Default::default()
    };
    let err = sources::desired(
        &changed(cfg(true)),
        &clash,
        &[],
        &[],
        &[],
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("netpath peer del y"), "{err}");
    // Peers from etcd come last: one that collides with the config's or the CLI's (name,
    // subnet, underlay) is skipped with why, never an error; the others are kept as etcd's.
    let peer = |name: &str, subnet: &str, underlay: u8| Peer {
        name: name.into(),
        subnet: subnet.parse().unwrap(),
        underlay: [198, 18, 0, underlay].into(),
        mode: Mode::Vxlan,
        vtep_mac: None,
    };
    let etcd = [
        peer("d", "10.244.50.0/24", 50),
        peer("w", "10.244.14.0/25", 51),
        peer("z2", "10.244.52.0/24", 41),
        peer("e1", "10.244.53.0/24", 53),
    ];
    let (d3, merge) = sources::desired(
        &changed(cfg(true)),
        &cli,
        &etcd,
        &[],
        &[],
        &Default::default(),
    )
    .unwrap();
    assert_eq!(merge.kept_etcd, 1);
    assert_eq!(merge.skipped_etcd.len(), 3, "{:?}", merge.skipped_etcd);
    assert!(merge.skipped_etcd[0].contains("is used by another peer"));
    let e1 = d3.peers.iter().find(|p| p.item.name == "e1").unwrap();
    assert_eq!(e1.origin, netpath::state::Origin::Etcd);
    assert_eq!(
        d3.peers.len(),
        d2.peers.len() + 1,
        "the config's and the CLI's peers untouched"
    );
    // Docker's ports come after the config's and the CLI's: one of the same protocol and
    // number, or whose container is not in the subnet, is refused for that container (with
    // why), never an error; the others are kept as Docker's.
    let port = |name: &str, host_port: u16, container: [u8; 4]| sources::docker::DockerPort {
        container: name.into(),
        publish: Publish {
            proto: Proto::Tcp,
            host_port,
            container: container.into(),
            port: 80,
        },
    };
    let docker = [
        port("clash", 8080, [10, 244, 11, 20]),
        port("elsewhere", 9090, [172, 17, 0, 2]),
        port("web", 9091, [10, 244, 11, 21]),
        port("second", 9091, [10, 244, 11, 22]),
    ];
    let (d4, merge) = sources::desired(
        &changed(cfg(true)),
        &cli,
        &[],
        &docker,
        &[],
        &Default::default(),
    )
    .unwrap();
    assert_eq!(merge.kept_docker, 1);
    let why = merge.skipped_docker.join("\n");
    assert_eq!(merge.skipped_docker.len(), 3, "{why}");
    assert!(
        why.contains("container clash") && why.contains("already published"),
        "{why}"
    );
    assert!(
        why.contains("container elsewhere") && why.contains("not a container address"),
        "{why}"
    );
    assert!(why.contains("container second"), "{why}");
    let web = d4
        .publish
        .iter()
        .find(|p| p.item.host_port == 9091)
        .unwrap();
    assert_eq!(web.origin, netpath::state::Origin::Docker);
    assert_eq!(web.item.container, std::net::Ipv4Addr::new(10, 244, 11, 21));
    assert_eq!(d4.publish.len(), d2.publish.len() + 1);
}
