//! Notices when someone else deletes one of the agent's nftables tables.
//!
//! A firewall reload (`systemctl reload nftables`, whose `/etc/nftables.conf` starts with
//! `flush ruleset`; ufw or firewalld restarting) deletes every table, ours included: outbound
//! NAT and the published ports stop working until the agent applies them again, and the
//! bridge's `route_localnet` is left without the rule that stops containers from reaching the
//! host's loopback through it. So the agent listens to the kernel's nftables notifications
//! (netlink group `NFNLGRP_NFTABLES`, the stream `nft monitor` prints) and puts its tables back.
//!
//! The kernel sends one message per object a transaction creates or deletes, then a
//! `NEWGEN` message that ends the transaction. The agent's own updates delete and re-create
//! a table in one transaction (`table T; delete table T; table T {...}`), so what counts is
//! the end state of each transaction: [`TableWatch::changed`] returns, for each transaction,
//! the watched tables (family `ip`) that it deleted and did not create again (most often
//! none: any change of the ruleset is news too, e.g. for the check for firewalls that drop
//! forwarded traffic). The agent's own removal of a
//! table (the last bridged service gone, no published port left) shows up the same way; the
//! caller knows whether it still wants the table. When notifications were lost (the socket's
//! buffer overflowed), every watched table is reported, for the caller to check.
//!
//! Listening costs nothing while the ruleset does not change: no polling, no `nft` process.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use tokio::io::unix::AsyncFd;

/// `NFNL_SUBSYS_NFTABLES` (linux/netfilter/nfnetlink.h).
const SUBSYS_NFTABLES: u16 = 10;
/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const GROUP_NFTABLES: u32 = 7;
/// `enum nf_tables_msg_types` (linux/netfilter/nf_tables.h).
const MSG_NEWTABLE: u16 = 0;
const MSG_DELTABLE: u16 = 2;
const MSG_NEWGEN: u16 = 15;
/// `NFTA_TABLE_NAME`.
const ATTR_TABLE_NAME: u16 = 1;
/// `NFPROTO_IPV4`: family `ip`.
const FAMILY_IP: u8 = 2;

/// A subscription to the kernel's nftables notifications, in the network namespace of the
/// thread that opened it.
pub struct TableWatch {
    fd: AsyncFd<OwnedFd>,
    watched: Vec<String>,
    deleted: BTreeSet<String>,
    buf: Vec<u8>,
}

impl TableWatch {
    /// Subscribes (needs CAP_NET_ADMIN, and a tokio runtime) to changes of the `ip` tables
    /// named `watched` (`prefix*`: every table whose name starts with `prefix`).
    pub fn open(watched: &[&str]) -> io::Result<TableWatch> {
        TableWatch::on(subscribe()?, watched)
    }

    /// A watch on `socket`, a subscription made by [`subscribe`] (perhaps on a thread in
    /// another namespace).
    fn on(socket: OwnedFd, watched: &[&str]) -> io::Result<TableWatch> {
        Ok(TableWatch {
            fd: register(socket)?,
            watched: watched.iter().map(|s| s.to_string()).collect(),
            deleted: BTreeSet::new(),
            buf: vec![0; 64 << 10],
        })
    }

    /// Waits for the end of a transaction (of anyone's); the watched tables it left deleted.
    pub async fn changed(&mut self) -> io::Result<Vec<String>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let n = match guard
                .try_io(|fd| recv(fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()).map_err(io::Error::from))
            {
                Err(_would_block) => continue,
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Notifications were dropped: whatever they said is unknown.
                    self.deleted.clear();
                    return Ok(self.watched.clone());
                }
                Ok(Err(e)) => return Err(e),
            };
            let mut lost = Vec::new();
            let mut ended = false;
            for (kind, payload) in messages(&self.buf[..n]) {
                if kind >> 8 != SUBSYS_NFTABLES {
                    continue;
                }
                match kind & 0xff {
                    MSG_DELTABLE | MSG_NEWTABLE => {
                        let Some(name) = table_name(payload) else { continue };
                        // `prefix*` watches every table whose name starts with `prefix`.
                        let watched = self.watched.iter().any(|w| match w.strip_suffix('*') {
                            Some(prefix) => name.starts_with(prefix),
                            None => *w == name,
                        });
                        if !watched {
                            continue;
                        }
                        if kind & 0xff == MSG_DELTABLE {
                            self.deleted.insert(name);
                        } else {
                            self.deleted.remove(&name);
                        }
                    }
                    MSG_NEWGEN => {
                        ended = true;
                        lost.extend(std::mem::take(&mut self.deleted));
                    }
                    _ => {}
                }
            }
            if ended {
                lost.sort();
                lost.dedup();
                return Ok(lost);
            }
        }
    }
}

/// A netlink socket subscribed to the nftables notifications of the calling thread's network
/// namespace.
fn subscribe() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1 << (GROUP_NFTABLES - 1)))?;
    Ok(fd)
}

/// The socket, registered with the runtime for reading.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the socket and is its only user until dropped.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// The netlink messages in `buf`: (type, payload), stopping at the first malformed header.
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest.get(4..6)?.try_into().ok()?);
        if len < 16 || len > rest.len() {
            return None;
        }
        let payload = &rest[16..len];
        rest = rest.get(align(len)..).unwrap_or_default();
        Some((kind, payload))
    })
}

/// The `NFTA_TABLE_NAME` of a table message of family `ip` (payload: `struct nfgenmsg`, then
/// attributes).
fn table_name(payload: &[u8]) -> Option<String> {
    if *payload.first()? != FAMILY_IP {
        return None;
    }
    let mut attrs = payload.get(4..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes(attrs[0..2].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().ok()?) & 0x3fff; // no NLA_F_* bits
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == ATTR_TABLE_NAME {
            let value = &attrs[4..len];
            let value = value.split(|b| *b == 0).next().unwrap_or_default();
            return String::from_utf8(value.to_vec()).ok();
        }
        attrs = attrs.get(align(len)..).unwrap_or_default();
    }
    None
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_tests::netns::TestNetns;
    use std::time::Duration;

    /// A table message as the kernel sends it.
    fn table_msg(msg: u16, family: u8, name: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let value = [name.as_bytes(), &[0]].concat();
        attr.extend(((4 + value.len()) as u16).to_ne_bytes());
        attr.extend(ATTR_TABLE_NAME.to_ne_bytes());
        attr.extend(&value);
        attr.resize(align(attr.len()), 0);
        let payload = [&[family, 0, 0, 0][..], &attr].concat();
        let mut m = Vec::new();
        m.extend(((16 + payload.len()) as u32).to_ne_bytes());
        m.extend(((SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(payload);
        m
    }

    #[test]
    fn parses_table_messages() {
        let buf = [table_msg(MSG_DELTABLE, FAMILY_IP, "skiff"), table_msg(MSG_NEWTABLE, 10, "other")].concat();
        let got: Vec<(u16, Option<String>)> = messages(&buf).map(|(k, p)| (k & 0xff, table_name(p))).collect();
        assert_eq!(got, [(MSG_DELTABLE, Some("skiff".into())), (MSG_NEWTABLE, None)], "family inet is not ours");
        // A truncated message ends the walk instead of reading past it.
        assert_eq!(messages(&buf[..buf.len() - 1]).count(), 1);
        assert_eq!(messages(&[0u8; 3]).count(), 0);
    }

    /// In a namespace of the test's own: a transaction that deletes and re-creates a watched
    /// table is not a loss; one that deletes it (`flush ruleset`) is; an unwatched table is
    /// not reported.
    #[tokio::test(flavor = "current_thread")]
    async fn reports_watched_tables_left_deleted() {
        let ns = TestNetns::new().expect("ip netns add");
        let path = std::path::PathBuf::from(ns.path());
        let nft = |script: &str| {
            crate::net::nft::run_script(Some(&path), script.to_string()).expect("nft");
        };
        // Subscribed in the namespace (a thread that joined it), watched from here.
        let socket = ns.enter(subscribe).expect("netlink socket");
        let mut w = TableWatch::on(socket, &["skiff", "skiff_ports"]).expect("watch");
        // Every transaction is reported, each with what it left deleted.
        let skiff = "table ip skiff {\n\tchain c {\n\t\ttype filter hook forward priority 0;\n\t}\n}\n";
        let cases: [(String, &[&str], &str); 5] = [
            (format!("{skiff}table ip other {{\n}}\n"), &[], "made"),
            (format!("table ip skiff\ndelete table ip skiff\n{skiff}"), &[], "replaced in one transaction: not lost"),
            ("delete table ip other\n".into(), &[], "not ours"),
            ("flush ruleset\n".into(), &["skiff"], "flushed"),
            ("table ip skiff_ports\ndelete table ip skiff_ports\n".into(), &["skiff_ports"], "deleted at its end"),
        ];
        for (script, want, what) in cases {
            nft(&script);
            let got = tokio::time::timeout(Duration::from_secs(5), w.changed()).await.expect("news").expect("read");
            assert_eq!(got, want, "{what}");
        }
    }
}
