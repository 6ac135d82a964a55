//! Prometheus metrics (`[metrics] listen = "127.0.0.1:9464"`): the agent serves
//! `GET /metrics` in the text format, read from the pinned maps at each scrape, so a
//! scrape always shows what `netpath stats` and `status` would.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::{
    inspect::{report, status},
    maps::Maps,
    pin::PinDir,
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// A gauge family `name` with one series per `what` label.
fn what_gauges(reg: &mut Registry, name: &str, help: &str, values: &[(&str, i64)]) {
    let g = gauge_family(reg, name, help);
    for (what, v) in values {
        g.get_or_create(&labels(&[("what", what)])).set(*v);
    }
}

/// The metrics of the datapath pinned at `pins`, in Prometheus text format.
pub fn render(pins: &PinDir) -> Result<String> {
    let maps = Maps::open(pins)?;
    // Each map read once: counters with zeros, peers, rules, the agent record.
    let (peers, policy, a) = (
        report::peer_rows(&maps)?,
        crate::inspect::policy::report(&maps)?,
        report::agent_row(&maps)?,
    );
    let mut reg = Registry::default();

    let packets = counter_family(
        &mut reg,
        "netpath_packets",
        "Packets by the reason the datapath gave them (forward, pass or drop)",
    );
    let bytes = counter_family(&mut reg, "netpath_bytes", "Bytes by reason");
    for c in report::counter_rows(&maps, true)? {
        let l = labels(&[("reason", &c.reason), ("verdict", c.verdict)]);
        packets.get_or_create(&l).inc_by(c.packets);
        bytes.get_or_create(&l).inc_by(c.bytes);
    }

    let peer_packets = counter_family(
        &mut reg,
        "netpath_peer_packets",
        "Packets sent to (tx) and received from (rx) each peer",
    );
    let peer_bytes = counter_family(
        &mut reg,
        "netpath_peer_bytes",
        "Bytes per peer and direction",
    );
    for p in &peers {
        for (dir, pk, by) in [
            ("tx", p.tx_packets, p.tx_bytes),
            ("rx", p.rx_packets, p.rx_bytes),
        ] {
            let l = labels(&[("peer", &p.name), ("mode", &p.mode), ("direction", dir)]);
            peer_packets.get_or_create(&l).inc_by(pk);
            peer_bytes.get_or_create(&l).inc_by(by);
        }
    }

    let rule_packets = counter_family(
        &mut reg,
        "netpath_policy_rule_packets",
        "Packets decided by each policy rule (rule=\"0\": the default action)",
    );
    let rule_bytes = counter_family(
        &mut reg,
        "netpath_policy_rule_bytes",
        "Bytes per policy rule",
    );
    if policy.enabled {
        for r in &policy.rules {
            let id = r.id.to_string();
            let l = labels(&[("rule", &id), ("action", &r.action)]);
            rule_packets.get_or_create(&l).inc_by(r.packets);
            rule_bytes.get_or_create(&l).inc_by(r.bytes);
        }
        let l = labels(&[("rule", "0"), ("action", &policy.default_action)]);
        rule_packets
            .get_or_create(&l)
            .inc_by(policy.default_packets);
        rule_bytes.get_or_create(&l).inc_by(policy.default_bytes);
    }

    let ev = maps.event_totals()?;
    let events = counter_family(
        &mut reg,
        "netpath_drop_events",
        "Drop events: emitted to `netpath monitor`, suppressed by the per-CPU rate, lost (ring buffer full)",
    );
    for (what, n) in [
        ("emitted", ev.emitted),
        ("suppressed", ev.suppressed),
        ("lost", ev.lost),
    ] {
        events.get_or_create(&labels(&[("result", what)])).inc_by(n);
    }

    let entries = gauge_family(
        &mut reg,
        "netpath_map_entries",
        "Entries in use in each map (hash maps, tries, and the arrays indexed by peer or rule)",
    );
    let max = gauge_family(&mut reg, "netpath_map_max_entries", "Capacity of each map.");
    for m in status::map_rows(pins)? {
        let l = labels(&[("map", &m.name)]);
        if m.fill_pct.is_some() {
            entries.get_or_create(&l).set(m.entries.unwrap_or(0) as i64);
            max.get_or_create(&l).set(m.max_entries as i64);
        }
    }

    let b = maps.build.get(&0, 0)?;
    reg.register(
        "netpath_agent",
        "The host, its interfaces, the netpath that loaded the programs, how they are attached",
        Info::new(labels(&[
            ("host", &a.host),
            ("uplink", &a.uplink),
            ("bridge", &a.bridge),
            ("version", netpath_common::name_str(&b.version)),
            ("tc_attach", a.tc_attach),
            ("xdp", a.xdp),
        ])),
    );
    let times = gauge_family(
        &mut reg,
        "netpath_start_time_seconds",
        "Unix time the agent started (what=\"agent\") and the datapath was first attached (what=\"datapath\")",
    );
    times
        .get_or_create(&labels(&[("what", "agent")]))
        .set(a.agent_started_at as i64);
    times
        .get_or_create(&labels(&[("what", "datapath")]))
        .set(a.attached_at as i64);
    let generation = Gauge::<i64>::default();
    generation.set(a.generation as i64);
    reg.register(
        "netpath_agent_generation",
        "Agents that have adopted this datapath",
        generation,
    );

    if let Some(f) = crate::inspect::status::fleet(&maps, crate::maps::now())? {
        what_gauges(
            &mut reg,
            "netpath_etcd",
            "The fleet's store ([etcd]): up (1 while it answers), registered (1 while this host's subnet is under a live lease), hosts (other hosts it lists), skipped (registrations left out), seconds_since_answer",
            &[
                ("up", f.away_s.is_none() as i64),
                ("registered", f.registered as i64),
                ("hosts", f.hosts as i64),
                ("skipped", f.skipped as i64),
                (
                    "seconds_since_answer",
                    f.last_answer_s.map_or(-1, |s| s as i64),
                ),
            ],
        );
    }

    if let Some(d) = crate::inspect::status::docker(&maps, crate::maps::now())? {
        what_gauges(
            &mut reg,
            "netpath_docker",
            "The Docker engine ([docker]): up (1 while it answers), containers (running), ports (published ports served), refused (published ports not served), ipam_plugin (1 while the agent serves the IPAM plugin of networks across hosts), seconds_since_answer",
            &[
                ("up", d.up as i64),
                ("containers", d.containers as i64),
                ("ports", d.ports as i64),
                ("refused", d.refused as i64),
                ("ipam_plugin", d.ipam_plugin as i64),
                (
                    "seconds_since_answer",
                    d.last_answer_s.map_or(-1, |s| s as i64),
                ),
            ],
        );
    }

    let nets = gauge_family(
        &mut reg,
        "netpath_network_endpoints",
        "Local containers netpath delivers to, by network (docker0 and Docker's other bridge networks); reachable=\"false\" for a network outside the host's subnet",
    );
    let remote = gauge_family(
        &mut reg,
        "netpath_network_remote_endpoints",
        "Containers of a network across hosts on other hosts that this host routes to (a /32 route each), by network, its mode and VNI",
    );
    let rows = crate::inspect::networks::rows(&maps)?;
    for n in &rows {
        if let Some(a) = &n.across_hosts {
            remote
                .get_or_create(&labels(&[
                    ("network", &n.network),
                    ("subnet", &n.subnet),
                    ("mode", &a.mode),
                    ("vni", &a.vni.to_string()),
                ]))
                .set(a.remote_containers as i64);
        }
    }
    for n in rows {
        let reachable = if n.reachable_from_peers {
            "true"
        } else {
            "false"
        };
        nets.get_or_create(&labels(&[
            ("network", &n.network),
            ("bridge", &n.bridge),
            ("subnet", &n.subnet),
            ("origin", n.origin),
            ("reachable", reachable),
        ]))
        .set(n.containers as i64);
    }

    let mut out = String::new();
    encode(&mut out, &reg).context("encoding the metrics")?;
    Ok(out)
}

/// Binds `[metrics] listen` before anything is attached, so a taken port is an error
/// that leaves nothing behind.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("[metrics] listen = \"{addr}\": cannot listen there"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves `/metrics` until the agent exits. A failed read becomes a 500 with the
/// reason; any other path a 404.
pub async fn serve(listener: std::net::TcpListener, pins: PinDir) -> Result<()> {
    use http_body_util::Full;
    use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    log::info!("serving Prometheus metrics on http://{addr}/metrics");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                continue;
            }
        };
        let pins = pins.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let pins = pins.clone();
                async move {
                    let (code, ctype, body) = if req.uri().path() != "/metrics" {
                        (
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            "netpath serves /metrics only\n".to_owned(),
                        )
                    } else {
                        match render(&pins) {
                            Ok(text) => (
                                StatusCode::OK,
                                "text/plain; version=0.0.4; charset=utf-8",
                                text,
                            ),
                            Err(e) => (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "text/plain",
                                format!("reading the datapath: {e:#}\n"),
                            ),
                        }
                    };
                    Response::builder()
                        .status(code)
                        .header("content-type", ctype)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                log::debug!("metrics connection: {e}");
            }
        });
    }
}
