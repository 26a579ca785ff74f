//! Whether skiff will work on this host, and what to do when it will not: `skiff check`
//! prints the findings, the agent logs its warnings and errors at start and shows them in
//! status, and the agent decides from the same cgroup facts which limits it can hand the
//! runtime ([`CgroupFacts::usable`]).
//!
//! The thin part ([`read`]) reads the host into a [`HostFacts`]; [`assess`] is a pure
//! function of those facts, so it is tested with the facts of real boxes (Raspberry Pi OS on
//! a Pi 5, this hybrid VM, pure v1, small and misconfigured boxes).

pub mod clock;
mod read;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use read::read;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Checked and fine (or just reported: the page size).
    Ok,
    /// skiff works, with less than it should (no memory limits, no NTP, a small disk...).
    Warning,
    /// skiff cannot work until it is fixed.
    Error,
}

/// One thing found about the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub level: Level,
    /// `kernel`, `cgroups`, `memory`, `store`, `clock`, `runtime`...
    pub topic: String,
    /// One line.
    pub message: String,
    /// What to do (one line), for warnings and errors.
    pub fix: Option<String>,
}

/// The verdict of a list of findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warnings,
    Fail,
}

pub fn verdict(findings: &[Finding]) -> Verdict {
    match findings.iter().map(|f| f.level).max() {
        Some(Level::Error) => Verdict::Fail,
        Some(Level::Warning) => Verdict::Warnings,
        _ => Verdict::Ok,
    }
}

/// What `skiff check` reads about the host: raw texts where the kernel gives text, so tests
/// give the texts real boxes show.
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// `uname -r`, `uname -m`.
    pub kernel_release: String,
    pub machine: String,
    /// The kernel's build configuration and where it was read (`/proc/config.gz`,
    /// `/boot/config-RELEASE`), when readable.
    pub kernel_config: Option<(String, String)>,
    /// The namespace kinds of `/proc/self/ns` (`user`, `net`, ...).
    pub namespaces: Vec<String>,
    /// `/proc/filesystems`.
    pub filesystems: String,
    /// `/proc/cmdline`.
    pub cmdline: String,
    /// `/proc/device-tree/model` (`Raspberry Pi 5 Model B Rev 1.0`).
    pub board: Option<String>,
    /// The Raspberry Pi boot command line file when there is one (`/boot/firmware/cmdline.txt`,
    /// older images `/boot/cmdline.txt`).
    pub cmdline_txt: Option<PathBuf>,
    pub cgroups: CgroupFacts,
    /// The `nft` command on PATH.
    pub nft: Option<PathBuf>,
    pub store: Option<StoreFacts>,
    /// MemTotal of /proc/meminfo, in bytes.
    pub mem_total: Option<u64>,
    /// The page size, in bytes.
    pub page_size: u64,
    /// Now and this binary's build date (seconds since 1970).
    pub now: i64,
    pub built: i64,
    /// systemd is PID 1.
    pub systemd: bool,
    /// `timedatectl show -p NTPSynchronized` (None: not asked or no answer).
    pub ntp_synchronized: Option<bool>,
    /// The OCI runtime the agent would use (path and first line of `--version`), or why none.
    pub runtime: Result<(PathBuf, Option<String>), String>,
}

/// The filesystem of the store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreFacts {
    /// The store's root (`--root`).
    pub path: PathBuf,
    /// The mount it is on: mount point, filesystem type, source (`/dev/mmcblk0p2`).
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub avail_bytes: u64,
    pub total_bytes: u64,
}

/// The texts the cgroup layout and its controllers are read from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupFacts {
    /// `/proc/self/mountinfo`.
    pub mountinfo: String,
    /// `/proc/cgroups` (absent on kernels without cgroup v1; on 6.12+ kernels built without
    /// CONFIG_MEMCG_V1 it has no `memory` line even when the controller is on).
    pub proc_cgroups: Option<String>,
    /// `/sys/fs/cgroup/cgroup.controllers` (pure v2).
    pub root_controllers: Option<String>,
    /// `/sys/fs/cgroup/unified/cgroup.controllers` (hybrid).
    pub unified_controllers: Option<String>,
}

/// The cgroup layout (what libcgroups and runc call the setup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Nothing mounted under /sys/fs/cgroup.
    None,
    /// Legacy: v1 hierarchies only.
    V1,
    /// v1 hierarchies and a cgroup2 mount at /sys/fs/cgroup/unified.
    Hybrid,
    /// Unified: cgroup2 at /sys/fs/cgroup.
    V2,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::None => "none",
            Layout::V1 => "v1 (legacy)",
            Layout::Hybrid => "hybrid (v1 controllers, cgroup2 at /sys/fs/cgroup/unified)",
            Layout::V2 => "v2 (unified)",
        }
    }
}

/// A controller's state on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    Usable,
    /// /proc/cgroups lists it with `enabled` 0: turned off on the kernel command line
    /// (`cgroup_disable=memory`, as Raspberry Pi kernels boot).
    Disabled,
    /// Neither listed as enabled nor offered: not in this kernel, or off (a 6.12+ kernel
    /// without v1 memory support does not list it at all).
    Missing,
    /// v1/hybrid: enabled in the kernel but no hierarchy of it is mounted.
    NotMounted,
    /// Hybrid: attached to the cgroup2 mount at /sys/fs/cgroup/unified, where the runtime
    /// applies no limits.
    OnUnified,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl CgroupFacts {
    /// From this host (see [`read`]).
    pub fn read() -> CgroupFacts {
        read::cgroup_facts()
    }

    pub fn layout(&self) -> Layout {
        let mounts = crate::daemon::cgstats::parse_mountinfo(&self.mountinfo);
        let at = |p: &str| mounts.iter().any(|m| m.v2 && m.mount_point == std::path::Path::new(p));
        if at(CGROUP_ROOT) {
            Layout::V2
        } else if mounts.iter().any(|m| !m.v2) {
            if at("/sys/fs/cgroup/unified") {
                Layout::Hybrid
            } else {
                Layout::V1
            }
        } else {
            Layout::None
        }
    }

    /// `/proc/cgroups`' enabled column for a controller (None: not listed).
    fn kernel_enabled(&self, name: &str) -> Option<bool> {
        self.proc_cgroups.as_deref()?.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[0] == name).then(|| f[3] == "1")
        })
    }

    pub fn controller(&self, name: &str) -> Controller {
        let kernel = self.kernel_enabled(name);
        if kernel == Some(false) {
            return Controller::Disabled;
        }
        let has = |t: &Option<String>| t.as_deref().is_some_and(|t| t.split_whitespace().any(|c| c == name));
        match self.layout() {
            Layout::None => Controller::Missing,
            Layout::V2 => {
                if has(&self.root_controllers) {
                    Controller::Usable
                } else {
                    Controller::Missing
                }
            }
            Layout::V1 | Layout::Hybrid => {
                let mounts = crate::daemon::cgstats::parse_mountinfo(&self.mountinfo);
                if mounts.iter().any(|m| !m.v2 && m.controllers.iter().any(|c| c == name)) {
                    Controller::Usable
                } else if self.layout() == Layout::Hybrid && has(&self.unified_controllers) {
                    Controller::OnUnified
                } else if kernel == Some(true) {
                    Controller::NotMounted
                } else {
                    Controller::Missing
                }
            }
        }
    }

    /// Whether limits of this controller can be applied (what the agent hands the runtime).
    pub fn usable(&self, name: &str) -> bool {
        self.controller(name) == Controller::Usable
    }
}

impl HostFacts {
    fn config(&self, key: &str) -> Option<char> {
        let (_, text) = self.kernel_config.as_ref()?;
        for l in text.lines() {
            if let Some(v) = l.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                return Some(match v.trim() {
                    "y" => 'y',
                    "m" => 'm',
                    "n" => 'n',
                    _ => 'y', // a string or number value: configured
                });
            }
            if l.strip_prefix("# ").and_then(|r| r.strip_prefix(key)) == Some(" is not set") {
                return Some('n');
            }
        }
        Some('n') // absent from a config that was read: not there
    }

    /// A kernel option is built in or a module (`None`: the config is not readable).
    fn has_config(&self, key: &str) -> Option<bool> {
        self.config(key).map(|v| v != 'n')
    }

    fn is_raspberry_pi(&self) -> bool {
        self.board.as_deref().is_some_and(|b| b.contains("Raspberry Pi")) || self.cmdline_txt.is_some()
    }

    fn cmdline_has(&self, word: &str) -> bool {
        self.cmdline.split_whitespace().any(|w| w == word)
    }
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn size(b: u64) -> String {
    if b >= GIB {
        format!("{:.1} GiB", b as f64 / GIB as f64)
    } else {
        format!("{} MiB", b / MIB)
    }
}

/// The findings for these facts, in a fixed order (kernel, cgroups, networking, store,
/// memory, clock, runtime).
pub fn assess(h: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |level: Level, topic: &str, message: String, fix: Option<String>| {
        out.push(Finding { level, topic: topic.into(), message, fix });
    };
    use Level::*;

    // Kernel.
    match &h.kernel_config {
        Some((src, _)) => {
            push(Ok, "kernel", format!("Linux {} ({}), configuration from {src}", h.kernel_release, h.machine), None)
        }
        None => push(
            Ok,
            "kernel",
            format!(
                "Linux {} ({}); its configuration is not readable (no /proc/config.gz or /boot/config-{}): checked from what runs",
                h.kernel_release, h.machine, h.kernel_release
            ),
            None,
        ),
    }
    // Namespaces: the config when readable, else /proc/self/ns.
    let ns = |cfg: &str, kind: &str| h.has_config(cfg).unwrap_or_else(|| h.namespaces.iter().any(|n| n == kind));
    let needed: Vec<&str> =
        [("CONFIG_PID_NS", "pid"), ("CONFIG_NET_NS", "net"), ("CONFIG_IPC_NS", "ipc"), ("CONFIG_UTS_NS", "uts")]
            .into_iter()
            .filter(|(c, k)| !ns(c, k) || h.has_config("CONFIG_NAMESPACES") == Some(false))
            .map(|(_, k)| k)
            .collect();
    if !needed.is_empty() {
        push(
            Error,
            "kernel",
            format!("no {} namespaces: containers cannot be made", needed.join(", ")),
            Some(
                "use a kernel with CONFIG_NAMESPACES, CONFIG_PID_NS, CONFIG_NET_NS, CONFIG_IPC_NS and CONFIG_UTS_NS"
                    .into(),
            ),
        );
    } else {
        push(Ok, "kernel", "namespaces: pid, net, ipc, uts, mount".into(), None);
    }
    if !ns("CONFIG_USER_NS", "user") {
        push(
            Warning,
            "kernel",
            "no user namespaces: containers that ask for one (a userns_mode or a spec with uid mappings) cannot run"
                .into(),
            Some("use a kernel with CONFIG_USER_NS=y".into()),
        );
    }
    let overlay = h.filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay"))
        || h.has_config("CONFIG_OVERLAY_FS") == Some(true);
    if overlay {
        push(Ok, "kernel", "overlayfs: container roots are overlays of the image layers".into(), None);
    } else {
        push(
            Warning,
            "kernel",
            "no overlayfs: each container's root is a full copy of its image (slower starts, more disk)".into(),
            Some("load it (`modprobe overlay`) or use a kernel with CONFIG_OVERLAY_FS".into()),
        );
    }
    for (cfg, what) in [("CONFIG_VETH", "veth"), ("CONFIG_BRIDGE", "bridge")] {
        if h.has_config(cfg) == Some(false) {
            push(
                Error,
                "network",
                format!(
                    "no {what} support in the kernel: bridge-mode services (compose's default) cannot be connected"
                ),
                Some(format!(
                    "use a kernel with {cfg} (=m is fine), or run the agent with --no-bridge (loopback-only services)"
                )),
            );
        }
    }
    if h.has_config("CONFIG_NF_TABLES") == Some(false) {
        push(
            Warning,
            "network",
            "no nf_tables in the kernel: no NAT for bridged services, published ports only through the agent's proxy"
                .into(),
            Some("use a kernel with CONFIG_NF_TABLES, CONFIG_NFT_NAT and CONFIG_NFT_MASQ (=m is fine)".into()),
        );
    }
    match h.has_config("CONFIG_SECCOMP_FILTER") {
        Some(false) => push(
            Error,
            "kernel",
            "no seccomp filters: containers cannot get their system call filter".into(),
            Some("use a kernel with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER".into()),
        ),
        Some(true) => push(Ok, "kernel", "seccomp filters".into(), None),
        None => {}
    }
    let layout = h.cgroups.layout();
    if h.has_config("CONFIG_CGROUP_BPF") == Some(false) {
        let (level, why) = if layout == Layout::V2 {
            (Error, "on cgroup v2 the device rules of containers cannot be enforced")
        } else {
            (Warning, "device rules rest on the v1 devices controller alone")
        };
        push(
            level,
            "kernel",
            format!("no BPF cgroup device programs (CONFIG_CGROUP_BPF): {why}"),
            Some("use a kernel with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF".into()),
        );
    }

    // cgroups.
    if layout == Layout::None {
        push(
            Error,
            "cgroups",
            "no cgroup filesystem is mounted at /sys/fs/cgroup".into(),
            Some("mount cgroup2: `mount -t cgroup2 none /sys/fs/cgroup` (systemd does it at boot)".into()),
        );
    } else {
        push(Ok, "cgroups", format!("layout {}", layout.name()), None);
    }
    if layout != Layout::None {
        let wanted: &[(&str, &str)] = &[
            ("memory", "mem_limit and deploy.resources.limits.memory"),
            ("cpu", "cpus and cpu limits"),
            ("pids", "pids_limit"),
        ];
        for &(name, what) in wanted {
            let state = h.cgroups.controller(name);
            if state == Controller::Usable {
                push(Ok, "cgroups", format!("{name} controller"), None);
                continue;
            }
            let off = format!("cgroup_disable={name}");
            let why = match state {
                Controller::Disabled | Controller::Missing if h.cmdline_has(&off) => {
                    format!("turned off on the kernel command line: {off}")
                }
                Controller::Disabled => "turned off on the kernel command line".to_string(),
                Controller::Missing => "not offered by this kernel".to_string(),
                Controller::NotMounted => "enabled, but no v1 hierarchy of it is mounted".to_string(),
                Controller::OnUnified => {
                    "attached to the cgroup2 mount at /sys/fs/cgroup/unified, where this hybrid layout applies no limits".to_string()
                }
                Controller::Usable => unreachable!(),
            };
            push(
                Warning,
                "cgroups",
                format!("no {name} controller ({why}): services run without their {what}"),
                Some(controller_fix(h, name, state, layout)),
            );
        }
        if layout != Layout::V2 {
            match h.cgroups.controller("devices") {
                Controller::Usable => push(Ok, "cgroups", "devices controller".into(), None),
                _ if layout == Layout::Hybrid && h.has_config("CONFIG_CGROUP_BPF") != Some(false) => push(
                    Warning,
                    "cgroups",
                    "no v1 devices controller: device rules rest on the BPF program on /sys/fs/cgroup/unified".into(),
                    Some("mount it: `mkdir -p /sys/fs/cgroup/devices && mount -t cgroup -o devices cgroup /sys/fs/cgroup/devices`".into()),
                ),
                _ => push(
                    Error,
                    "cgroups",
                    "no v1 devices controller: the device rules of containers cannot be enforced".into(),
                    Some("mount it: `mkdir -p /sys/fs/cgroup/devices && mount -t cgroup -o devices cgroup /sys/fs/cgroup/devices`".into()),
                ),
            }
        }
    }

    // nft.
    match &h.nft {
        Some(p) => push(Ok, "network", format!("nft: {}", p.display()), None),
        None => push(
            Warning,
            "network",
            "the nft command is not installed: no NAT for bridged services, published ports only through the agent's proxy".into(),
            Some("install nftables (`apt-get install nftables`)".into()),
        ),
    }

    // The store.
    if let Some(s) = &h.store {
        let used = s.total_bytes.saturating_sub(s.avail_bytes);
        let pct = (used * 100).checked_div(s.total_bytes).unwrap_or(0);
        let place = format!("{} on {} ({}, {})", s.path.display(), s.mount_point.display(), s.fs_type, s.source);
        match s.fs_type.as_str() {
            "vfat" | "msdos" | "exfat" | "ntfs" | "ntfs3" | "fuseblk" => push(
                Error,
                "store",
                format!("the store {place}: this filesystem has no Unix owners and modes, images cannot be kept on it"),
                Some("put --root on ext4, xfs or btrfs".into()),
            ),
            "nfs" | "nfs4" | "cifs" | "smb3" | "overlay" | "fuse" => push(
                Warning,
                "store",
                format!("the store {place}: overlayfs cannot use it, container roots are full copies"),
                Some("put --root on a local ext4, xfs or btrfs".into()),
            ),
            _ => push(Ok, "store", format!("the store {place}"), None),
        }
        let free = format!("{} free of {} ({pct}% used)", size(s.avail_bytes), size(s.total_bytes));
        if s.avail_bytes < 256 * MIB {
            push(
                Error,
                "store",
                format!("{free}: pulls and container starts will fail"),
                Some("free space (`skiff prune`, remove unused images with `skiff rmi`) or use a larger disk".into()),
            );
        } else if s.avail_bytes < 2 * GIB || pct >= 85 {
            push(
                Warning,
                "store",
                format!("{free}: little room for images and logs"),
                Some("free space (`skiff prune`) or use a larger disk".into()),
            );
        } else {
            push(Ok, "store", free, None);
        }
        if s.source.starts_with("/dev/mmcblk") {
            let def = crate::manifest::Logging::default();
            push(
                Warning,
                "store",
                format!(
                    "the store is on an SD card ({}): it wears out with writes; each replica's log takes up to {} ({} files of {})",
                    s.source,
                    size(def.max_size * def.max_file as u64),
                    def.max_file,
                    size(def.max_size)
                ),
                Some(
                    "keep logs small (a service's `logging: {options: {max-size: 1m, max-file: \"2\"}}`) or put --root on a USB SSD".into(),
                ),
            );
        }
    }

    // Memory and pages.
    if let Some(m) = h.mem_total {
        if m < GIB {
            push(
                Warning,
                "memory",
                format!("{} of memory (under 1 GiB): few replicas fit", size(m)),
                Some("run few replicas and give each a mem_limit".into()),
            );
        } else {
            push(Ok, "memory", format!("{} of memory", size(m)), None);
        }
    }
    let page = if h.page_size == 16384 && h.is_raspberry_pi() {
        "page size 16 KiB (the Raspberry Pi 5 kernel): supported".to_string()
    } else {
        format!("page size {} KiB", h.page_size / 1024)
    };
    push(Ok, "memory", page, None);

    // Clock.
    match clock::check(h.now, h.built) {
        Some(b) => push(Error, "clock", b.message(), Some(clock::FIX.into())),
        None => {
            push(Ok, "clock", format!("{} (this skiff was built {})", clock::date(h.now), clock::date(h.built)), None)
        }
    }
    match h.ntp_synchronized {
        Some(true) => push(Ok, "clock", "synchronized by NTP".into(), None),
        Some(false) => push(
            Warning,
            "clock",
            "not synchronized by NTP (timedatectl): the clock may be wrong after a boot without network".into(),
            Some("`timedatectl set-ntp true` and check that the NTP servers can be reached".into()),
        ),
        None if h.systemd => {
            push(Warning, "clock", "timedatectl did not say whether NTP synchronized the clock".into(), None)
        }
        None => {}
    }

    // The runtime.
    match &h.runtime {
        Result::Ok((p, v)) => {
            let v = v.as_deref().map(|v| format!(" ({v})")).unwrap_or_default();
            push(Ok, "runtime", format!("OCI runtime {}{v}", p.display()), None)
        }
        Err(e) => push(
            Error,
            "runtime",
            e.clone(),
            Some("install skiff-runtime next to skiff (or pass --runtime crun / runc)".into()),
        ),
    }
    out
}

/// How to bring a controller back.
fn controller_fix(h: &HostFacts, name: &str, state: Controller, layout: Layout) -> String {
    let mount_v1 =
        format!("`mkdir -p /sys/fs/cgroup/{name} && mount -t cgroup -o {name} cgroup /sys/fs/cgroup/{name}`");
    match state {
        Controller::NotMounted => format!("mount it: {mount_v1}"),
        Controller::OnUnified => format!("mount it as a v1 hierarchy: {mount_v1}"),
        _ if name == "memory" && h.is_raspberry_pi() => {
            let file = h.cmdline_txt.clone().unwrap_or_else(|| PathBuf::from("/boot/firmware/cmdline.txt"));
            let note = "some Raspberry Pi kernels from 6.12 keep the memory controller off regardless \
                        (raspberrypi/linux#6980): then memory limits cannot be enforced on them";
            if h.cmdline_has("cgroup_enable=memory") {
                format!("cgroup_enable=memory is already on the kernel command line, yet the controller is off: {note}")
            } else {
                format!(
                    "append ` cgroup_enable=memory` to the end of the single line of {} (no new line: \
                     `sudo sed -i '1 s/$/ cgroup_enable=memory/' {}`) and reboot; {note}",
                    file.display(),
                    file.display()
                )
            }
        }
        _ if h.cmdline_has(&format!("cgroup_disable={name}")) => {
            format!("remove cgroup_disable={name} from the kernel command line (or add cgroup_enable={name} after it) and reboot")
        }
        _ if layout == Layout::V2 => format!(
            "use a kernel with the {name} controller (CONFIG_MEMCG, CONFIG_CGROUP_SCHED, CONFIG_CGROUP_PIDS), \
             booted without cgroup_disable={name}"
        ),
        _ => format!("boot with cgroup_enable={name}, or use a kernel built with the {name} controller"),
    }
}
