//! A tiny traffic tool for the lab, so tests need nothing beyond iproute2 and ping:
//!
//!   np-probe serve PORT SECONDS        echo UDP datagrams and TCP streams on PORT
//!   np-probe check udp|tcp ADDR PORT [SIZE]
//!                                      send a message (padded to SIZE bytes), expect it
//!                                      echoed; exit 0 if so. UDP sends up to 5 times.
//!
//! Every wait is bounded, so a test never hangs on it.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

fn serve(port: u16, secs: u64) -> std::io::Result<()> {
    let until = Instant::now() + Duration::from_secs(secs);
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    udp.set_read_timeout(Some(Duration::from_millis(50)))?;
    let tcp = TcpListener::bind(("0.0.0.0", port))?;
    tcp.set_nonblocking(true)?;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < until {
        if let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
        if let Ok((mut s, _)) = tcp.accept() {
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&buf[..n]);
            }
        }
    }
    Ok(())
}

fn check(proto: &str, addr: &str, port: u16, size: usize) -> std::io::Result<bool> {
    let mut msg = format!("netpath-probe {proto} {}", std::process::id()).into_bytes();
    if size > msg.len() {
        msg.resize(size, b'.');
    }
    let msg = &msg[..];
    let mut buf = [0u8; 65536];
    match proto {
        "udp" => {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            let mut last = None;
            for _ in 0..5 {
                // A send can fail once on the way to learning a path MTU: try again.
                if let Err(e) = s.send_to(msg, (addr, port)) {
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
            let sa = format!("{addr}:{port}")
                .parse()
                .map_err(std::io::Error::other)?;
            let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(msg)?;
            let mut got = Vec::new();
            while got.len() < msg.len() {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok(got == msg)
        }
        _ => Err(std::io::Error::other("proto must be udp or tcp")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match a.as_slice() {
        ["serve", port, secs] => {
            serve(port.parse().unwrap_or(0), secs.parse().unwrap_or(10)).map(|_| true)
        }
        ["check", proto, addr, port] => check(proto, addr, port.parse().unwrap_or(0), 0),
        ["check", proto, addr, port, size] => check(
            proto,
            addr,
            port.parse().unwrap_or(0),
            size.parse().unwrap_or(0),
        ),
        _ => {
            eprintln!(
                "usage: np-probe serve PORT SECONDS | np-probe check udp|tcp ADDR PORT [SIZE]"
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
            eprintln!("no echo");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
