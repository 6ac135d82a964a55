//! Whether each peer's underlay address answers: one ICMP echo each, answers awaited
//! together.

use super::*;

/// Sends one ICMP echo to every peer's underlay address and waits up to `wait` for
/// the answers.
pub(super) fn peers(maps: &Maps, wait: Duration, f: &mut Vec<Finding>) -> Result<()> {
    let rows = report::peer_rows(maps)?;
    if rows.is_empty() {
        f.push(ok("peers", "no peers configured"));
        return Ok(());
    }
    let targets: Vec<Ipv4Addr> = rows
        .iter()
        .filter_map(|p| p.underlay.parse().ok())
        .collect();
    let answered = match echo(&targets, wait) {
        Ok(a) => a,
        Err(e) => {
            f.push(bad(
                "peers",
                Level::Warn,
                format!("cannot probe the peers: {e:#}"),
                "run netpath doctor as root",
            ));
            return Ok(());
        }
    };
    let silent: Vec<String> = rows
        .iter()
        .filter(|p| {
            p.underlay
                .parse()
                .is_ok_and(|a: Ipv4Addr| !answered.contains(&a))
        })
        .map(|p| format!("{} ({})", p.name, p.underlay))
        .collect();
    f.push(if silent.is_empty() {
        ok("peers", format!("all {} peers' underlay addresses answer ICMP echo", rows.len()))
    } else {
        bad(
            "peers",
            Level::Warn,
            format!("no answer within {:?} from {}", wait, silent.join(", ")),
            "check that the peer host is up and reachable on the underlay (ip route get ADDR; a firewall dropping ICMP also causes this)",
        )
    });
    Ok(())
}

/// ICMP echo over a raw socket: the set of addresses that answered.
pub(super) fn echo(
    targets: &[Ipv4Addr],
    wait: Duration,
) -> Result<std::collections::HashSet<Ipv4Addr>> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto,
        socket,
    };
    let sock = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK,
        SockProtocol::Icmp,
    )?;
    let id = (std::process::id() & 0xffff) as u16;
    for (seq, t) in targets.iter().enumerate() {
        let mut pkt = vec![8u8, 0, 0, 0];
        pkt.extend(id.to_be_bytes());
        pkt.extend((seq as u16).to_be_bytes());
        pkt.extend(b"netpath doctor");
        let c = crate::packet::checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(*t, 0));
        let _ = sendto(sock.as_raw_fd(), &pkt, &to, MsgFlags::empty());
    }
    let mut got = std::collections::HashSet::new();
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while got.len() < targets.len() {
        let Some(left) = wait.checked_sub(start.elapsed()) else {
            break;
        };
        let mut fds = [nix::poll::PollFd::new(
            sock.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let t = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
        if nix::poll::poll(&mut fds, t).unwrap_or(0) == 0 {
            continue;
        }
        while let Ok((n, from)) = recvfrom::<SockaddrIn>(sock.as_raw_fd(), &mut buf) {
            // The IP header comes with a raw socket's data.
            let ihl = (buf[0] & 0xf) as usize * 4;
            let icmp = &buf[ihl.min(n)..n];
            if let (true, Some(a)) = (
                icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes(),
                from,
            ) {
                got.insert(a.ip());
            }
        }
    }
    Ok(got)
}
