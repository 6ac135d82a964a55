//! A tiny traffic tool for the lab, so tests need nothing beyond iproute2 and ping:
//!
//!   np-probe serve PORT SECONDS        echo UDP datagrams and TCP streams on PORT
//!   np-probe check udp|tcp ADDR PORT [SIZE [SPORT]]
//!                                      send a message (padded to SIZE bytes, from source
//!                                      port SPORT), expect it echoed; exit 0 if so. UDP
//!                                      sends up to 5 times.
//!   np-probe refused udp|tcp ADDR PORT exit 0 if the far end refuses (TCP RST, or ICMP
//!                                      port unreachable for UDP)
//!   np-probe try udp|tcp ADDR PORT     one attempt; prints what happened and how long
//!                                      it took: "echoed", "refused" (RST or ICMP port
//!                                      unreachable), "unreachable" (other ICMP
//!                                      unreachables, administratively prohibited
//!                                      among them), "timeout" (3 s), "error ..."
//!   np-probe flows udp|tcp ADDR PORT N open N flows at once, each with its own message;
//!                                      exit 0 if every flow got its own message back
//!   np-probe hold ADDR PORT N GOFILE   open N TCP connections, each echoing its own
//!                                      message; print "N open", wait (up to 10 min)
//!                                      for GOFILE to exist, then each echoes again;
//!                                      print "K of N answered again", exit 0 if all did
//!   np-probe connrate ADDR PORT SECONDS [PER_SECOND]
//!                                      open, use and close TCP connections one after the
//!                                      other (at most PER_SECOND); print connections per
//!                                      second
//!   np-probe rr ADDR PORT SECONDS [PER_SECOND]
//!                                      TCP request/response on one connection (1 byte
//!                                      each way, Nagle off; at most PER_SECOND) to an echo
//!                                      server; print "TPS P50_US P99_US COUNT"
//!   np-probe rrmany ADDR PORT SECONDS N
//!                                      the same on N connections at once (opened first,
//!                                      all together), each a request in flight; print
//!                                      "TPS P50_US P99_US COUNT OPEN"; exit 0 if all N
//!                                      opened and every one completed a transaction
//!   np-probe udpsink PORT SECONDS      count UDP datagrams on PORT until SECONDS pass or
//!                                      0.5 s of silence after the first; print
//!                                      "RECEIVED PPS" (rate between first and last)
//!   np-probe udpflood ADDR PORT SECONDS SIZE
//!                                      send SIZE-byte UDP datagrams as fast as possible;
//!                                      print "SENT PPS"
//!
//! Every wait is bounded, so a test never hangs on it.

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

/// Echo servers on `port` for `secs`: UDP, and TCP with one task per connection on one
/// thread (thousands of connections are held open at once; a thread each would hit the
/// machine's pid limit).
fn serve(port: u16, secs: u64) -> std::io::Result<()> {
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        }
    });
    // A long accept queue: thousands of connections per second arrive.
    let sock = tcp_socket(port)?;
    sock.listen(4096)?;
    sock.set_nonblocking(true)?;
    let std_listener: TcpListener = sock.into();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let accept = async {
            loop {
                if let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(echo(s));
                }
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
        }
        Ok(())
    })
}

/// Echoes a TCP stream until its end (or 10 minutes of silence: flows are held open).
async fn echo(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 16384];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(600), s.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {
                if s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
}

/// A TCP socket bound to `port` on every address, with SO_REUSEADDR.
fn tcp_socket(port: u16) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    Ok(sock)
}

fn message(proto: &str, size: usize) -> Vec<u8> {
    let mut msg = format!("netpath-probe {proto} {}", std::process::id()).into_bytes();
    if size > msg.len() {
        msg.resize(size, b'.');
    }
    msg
}

/// `addr` (an IPv4 address, or a name the container's resolver knows, e.g. a compose
/// service through Docker's embedded DNS) and `port`.
fn addr(addr: &str, port: u16) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    (addr, port)
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no IPv4 address")))
}

fn check(proto: &str, to: SocketAddr, size: usize, sport: u16) -> std::io::Result<bool> {
    let msg = message(proto, size);
    let msg = &msg[..];
    let mut buf = [0u8; 65536];
    match proto {
        "udp" => {
            let s = UdpSocket::bind(("0.0.0.0", sport))?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            let mut last = None;
            for _ in 0..5 {
                // A send can fail once on the way to learning a path MTU: try again.
                if let Err(e) = s.send_to(msg, to) {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                if let Ok(n) = s.recv(&mut buf) {
                    return Ok(&buf[..n] == msg);
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
            Ok(false)
        }
        "tcp" => {
            let mut s = if sport == 0 {
                TcpStream::connect_timeout(&to, Duration::from_secs(3))?
            } else {
                let sock = tcp_socket(sport)?;
                sock.connect_timeout(&to.into(), Duration::from_secs(3))?;
                sock.into()
            };
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(msg)?;
            let got = read_n(&mut s, msg.len())?;
            Ok(got == msg)
        }
        _ => Err(std::io::Error::other("proto must be udp or tcp")),
    }
}

fn read_n(s: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while got.len() < n {
        let k = s.read(&mut buf)?;
        if k == 0 {
            break;
        }
        got.extend_from_slice(&buf[..k]);
    }
    Ok(got)
}

/// Whether the far end refuses: TCP answers the connect with RST; for UDP an ICMP port
/// unreachable turns into ECONNREFUSED on a connected socket.
fn refused(proto: &str, to: SocketAddr) -> std::io::Result<bool> {
    match proto {
        "tcp" => match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
            Err(e) => Err(e),
            Ok(_) => Ok(false),
        },
        "udp" => {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(to)?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut buf = [0u8; 64];
            for _ in 0..3 {
                let r = s.send(b"anyone?").and_then(|_| s.recv(&mut buf));
                match r {
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(true),
                    Ok(_) => return Ok(false),
                    Err(_) => {}
                }
            }
            Ok(false)
        }
        _ => Err(std::io::Error::other("proto must be udp or tcp")),
    }
}

/// One attempt to reach an echo server at `to`: what the far end (or the path) answered,
/// as one word, and the milliseconds it took.
fn attempt(proto: &str, to: SocketAddr) -> std::io::Result<(String, u128)> {
    let start = Instant::now();
    let word = |r: std::io::Result<Vec<u8>>| match r {
        Ok(v) if v == b"anyone?" => "echoed".to_owned(),
        Ok(v) => format!("error: got {} unexpected bytes", v.len()),
        Err(e) => match e.kind() {
            ErrorKind::ConnectionRefused => "refused".into(),
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable".into(),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
            _ => format!("error: {e}"),
        },
    };
    let limit = Duration::from_secs(3);
    let outcome = match proto {
        "tcp" => word(TcpStream::connect_timeout(&to, limit).and_then(|mut s| {
            s.set_read_timeout(Some(limit))?;
            s.write_all(b"anyone?")?;
            read_n(&mut s, 7)
        })),
        "udp" => word((|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(to)?;
            s.set_read_timeout(Some(limit))?;
            s.send(b"anyone?")?;
            let mut buf = [0u8; 64];
            let n = s.recv(&mut buf)?;
            Ok(buf[..n].to_vec())
        })()),
        _ => return Err(std::io::Error::other("proto must be udp or tcp")),
    };
    Ok((outcome, start.elapsed().as_millis()))
}

/// Opens `n` flows at once to `to`, each with its own message, and checks that each got
/// exactly its own message back. Returns how many did.
fn flows(proto: &str, to: SocketAddr, n: usize) -> std::io::Result<usize> {
    let tag = |i: usize| format!("flow {i} of {}", std::process::id()).into_bytes();
    match proto {
        "udp" => {
            let socks: Vec<UdpSocket> = (0..n)
                .map(|_| {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .collect::<std::io::Result<_>>()?;
            let mut done = vec![false; n];
            let mut buf = [0u8; 256];
            for _round in 0..5 {
                for (i, s) in socks.iter().enumerate() {
                    if !done[i] {
                        let _ = s.send_to(&tag(i), to);
                    }
                }
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until && done.iter().any(|d| !d) {
                    let mut any = false;
                    for (i, s) in socks.iter().enumerate() {
                        if let Ok(k) = s.recv(&mut buf) {
                            any = true;
                            if buf[..k] == tag(i)[..] {
                                done[i] = true;
                            } else {
                                // Another flow's reply on this socket: the NAT mixed them up.
                                return Err(std::io::Error::other(format!(
                                    "flow {i} got {:?}",
                                    String::from_utf8_lossy(&buf[..k])
                                )));
                            }
                        }
                    }
                    if !any {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                if done.iter().all(|d| *d) {
                    break;
                }
            }
            Ok(done.iter().filter(|d| **d).count())
        }
        "tcp" => {
            // Each connection says its tag as soon as it is open; the echoes are read once
            // every connection is open, all at once.
            let mut conns = HashMap::new();
            for i in 0..n {
                if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(3))
                    && s.write_all(&tag(i)).is_ok()
                {
                    conns.insert(i, s);
                }
            }
            let mut ok = 0;
            for (i, s) in conns.iter_mut() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                if read_n(s, tag(*i).len()).is_ok_and(|g| g == tag(*i)) {
                    ok += 1;
                }
            }
            Ok(ok)
        }
        _ => Err(std::io::Error::other("proto must be udp or tcp")),
    }
}

/// Opens `n` TCP connections to `to`, each echoing its own message; once `go` exists,
/// each echoes a second one. Returns (open after the first echo, answered again).
fn hold(to: SocketAddr, n: usize, go: &std::path::Path) -> std::io::Result<(usize, usize)> {
    let tag = |i: usize, round: u8| format!("{round} hold {i} of {}", std::process::id());
    let mut conns = Vec::new();
    for i in 0..n {
        if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            && s.write_all(tag(i, 1).as_bytes()).is_ok()
        {
            conns.push((i, s));
        }
    }
    let echo = |conns: &mut Vec<(usize, TcpStream)>, round: u8| {
        conns.retain_mut(|(i, s)| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            read_n(s, tag(*i, round).len()).is_ok_and(|g| g == tag(*i, round).as_bytes())
        });
    };
    echo(&mut conns, 1);
    let open = conns.len();
    println!("{open} open");
    let _ = std::io::stdout().flush();
    let until = Instant::now() + Duration::from_secs(600);
    while !go.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every message first, then every echo: the connections answer in parallel.
    conns.retain_mut(|(i, s)| s.write_all(tag(*i, 2).as_bytes()).is_ok());
    echo(&mut conns, 2);
    Ok((open, conns.len()))
}

/// Lets the process hold as many sockets as its hard limit allows (thousands of
/// connections from one process).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Waits until the `n`-th of `rate` events per second since `start` is due (no wait
/// without a rate).
fn pace(start: Instant, n: u64, rate: Option<f64>) {
    if let Some(r) = rate.filter(|r| *r > 0.0) {
        let due = start + Duration::from_secs_f64(n as f64 / r);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

/// TCP connections opened, used (one echo) and closed in `secs` seconds, one at a time,
/// at most `rate` per second.
fn connrate(to: SocketAddr, secs: f64, rate: Option<f64>) -> (u64, u64) {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let (mut ok, mut failed) = (0, 0);
    while Instant::now() < until {
        pace(start, ok + failed, rate);
        let r = TcpStream::connect_timeout(&to, Duration::from_secs(3)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"x")?;
            read_n(&mut s, 1)
        });
        match r {
            Ok(v) if v == b"x" => ok += 1,
            _ => failed += 1,
        }
    }
    (ok, failed)
}

/// Request/response over one TCP connection for `secs`: transactions per second and the
/// 50th and 99th percentile of their latency in microseconds, and how many there were.
/// At most `rate` transactions per second.
fn rr(to: SocketAddr, secs: f64, rate: Option<f64>) -> std::io::Result<(f64, f64, f64, usize)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut lat = Vec::with_capacity(100_000);
    let mut b = [0u8; 1];
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        pace(start, lat.len() as u64, rate);
        let t = Instant::now();
        s.write_all(b"r")?;
        s.read_exact(&mut b)?;
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (p50, p99) = p50_p99(&mut lat);
    Ok((lat.len() as f64 / elapsed, p50, p99, lat.len()))
}

/// The median and the 99th percentile of `lat` (sorted in place); NaN when it is empty.
fn p50_p99(lat: &mut [f64]) -> (f64, f64) {
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pct(0.50), pct(0.99))
}

/// Request/response on `n` TCP connections at once for `secs`: (transactions/s over all,
/// p50 µs, p99 µs, transactions, connections open, connections that completed none).
/// The connections are opened together first (each within 3 s), then each keeps one
/// request in flight.
fn rr_many(
    to: SocketAddr,
    secs: f64,
    n: usize,
) -> std::io::Result<(f64, f64, f64, usize, usize, usize)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let connects: Vec<_> = (0..n)
            .map(|_| {
                tokio::spawn(async move {
                    let s = tokio::time::timeout(
                        Duration::from_secs(3),
                        tokio::net::TcpStream::connect(to),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    s.set_nodelay(true).ok()?;
                    Some(s)
                })
            })
            .collect();
        let mut open = Vec::with_capacity(n);
        for c in connects {
            if let Ok(Some(s)) = c.await {
                open.push(s);
            }
        }
        let opened = open.len();
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(secs);
        let runs: Vec<_> = open
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut b = [0u8; 1];
                    while Instant::now() < until {
                        let t = Instant::now();
                        let one = async {
                            s.write_all(b"r").await?;
                            s.read_exact(&mut b).await
                        };
                        match tokio::time::timeout(Duration::from_secs(3), one).await {
                            Ok(Ok(_)) => lat.push(t.elapsed().as_nanos() as f64 / 1000.0),
                            _ => break,
                        }
                    }
                    lat
                })
            })
            .collect();
        let (mut lat, mut idle) = (Vec::new(), 0);
        for r in runs {
            let l = r.await.unwrap_or_default();
            idle += l.is_empty() as usize;
            lat.extend(l);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let (p50, p99) = p50_p99(&mut lat);
        Ok((
            lat.len() as f64 / elapsed,
            p50,
            p99,
            lat.len(),
            opened,
            idle,
        ))
    })
}

/// Counts datagrams on `port`: (received, per second between the first and the last).
fn udpsink(port: u16, secs: f64) -> std::io::Result<(u64, f64)> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // A deep queue: the rate measured is the path's, not this reader's scheduling.
    let _ = s.set_recv_buffer_size(8 << 20);
    s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = [0u8; 2048];
    let (mut n, mut first, mut last) = (0u64, None, Instant::now());
    while Instant::now() < deadline {
        match s.recv(&mut buf) {
            Ok(_) => {
                last = Instant::now();
                first.get_or_insert(last);
                n += 1;
            }
            Err(_) if first.is_some() && last.elapsed() > Duration::from_millis(500) => break,
            Err(_) => {}
        }
    }
    let span = first.map_or(0.0, |f| (last - f).as_secs_f64());
    let pps = if n > 1 && span > 0.0 {
        (n - 1) as f64 / span
    } else {
        0.0
    };
    Ok((n, pps))
}

/// Sends `size`-byte datagrams to `to` for `secs`: (sent, per second).
fn udpflood(to: SocketAddr, secs: f64, size: usize) -> std::io::Result<(u64, f64)> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    let msg = vec![b'u'; size.max(1)];
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < until {
        // A batch between clock reads; a full queue (ENOBUFS) is the path pushing back.
        for _ in 0..64 {
            if s.send(&msg).is_ok() {
                n += 1;
            }
        }
    }
    Ok((n, n as f64 / start.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    let secs = |s: &str| s.parse::<f64>().ok().filter(|x| *x > 0.0).unwrap_or(1.0);
    // The optional PER_SECOND of connrate and rr (none: as fast as it goes).
    let rate = |rest: &[&str]| rest.first().and_then(|r| r.parse::<f64>().ok());
    let result = match a.as_slice() {
        ["serve", port, secs] => serve(num(port) as u16, num(secs).max(1)).map(|_| true),
        ["check", proto, host, port, rest @ ..] if rest.len() <= 2 => {
            let size = rest.first().map(|s| num(s)).unwrap_or(0) as usize;
            let sport = rest.get(1).map(|s| num(s)).unwrap_or(0) as u16;
            addr(host, num(port) as u16).and_then(|to| check(proto, to, size, sport))
        }
        ["refused", proto, host, port] => {
            addr(host, num(port) as u16).and_then(|to| refused(proto, to))
        }
        ["try", proto, host, port] => addr(host, num(port) as u16)
            .and_then(|to| attempt(proto, to))
            .map(|(outcome, ms)| {
                println!("{outcome} {ms}");
                true
            }),
        ["flows", proto, host, port, n] => {
            let n = num(n) as usize;
            addr(host, num(port) as u16)
                .and_then(|to| flows(proto, to, n))
                .map(|k| {
                    println!("{k} of {n} flows echoed");
                    k == n
                })
        }
        ["hold", host, port, n, go] => {
            let n = num(n) as usize;
            addr(host, num(port) as u16)
                .and_then(|to| hold(to, n, std::path::Path::new(go)))
                .map(|(open, again)| {
                    println!("{again} of {n} answered again ({open} were open)");
                    open == n && again == n
                })
        }
        ["connrate", host, port, t, rest @ ..] if rest.len() <= 1 => addr(host, num(port) as u16)
            .map(|to| {
                let secs = secs(t);
                let (ok, failed) = connrate(to, secs, rate(rest));
                println!(
                    "{:.1} connections/s ({ok} in {secs} s, {failed} failed)",
                    ok as f64 / secs
                );
                ok > 0
            }),
        ["rr", host, port, t, rest @ ..] if rest.len() <= 1 => addr(host, num(port) as u16)
            .and_then(|to| rr(to, secs(t), rate(rest)))
            .map(|(tps, p50, p99, n)| {
                println!("{tps:.1} {p50:.1} {p99:.1} {n}");
                n > 0
            }),
        ["rrmany", host, port, t, n] => {
            let n = num(n) as usize;
            addr(host, num(port) as u16)
                .and_then(|to| rr_many(to, secs(t), n))
                .map(|(tps, p50, p99, count, open, idle)| {
                    println!("{tps:.1} {p50:.1} {p99:.1} {count} {open}");
                    if idle > 0 {
                        eprintln!("{idle} of {open} connections completed no transaction");
                    }
                    open == n && idle == 0 && count > 0
                })
        }
        ["udpsink", port, t] => udpsink(num(port) as u16, secs(t)).map(|(n, pps)| {
            println!("{n} {pps:.0}");
            n > 0
        }),
        ["udpflood", host, port, t, size] => addr(host, num(port) as u16)
            .and_then(|to| udpflood(to, secs(t), num(size) as usize))
            .map(|(n, pps)| {
                println!("{n} {pps:.0}");
                n > 0
            }),
        _ => {
            eprintln!(
                "usage: np-probe serve PORT SECONDS | check udp|tcp ADDR PORT [SIZE [SPORT]] | refused udp|tcp ADDR PORT | try udp|tcp ADDR PORT | flows udp|tcp ADDR PORT N | connrate ADDR PORT SECONDS | rr ADDR PORT SECONDS | rrmany ADDR PORT SECONDS N | udpsink PORT SECONDS | udpflood ADDR PORT SECONDS SIZE"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("no (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
