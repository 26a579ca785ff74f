//! The keep-alive HTTP server of `hack/bench-net` (busybox httpd closes every connection
//! after one answer; HTTP clients and reverse proxies mostly keep theirs open). It answers
//! every request with the same small page and keeps the connection until the client closes
//! it or asks `Connection: close`. A thread per connection, std only; built by the benchmark
//! with `rustc -O -C target-feature=+crt-static` so it runs in a busybox container.
//!
//!   bench-net-server PORT [BODY_BYTES]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(80);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(600);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {size}\r\n\r\n");
    let mut page = head.into_bytes();
    page.extend(std::iter::repeat_n(b'x', size));
    let page: &'static [u8] = Box::leak(page.into_boxed_slice());
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-net-server: bind port {port}: {e}");
            std::process::exit(1);
        }
    };
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || serve(conn, page));
    }
}

fn serve(mut conn: TcpStream, page: &[u8]) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    let mut have = 0;
    loop {
        // One request: up to the blank line (the benchmark's GETs have no body).
        let end = loop {
            if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if have == buf.len() {
                return; // a head over 4 KiB: not a client of this benchmark
            }
            match conn.read(&mut buf[have..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
        };
        let close = std::str::from_utf8(&buf[..end])
            .map(|h| h.to_ascii_lowercase().contains("connection: close"))
            .unwrap_or(true);
        if conn.write_all(page).is_err() || close {
            return;
        }
        buf.copy_within(end..have, 0);
        have -= end;
    }
}
