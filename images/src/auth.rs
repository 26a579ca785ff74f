//! Registry credentials (containers-auth.json / docker config.json) and the
//! `WWW-Authenticate` challenges of the distribution spec's token flow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// The default credentials file.
pub const DEFAULT_AUTH_FILE: &str = "/etc/skiff/auth.json";

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// `Basic base64(user:pass)`.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read registry credentials {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("registry credentials {path} are not valid JSON ({source}): expected {{\"auths\": {{\"HOST\": {{\"auth\": \"base64(user:password)\"}}}}}}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("registry credentials {path}: the entry for {key:?} has an \"auth\" that is not base64(user:password)")]
    Entry { path: PathBuf, key: String },
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// The credentials of an auth file, keyed by registry host or `host/namespace` prefix.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    entries: Vec<(String, Credentials)>,
}

impl AuthConfig {
    /// The file to read: `$REGISTRY_AUTH_FILE`, else /etc/skiff/auth.json.
    pub fn default_path() -> PathBuf {
        match std::env::var_os("REGISTRY_AUTH_FILE") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_AUTH_FILE),
        }
    }

    /// Loads the default file; a missing file means no credentials.
    pub fn load_default() -> Result<AuthConfig, AuthFileError> {
        AuthConfig::load(&AuthConfig::default_path())
    }

    /// Loads a file; a missing file means no credentials.
    pub fn load(path: &Path) -> Result<AuthConfig, AuthFileError> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AuthConfig::default()),
            Err(source) => return Err(AuthFileError::Read { path: path.to_path_buf(), source }),
        };
        AuthConfig::parse(&data, path)
    }

    pub fn parse(data: &[u8], path: &Path) -> Result<AuthConfig, AuthFileError> {
        let file: AuthFile =
            serde_json::from_slice(data).map_err(|source| AuthFileError::Json { path: path.to_path_buf(), source })?;
        let mut entries = Vec::new();
        for (key, e) in file.auths {
            let bad = || AuthFileError::Entry { path: path.to_path_buf(), key: key.clone() };
            let creds = if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| bad())?;
                let raw = String::from_utf8(raw).map_err(|_| bad())?;
                let (u, p) = raw.split_once(':').ok_or_else(bad)?;
                Credentials { username: u.to_string(), password: p.to_string() }
            } else if let (Some(u), Some(p)) = (e.username, e.password) {
                Credentials { username: u, password: p }
            } else if let Some(t) = e.identity_token {
                // Docker's identity tokens go as the password with this user name.
                Credentials { username: "<token>".to_string(), password: t }
            } else {
                continue;
            };
            entries.push((normalize_key(&key), creds));
        }
        // Longest key first, so `host/namespace` entries win over `host`.
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(AuthConfig { entries })
    }

    /// Credentials for `registry/repository`: the longest matching key among `registry`,
    /// `registry/ns`, `registry/ns/repo` (containers-auth.json), Docker Hub's aliases included.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<&Credentials> {
        let full = format!("{}/{}", normalize_key(registry), repository);
        self.entries.iter().find(|(k, _)| full == *k || full.starts_with(&format!("{k}/"))).map(|(_, c)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `https://host:5000` → `host:5000`.
fn normalize_key(key: &str) -> String {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let k = k.trim_end_matches('/');
    let k = k.strip_suffix("/v1").or_else(|| k.strip_suffix("/v2")).unwrap_or(k);
    let (host, rest) = match k.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (k, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    match rest {
        Some(r) if !r.is_empty() => format!("{host}/{r}"),
        _ => host.to_string(),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses the first Basic or Bearer challenge of a `WWW-Authenticate` header.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let h = header.trim();
    let (scheme, rest) = match h.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((s, r)) => (s, r),
        None => (h, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
}

/// `k="v", k2=v2` (quoted strings with backslash escapes).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == ',' || b[i].is_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != '=' && b[i] != ',' {
            i += 1;
        }
        let name: String = b[start..i].iter().collect::<String>().trim().to_string();
        if i >= b.len() || b[i] != '=' {
            continue;
        }
        i += 1;
        let mut value = String::new();
        if i < b.len() && b[i] == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < b.len() && b[i] != ',' {
                value.push(b[i]);
                i += 1;
            }
            value = value.trim().to_string();
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge("Basic realm=\"Registry Realm\""), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=http://x/t, service=svc"),
            Some(Challenge::Bearer { realm: "http://x/t".into(), service: Some("svc".into()), scope: None })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn auth_file() {
        let f = br#"{"auths": {
            "127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"},
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldDpjb2xvbg=="},
            "quay.io/team": {"username": "t", "password": "p"},
            "quay.io": {"username": "q", "password": "r"},
            "empty.io": {}
        }}"#;
        let a = AuthConfig::parse(f, Path::new("auth.json")).unwrap();
        let c = a.lookup("127.0.0.1:5000", "skiff-test/busybox").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pass"));
        assert_eq!(c.basic_header(), "Basic dXNlcjpwYXNz");
        assert_eq!(a.lookup("docker.io", "library/busybox").unwrap().password, "secret:colon");
        assert_eq!(a.lookup("quay.io", "team/app").unwrap().username, "t");
        assert_eq!(a.lookup("quay.io", "teamx/app").unwrap().username, "q");
        assert!(a.lookup("127.0.0.1:5001", "x").is_none());
        assert!(a.lookup("empty.io", "x").is_none());
        let e = AuthConfig::parse(br#"{"auths": {"h": {"auth": "!!"}}}"#, Path::new("a.json")).unwrap_err();
        assert!(e.to_string().contains("\"h\""), "{e}");
        assert!(AuthConfig::parse(b"nope", Path::new("a.json")).is_err());
    }
}
