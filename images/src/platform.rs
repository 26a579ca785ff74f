//! Platforms (`os/arch[/variant]`): the host's, parsing `--platform`, and picking the best
//! manifest of an index with containerd's rules (normalized names; arm variants; an arm64
//! host also runs arm v8..v5, an armv7 host v6 and v5, an amd64 host 386).

use std::fmt;

/// An OCI platform, normalized (`aarch64` → `arm64`, arm64 `v8` → no variant, arm with no
/// variant → `v7`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Empty when there is none.
    pub variant: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64 or linux/arm/v7")]
pub struct BadPlatform(pub String);

impl Platform {
    pub fn new(os: &str, arch: &str, variant: &str) -> Platform {
        normalize(os, arch, variant)
    }

    /// Parses `os/arch[/variant]` (also `arch` alone, meaning linux).
    pub fn parse(s: &str) -> Result<Platform, BadPlatform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if parts.is_empty() || parts.len() > 3 || !parts.iter().all(ok) {
            return Err(BadPlatform(s.to_string()));
        }
        Ok(match parts.as_slice() {
            [arch] => normalize("linux", arch, ""),
            [os, arch] => normalize(os, arch, ""),
            [os, arch, variant] => normalize(os, arch, variant),
            _ => return Err(BadPlatform(s.to_string())),
        })
    }

    /// The platform this binary runs containers for: linux, the architecture it was built
    /// for, and for arm the CPU's variant (from /proc/cpuinfo, else uname).
    pub fn host() -> Platform {
        let arch = std::env::consts::ARCH;
        let variant = if arch == "arm" { arm_variant() } else { String::new() };
        normalize("linux", arch, &variant)
    }

    /// Platforms this one can run, best first (containerd's `platforms.Only`).
    pub fn compatible(&self) -> Vec<Platform> {
        let mut v = vec![self.clone()];
        let with = |arch: &str, variant: &str| Platform {
            os: self.os.clone(),
            architecture: arch.to_string(),
            variant: variant.to_string(),
        };
        let arm_down = |from: u32, v: &mut Vec<Platform>| {
            for n in (5..from).rev() {
                v.push(with("arm", &format!("v{n}")));
            }
        };
        match self.architecture.as_str() {
            "amd64" => {
                if let Some(n) = self.variant.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) {
                    for m in (1..n).rev() {
                        let variant = if m == 1 { String::new() } else { format!("v{m}") };
                        v.push(with("amd64", &variant));
                    }
                }
                v.push(with("386", ""));
            }
            "arm" => {
                if let Some(n) = self.variant.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) {
                    arm_down(n, &mut v);
                }
            }
            "arm64" => {
                v.push(with("arm", "v8"));
                arm_down(8, &mut v);
            }
            _ => {}
        }
        v
    }

    /// Whether an index entry's platform is exactly this one (after normalization).
    pub fn matches(&self, os: &str, arch: &str, variant: &str) -> bool {
        *self == normalize(os, arch, variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

fn normalize(os: &str, arch: &str, variant: &str) -> Platform {
    let os = os.to_ascii_lowercase();
    let (arch, variant) = match (arch.to_ascii_lowercase().as_str(), variant.to_ascii_lowercase().as_str()) {
        ("i386" | "386", _) => ("386".to_string(), String::new()),
        ("x86_64" | "x86-64" | "amd64", v) => {
            ("amd64".to_string(), if v == "v1" || v == "1" { String::new() } else { v.to_string() })
        }
        ("aarch64" | "arm64", v) => (
            "arm64".to_string(),
            match v {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".to_string(),
                v => v.to_string(),
            },
        ),
        ("armhf", _) => ("arm".to_string(), "v7".to_string()),
        ("armel", _) => ("arm".to_string(), "v6".to_string()),
        ("arm", v) => (
            "arm".to_string(),
            match v {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{v}"),
                v => v.to_string(),
            },
        ),
        (a, v) => (a.to_string(), v.to_string()),
    };
    Platform { os, architecture: arch, variant }
}

/// The arm variant of this CPU ([`arm_variant_of`] of /proc/cpuinfo and uname's machine).
fn arm_variant() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok();
    let machine = nix::sys::utsname::uname().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default();
    arm_variant_of(info.as_deref(), &machine).to_string()
}

/// The arm variant of a CPU, like containerd's `cpuVariant`, from the text of its
/// /proc/cpuinfo (when there is one) and uname's machine:
/// - "CPU architecture" 7 with an ARMv6 model name is v6: a Raspberry Pi 1 or Zero ("ARMv6-
///   compatible processor") under a kernel that reports its ARM1176 as 7;
/// - 5, 5T, 5TE, 5TEJ are v5 (Marvell Kirkwood and older boards); 6, 6TEJ are v6;
/// - everything else is v7: 7 itself (Pi 2), 8 or AArch64 (a 32-bit userland on a 64-bit CPU,
///   Pi 3/4/5 on a 32-bit OS, runs v7 code), and an architecture not known here;
/// - without a "CPU architecture" line, uname's machine: armv5* v5, armv6* v6, else v7.
fn arm_variant_of(cpuinfo: Option<&str>, machine: &str) -> &'static str {
    let field = |name: &str| {
        cpuinfo?.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
        })
    };
    if let Some(arch) = field("CPU architecture") {
        let model = field("model name").unwrap_or_default();
        return match arch.as_str() {
            "7" if model.starts_with("ARMv6") => "v6",
            "5" | "5T" | "5TE" | "5TEJ" => "v5",
            "6" | "6TEJ" => "v6",
            _ => "v7",
        };
    }
    match machine {
        m if m.starts_with("armv5") => "v5",
        m if m.starts_with("armv6") => "v6",
        _ => "v7",
    }
}

/// An index entry's platform as the index states it.
pub struct Candidate<'a> {
    pub os: &'a str,
    pub architecture: &'a str,
    pub variant: &'a str,
}

/// Index of the best entry for `want`: the earliest platform of `want.compatible()` that an
/// entry matches; among equals, the first entry in the index.
pub fn select<'a>(want: &Platform, entries: impl IntoIterator<Item = Option<Candidate<'a>>>) -> Option<usize> {
    let entries: Vec<Option<Candidate<'a>>> = entries.into_iter().collect();
    for p in want.compatible() {
        for (i, e) in entries.iter().enumerate() {
            if let Some(c) = e {
                if p.matches(c.os, c.architecture, c.variant) {
                    return Some(i);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/cpuinfo as real boards print it (the lines that matter, in their order).
    const PI_ZERO: &str = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\nBogoMIPS\t: 697.95\nFeatures\t: half thumb fastmult vfp edsp java tls \nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xb76\nCPU revision\t: 7\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi Zero W Rev 1.1\n";
    const PI_1_OLD_KERNEL: &str = "Processor\t: ARMv6-compatible processor rev 7 (v6l)\nBogoMIPS\t: 697.95\nFeatures\t: swp half thumb fastmult vfp edsp java tls \nCPU implementer\t: 0x41\nCPU architecture: 6TEJ\nCPU variant\t: 0x0\nCPU part\t: 0xb76\n";
    const PI_2: &str = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nBogoMIPS\t: 38.40\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm \nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xc07\n";
    const PI_4_32BIT_OS_64BIT_KERNEL: &str = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n";
    const PI_3_32BIT_KERNEL: &str = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU part\t: 0xd03\n";
    const KIRKWOOD: &str = "Processor\t: Feroceon 88FR131 rev 1 (v5l)\nBogoMIPS\t: 1192.75\nFeatures\t: swp half thumb fastmult edsp \nCPU implementer\t: 0x56\nCPU architecture: 5TE\nCPU variant\t: 0x2\nCPU part\t: 0x131\n";

    #[test]
    fn the_arm_variant_of_real_boards() {
        let cases = [
            (Some(PI_ZERO), "armv6l", "v6"),
            (Some(PI_1_OLD_KERNEL), "armv6l", "v6"),
            (Some(PI_2), "armv7l", "v7"),
            (Some(PI_3_32BIT_KERNEL), "armv7l", "v7"),
            (Some(PI_4_32BIT_OS_64BIT_KERNEL), "armv8l", "v7"),
            (Some("CPU architecture: AArch64\n"), "armv8l", "v7"),
            (Some(KIRKWOOD), "armv5tel", "v5"),
            (Some("CPU architecture: 5\n"), "", "v5"),
            (Some("CPU architecture: 6\n"), "", "v6"),
            // An architecture not known here is v7, whatever the machine says.
            (Some("CPU architecture: 9\n"), "armv6l", "v7"),
            // No "CPU architecture" line (or no /proc/cpuinfo): uname's machine.
            (Some("processor\t: 0\n"), "armv6l", "v6"),
            (None, "armv6l", "v6"),
            (None, "armv5tejl", "v5"),
            (None, "armv7l", "v7"),
            (None, "", "v7"),
        ];
        for (info, machine, want) in cases {
            assert_eq!(arm_variant_of(info, machine), want, "{machine}: {info:?}");
        }
    }

    fn c<'a>(os: &'a str, a: &'a str, v: &'a str) -> Option<Candidate<'a>> {
        Some(Candidate { os, architecture: a, variant: v })
    }

    #[test]
    fn parse_and_normalize() {
        assert_eq!(Platform::parse("linux/arm/v7").unwrap().to_string(), "linux/arm/v7");
        assert_eq!(Platform::parse("linux/arm").unwrap().to_string(), "linux/arm/v7");
        assert_eq!(Platform::parse("linux/aarch64").unwrap().to_string(), "linux/arm64");
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap().to_string(), "linux/arm64");
        assert_eq!(Platform::parse("linux/x86_64").unwrap().to_string(), "linux/amd64");
        assert_eq!(Platform::parse("arm64").unwrap().to_string(), "linux/arm64");
        assert!(Platform::parse("linux//v7").is_err());
        assert!(Platform::parse("linux/arm/v7/x").is_err());
        assert!(Platform::parse("").is_err());
    }

    #[test]
    fn selection() {
        let index =
            [c("linux", "amd64", ""), c("linux", "arm64", "v8"), c("linux", "arm", "v7"), c("linux", "arm", "v6")];
        let pick = |p: &str| {
            select(&Platform::parse(p).unwrap(), index.iter().map(|e| e.as_ref().map(|c| Candidate { ..*c })))
        };
        assert_eq!(pick("linux/amd64"), Some(0));
        assert_eq!(pick("linux/arm64"), Some(1));
        assert_eq!(pick("linux/arm/v7"), Some(2));
        assert_eq!(pick("linux/arm/v6"), Some(3));
        assert_eq!(pick("linux/arm/v5"), None);
        assert_eq!(pick("linux/riscv64"), None);
        // An armv7 host takes v6 when there is no v7.
        let v6only = [c("linux", "arm", "v6"), None];
        assert_eq!(select(&Platform::parse("linux/arm/v7").unwrap(), v6only), Some(0));
        // An arm64 host runs arm/v7 when there is no arm64.
        let armonly = [c("linux", "amd64", ""), c("linux", "arm", "v7")];
        assert_eq!(select(&Platform::parse("linux/arm64").unwrap(), armonly), Some(1));
        // Variants are not ignored: a v7 image is not picked for a v6 host.
        let v7only = [c("linux", "arm", "v7")];
        assert_eq!(select(&Platform::parse("linux/arm/v6").unwrap(), v7only), None);
        // Attestation manifests (unknown/unknown) are never chosen.
        let att = [c("unknown", "unknown", ""), c("linux", "amd64", "")];
        assert_eq!(select(&Platform::parse("linux/amd64").unwrap(), att), Some(1));
    }

    #[test]
    fn host_is_linux() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(h.to_string(), "linux/amd64");
    }
}
