//! Who is on the other end of a compat connection. A loopback TCP port is reachable by every
//! local user; the Unix socket refuses other uids with `SO_PEERCRED`, and this does the same for
//! TCP on Linux: the client's socket is the kernel's entry whose local address is our peer's
//! address and whose remote address is ours, and `/proc/net/tcp` (or `tcp6`) says which uid
//! owns it.
//!
//! Elsewhere (macOS, Windows) there is no such table to read without privileges; there any
//! local user can reach the listener (README, "Using the original ElectronAIChat app").

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// True when the connection may be served: a loopback peer, on Linux owned by our uid. Reads a
/// small kernel table (one line per TCP socket); cheap enough to do at accept.
pub(in crate::server) fn peer_allowed(stream: &TcpStream, peer: SocketAddr) -> bool {
    if !peer.ip().is_loopback() && !is_mapped_loopback(peer) {
        tracing::warn!(%peer, "compat: refused a non-loopback peer");
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        let Ok(local) = stream.local_addr() else {
            return false;
        };
        let me = nix::unistd::geteuid().as_raw();
        match owner_uid(peer, local) {
            Some(uid) if uid == me => true,
            Some(uid) => {
                tracing::warn!(%peer, uid, "compat: refused a connection from another user");
                false
            }
            None => {
                tracing::warn!(%peer, "compat: cannot find the peer's socket; refusing it");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        true
    }
}

fn is_mapped_loopback(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        SocketAddr::V4(_) => false,
    }
}

/// The uid owning the TCP socket bound to `peer` and connected to `local`.
#[cfg(target_os = "linux")]
fn owner_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        parse_table(&text)
            .into_iter()
            .find(|e| same(e.local, peer) && same(e.remote, local))
            .map(|e| e.uid)
    })
}

/// Addresses compare with IPv4-mapped IPv6 seen as IPv4 (a dual-stack client's socket).
#[cfg(any(target_os = "linux", test))]
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| match s {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => s,
        },
        v4 => v4,
    };
    canon(a) == canon(b)
}

#[cfg(any(target_os = "linux", test))]
struct Entry {
    local: SocketAddr,
    remote: SocketAddr,
    uid: u32,
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6`: after a header line, `sl local rem st tx:rx tr
/// retrnsmt uid …`, addresses as hex `ADDR:PORT` with the address in the kernel's (little-endian)
/// 32-bit words. Malformed lines are skipped.
#[cfg(any(target_os = "linux", test))]
fn parse_table(text: &str) -> Vec<Entry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(Entry {
                local: parse_addr(fields.get(1)?)?,
                remote: parse_addr(fields.get(2)?)?,
                uid: fields.get(7)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(any(target_os = "linux", test))]
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    // Each word is printed as the host-order value of 4 network-order bytes.
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match bytes.len() {
        4 => Some(SocketAddr::from((
            <[u8; 4]>::try_from(bytes.as_slice()).ok()?,
            port,
        ))),
        16 => Some(SocketAddr::from((
            <[u8; 16]>::try_from(bytes.as_slice()).ok()?,
            port,
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_tables_are_parsed() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n\
   1: 0100007F:C350 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0\n\
   2: garbage\n";
        let entries = parse_table(v4);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].local, "127.0.0.1:50000".parse().unwrap());
        assert_eq!(entries[1].remote, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(entries[1].uid, 1000);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:C350 00000000000000000000000001000000:1F40 01 00000000:00000000 00:00000000 00000000  1001        0 3 1 0\n\
   1: 0000000000000000FFFF00000100007F:C351 0000000000000000FFFF00000100007F:1F40 01 00000000:00000000 00:00000000 00000000  1002        0 4 1 0\n";
        let entries = parse_table(v6);
        assert_eq!(entries[0].local, "[::1]:50000".parse().unwrap());
        assert_eq!(entries[0].uid, 1001);
        // A v4-mapped dual-stack socket matches the IPv4 address it connected from.
        assert!(same(entries[1].local, "127.0.0.1:50001".parse().unwrap()));
        assert!(same(entries[1].remote, "127.0.0.1:8000".parse().unwrap()));
    }
}
