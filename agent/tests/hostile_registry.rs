//! A hostile registry's text reaches no terminal, log or status raw: a fault-injecting proxy
//! (skiff-tests' `FaultProxy`, in front of Debian's docker-registry on 127.0.0.1) answers
//! with error bodies full of terminal escapes, huge error bodies (with and without a
//! length) and `WWW-Authenticate` challenges with control characters and 20 KiB of text.
//! `skiff pull` must fail with one short line (< 512 bytes) with every control character
//! escaped, without buffering the huge bodies; an agent's `/v1/status`, `skiff status` and
//! the agent's log show the same error escaped and bounded. Run as root.
//!
//! `SKIFF_TEST_SKIFF=/path/to/skiff` runs them against another skiff binary.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use skiff_tests::agent::{replicas, Agent};
use skiff_tests::memcap::{run_peak, Measured};
use skiff_tests::registry::{Action, Answer, Fault, FaultProxy, Match, Registry, BUSYBOX_OCI};
use skiff_tests::Scratch;

const TIMEOUT: Duration = Duration::from_secs(120);
const LINE: usize = 512;
const PEAK_KIB: u64 = 64 << 10;

/// Set the window title, ring, clear the screen, a C1 CSI, a bidi override.
const ESCAPES_JSON: &str = r"\u001b]0;pwned\u0007\u001b[2J\u009b31m\u202e";
/// How they must show: escaped.
const ESCAPED: &str = r"\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{202e}";

fn skiff_bin() -> PathBuf {
    std::env::var_os("SKIFF_TEST_SKIFF").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_skiff")), PathBuf::from)
}

/// A 404 for manifests whose distribution error message is escapes and 8000 'A's.
fn hostile_404() -> Answer {
    let body = format!(
        r#"{{"errors":[{{"code":"MANIFEST_UNKNOWN","message":"{ESCAPES_JSON}{}","detail":null}}]}}"#,
        "A".repeat(8000)
    );
    Answer::new(404, body).header("Content-Type", "application/json")
}

fn pull(proxy: &FaultProxy) -> Measured {
    let work = Scratch::new("hostile-registry");
    let mut c = Command::new(skiff_bin());
    c.arg("--root")
        .arg(work.join("root"))
        .args(["pull", "--quiet", &proxy.image(BUSYBOX_OCI)])
        .env("REGISTRY_AUTH_FILE", work.join("auth.json"))
        .env_remove("SKIFF_ROOT")
        .env_remove("SKIFF_INSECURE_REGISTRIES");
    run_peak(c, TIMEOUT)
}

/// No control character, no bidi override (a newline only between lines).
fn clean(s: &str) -> bool {
    !s.chars().any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

/// One short, escaped error line; returns it.
#[track_caller]
fn one_short_line(what: &str, m: &Measured) -> String {
    let err = m.stderr();
    let shown: String = err.chars().take(600).collect();
    assert!(!m.timed_out, "{what}: did not finish within {TIMEOUT:?}");
    assert_eq!(m.output.status.code(), Some(1), "{what}: exit {:?}: {shown:?}", m.output.status);
    assert!(err.len() < LINE, "{what}: {} bytes of error (at most {LINE}): {shown:?}…", err.len());
    assert_eq!(err.lines().count(), 1, "{what}: one line: {shown:?}");
    assert!(clean(&err), "{what}: control characters reach the terminal: {shown:?}");
    assert!(m.peak_rss_kib < PEAK_KIB, "{what}: peak RSS {} MiB", m.peak_rss_kib >> 10);
    err.trim_end().to_string()
}

#[test]
fn registry_error_message_with_terminal_escapes_is_escaped_and_short() {
    skiff_tests::require_root();
    let proxy = FaultProxy::to(Registry::shared());
    proxy.inject(Fault::new(Match::ManifestGet, Action::Answer(hostile_404())));
    let line = one_short_line("404 with escapes", &pull(&proxy));
    assert!(line.contains("MANIFEST_UNKNOWN") && line.contains(ESCAPED), "the message shows, escaped: {line}");
    eprintln!("{line}");
}

#[test]
fn huge_registry_error_bodies_are_not_buffered() {
    skiff_tests::require_root();
    let chunk = format!(r#"{{"errors":[{{"code":"DENIED","message":"{}"}}]}}"#, "x".repeat(64 << 10));
    for (what, answer) in [
        ("with a length", Answer::new(400, chunk.clone()).repeat(800)),
        ("without a length", Answer::new(400, chunk.clone()).repeat(800).without_length()),
    ] {
        let proxy = FaultProxy::to(Registry::shared());
        proxy.inject(Fault::new(Match::ManifestGet, Action::Answer(answer)));
        let line = one_short_line(what, &pull(&proxy));
        assert!(line.contains("400"), "{what}: {line}");
        let sent: u64 = proxy.requests().iter().map(|r| r.body_bytes).max().unwrap_or(0);
        // 50 MiB offered; skiff reads at most 64 KiB of it (the rest is what the sockets hold).
        assert!(sent < 16 << 20, "{what}: the proxy got {} MiB of the body out", sent >> 20);
        eprintln!("{what}: {} KiB sent: {line}", sent >> 10);
    }
}

#[test]
fn www_authenticate_text_is_escaped_and_short() {
    skiff_tests::require_root();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        // A scheme skiff does not support, a tab and 20 KiB of text.
        ("unknown scheme", [&b"Negotiate \t"[..], &b"N".repeat(20_000)].concat(), "Negotiate \\tNNN"),
        // A Bearer realm that is not a URL: C1 CSI, bidi override, 20 KiB (UTF-8 bytes).
        (
            "bad realm",
            [&b"Bearer realm=\"\xc2\x9b2J\xe2\x80\xae"[..], &b"R".repeat(20_000), b"\",service=\"x\""].concat(),
            "\\u{9b}2J\\u{202e}RRR",
        ),
        // A Bearer realm with a plain-HTTP URL to another host, 20 KiB long.
        (
            "plain-http realm",
            [&b"Bearer realm=\"http://example.invalid/"[..], &b"P".repeat(20_000), b"\""].concat(),
            "http://example.invalid/PPP",
        ),
    ];
    for (what, header, shows) in cases {
        let proxy = FaultProxy::to(Registry::shared());
        let answer = Answer::new(401, r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#)
            .header("WWW-Authenticate", header);
        proxy.inject(Fault::new(Match::ManifestGet, Action::Answer(answer)));
        let line = one_short_line(what, &pull(&proxy));
        assert!(line.contains(shows), "{what}: the challenge shows, escaped: {line}");
        eprintln!("{what}: {line}");
    }
}

/// The agent's status and log, and `skiff status`, show the hostile error escaped and short.
#[test]
fn agent_status_and_log_show_registry_errors_escaped() {
    skiff_tests::require_root();
    let proxy = FaultProxy::to(Registry::shared());
    proxy.inject(Fault::new(Match::ManifestGet, Action::Answer(hostile_404())).times(1000));
    let mut a = Agent::new(skiff_bin());
    a.write_manifest(&format!("services:\n  web:\n    image: {}\n", proxy.image(BUSYBOX_OCI)));
    a.start();
    let st = a.wait_status("the pull error in the status", |st| {
        replicas(st, "web").iter().any(|r| r["message"].as_str().is_some_and(|m| m.contains("MANIFEST_UNKNOWN")))
    });
    for r in replicas(&st, "web") {
        let msg = r["message"].as_str().unwrap_or_default();
        assert!(msg.len() < 1024 && clean(msg) && !msg.contains('\n'), "status message {msg:?}");
        assert!(msg.contains(ESCAPED), "the message shows, escaped: {msg}");
    }
    let body = a.get("/v1/status").expect("GET /v1/status").body;
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("\\u001b") && !text.contains('\u{1b}'), "raw escapes in /v1/status: {text}");
    assert!(body.len() < 8 << 10, "/v1/status is {} bytes", body.len());
    let out = a.skiff(&["status"]);
    let shown = format!("{}{}", out.stdout, out.stderr);
    assert!(clean(&shown), "skiff status prints control characters: {shown:?}");
    let log = a.log();
    assert!(clean(&log), "control characters in the agent's log: {log:?}");
    assert!(log.lines().all(|l| l.len() <= 1100), "a long log line: {log}");
    a.down();
}
