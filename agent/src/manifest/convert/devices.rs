//! The keys of a service's access to the host's devices: `devices:`, `device_cgroup_rules:`
//! and `privileged:`.

use std::path::PathBuf;

use super::{Ctx, Node, Value};
use crate::manifest::{Device, DeviceRule};

/// The highest device numbers the kernel has (12 bits of major, 20 of minor).
const MAJOR_MAX: u32 = (1 << 12) - 1;
const MINOR_MAX: u32 = (1 << 20) - 1;

/// `rwm` letters without repeats, in the order `rwm`; `None` for anything else.
pub(crate) fn permissions(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 3 {
        return None;
    }
    let mut seen = [false; 3];
    for c in s.chars() {
        let i = "rwm".find(c)?;
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
    }
    Some("rwm".chars().zip(seen).filter(|(_, s)| *s).map(|(c, _)| c).collect())
}

/// A clean absolute path (no `..`, no NUL), as given.
fn absolute(s: &str) -> bool {
    s.starts_with('/') && s.len() > 1 && !s.contains('\0') && !s.split('/').any(|c| c == "..")
}

/// `devices:`: `HOST[:CONTAINER][:PERMISSIONS]` (Docker's `--device`) or `{source, target,
/// permissions}`.
pub(super) fn devices(cx: &mut Ctx, n: &Node, what: &str) -> Vec<Device> {
    let Value::Seq(items) = &n.value else {
        cx.err(n.pos, format!("{what} must be a list (like [\"/dev/ttyUSB0:/dev/ttyUSB0\"]), not {}", n.kind()));
        return Vec::new();
    };
    let mut out: Vec<Device> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let f = format!("{what}[{i}]");
        let (source, target, perms) = match &it.value {
            Value::Map(_) => {
                let (mut source, mut target, mut perms) = (None, None, None);
                for (key, k, v) in cx.map(it, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key}");
                    match key.as_str() {
                        "source" => source = cx.nonempty_string(v, &f2),
                        "target" => target = cx.nonempty_string(v, &f2),
                        "permissions" => perms = cx.nonempty_string(v, &f2),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k, &f),
                    }
                }
                let Some(source) = source else {
                    cx.err(it.pos, format!("{f}: a device needs source: (the host's device path)"));
                    continue;
                };
                (source, target, perms)
            }
            _ => {
                let Some(s) = cx.nonempty_string(it, &f) else { continue };
                let parts: Vec<&str> = s.split(':').collect();
                match parts.as_slice() {
                    [h] => (h.to_string(), None, None),
                    // Docker: a second field that is a permission set is one.
                    [h, p] if permissions(p).is_some() => (h.to_string(), None, Some(p.to_string())),
                    [h, c] => (h.to_string(), Some(c.to_string()), None),
                    [h, c, p] => (h.to_string(), Some(c.to_string()), Some(p.to_string())),
                    _ => {
                        cx.err(it.pos, format!("{f}: `{s}` is not HOST[:CONTAINER[:PERMISSIONS]]"));
                        continue;
                    }
                }
            }
        };
        if !source.starts_with('/') && source.contains('=') {
            cx.err(
                it.pos,
                format!("{f}: `{source}` is a CDI device name; skiff has no CDI: give the device's path under /dev"),
            );
            continue;
        }
        if !absolute(&source) {
            cx.err(it.pos, format!("{f}: `{source}` must be an absolute host path (like /dev/ttyUSB0)"));
            continue;
        }
        let target = target.unwrap_or_else(|| source.clone());
        if !absolute(&target) {
            cx.err(it.pos, format!("{f}: `{target}` must be an absolute path in the container (like /dev/ttyUSB0)"));
            continue;
        }
        let permissions = match perms {
            None => "rwm".to_string(),
            Some(p) => match permissions(&p) {
                Some(p) => p,
                None => {
                    cx.err(it.pos, format!("{f}: `{p}` is not a set of permissions (r, w and m, like rw or rwm)"));
                    continue;
                }
            },
        };
        if out.iter().any(|d| d.target == target) {
            cx.err(it.pos, format!("{f}: {target} is given twice"));
            continue;
        }
        if cx.check_files {
            use std::os::unix::fs::FileTypeExt;
            match std::fs::metadata(&source) {
                Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() || m.is_dir() => {}
                Ok(_) => {
                    cx.err(it.pos, format!("{f}: {source} is not a device node (nor a directory of them)"));
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => cx.warn(
                    it.pos,
                    format!("{f}: {source} does not exist on this host now: the replicas fail to start until it does (is the device plugged in?)"),
                ),
                Err(e) => cx.warn(it.pos, format!("{f}: {source}: {e}")),
            }
        }
        out.push(Device { source: PathBuf::from(source), target, permissions });
    }
    out
}

/// One `device_cgroup_rules:` entry, strictly Docker's form: `TYPE MAJOR:MINOR ACCESS` with
/// TYPE `a`, `b` or `c`, numbers or `*`, ACCESS from `rwm`.
pub(crate) fn parse_rule(s: &str) -> Result<DeviceRule, String> {
    let bad = || format!("`{s}` is not a device rule (TYPE MAJOR:MINOR ACCESS, like `c 189:* rmw`)");
    let parts: Vec<&str> = s.split(' ').collect();
    let [kind, numbers, access] = parts.as_slice() else { return Err(bad()) };
    let kind = match *kind {
        "a" => 'a',
        "b" => 'b',
        "c" => 'c',
        _ => return Err(format!("{}: the type is a (all), b (block) or c (character)", bad())),
    };
    let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
    let number = |t: &str, max: u32, what: &str| -> Result<Option<u32>, String> {
        if t == "*" {
            return Ok(None);
        }
        match t.parse::<u32>() {
            Ok(n) if n <= max && t.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
            _ => Err(format!("{}: the {what} number is `*` or at most {max}", bad())),
        }
    };
    let major = number(major, MAJOR_MAX, "major")?;
    let minor = number(minor, MINOR_MAX, "minor")?;
    let access = permissions(access).ok_or_else(|| format!("{}: the access is a set of r, w and m", bad()))?;
    if kind == 'a' && (major.is_some() || minor.is_some() || access != "rwm") {
        return Err(format!("{}: type a means every device: write `a *:* rwm` or use b and c", bad()));
    }
    Ok(DeviceRule { kind, major, minor, access })
}

/// `device_cgroup_rules:` (an `a` rule, every device, warns as privileged does).
pub(super) fn rules(cx: &mut Ctx, n: &Node, what: &str) -> Vec<DeviceRule> {
    let mut out = Vec::new();
    for (s, pos) in cx.strings(n, what, false).unwrap_or_default() {
        match parse_rule(&s) {
            Ok(r) => {
                if r.kind == 'a' {
                    cx.warn(pos, format!("{what}: `{s}` lets the service open every device of the host (its disks too), which is root on the host; allow only the devices it needs"));
                }
                out.push(r);
            }
            Err(e) => cx.err(pos, format!("{what}: {e}")),
        }
    }
    out
}

/// `privileged: true` warns: it is the host.
pub(super) fn privileged(cx: &mut Ctx, n: &Node, what: &str) -> bool {
    let on = cx.bool(n, what).unwrap_or(false);
    if on {
        cx.warn(
            n.pos,
            format!("{what}: the service has full access to the host (every capability, every device, /proc and /sys unmasked, no seccomp): it is root on the host; grant only what it needs with cap_add and devices"),
        );
    }
    on
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::manifest::tests::{has, lines, report};
    fn svc(extra: &str) -> String {
        format!("services:\n  a:\n    image: a\n{extra}")
    }

    #[test]
    fn devices_short_and_long() {
        let r = report(&svc("    devices:\n      - /dev/ttyACM0\n      - /dev/ttyUSB0:/dev/zigbee\n      - /dev/net/tun:/dev/net/tun:rw\n      - /dev/sda:r\n      - source: /dev/fuse\n        permissions: mr\n"));
        assert!(r.diagnostics.is_empty(), "{:?}", lines(&r));
        let d = &r.manifest.unwrap().services["a"].devices;
        let got: Vec<(String, &str, &str)> =
            d.iter().map(|d| (d.source.display().to_string(), d.target.as_str(), d.permissions.as_str())).collect();
        assert_eq!(
            got,
            [
                ("/dev/ttyACM0".to_string(), "/dev/ttyACM0", "rwm"),
                ("/dev/ttyUSB0".to_string(), "/dev/zigbee", "rwm"),
                ("/dev/net/tun".to_string(), "/dev/net/tun", "rw"),
                ("/dev/sda".to_string(), "/dev/sda", "r"),
                ("/dev/fuse".to_string(), "/dev/fuse", "rm"),
            ]
        );
    }

    #[test]
    fn bad_devices_are_errors_at_their_line() {
        has(&svc("    devices:\n      - dev/ttyACM0\n"), "5:9: error: ", "absolute host path");
        has(&svc("    devices:\n      - /dev/a:/dev/b:rx\n"), "5:9: error: ", "not a set of permissions");
        has(&svc("    devices:\n      - /dev/a:/dev/b:rr\n"), "5:9: error: ", "not a set of permissions");
        has(&svc("    devices:\n      - /dev/a:b\n"), "5:9: error: ", "absolute path in the container");
        has(&svc("    devices:\n      - /dev/a:/dev/../etc/x\n"), "5:9: error: ", "absolute path in the container");
        has(&svc("    devices:\n      - /a:/b:rw:x\n"), "5:9: error: ", "HOST[:CONTAINER[:PERMISSIONS]]");
        has(&svc("    devices:\n      - nvidia.com/gpu=all\n"), "5:9: error: ", "CDI");
        has(&svc("    devices:\n      - /dev/a\n      - /dev/a\n"), "6:9: error: ", "given twice");
        has(&svc("    devices:\n      - target: /dev/a\n"), "5:9: error: ", "needs source");
        has(&svc("    devices: /dev/a\n"), "4:14: error: ", "must be a list");
    }

    #[test]
    fn a_missing_device_warns_at_validate_and_a_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("compose.yaml");
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let src = svc(&format!(
            "    devices:\n      - /dev/skiff-no-such-device\n      - {}\n      - /dev/null\n      - /dev/net\n",
            file.display()
        ));
        std::fs::write(&m, src).unwrap();
        let r = crate::manifest::load(&m).unwrap();
        let l = lines(&r);
        assert!(
            l.iter().any(|d| d.starts_with("5:9: warning: ") && d.contains("does not exist on this host")),
            "{l:#?}"
        );
        assert!(l.iter().any(|d| d.starts_with("6:9: error: ") && d.contains("not a device node")), "{l:#?}");
        assert_eq!(l.len(), 2, "{l:#?}");
    }

    #[test]
    fn device_cgroup_rules_strictly() {
        let r = report(&svc("    device_cgroup_rules:\n      - c 189:* rmw\n      - 'b 8:0 r'\n      - c *:* m\n"));
        assert!(r.diagnostics.is_empty(), "{:?}", lines(&r));
        let rules = &r.manifest.unwrap().services["a"].device_cgroup_rules;
        assert_eq!(rules[0], DeviceRule { kind: 'c', major: Some(189), minor: None, access: "rwm".into() });
        assert_eq!(rules[1], DeviceRule { kind: 'b', major: Some(8), minor: Some(0), access: "r".into() });
        assert_eq!(rules[2], DeviceRule { kind: 'c', major: None, minor: None, access: "m".into() });
        for bad in [
            "c 189:* rwx",
            "x 1:2 r",
            "c 189 rwm",
            "c  189:* rwm",
            "c 189:* ",
            "c 5000:1 r",
            "c -1:1 r",
            "c +1:1 r",
            "a 1:2 rwm",
            "c 1:2 rwmr",
            "c 1:2 rwm extra",
        ] {
            let r = has(
                &svc(&format!("    device_cgroup_rules:\n      - '{bad}'\n")),
                "5:9: error: ",
                "a.device_cgroup_rules: ",
            );
            assert_eq!(r.errors(), 1, "{bad}: {:?}", lines(&r));
        }
        has(&svc("    device_cgroup_rules:\n      - a *:* rwm\n"), "5:9: warning: ", "every device of the host");
    }

    #[test]
    fn privileged_warns() {
        let r = has(&svc("    privileged: true\n"), "4:17: warning: ", "full access to the host");
        assert!(r.manifest.unwrap().services["a"].privileged);
        let r = report(&svc("    privileged: false\n"));
        assert!(r.diagnostics.is_empty());
        has(&svc("    privileged: yes please\n"), "4:17: error: ", "true or false");
    }

    #[test]
    fn records_without_the_new_keys_still_load_and_compare_equal() {
        let s = report(&svc("")).manifest.unwrap().services["a"].clone();
        let mut v = serde_json::to_value(&s).unwrap();
        for k in ["privileged", "devices", "device_cgroup_rules", "files"] {
            v.as_object_mut().unwrap().remove(k).unwrap();
        }
        let old: crate::manifest::Service = serde_json::from_value(v).unwrap();
        assert_eq!(old, s);
    }
}
