//! netpath as Docker's IPAM driver for networks across hosts: a legacy plugin (HTTP with
//! JSON on the unix socket `/run/docker/plugins/<plugin>.sock`, root only) that hands out
//! each network's addresses from etcd (sources/fleetnet.rs), so that an address is one
//! container's in the whole fleet, `--ip` included.
//!
//! Every handler answers within [`DEADLINE`]: it talks to etcd only, never to Docker's API
//! (dockerd waits on the plugin without a timeout, and calls it while it restores its
//! containers: a handler that called back would hang it). etcd away means a new address
//! cannot be made sure of: it is refused with an error that says so; what runs keeps
//! running.

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use etcd_client::Client;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{
    sources::{
        etcd as store,
        fleetnet::{self, FleetNet, IPAM_OPT_NETWORK, Reserve},
    },
    state::Etcd,
};

/// The longest a request takes before it is answered with an error.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What the gateway's request carries in its options.
const GATEWAY_TYPE: &str = "com.docker.network.gateway";

pub struct Ipam {
    etcd: Etcd,
    host: String,
    client: Mutex<Option<Client>>,
}

/// Binds the plugin's socket (a stale one is replaced), root only, and serves it.
pub fn spawn(etcd: Etcd, host: String, path: PathBuf) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the old {}", path.display())),
    }
    // Bound with a umask that leaves nobody but root a moment to connect.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(&path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} root-only", path.display()))?;
    log::info!(
        "serving the IPAM plugin for networks across hosts on {}",
        path.display()
    );
    let ipam = Arc::new(Ipam {
        etcd,
        host,
        client: Mutex::new(None),
    });
    tokio::spawn(serve(listener, ipam));
    Ok(())
}

async fn serve(listener: tokio::net::UnixListener, ipam: Arc<Ipam>) {
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response, body::Bytes, service::service_fn};
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("ipam: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ipam = ipam.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let ipam = ipam.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let body = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(e) => Bytes::from(format!("{e}")),
                    };
                    let answer = match tokio::time::timeout(DEADLINE, ipam.handle(&path, &body))
                        .await
                    {
                        Ok(Ok(v)) => v,
                        Ok(Err(e)) => {
                            log::warn!("ipam: {path}: {e:#}");
                            json!({ "Error": format!("netpath: {e:#}") })
                        }
                        Err(_) => {
                            log::warn!("ipam: {path}: no answer from etcd within {DEADLINE:?}");
                            json!({ "Error": format!(
                                    "netpath: etcd did not answer within {} s: the address cannot be made sure of (is etcd up?)",
                                    DEADLINE.as_secs()
                                ) })
                        }
                    };
                    Response::builder()
                        .header("content-type", "application/vnd.docker.plugins.v1+json")
                        .body(Full::new(Bytes::from(answer.to_string())))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                log::debug!("ipam connection: {e}");
            }
        });
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolRequest {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
    #[serde(default, rename = "V6")]
    v6: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AddressRequest {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    options: Option<HashMap<String, String>>,
}

/// A request body as `T`; garbage is an error that says what was expected.
fn parse<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).with_context(|| {
        format!(
            "{what}: the request is not the JSON Docker sends ({:?})",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        )
    })
}

impl Ipam {
    async fn handle(&self, path: &str, body: &[u8]) -> Result<Value> {
        match path {
            "/Plugin.Activate" => Ok(json!({ "Implements": ["IpamDriver"] })),
            "/IpamDriver.GetCapabilities" => Ok(json!({ "RequiresMACAddress": false })),
            "/IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
                "LocalDefaultAddressSpace": "netpath",
                "GlobalDefaultAddressSpace": "netpath",
            })),
            "/IpamDriver.RequestPool" => self.request_pool(parse("RequestPool", body)?).await,
            "/IpamDriver.ReleasePool" => Ok(json!({})),
            "/IpamDriver.RequestAddress" => {
                self.request_address(parse("RequestAddress", body)?).await
            }
            "/IpamDriver.ReleaseAddress" => {
                self.release_address(parse("ReleaseAddress", body)?).await
            }
            other => bail!("{other}: not an IPAM call netpath knows"),
        }
    }

    /// A client of etcd, connected on first use and again after an error.
    async fn client(&self) -> Result<Client> {
        let mut c = self.client.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let fresh = store::connect(&self.etcd).await?;
        *c = Some(fresh.clone());
        Ok(fresh)
    }

    /// Runs `f` with a client. An error of etcd's drops the client (the next call
    /// reconnects) and says that etcd could not be asked.
    async fn with_client<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let away = |e: anyhow::Error| {
            e.context(format!(
                "etcd at {} could not be asked, so no new address can be made sure of (running containers are not affected)",
                self.etcd.endpoints.join(", ")
            ))
        };
        let c = self.client().await.map_err(away)?;
        let r = f(c).await;
        match r {
            Err(e) if e.chain().any(|c| c.is::<etcd_client::Error>()) => {
                *self.client.lock().await = None;
                Err(away(e))
            }
            r => r,
        }
    }

    async fn network(&self, name: &str) -> Result<FleetNet> {
        let prefix = self.etcd.prefix.clone();
        let nets = self
            .with_client(|mut c| async move { fleetnet::networks(&mut c, &prefix).await })
            .await?;
        nets.get(name).cloned().with_context(|| {
            format!("no network across hosts named {name:?} in etcd (`netpath network list`)")
        })
    }

    async fn request_pool(&self, r: PoolRequest) -> Result<Value> {
        if r.v6 {
            bail!("networks across hosts are IPv4 only: create the network without --ipv6");
        }
        if !r.sub_pool.is_empty() {
            bail!("--ip-range is not supported: the whole subnet is the network's");
        }
        let name = r
            .options
            .as_ref()
            .and_then(|o| o.get(IPAM_OPT_NETWORK))
            .cloned();
        let net = match name {
            Some(n) => self.network(&n).await?,
            None => {
                let prefix = self.etcd.prefix.clone();
                let nets = self
                    .with_client(|mut c| async move { fleetnet::networks(&mut c, &prefix).await })
                    .await?;
                nets.into_values()
                    .find(|n| n.subnet.to_string() == r.pool)
                    .with_context(|| {
                        format!(
                            "no network across hosts has subnet {:?}: create one with `netpath network create --subnet ...`, which makes it on every host",
                            r.pool
                        )
                    })?
            }
        };
        if !r.pool.is_empty() && r.pool != net.subnet.to_string() {
            bail!(
                "network {} has subnet {}, not {}",
                net.name,
                net.subnet,
                r.pool
            );
        }
        let gw = format!("{}/{}", net.gateway, net.subnet.prefix_len());
        Ok(json!({
            "PoolID": net.name,
            "Pool": net.subnet.to_string(),
            "Data": { GATEWAY_TYPE: gw },
        }))
    }

    async fn request_address(&self, r: AddressRequest) -> Result<Value> {
        let net = self.network(&r.pool_id).await?;
        let len = net.subnet.prefix_len();
        let gateway = r
            .options
            .as_ref()
            .and_then(|o| o.get("RequestAddressType"))
            .is_some_and(|t| t == GATEWAY_TYPE);
        let wanted: Option<Ipv4Addr> = match r.address.as_str() {
            "" => None,
            a => Some(
                a.split('/')
                    .next()
                    .unwrap_or(a)
                    .parse()
                    .with_context(|| format!("{a:?} is not an IPv4 address"))?,
            ),
        };
        if gateway {
            // The same on every host: the bridge's own address, nobody's container.
            return Ok(json!({ "Address": format!("{}/{len}", net.gateway), "Data": {} }));
        }
        let prefix = self.etcd.prefix.clone();
        let host = self.host.clone();
        let addr = match wanted {
            Some(a) => {
                if !net.holds_container(a) {
                    bail!(
                        "{a} is not a container address of network {} ({}, gateway {})",
                        net.name,
                        net.subnet,
                        net.gateway
                    );
                }
                let name = net.name.clone();
                let got = self
                    .with_client(|mut c| async move {
                        fleetnet::reserve(&mut c, &prefix, &name, a, &host).await
                    })
                    .await?;
                match got {
                    Reserve::Done => a,
                    // Ours already: Docker asks again for what it holds (a restart).
                    Reserve::Held(h) if h == self.host => a,
                    Reserve::Held(h) if h.is_empty() => {
                        bail!("{a} of network {} was being freed: try again", net.name)
                    }
                    Reserve::Held(h) => bail!(
                        "{a} of network {} is in use on host {h}: choose another --ip",
                        net.name
                    ),
                }
            }
            None => {
                let n = net.clone();
                self.with_client(|mut c| async move {
                    fleetnet::allocate(&mut c, &prefix, &n, &host).await
                })
                .await?
            }
        };
        log::info!("ipam: {addr} of network {} is this host's", net.name);
        Ok(json!({ "Address": format!("{addr}/{len}"), "Data": {} }))
    }

    async fn release_address(&self, r: AddressRequest) -> Result<Value> {
        let a: Ipv4Addr = r
            .address
            .split('/')
            .next()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("{:?} is not an IPv4 address", r.address))?;
        fleetnet::check_name(&r.pool_id).map_err(anyhow::Error::msg)?;
        let prefix = self.etcd.prefix.clone();
        let host = self.host.clone();
        let name = r.pool_id.clone();
        let freed = self
            .with_client(|mut c| async move {
                fleetnet::release(&mut c, &prefix, &name, a, &host).await
            })
            .await?;
        if freed {
            log::info!("ipam: {a} of network {} released", r.pool_id);
        }
        Ok(json!({}))
    }
}
