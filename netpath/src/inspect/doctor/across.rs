//! Networks across hosts (`doctor --config`): etcd's networks against this host's
//! Docker networks and the datapath, and the IPAM plugin's socket as Docker reaches it.
//! Asked live, not as the agent last saw it: etcd and Docker through the config's
//! `[etcd]` and `[docker]`, the socket by a `Plugin.Activate` of its own.

use std::{
    io::{Read, Write},
    os::unix::fs::{FileTypeExt, MetadataExt},
};

use anyhow::{Context, bail};

use super::*;
use crate::sources::{
    docker::connect,
    file::{Config, Parsed},
    fleetnet::disagrees,
    fleetnet::{self, LABEL_NETWORK},
};

const CHECK: &str = "across-hosts";

/// How long etcd, Docker and the plugin get to answer.
const ASK_WAIT: Duration = Duration::from_secs(3);

pub(super) fn across(config: &Path, maps: &Maps, f: &mut Vec<Finding>) -> Result<()> {
    let cfg = match Config::load_leasing(config)? {
        Parsed::Ready(c) => c,
        Parsed::Unleased(_) => {
            f.push(bad(
                CHECK,
                Level::Warn,
                format!(
                    "{} has no subnet leased yet: networks across hosts not checked",
                    config.display()
                ),
                "start the agent: it leases a subnet from etcd",
            ));
            return Ok(());
        }
    };
    let (Some(e), Some(d)) = (&cfg.etcd, &cfg.docker) else {
        f.push(ok(
            CHECK,
            "no [etcd] and [docker] in the config: no networks across hosts on this host",
        ));
        return Ok(());
    };
    plugin(&d.plugin, f);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listing = rt.block_on(async {
        tokio::time::timeout(ASK_WAIT, async {
            let mut client = crate::sources::etcd::connect(e).await?;
            fleetnet::list(&mut client, &e.prefix, 0).await
        })
        .await
    });
    let listing = match listing {
        Ok(Ok(l)) => l,
        Ok(Err(err)) => {
            f.push(bad(
                CHECK,
                Level::Warn,
                format!("etcd could not be asked ({err:#}): networks across hosts not checked"),
                "check [etcd].endpoints and the members (etcdctl endpoint health)",
            ));
            return Ok(());
        }
        Err(_) => {
            f.push(bad(
                CHECK,
                Level::Warn,
                format!(
                    "etcd did not answer in {} s: networks across hosts not checked",
                    ASK_WAIT.as_secs()
                ),
                "check [etcd].endpoints and the members (etcdctl endpoint health)",
            ));
            return Ok(());
        }
    };
    if !listing.bad.is_empty() {
        f.push(bad(
            CHECK,
            Level::Warn,
            format!(
                "etcd holds {} network or address keys netpath cannot read, left out: {}",
                listing.bad.len(),
                listing.bad.first().map_or("", |s| s.as_str())
            ),
            format!("remove them (etcdctl del), or `netpath network rm` and create the network again; they live under {}/networks/ and {}/addresses/", e.prefix, e.prefix),
        ));
    }
    let docker = rt.block_on(async {
        tokio::time::timeout(ASK_WAIT, async {
            let docker = connect(d).await?;
            docker
                .list_networks(None)
                .await
                .context("listing Docker's networks")
        })
        .await
    });
    let have = match docker {
        Ok(Ok(n)) => n,
        Ok(Err(err)) => {
            f.push(bad(
                CHECK,
                Level::Warn,
                format!("{err:#}: Docker's networks across hosts not checked"),
                "check [docker].socket and that dockerd runs (docker version)",
            ));
            return Ok(());
        }
        Err(_) => {
            f.push(bad(
                CHECK,
                Level::Warn,
                format!("the Docker engine did not answer in {} s: its networks across hosts not checked", ASK_WAIT.as_secs()),
                "check that dockerd runs (docker version)",
            ));
            return Ok(());
        }
    };
    let nets = crate::reconcile::networks::observe(maps)?;
    for n in listing.networks.values() {
        let Some(dn) = have
            .iter()
            .find(|x| x.name.as_deref() == Some(n.name.as_str()))
        else {
            f.push(bad(
                CHECK,
                Level::Fail,
                format!(
                    "network {} ({}) is in etcd but not on this host's Docker: `docker run --net {}` fails here",
                    n.name, n.subnet, n.name
                ),
                "the agent makes it within 10 s of seeing it: see its log (\"docker: cannot make network\")",
            ));
            continue;
        };
        if let Some(why) = disagrees(n, dn, &d.plugin) {
            let (problem, fix) = why.split_once(". ").unwrap_or((&why, ""));
            f.push(bad(CHECK, Level::Fail, problem.to_owned(), fix.to_owned()));
            continue;
        }
        let routed = nets
            .iter()
            .any(|m| m.name == n.name && m.subnet == n.subnet && m.span.is_some());
        f.push(if routed {
            ok(
                CHECK,
                format!(
                    "network {} ({}, {}, vni {}): Docker's agrees with etcd, the datapath routes it across hosts",
                    n.name, n.subnet, n.mode, n.vni
                ),
            )
        } else {
            bad(
                CHECK,
                Level::Warn,
                format!(
                    "network {} ({}) is on Docker as etcd says, but the datapath does not route it across hosts yet",
                    n.name, n.subnet
                ),
                "wait a second and ask again; if it stays, see the agent's log (\"skipped\")",
            )
        });
    }
    for dn in &have {
        let Some(name) = dn.labels.as_ref().and_then(|l| l.get(LABEL_NETWORK)) else {
            continue;
        };
        if !listing.networks.values().any(|n| &n.name == name) {
            f.push(bad(
                CHECK,
                Level::Warn,
                format!(
                    "Docker's network {name} was made by netpath but etcd no longer has it: its containers stay, cut off from other hosts"
                ),
                format!(
                    "`docker network disconnect` them; the agent removes {name} once it is empty"
                ),
            ));
        }
    }
    Ok(())
}

/// The plugin's socket: there, a socket, root's only, and answering `Plugin.Activate` as
/// an IPAM driver, as dockerd asks it.
fn plugin(name: &str, f: &mut Vec<Finding>) {
    let path = crate::state::plugin_socket(crate::state::DOCKER_PLUGIN_DIR, name);
    let shown = path.display();
    let fix_start = "start the agent with [etcd] and [docker]: it serves the plugin, and Docker looks for it there";
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(err) => {
            f.push(bad(
                CHECK,
                Level::Fail,
                format!("the IPAM plugin {name} is not at {shown} ({err}): Docker cannot reach it, `docker run` on its networks fails"),
                fix_start,
            ));
            return;
        }
    };
    if !meta.file_type().is_socket() {
        f.push(bad(
            CHECK,
            Level::Fail,
            format!("{shown} is not a socket: Docker cannot reach the IPAM plugin {name}"),
            format!("remove {shown}, then restart the agent"),
        ));
        return;
    }
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        f.push(bad(
            CHECK,
            Level::Fail,
            format!(
                "{shown} is owned by uid {} with mode {:o}: others than root may hand out the fleet's addresses",
                meta.uid(),
                meta.mode() & 0o777
            ),
            format!("remove {shown} and restart the agent: it binds the socket root-only"),
        ));
        return;
    }
    match activate(&path) {
        Ok(body) if body.contains("IpamDriver") => f.push(ok(
            CHECK,
            format!("the IPAM plugin {name} answers on {shown}, root only"),
        )),
        Ok(body) => f.push(bad(
            CHECK,
            Level::Fail,
            format!("{shown} answers, but not as an IPAM driver: {}", body.trim()),
            format!("another program holds {shown}: stop it, then restart the agent"),
        )),
        Err(err) => f.push(bad(
            CHECK,
            Level::Fail,
            format!("the IPAM plugin {name} does not answer on {shown} ({err:#}): Docker's calls to it hang or fail"),
            fix_start,
        )),
    }
}

/// One `POST /Plugin.Activate` on the socket: the answer's body.
fn activate(path: &Path) -> Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path).context("connecting")?;
    s.set_read_timeout(Some(ASK_WAIT))?;
    s.set_write_timeout(Some(ASK_WAIT))?;
    s.write_all(
        b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let mut answer = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut answer)
        .context("reading the answer")?;
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP answer");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
