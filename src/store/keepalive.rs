//! TCP keepalive and a user timeout on every connection to PostgreSQL.
//!
//! After a failover or a network partition, a connection whose server vanished is half-open: nothing tells our
//! side, and a read on it waits forever. Keepalive probes notice an idle one; `TCP_USER_TIMEOUT` ends one
//! whose sent data stays unacknowledged (a query to a dead server). sqlx 0.8 opens its sockets itself and offers
//! neither, so right after a connection is established we find its socket among the process's descriptors (by
//! the server's port: matching addresses would miss a server whose DNS name moved in a failover) and set them
//! there. Setting them again on an already configured socket, or on another connection to that port, is harmless.
//! (Client-side operation timeouts in [`super::Store`] bound every wait regardless; this makes the kernel drop
//! the dead connections themselves, so they do not linger in the pool.)

use std::time::Duration;

/// Idle time before the first probe, time between probes, and probes before the connection is dropped.
/// The server is asked for the same probes of its side (`tcp_keepalives_*`, see [`server_options`]).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
/// Sent data unacknowledged for this long ends the connection (the server's kernel acknowledges at once,
/// however long a statement runs, so only an unreachable server hits it).
const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Startup options that make the server probe its side of the connection the same way, so that a lock held by a
/// vanished process is freed in about a minute rather than the system's default two hours.
pub fn server_options() -> [(&'static str, String); 3] {
    [
        ("tcp_keepalives_idle", KEEPALIVE_IDLE.as_secs().to_string()),
        ("tcp_keepalives_interval", KEEPALIVE_INTERVAL.as_secs().to_string()),
        ("tcp_keepalives_count", KEEPALIVE_PROBES.to_string()),
    ]
}

/// Sets keepalive and the user timeout on every TCP socket of this process connected to `port`. Returns how many
/// sockets were set.
pub fn apply(port: u16) -> usize {
    #[cfg(target_os = "linux")]
    {
        linux::apply(port)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = port;
        0
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{BorrowedFd, OwnedFd};

    use socket2::{SockRef, TcpKeepalive};

    pub(super) fn apply(port: u16) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        let keepalive = TcpKeepalive::new()
            .with_time(super::KEEPALIVE_IDLE)
            .with_interval(super::KEEPALIVE_INTERVAL)
            .with_retries(super::KEEPALIVE_PROBES);
        let mut set = 0;
        for entry in entries.flatten() {
            let is_socket =
                std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if !is_socket {
                continue;
            }
            let Some(owned) = duplicate(fd) else { continue };
            let socket = SockRef::from(&owned);
            let connected_to_peer =
                socket.peer_addr().ok().and_then(|a| a.as_socket()).is_some_and(|a| a.port() == port);
            if connected_to_peer
                && socket.set_tcp_keepalive(&keepalive).is_ok()
                && socket.set_tcp_user_timeout(Some(super::USER_TIMEOUT)).is_ok()
            {
                set += 1;
            }
        }
        set
    }

    /// A descriptor of our own for the socket behind `fd`, or `None` if `fd` was closed meanwhile.
    fn duplicate(fd: i32) -> Option<OwnedFd> {
        // SAFETY: `fd` was listed as open in /proc/self/fd a moment ago; it is only duplicated (the duplicate shares
        // the socket, and socket options are per socket). Had another thread closed it since, duplicating fails
        // (EBADF) or yields whatever now has that number, whose peer address is then checked like any other.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        borrowed.try_clone_to_owned().ok()
    }
}
