//! [`assess`] fed the facts of real boxes.

use std::path::PathBuf;

use super::*;

const GIB: u64 = 1 << 30;
const BUILT: i64 = 1_780_000_000; // 2026-05-28
const NOW: i64 = BUILT + 200 * 86_400;

/// Raspberry Pi OS bookworm on a Pi 5 (raspberrypi/linux#6980's box): kernel 6.12 without
/// v1 memory support (no `memory` line in /proc/cgroups), booted with cgroup_disable=memory
/// from the device tree, pure cgroup v2 under systemd, the store on the SD card, 16 KiB pages.
fn pi5() -> HostFacts {
    HostFacts {
        kernel_release: "6.12.34+rpt-rpi-2712".into(),
        machine: "aarch64".into(),
        kernel_config: None, // `configs` is a module on Pi kernels: no /proc/config.gz until loaded
        namespaces: ["cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "time_for_children", "user", "uts"]
            .map(String::from)
            .to_vec(),
        filesystems: "nodev\tsysfs\nnodev\ttmpfs\nnodev\tcgroup2\n\text4\n\tvfat\nnodev\toverlay\n".into(),
        cmdline: "reboot=w coherent_pool=1M 8250.nr_uarts=1 pci=pcie_bus_safe cgroup_disable=memory \
                  numa_policy=interleave numa=fake=8 system_heap.max_order=0 console=ttyAMA10,115200 console=tty1 \
                  root=PARTUUID=4d8097e2-02 rootfstype=ext4 fsck.repair=yes rootwait"
            .into(),
        board: Some("Raspberry Pi 5 Model B Rev 1.0".into()),
        cmdline_txt: Some(PathBuf::from("/boot/firmware/cmdline.txt")),
        cgroups: CgroupFacts {
            mountinfo: "22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n\
                        25 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n\
                        27 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
                .into(),
            proc_cgroups: Some(
                "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t0\t70\t1\ncpu\t0\t70\t1\ncpuacct\t0\t70\t1\n\
                 blkio\t0\t70\t1\ndevices\t0\t70\t1\nfreezer\t0\t70\t1\nnet_cls\t0\t70\t1\nperf_event\t0\t70\t1\n\
                 net_prio\t0\t70\t1\npids\t0\t70\t1\n"
                    .into(),
            ),
            root_controllers: Some("cpuset cpu io pids\n".into()),
            unified_controllers: None,
        },
        nft: Some("/usr/sbin/nft".into()),
        store: Some(StoreFacts {
            path: "/var/lib/skiff".into(),
            mount_point: "/".into(),
            fs_type: "ext4".into(),
            source: "/dev/mmcblk0p2".into(),
            avail_bytes: 40 * GIB,
            total_bytes: 58 * GIB,
        }),
        mem_total: Some(8_245_000 * 1024),
        page_size: 16384,
        now: NOW,
        built: BUILT,
        systemd: true,
        ntp_synchronized: Some(true),
        runtime: Ok(("/usr/local/bin/skiff-runtime".into(), Some("skiff-runtime version 0.1.0".into()))),
    }
}

const HYBRID_MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const HYBRID_PROC_CGROUPS: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\n\
cpuacct\t2\t1\t1\nblkio\t7\t1\t1\nmemory\t4\t86\t1\ndevices\t5\t1\t1\nfreezer\t6\t1\t1\nnet_cls\t0\t1\t1\n\
perf_event\t0\t1\t1\nnet_prio\t0\t1\t1\nhugetlb\t0\t1\t1\npids\t8\t1\t1\n";

const FULL_CONFIG: &str = "CONFIG_BPF_SYSCALL=y\nCONFIG_CGROUPS=y\nCONFIG_MEMCG=y\nCONFIG_MEMCG_V1=y\n\
CONFIG_CGROUP_PIDS=y\nCONFIG_CGROUP_DEVICE=y\nCONFIG_CGROUP_BPF=y\nCONFIG_NAMESPACES=y\nCONFIG_UTS_NS=y\n\
CONFIG_IPC_NS=y\nCONFIG_USER_NS=y\nCONFIG_PID_NS=y\nCONFIG_NET_NS=y\nCONFIG_SECCOMP=y\nCONFIG_SECCOMP_FILTER=y\n\
CONFIG_NF_TABLES=m\nCONFIG_NFT_NAT=m\nCONFIG_NFT_MASQ=m\nCONFIG_BRIDGE=m\nCONFIG_VETH=m\nCONFIG_OVERLAY_FS=m\n";

/// This machine: an x86-64 VM with hybrid cgroups (hugetlb alone on the cgroup2 mount), no
/// systemd, the store on ext4.
fn this_vm() -> HostFacts {
    HostFacts {
        kernel_release: "6.18.44-fc-v1300".into(),
        machine: "x86_64".into(),
        kernel_config: Some(("/proc/config.gz".into(), FULL_CONFIG.into())),
        namespaces: ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"].map(String::from).to_vec(),
        filesystems: "nodev\tcgroup\nnodev\tcgroup2\n\text4\nnodev\toverlay\n".into(),
        cmdline: "console=ttyS0 reboot=k panic=1".into(),
        board: None,
        cmdline_txt: None,
        cgroups: CgroupFacts {
            mountinfo: HYBRID_MOUNTINFO.into(),
            proc_cgroups: Some(HYBRID_PROC_CGROUPS.into()),
            root_controllers: None,
            unified_controllers: Some("hugetlb\n".into()),
        },
        nft: Some("/usr/sbin/nft".into()),
        store: Some(StoreFacts {
            path: "/var/lib/skiff".into(),
            mount_point: "/".into(),
            fs_type: "ext4".into(),
            source: "/dev/vda".into(),
            avail_bytes: 30 * GIB,
            total_bytes: 60 * GIB,
        }),
        mem_total: Some(4 * GIB),
        page_size: 4096,
        now: NOW,
        built: BUILT,
        systemd: false,
        ntp_synchronized: None,
        runtime: Ok(("/work/target/debug/skiff-runtime".into(), None)),
    }
}

fn find<'a>(f: &'a [Finding], level: Level, topic: &str, text: &str) -> Option<&'a Finding> {
    f.iter().find(|x| x.level == level && x.topic == topic && x.message.contains(text))
}

fn at_least(f: &[Finding], level: Level) -> Vec<&Finding> {
    f.iter().filter(|x| x.level >= level).collect()
}

#[test]
fn raspberry_pi_os_on_a_pi_5_works_without_memory_limits_and_says_how_to_get_them() {
    let h = pi5();
    assert_eq!(h.cgroups.layout(), Layout::V2);
    assert_eq!(h.cgroups.controller("memory"), Controller::Missing);
    assert!(h.cgroups.usable("cpu") && h.cgroups.usable("pids"));
    let f = assess(&h);
    assert_eq!(verdict(&f), Verdict::Warnings, "{f:#?}");
    let mem = find(
        &f,
        Level::Warning,
        "cgroups",
        "no memory controller (turned off on the kernel command line: cgroup_disable=memory)",
    )
    .expect("the memory warning");
    assert!(mem.message.contains("services run without their mem_limit"), "{mem:?}");
    let fix = mem.fix.as_deref().unwrap();
    assert!(
        fix.contains("append ` cgroup_enable=memory` to the end of the single line of /boot/firmware/cmdline.txt"),
        "{fix}"
    );
    assert!(fix.contains("sudo sed -i '1 s/$/ cgroup_enable=memory/' /boot/firmware/cmdline.txt"), "{fix}");
    assert!(fix.contains("from 6.12") && fix.contains("raspberrypi/linux#6980"), "{fix}");
    // The SD card: its log sizes.
    let sd = find(&f, Level::Warning, "store", "SD card (/dev/mmcblk0p2)").expect("the SD card warning");
    assert!(sd.message.contains("up to 30 MiB (3 files of 10 MiB)"), "{sd:?}");
    assert!(find(&f, Level::Ok, "memory", "page size 16 KiB (the Raspberry Pi 5 kernel)").is_some(), "{f:#?}");
    assert!(find(&f, Level::Ok, "cgroups", "layout v2").is_some());
    assert!(find(&f, Level::Ok, "clock", "synchronized by NTP").is_some());
    assert!(find(&f, Level::Ok, "kernel", "configuration is not readable").is_some());
    // No devices controller check on v2 (the BPF program), nothing else wrong.
    assert_eq!(at_least(&f, Level::Warning).len(), 2, "{f:#?}");
}

#[test]
fn a_pi_that_already_asks_for_the_memory_controller_gets_the_6_12_note_not_the_edit() {
    let mut h = pi5();
    h.cmdline.push_str(" cgroup_enable=memory");
    let f = assess(&h);
    let fix = find(&f, Level::Warning, "cgroups", "no memory controller").unwrap().fix.clone().unwrap();
    assert!(fix.starts_with("cgroup_enable=memory is already on the kernel command line"), "{fix}");
    assert!(fix.contains("raspberrypi/linux#6980") && !fix.contains("sed -i"), "{fix}");
}

#[test]
fn a_6_12_kernel_with_the_memory_controller_on_is_usable_though_proc_cgroups_omits_it() {
    // CONFIG_MEMCG_V1 off: /proc/cgroups has no memory line, cgroup.controllers has memory.
    let mut h = pi5();
    h.cgroups.root_controllers = Some("cpuset cpu io memory pids\n".into());
    assert!(h.cgroups.usable("memory"));
    assert_eq!(at_least(&assess(&h), Level::Warning).len(), 1); // the SD card only
}

#[test]
fn this_hybrid_vm_is_fine() {
    let h = this_vm();
    assert_eq!(h.cgroups.layout(), Layout::Hybrid);
    for c in ["memory", "cpu", "pids", "devices"] {
        assert_eq!(h.cgroups.controller(c), Controller::Usable, "{c}");
    }
    assert_eq!(h.cgroups.controller("hugetlb"), Controller::OnUnified);
    let f = assess(&h);
    assert_eq!(verdict(&f), Verdict::Ok, "{f:#?}");
    assert!(find(&f, Level::Ok, "cgroups", "layout hybrid").is_some());
    assert!(find(&f, Level::Ok, "runtime", "skiff-runtime").is_some());
    assert!(find(&f, Level::Ok, "network", "nft: /usr/sbin/nft").is_some());
    assert!(find(&f, Level::Ok, "kernel", "configuration from /proc/config.gz").is_some());
    assert!(find(&f, Level::Ok, "memory", "page size 4 KiB").is_some());
    assert!(f.iter().all(|x| x.fix.is_none()), "fixes only for problems");
    // No systemd: no NTP finding.
    assert!(!f.iter().any(|x| x.message.contains("NTP")));
}

#[test]
fn pure_v1_works_and_an_unmounted_controller_is_named_with_the_mount_command() {
    let mut h = this_vm();
    h.cgroups.mountinfo = HYBRID_MOUNTINFO
        .lines()
        .filter(|l| !l.contains("cgroup2"))
        .map(|l| {
            l.replace(
                "/sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
                "/sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct",
            )
        })
        .filter(|l| !l.contains("/sys/fs/cgroup/cpuacct "))
        .collect::<Vec<_>>()
        .join("\n");
    h.cgroups.unified_controllers = None;
    assert_eq!(h.cgroups.layout(), Layout::V1);
    assert!(h.cgroups.usable("cpu") && h.cgroups.usable("cpuacct") && h.cgroups.usable("memory"));
    assert_eq!(verdict(&assess(&h)), Verdict::Ok, "{:#?}", assess(&h));

    // The memory hierarchy unmounted (the kernel still has it enabled).
    h.cgroups.mountinfo =
        h.cgroups.mountinfo.lines().filter(|l| !l.contains("/memory ")).collect::<Vec<_>>().join("\n");
    assert_eq!(h.cgroups.controller("memory"), Controller::NotMounted);
    let f = assess(&h);
    assert_eq!(verdict(&f), Verdict::Warnings);
    let w = find(&f, Level::Warning, "cgroups", "no memory controller (enabled, but no v1 hierarchy").unwrap();
    assert_eq!(
        w.fix.as_deref(),
        Some("mount it: `mkdir -p /sys/fs/cgroup/memory && mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory`")
    );

    // And without the devices controller, pure v1 cannot enforce device rules: an error.
    h.cgroups.mountinfo =
        h.cgroups.mountinfo.lines().filter(|l| !l.contains("/devices ")).collect::<Vec<_>>().join("\n");
    let f = assess(&h);
    assert!(find(&f, Level::Error, "cgroups", "no v1 devices controller").is_some(), "{f:#?}");
    assert_eq!(verdict(&f), Verdict::Fail);
}

#[test]
fn memory_disabled_at_boot_on_a_v1_box_that_is_no_pi() {
    let mut h = this_vm();
    h.cgroups.proc_cgroups = Some(HYBRID_PROC_CGROUPS.replace("memory\t4\t86\t1", "memory\t0\t1\t0"));
    h.cmdline.push_str(" cgroup_disable=memory");
    assert_eq!(h.cgroups.controller("memory"), Controller::Disabled);
    let f = assess(&h);
    let w = find(
        &f,
        Level::Warning,
        "cgroups",
        "no memory controller (turned off on the kernel command line: cgroup_disable=memory)",
    )
    .unwrap();
    assert!(
        w.fix.as_deref().unwrap().starts_with("remove cgroup_disable=memory from the kernel command line"),
        "{w:?}"
    );
}

#[test]
fn a_box_with_512_mib_warns() {
    let mut h = this_vm();
    h.mem_total = Some(512 << 20);
    let f = assess(&h);
    assert_eq!(verdict(&f), Verdict::Warnings);
    let w = find(&f, Level::Warning, "memory", "512 MiB of memory (under 1 GiB)").expect("the memory warning");
    assert!(w.fix.is_some());
}

#[test]
fn a_clock_in_1970_is_an_error_naming_tls_and_the_fix() {
    let mut h = pi5();
    h.now = 0;
    h.ntp_synchronized = Some(false);
    let f = assess(&h);
    assert_eq!(verdict(&f), Verdict::Fail);
    let e = find(&f, Level::Error, "clock", "1970-01-01T00:00:00Z").expect("the clock error");
    assert!(e.message.contains("certificate not yet valid") && e.message.contains("2026-05-28"), "{e:?}");
    assert!(e.fix.as_deref().unwrap().contains("timedatectl set-ntp true"));
    assert!(find(&f, Level::Warning, "clock", "not synchronized by NTP").is_some());
}

#[test]
fn a_kernel_without_user_namespaces_or_nf_tables_warns_and_without_veth_fails() {
    let mut h = this_vm();
    let cfg = FULL_CONFIG
        .replace("CONFIG_USER_NS=y", "# CONFIG_USER_NS is not set")
        .replace("CONFIG_NF_TABLES=m", "# CONFIG_NF_TABLES is not set");
    h.kernel_config = Some(("/boot/config-6.1.0-test".into(), cfg.clone()));
    let f = assess(&h);
    assert_eq!(verdict(&f), Verdict::Warnings, "{f:#?}");
    assert!(find(&f, Level::Warning, "kernel", "no user namespaces").is_some());
    assert!(find(&f, Level::Warning, "network", "no nf_tables in the kernel").is_some());
    assert_eq!(at_least(&f, Level::Warning).len(), 2, "{f:#?}");

    // The config is believed over what runs (the process may be in namespaces of its own).
    h.kernel_config = Some(("/boot/config-6.1.0-test".into(), cfg.replace("CONFIG_VETH=m\n", "")));
    let f = assess(&h);
    assert_eq!(verdict(&f), Verdict::Fail);
    let e = find(&f, Level::Error, "network", "no veth support").unwrap();
    assert!(e.fix.as_deref().unwrap().contains("--no-bridge"));

    // No config: namespaces from /proc/self/ns.
    h.kernel_config = None;
    h.namespaces.retain(|n| n != "user" && n != "net");
    let f = assess(&h);
    assert!(find(&f, Level::Error, "kernel", "no net namespaces").is_some(), "{f:#?}");
    assert!(find(&f, Level::Warning, "kernel", "no user namespaces").is_some());
}

#[test]
fn no_cgroups_no_runtime_no_room_and_a_fat_store_each_fail() {
    let mut h = this_vm();
    h.cgroups = CgroupFacts::default();
    assert!(find(&assess(&h), Level::Error, "cgroups", "no cgroup filesystem").is_some());

    let mut h = this_vm();
    h.runtime = Err("no OCI runtime: install skiff-runtime next to skiff or on PATH".into());
    assert!(find(&assess(&h), Level::Error, "runtime", "no OCI runtime").is_some());

    let mut h = this_vm();
    h.store.as_mut().unwrap().avail_bytes = 100 << 20;
    assert!(find(&assess(&h), Level::Error, "store", "100 MiB free").is_some());
    h.store.as_mut().unwrap().avail_bytes = 3 * GIB;
    h.store.as_mut().unwrap().total_bytes = 32 * GIB;
    assert!(find(&assess(&h), Level::Warning, "store", "90% used").is_some(), "{:#?}", assess(&h));

    let mut h = this_vm();
    h.store.as_mut().unwrap().fs_type = "vfat".into();
    assert!(find(&assess(&h), Level::Error, "store", "no Unix owners").is_some());
    h.nft = None;
    assert!(find(&assess(&h), Level::Warning, "network", "nft command is not installed").is_some());
}

#[test]
fn the_store_is_on_the_deepest_mount_above_it() {
    let mi = "22 1 179:2 / / rw - ext4 /dev/mmcblk0p2 rw\n\
              30 22 8:1 / /var/lib/skiff rw - ext4 /dev/sda1 rw\n\
              31 22 8:2 / /var/lib/skiffish rw - xfs /dev/sda2 rw\n";
    let m = super::read::mount_of(mi, std::path::Path::new("/var/lib/skiff/images")).unwrap();
    assert_eq!(m, ("/var/lib/skiff".into(), "ext4".into(), "/dev/sda1".into()));
    let m = super::read::mount_of(mi, std::path::Path::new("/var/lib/other")).unwrap();
    assert_eq!(m.2, "/dev/mmcblk0p2");
}

#[test]
fn findings_serialize_as_the_json_skiff_check_prints() {
    let f = Finding { level: Level::Warning, topic: "memory".into(), message: "m".into(), fix: Some("x".into()) };
    assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"level":"warning","topic":"memory","message":"m","fix":"x"}"#);
    assert_eq!(serde_json::to_string(&Verdict::Fail).unwrap(), r#""fail""#);
}
