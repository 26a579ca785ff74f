//! The registry client: OCI distribution v2 over reqwest (rustls, system roots).
//!
//! Hand-rolled rather than oci-client because a resumable pull needs the raw response of a
//! ranged blob request (status, `Content-Range`), and credentials need a redirect policy of
//! our own: redirects are followed by hand and `Authorization` goes only to the registry's
//! own origin (scheme, host, port), never to a CDN or any other host it redirects to.
//!
//! Auth: a request goes out with the cached `Authorization` of its repository, if any; on a
//! 401 the `WWW-Authenticate` challenge decides: `Basic` → the credentials of the auth file;
//! `Bearer realm=..,service=..,scope=..` → a token from the realm (anonymously, or with the
//! credentials as Basic when the auth file has some), cached per repository.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;

use crate::auth::{parse_challenge, AuthConfig, Challenge};
use crate::digest::Digest;
use crate::error::{chain, Error, Result};
use crate::manifest;
use crate::reference::Reference;
use crate::text;

const MAX_REDIRECTS: usize = 10;
/// The most of an error response's body read (for its distribution error message).
const MAX_ERROR_BODY: u64 = 64 << 10;
/// The most of a registry's own text (error messages, challenges, URLs) quoted in an error.
const SHOWN: usize = 240;

/// How to build a [`Client`].
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Credentials (see [`AuthConfig::load_default`]).
    pub auth: AuthConfig,
    /// Registries (`host` or `host:port`) reached over plain HTTP, besides localhost and
    /// 127.0.0.0/8.
    pub insecure_registries: Vec<String>,
    /// Give up on a connection that sends nothing for this long (default 60 s).
    pub read_timeout: Option<Duration>,
}

/// A registry client; one per process is enough (it caches tokens per repository).
pub struct Client {
    http: reqwest::Client,
    auth: AuthConfig,
    insecure: Vec<String>,
    tokens: Mutex<HashMap<String, String>>,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(opts.read_timeout.unwrap_or(Duration::from_secs(60)))
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Other(format!("cannot set up the HTTP client: {}", chain(&e))))?;
        Ok(Client { http, auth: opts.auth, insecure: opts.insecure_registries, tokens: Mutex::new(HashMap::new()) })
    }

    /// Whether `host[:port]` may be reached over plain HTTP: localhost, 127.0.0.0/8, ::1, or
    /// listed as insecure (`host:port` exactly, or `host` for any port).
    pub fn allows_http(&self, host_port: &str) -> bool {
        let host = split_host(host_port);
        if host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            if ip.is_loopback() {
                return true;
            }
        }
        self.insecure.iter().any(|i| {
            let i = i.trim();
            i == host_port || (i == host && (!i.contains(':') || i.starts_with('[')))
        })
    }

    fn base(&self, r: &Reference) -> String {
        let host = r.api_host();
        let scheme = if self.allows_http(host) { "http" } else { "https" };
        format!("{scheme}://{host}/v2/{}", r.repository)
    }

    /// Fetches a manifest or index by tag or digest: (bytes, Content-Type).
    pub async fn manifest(&self, r: &Reference, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let what = format!("fetching the manifest of {}", display_ref(r, reference));
        let url = format!("{}/manifests/{reference}", self.base(r));
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
        let resp = self.get(r, &url, h, &what).await?;
        let resp = check(resp, &what, self.auth_hint(r)).await?;
        let ct = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = read_limited(resp, manifest::MAX_MANIFEST, &what).await?;
        Ok((body, ct))
    }

    /// The digest a tag names now, by a `HEAD` of its manifest (Docker Hub does not count a
    /// HEAD against its pull limit): `Docker-Content-Digest`, or, from a registry that does not
    /// send it, the sha256 of the manifest a GET returns. A 429 is [`Error::RateLimited`] with
    /// the registry's `Retry-After`.
    pub async fn manifest_digest(&self, r: &Reference, reference: &str) -> Result<Digest> {
        let what = format!("checking the digest of {}", display_ref(r, reference));
        let url = format!("{}/manifests/{reference}", self.base(r));
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
        let resp = self.send(reqwest::Method::HEAD, r, &url, h, &what).await?;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            return Err(Error::RateLimited { what, retry_after });
        }
        let resp = check(resp, &what, self.auth_hint(r)).await?;
        let header = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(d) = header {
            return d.trim().parse::<Digest>().map_err(|e| Error::BadDigest {
                context: format!("{what}: the registry's Docker-Content-Digest"),
                source: e,
            });
        }
        let (body, _) = self.manifest(r, reference).await?;
        Ok(Digest::of(&body))
    }

    /// Starts a blob download at `offset` (a `Range` request when > 0). The response is 200
    /// or 206; the caller checks which, and `Content-Range`.
    pub async fn blob(&self, r: &Reference, digest: &Digest, offset: u64) -> Result<Response> {
        let what = format!("downloading blob {digest} of {}", r.name());
        let url = format!("{}/blobs/{digest}", self.base(r));
        let mut h = HeaderMap::new();
        if offset > 0 {
            let v = HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| Error::Other(e.to_string()))?;
            h.insert(RANGE, v);
        }
        let resp = self.get(r, &url, h, &what).await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(Error::Invalid {
                what,
                detail: format!("the registry cannot serve it from byte {offset} (416): the blob is shorter than its descriptor says"),
            });
        }
        check(resp, &what, self.auth_hint(r)).await
    }

    fn auth_hint(&self, r: &Reference) -> AuthHint {
        if self.auth.lookup(&r.registry, &r.repository).is_some() {
            AuthHint::Refused(r.registry.clone())
        } else {
            AuthHint::Missing(r.registry.clone())
        }
    }

    /// GET with auth and redirects. A 401 from the registry itself is answered once with
    /// fresh authorization (from the challenge) before the response is returned.
    async fn get(&self, r: &Reference, url: &str, headers: HeaderMap, what: &str) -> Result<Response> {
        self.send(reqwest::Method::GET, r, url, headers, what).await
    }

    /// [`Client::get`] with another method (HEAD).
    async fn send(
        &self,
        method: reqwest::Method,
        r: &Reference,
        url: &str,
        headers: HeaderMap,
        what: &str,
    ) -> Result<Response> {
        let start = Url::parse(url).map_err(|e| Error::Other(format!("{what}: bad URL {url}: {e}")))?;
        let key = format!("{}/{}", r.registry, r.repository);
        let mut auth = self.tokens.lock().map(|t| t.get(&key).cloned()).unwrap_or(None);
        let mut renewed = false;
        loop {
            let resp = self.follow(method.clone(), start.clone(), &headers, auth.as_deref(), what).await?;
            if resp.status() == StatusCode::UNAUTHORIZED && same_origin(resp.url(), &start) && !renewed {
                renewed = true;
                // Lossy rather than ASCII-only: a challenge with other bytes is still shown
                // (escaped) in the error instead of "no WWW-Authenticate header".
                let challenge =
                    resp.headers().get(WWW_AUTHENTICATE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let fresh = self.authenticate(r, challenge.as_deref(), what).await?;
                if let Ok(mut t) = self.tokens.lock() {
                    t.insert(key.clone(), fresh.clone());
                }
                auth = Some(fresh);
                continue;
            }
            return Ok(resp);
        }
    }

    /// Sends a GET, following redirects by hand: `Authorization` only on requests to the
    /// registry's origin; no downgrade from https to a plain-http host that is not allowed.
    async fn follow(
        &self,
        method: reqwest::Method,
        start: Url,
        headers: &HeaderMap,
        auth: Option<&str>,
        what: &str,
    ) -> Result<Response> {
        let mut url = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.http.request(method.clone(), url.clone()).headers(headers.clone());
            if let Some(a) = auth {
                if same_origin(&url, &start) {
                    req = req.header(AUTHORIZATION, a);
                }
            }
            let resp = req.send().await.map_err(|e| network(what, &url, &e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(loc) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
                return Ok(resp);
            };
            let next = url.join(loc).map_err(|e| {
                Error::Other(format!("{what}: the registry redirected to a bad URL \"{}\": {e}", shown(loc)))
            })?;
            match next.scheme() {
                "https" => {}
                "http" if self.allows_http(&host_port(&next)) => {}
                _ => {
                    return Err(Error::Other(format!(
                        "{what}: refusing the redirect to {} (plain HTTP or an unknown scheme; only HTTPS, or registries listed as insecure)",
                        shown(&strip_query(&next))
                    )))
                }
            }
            url = next;
        }
        Err(Error::Other(format!("{what}: more than {MAX_REDIRECTS} redirects")))
    }

    async fn authenticate(&self, r: &Reference, challenge: Option<&str>, what: &str) -> Result<String> {
        let creds = self.auth.lookup(&r.registry, &r.repository);
        let file = AuthConfig::default_path();
        match challenge.and_then(parse_challenge) {
            Some(Challenge::Basic) => match creds {
                Some(c) => Ok(c.basic_header()),
                None => Err(Error::Unauthorized {
                    what: what.to_string(),
                    detail: format!(
                        "{} requires a user name and password: add them for {} to {} (or $REGISTRY_AUTH_FILE)",
                        r.registry,
                        r.registry,
                        file.display()
                    ),
                }),
            },
            Some(Challenge::Bearer { realm, service, scope }) => {
                let mut url = Url::parse(&realm).map_err(|e| Error::Unauthorized {
                    what: what.to_string(),
                    detail: format!("the registry's token service \"{}\" is not a URL ({e})", shown(&realm)),
                })?;
                let plain_ok = url.scheme() == "http" && self.allows_http(&host_port(&url));
                if url.scheme() != "https" && !plain_ok {
                    return Err(Error::Unauthorized {
                        what: what.to_string(),
                        detail: format!("refusing the token service {} (not HTTPS)", shown(&realm)),
                    });
                }
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scope.unwrap_or_else(|| format!("repository:{}:pull", r.repository)));
                }
                let mut req = self.http.get(url.clone());
                if let Some(c) = creds {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                let token_what = format!("{what}: getting a token from {}", host_port(&url));
                let resp = req.send().await.map_err(|e| network(&token_what, &url, &e))?;
                let status = resp.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    return Err(Error::Unauthorized {
                        what: token_what,
                        detail: match creds {
                            Some(c) => format!(
                                "the credentials of user {:?} (from {}) were refused",
                                c.username,
                                file.display()
                            ),
                            None => format!(
                                "anonymous access was refused: add credentials for {} to {}",
                                r.registry,
                                file.display()
                            ),
                        },
                    });
                }
                if !status.is_success() {
                    return Err(Error::Status { what: token_what, status: status.as_u16(), detail: String::new() });
                }
                let body = read_limited(resp, 1 << 20, &token_what).await?;
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body).map_err(|e| Error::Invalid {
                    what: token_what.clone(),
                    detail: format!("the token service answered something that is not a token ({e})"),
                })?;
                let token = t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(|| Error::Invalid {
                    what: token_what,
                    detail: "the token service answered without a token".into(),
                })?;
                Ok(format!("Bearer {token}"))
            }
            None => Err(Error::Unauthorized {
                what: what.to_string(),
                detail: format!(
                    "the registry asks for authentication skiff does not support ({})",
                    challenge.map_or_else(|| "no WWW-Authenticate header".into(), shown)
                ),
            }),
        }
    }
}

enum AuthHint {
    Missing(String),
    Refused(String),
}

/// Maps error statuses to errors (with the registry's error message when it sent one).
async fn check(resp: Response, what: &str, hint: AuthHint) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // Bounded before it is buffered: a larger body (or one that says it is) is not read.
    let body = read_limited(resp, MAX_ERROR_BODY, what).await.unwrap_or_default();
    let detail = registry_message(&body);
    let file = AuthConfig::default_path();
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Unauthorized {
            what: what.to_string(),
            detail: match hint {
                AuthHint::Missing(reg) => format!(
                    "access denied{detail}: the image may not exist, or {reg} needs credentials: add them to {}",
                    file.display()
                ),
                AuthHint::Refused(reg) => {
                    format!("access denied{detail}: the credentials for {reg} in {} were refused", file.display())
                }
            },
        },
        StatusCode::NOT_FOUND => Error::NotFound { what: what.to_string(), detail },
        s => Error::Status { what: what.to_string(), status: s.as_u16(), detail },
    })
}

/// The registry's own text for a message: control characters escaped, at most [`SHOWN`] bytes.
fn shown(s: &str) -> String {
    text::one_line(s, SHOWN)
}

/// ` (CODE: message)` from a distribution error body, or empty (escaped and bounded: it is
/// the registry's text).
fn registry_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<E>,
    }
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => {
            let parts: Vec<String> = e.errors.iter().take(8).map(|e| format!("{}: {}", e.code, e.message)).collect();
            format!(" ({})", shown(&parts.join("; ")))
        }
        _ => String::new(),
    }
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_limited(mut resp: Response, limit: u64, what: &str) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(Error::Invalid {
            what: what.to_string(),
            detail: format!("the response is larger than {limit} bytes"),
        });
    }
    let url = resp.url().clone();
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| network(what, &url, &e))? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::Invalid {
                what: what.to_string(),
                detail: format!("the response is larger than {limit} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A transport error as [`Error::Network`] (query strings, which may hold tokens, left out).
/// The detail is the informative part of reqwest's error chain ("connection refused", "dns
/// error: ...", "operation timed out"), not its wrappers ("error sending request for url").
pub fn network(what: &str, url: &Url, e: &reqwest::Error) -> Error {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        let m = s.to_string();
        let wrapper = m.starts_with("error sending request")
            || m.starts_with("error decoding response body")
            || m.starts_with("request or response body error")
            || m.starts_with("client error (");
        if !wrapper && !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        cur = s.source();
    }
    let mut detail = if parts.is_empty() { chain(e) } else { parts.join(": ") };
    if e.is_timeout() && !detail.contains("timed out") {
        detail.push_str(" (timed out)");
    }
    if let Some(q) = url.query() {
        detail = detail.replace(q, "…");
    }
    Error::Network { what: what.to_string(), detail: format!("{detail} ({})", host_port(url)) }
}

fn display_ref(r: &Reference, reference: &str) -> String {
    if reference.starts_with("sha256:") {
        format!("{}@{reference}", r.name())
    } else {
        format!("{}:{reference}", r.name())
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

fn host_port(u: &Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

fn strip_query(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.to_string()
}

/// The host of `host[:port]` (IPv6 in brackets kept).
fn split_host(hp: &str) -> &str {
    if hp.starts_with('[') {
        return hp.split_once(']').map(|(h, _)| &hp[..h.len() + 1]).unwrap_or(hp);
    }
    hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(hp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_policy() {
        let c = Client::new(ClientOptions {
            insecure_registries: vec!["reg.lan:5000".into(), "other.lan".into()],
            ..Default::default()
        })
        .unwrap();
        for ok in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.8.9.10",
            "[::1]:5000",
            "reg.lan:5000",
            "other.lan:1234",
            "other.lan",
        ] {
            assert!(c.allows_http(ok), "{ok}");
        }
        for no in [
            "reg.lan",
            "reg.lan:5001",
            "docker.io",
            "registry-1.docker.io",
            "10.0.0.1:5000",
            "128.0.0.1",
            "localhost.example.com",
        ] {
            assert!(!c.allows_http(no), "{no}");
        }
    }

    #[test]
    fn origins() {
        let a = Url::parse("http://127.0.0.1:5000/v2/x").unwrap();
        assert!(same_origin(&a, &Url::parse("http://127.0.0.1:5000/other").unwrap()));
        assert!(!same_origin(&a, &Url::parse("http://127.0.0.1:5001/v2/x").unwrap()));
        assert!(!same_origin(&a, &Url::parse("http://localhost:5000/v2/x").unwrap()));
        assert!(!same_origin(&a, &Url::parse("https://127.0.0.1:5000/v2/x").unwrap()));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            registry_message(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
            " (MANIFEST_UNKNOWN: manifest unknown)"
        );
        assert_eq!(registry_message(b"<html>"), "");
        let hostile = format!(
            r#"{{"errors":[{{"code":"DENIED","message":"\u001b[2J\u001b]0;pwned\u0007{}"}}]}}"#,
            "x".repeat(100_000)
        );
        let m = registry_message(hostile.as_bytes());
        assert!(m.len() < 300 && !m.chars().any(char::is_control), "{m}");
        assert!(m.starts_with(" (DENIED: \\u{1b}[2J"), "{m}");
    }
}
