//! The agent's file descriptors: its `RLIMIT_NOFILE`, raised to the hard limit at start, and
//! how much of it the published ports' proxies may hold.
//!
//! The proxies are the only part of the agent whose fds a network client decides (two per
//! proxied TCP connection, one per UDP session). Everything else — the status endpoint (at
//! most [`super::http::Limits::max_connections`] connections), a pidfd per replica, the pipes
//! of every `skiff-runtime`, shim and `nft` run, netlink and inotify sockets, image pulls,
//! log and record files — is the agent's own work, and must never fail for want of an fd. So
//! the proxies get a fixed share of the limit, [`proxy_budget`], and refuse new connections
//! (and drop the datagrams of new UDP clients) once they hold it: the rest, [`reserve`], is
//! the agent's.
//!
//! Children inherit the raised soft limit (shims, the runtime, `nft`); containers do not: their
//! spec sets `RLIMIT_NOFILE` (1024:1024 unless the manifest's `ulimits` say otherwise).

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The most fds the proxies hold together, whatever the limit: 4096 proxied TCP connections,
/// each with two 8 KiB copy buffers (~70 MiB), is already more than a small box should spend
/// on one flood.
pub const PROXY_FDS_MAX: u64 = 8192;

/// The highest soft limit asked for (the kernel's default `fs.nr_open`; a hard limit of
/// `infinity` cannot be a soft limit).
const NOFILE_CEILING: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 2^20); the soft limit after.
pub fn raise_nofile() -> (u64, u64) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return (1024, 1024) };
    let want = hard.min(NOFILE_CEILING);
    if soft < want && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return (soft, want);
    }
    (soft, soft)
}

/// The soft `RLIMIT_NOFILE` in force.
pub fn nofile() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map(|(soft, _)| soft).unwrap_or(1024)
}

/// The fds kept for the agent's own work with a soft limit of `limit`: a quarter of it, and at
/// least 512 (half of a limit below 1024).
pub fn reserve(limit: u64) -> u64 {
    (limit / 4).max(512.min(limit / 2))
}

/// The fds all proxies may hold together with a soft limit of `limit`.
pub fn proxy_budget(limit: u64) -> u64 {
    limit.saturating_sub(reserve(limit)).min(PROXY_FDS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_and_the_budget() {
        // (limit, reserve, budget)
        for (limit, r, b) in [
            (1024, 512, 512),
            (2048, 512, 1536),
            (4096, 1024, 3072),
            (16384, 4096, 8192),
            (20000, 5000, 8192),
            (1 << 20, 1 << 18, 8192),
            (256, 128, 128),
            (0, 0, 0),
        ] {
            assert_eq!((reserve(limit), proxy_budget(limit)), (r, b), "limit {limit}");
        }
    }

    #[test]
    fn raising_is_idempotent() {
        let (_, after) = raise_nofile();
        assert_eq!(nofile(), after);
        assert_eq!(raise_nofile(), (after, after));
    }
}
