//! The agent's copy of the peers' maps (reconcile::Mirror), which an etcd event
//! reconciles against instead of reading the maps: after every kind of change it must say
//! exactly what a fresh reading of the maps says, a live CLI edit must make it read the
//! maps again, and a failed reconcile must drop it. On a private datapath; the peers are
//! map entries only (subnets in 10.0.0.0/8 outside the lab's, underlays in 198.18.0.0/15).

mod common;

use std::net::Ipv4Addr;

use common::*;
use netpath::{
    maps::Maps,
    reconcile::{self, Mirror, fault, peers},
    sources,
    state::{Mode, Origin, Peer, Remote},
};

fn peer(name: &str, third: u8, underlay: u8) -> Peer {
    Peer {
        name: name.into(),
        subnet: format!("10.1.{third}.0/24").parse().unwrap(),
        underlay: Ipv4Addr::new(198, 18, 1, underlay),
        mode: Mode::Vxlan,
        vtep_mac: None,
    }
}

/// One etcd event as the agent handles it: the peers' merge of the config, the CLI's
/// peers and `etcd`, with `remote` routed, from the copy.
fn event(
    maps: &mut Maps,
    mirror: &mut Mirror,
    etcd: &[Peer],
    remote: &[Remote],
) -> anyhow::Result<reconcile::Changes> {
    let c = cfg(true);
    let (c, ()) = mirror.reconcile_peers(maps, |o| {
        let (mut d, _) =
            sources::desired_peers(&c, &sources::cli::live_peers(o), etcd, &Default::default())?;
        d.remote = remote.to_vec();
        Ok((d, ()))
    })?;
    Ok(c)
}

/// A start or the periodic repair: every family from the maps.
fn all(maps: &mut Maps, mirror: &mut Mirror, etcd: &[Peer]) -> anyhow::Result<reconcile::Changes> {
    let c = cfg(true);
    let (ch, _) = mirror.reconcile_all(maps, |o| {
        sources::desired(
            &c,
            &sources::cli::live(o),
            etcd,
            &[],
            &[],
            &Default::default(),
        )
    })?;
    Ok(ch)
}

/// The copy says what the maps say.
fn same(maps: &Maps, mirror: &Mirror, when: &str) {
    let read = peers::read(maps).expect("read the peers' maps");
    let copy = mirror.copy().unwrap_or_else(|| panic!("{when}: no copy"));
    assert_eq!(copy, &read, "{when}: the copy differs from the maps");
}

fn names(maps: &Maps) -> Vec<(String, Origin)> {
    let mut v: Vec<_> = peers::observe(maps)
        .unwrap()
        .into_iter()
        .map(|(_, p)| (p.item.name, p.origin))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn the_copy_of_the_peer_maps_stays_what_the_maps_hold() {
    if !netpath_tests::can_run_lab() {
        return;
    }
    let c = cfg(true);
    let (_ebpf, mut maps) = reconcile::private(&sources::from_config(&c)).expect("load programs");
    let mut mirror = Mirror::default();
    let mut etcd = vec![peer("p0", 0, 10), peer("p1", 1, 11), peer("p2", 2, 12)];

    // A start: every family from the maps.
    all(&mut maps, &mut mirror, &etcd).expect("start");
    same(&maps, &mirror, "after the start");
    assert_eq!(names(&maps).len(), 5, "b, c and three from etcd");

    // p1 gone, p3 new, and p0 and p2 swap their subnets and underlays: each one's route
    // and underlay entry is another's before, and must not be removed as stale.
    etcd.remove(1);
    etcd[0].subnet = "10.1.2.0/24".parse().unwrap();
    etcd[0].underlay = Ipv4Addr::new(198, 18, 1, 12);
    etcd[1].subnet = "10.1.0.0/24".parse().unwrap();
    etcd[1].underlay = Ipv4Addr::new(198, 18, 1, 10);
    etcd.push(peer("p3", 3, 13));
    let ch = event(&mut maps, &mut mirror, &etcd, &[]).expect("event");
    assert_eq!(ch.peers.added, ["p3"]);
    assert_eq!(ch.peers.removed, ["p1"]);
    assert_eq!(ch.peers.updated.len(), 2, "{:?}", ch.peers.updated);
    same(&maps, &mirror, "after the swap");
    let read = peers::read(&maps).unwrap();
    let slot_of = |name: &str| {
        read.infos
            .iter()
            .find(|(_, i)| netpath_common::name_str(&i.name) == name)
            .map(|(id, _)| *id)
            .unwrap()
    };
    let route = |third: u8| read.routes[&(24, u32::from_ne_bytes([10, 1, third, 0]))].id;
    assert_eq!(route(2), slot_of("p0"), "p0 has 10.1.2.0/24 now");
    assert_eq!(route(0), slot_of("p2"), "p2 has 10.1.0.0/24 now");
    assert!(
        !read
            .routes
            .contains_key(&(24, u32::from_ne_bytes([10, 1, 1, 0])))
    );
    assert_eq!(read.underlay.len(), 5);

    // A container of a network across hosts on p3, then gone again.
    let on_p3 = Remote {
        addr: Ipv4Addr::new(10, 244, 64, 9),
        network: "net1".into(),
        host: "p3".into(),
        mode: Mode::Vxlan,
    };
    let ch = event(&mut maps, &mut mirror, &etcd, std::slice::from_ref(&on_p3)).unwrap();
    assert_eq!((ch.remote.added, ch.remote.routed), (1, 1));
    same(&maps, &mirror, "after a remote container came");
    let ch = event(&mut maps, &mut mirror, &etcd, &[]).unwrap();
    assert_eq!(ch.remote.removed, 1);
    same(&maps, &mirror, "after it went");

    // Nothing changed: nothing written, the copy still stands.
    fault::take_writes();
    let ch = event(&mut maps, &mut mirror, &etcd, &[]).unwrap();
    assert!(ch.is_empty(), "{}", ch.summary());
    assert_eq!(fault::take_writes(), 0);

    // A live `peer add` between two events: the next event brings the copy up to date
    // from the slot the edit names, without reading the maps (else the CLI's peer would
    // be unknown to it and its slot given away).
    let reads = mirror.reads();
    peers::add(&mut maps, &peer("cli1", 9, 19)).expect("peer add");
    etcd.push(peer("p4", 4, 14));
    let ch = event(&mut maps, &mut mirror, &etcd, &[]).unwrap();
    assert_eq!(ch.peers.added, ["p4"]);
    assert!(ch.peers.removed.is_empty(), "{:?}", ch.peers.removed);
    same(&maps, &mirror, "after a CLI edit and an event");
    assert_eq!(
        mirror.reads(),
        reads,
        "one edit: its slot followed, nothing read"
    );
    assert!(names(&maps).contains(&("cli1".into(), Origin::Cli)));
    let read = peers::read(&maps).unwrap();
    let mut slots: Vec<u32> = read.infos.iter().map(|(id, _)| *id).collect();
    slots.dedup();
    assert_eq!(
        slots.len(),
        7,
        "b, c, p0, p2, p3, cli1, p4: each in a slot of its own"
    );

    // A live `peer del`: its route and underlay entry leave the copy too.
    peers::del(&mut maps, "cli1").expect("peer del");
    let ch = event(&mut maps, &mut mirror, &etcd, &[]).unwrap();
    assert!(ch.is_empty(), "{}", ch.summary());
    same(&maps, &mirror, "after a CLI del and an event");
    assert_eq!(mirror.reads(), reads);
    assert!(!names(&maps).iter().any(|(n, _)| n == "cli1"));

    // Two edits between events: the slot of the last alone is known, the maps are read.
    peers::add(&mut maps, &peer("cli2", 20, 30)).expect("peer add");
    peers::add(&mut maps, &peer("cli3", 21, 31)).expect("peer add");
    let ch = event(&mut maps, &mut mirror, &etcd, &[]).unwrap();
    assert!(ch.is_empty(), "{}", ch.summary());
    same(&maps, &mirror, "after two CLI edits and an event");
    assert_eq!(mirror.reads(), reads + 1);

    // An edit that did not leave the maps as it should (its route gone, as if it were cut
    // short): the maps are read, and the reconcile puts the route back.
    peers::add(&mut maps, &peer("cli4", 22, 32)).expect("peer add");
    maps.peers
        .remove(&netpath::maps::net_key("10.1.22.0/24".parse().unwrap()))
        .unwrap();
    let ch = event(&mut maps, &mut mirror, &etcd, &[]).unwrap();
    assert_eq!(ch.peers.restored, ["cli4"], "{}", ch.summary());
    same(&maps, &mirror, "after an edit cut short and an event");
    assert_eq!(mirror.reads(), reads + 2);
    for name in ["cli2", "cli3", "cli4"] {
        peers::del(&mut maps, name).expect("peer del");
    }
    event(&mut maps, &mut mirror, &etcd, &[]).unwrap();
    same(&maps, &mirror, "after the CLI's peers went");

    // A reconcile that fails halfway: the maps are as before, the copy is dropped and the
    // next event reads the maps.
    let before = peers::read(&maps).unwrap();
    etcd.push(peer("p5", 5, 15));
    fault::set(Some(1), false);
    let failed = event(&mut maps, &mut mirror, &etcd, &[]);
    fault::set(None, false);
    assert!(failed.is_err());
    assert!(mirror.copy().is_none(), "a failed reconcile keeps no copy");
    assert_eq!(
        peers::read(&maps).unwrap(),
        before,
        "the failed change is undone"
    );
    let ch = event(&mut maps, &mut mirror, &etcd, &[]).unwrap();
    assert_eq!(ch.peers.added, ["p5"]);
    same(&maps, &mirror, "after the retry");

    // What a hand changed behind netpath's back: the periodic repair (every family from
    // the maps) puts it right and the copy starts again from there.
    let id = slot_of("p3");
    let p3 = etcd.iter().find(|p| p.name == "p3").unwrap().clone();
    maps.underlay
        .remove(&netpath_common::addr_to_be(p3.underlay.octets()))
        .unwrap();
    let ch = all(&mut maps, &mut mirror, &etcd).unwrap();
    assert_eq!(ch.peers.restored, ["p3"]);
    same(&maps, &mirror, "after the repair");
    assert_eq!(
        peers::read(&maps).unwrap().underlay[&netpath_common::addr_to_be(p3.underlay.octets())].id,
        id
    );
}

/// A Docker event as the agent takes it: every family but the policy, the peers' from the
/// copy; `ports` published by Docker.
fn docker_event(
    maps: &mut Maps,
    mirror: &mut Mirror,
    c: &netpath::sources::file::Config,
    etcd: &[Peer],
    ports: &[sources::docker::DockerPort],
) -> anyhow::Result<reconcile::Changes> {
    let (ch, _) = mirror.reconcile_docker(maps, |o| {
        sources::desired_docker(
            c,
            &sources::cli::live(o),
            etcd,
            ports,
            &[],
            &Default::default(),
        )
    })?;
    Ok(ch)
}

#[test]
fn a_docker_event_reconciles_everything_but_the_policy_which_it_leaves_whole() {
    use netpath::state::{
        Proto, Publish,
        policy::{Action, Endpoint, Rule, RuleProto},
    };
    if !netpath_tests::can_run_lab() {
        return;
    }
    let mut c = cfg(true);
    let rule = |third: u8| Rule {
        from: Endpoint::Cidr(format!("10.244.{third}.0/24").parse().unwrap()),
        to: Endpoint::Cidr("10.244.11.0/24".parse().unwrap()),
        proto: RuleProto::Tcp,
        ports: Some((80, 80)),
        action: Action::Deny,
    };
    c.policy.rules = vec![rule(12), rule(13)];
    let (_ebpf, mut maps) = reconcile::private(&sources::from_config(&c)).expect("load programs");
    let mut mirror = Mirror::default();
    let etcd = vec![peer("p0", 0, 10)];
    let (_, _) = mirror
        .reconcile_all(&mut maps, |o| {
            sources::desired(
                &c,
                &sources::cli::live(o),
                &etcd,
                &[],
                &[],
                &Default::default(),
            )
        })
        .expect("start");
    let policy = reconcile::policy::installed(&maps).unwrap();
    assert_eq!(policy.rules.len(), 2);
    // A rule added live with `policy add`: a Docker event must keep it too.
    reconcile::policy::add(&mut maps, &policy, &rule(14)).expect("policy add");
    let policy = reconcile::policy::installed(&maps).unwrap();
    assert_eq!(policy.rules.len(), 3);

    let web = sources::docker::DockerPort {
        container: "web".into(),
        publish: Publish {
            proto: Proto::Tcp,
            host_port: 8080,
            container: Ipv4Addr::new(10, 244, 11, 3),
            port: 80,
        },
    };
    fault::take_writes();
    let ch = docker_event(
        &mut maps,
        &mut mirror,
        &c,
        &etcd,
        std::slice::from_ref(&web),
    )
    .unwrap();
    assert_eq!(ch.publish.added.len(), 1, "{}", ch.summary());
    assert_eq!(fault::take_writes(), 1, "the port's entry and nothing else");
    assert_eq!(
        reconcile::policy::installed(&maps).unwrap().rules,
        policy.rules,
        "the policy as it was, the live rule included"
    );
    same(&maps, &mirror, "after a Docker event");
    // The port gone, and an etcd host with it: both follow, the policy still whole.
    let etcd = vec![peer("p0", 0, 10), peer("p1", 1, 11)];
    let ch = docker_event(&mut maps, &mut mirror, &c, &etcd, &[]).unwrap();
    assert_eq!(
        (ch.publish.removed.len(), ch.peers.added.len()),
        (1, 1),
        "{}",
        ch.summary()
    );
    assert_eq!(
        reconcile::policy::installed(&maps).unwrap().rules,
        policy.rules
    );
    same(&maps, &mirror, "after the port went");
    // Nothing changed: nothing written.
    fault::take_writes();
    let ch = docker_event(&mut maps, &mut mirror, &c, &etcd, &[]).unwrap();
    assert!(ch.is_empty(), "{}", ch.summary());
    assert_eq!(fault::take_writes(), 0);
}
