//! Entry paths: tar names (bytes) to normalized paths inside the layer.
//!
//! A normalized path is its components joined by `/`: no leading `/`, no empty, `.` or `..`
//! components, no NUL. The empty path is the layer root.

/// Normalizes a tar entry name or hardlink target. A leading `/` is stripped (the tar stream
/// is a root filesystem, so `/etc/x` means the layer's `etc/x`, as in docker, containerd and
/// GNU tar); `.` and empty components are dropped; any `..` component is refused, even one
/// that would stay inside the layer (`a/../b`): layer generators never write them.
pub(super) fn normalize(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path has a \"..\" component"),
            c if c.contains(&0) => return Err("path has a NUL byte"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// True when the raw name ends like a directory: `a/`, `a/.`, `.`.
pub(super) fn names_dir(raw: &[u8]) -> bool {
    raw.ends_with(b"/") || raw == b"." || raw.ends_with(b"/.")
}

/// Splits a normalized, non-empty path into (parent, last component).
pub(super) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Joins a normalized parent and one component.
pub(super) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cases() {
        assert_eq!(normalize(b"./usr/bin/").unwrap(), b"usr/bin");
        assert_eq!(normalize(b"/etc//passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"a/./b").unwrap(), b"a/b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b"/").unwrap(), b"");
        assert!(normalize(b"../x").is_err());
        assert!(normalize(b"a/../b").is_err());
        assert!(normalize(b"a/..").is_err());
        assert!(normalize(b"/..").is_err());
        assert!(normalize(b"a\0b").is_err());
        // Names that merely contain dots are fine.
        assert_eq!(normalize(b"a/..b/...").unwrap(), b"a/..b/...");
    }

    #[test]
    fn split_join() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert_eq!(join(b"", b"c"), b"c");
        assert_eq!(join(b"a/b", b"c"), b"a/b/c");
        assert!(names_dir(b"a/"));
        assert!(names_dir(b"a/."));
        assert!(names_dir(b"."));
        assert!(!names_dir(b"a"));
    }
}
