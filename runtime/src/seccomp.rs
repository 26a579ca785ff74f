//! seccomp filters from `linux.seccomp`, through libseccomp.
//!
//! Semantics follow runc (`libcontainer/seccomp/seccomp_linux.go`):
//!
//! - `SCMP_ACT_KILL` means kill the thread (as `SCMP_ACT_KILL_THREAD`); `SCMP_ACT_ERRNO` and
//!   `SCMP_ACT_TRACE` without `errnoRet` use `EPERM`.
//! - A syscall name libseccomp does not know is skipped without error: profiles list syscalls
//!   of newer kernels and other architectures.
//! - A rule whose action equals the default action is skipped (libseccomp refuses it).
//! - Several conditions on one rule are ANDed in a single rule, unless two of them compare the
//!   same argument: then each condition becomes a rule of its own.
//! - The filter does not set `no_new_privs` by itself (`process.noNewPrivileges` decides it),
//!   so without it the filter must be loaded while CAP_SYS_ADMIN is still held.
//! - `SECCOMP_FILTER_FLAG_TSYNC`, `_LOG` and `_SPEC_ALLOW` map to the libseccomp attributes;
//!   `_WAIT_KILLABLE_RECV` only matters with a notify listener, which is not supported, so it
//!   is accepted and has no effect.
//!
//! `SCMP_ACT_NOTIFY` (a seccomp agent behind `listenerPath`) is not supported and fails.
//!
//! [`build`] validates the profile and builds the filter in memory; [`load_filter`] compiles it
//! to BPF and installs it. Building before fork and loading in the child right before exec
//! fails a bad profile early and keeps the work after fork small; [`load`] does both.

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

/// Number of syscall arguments seccomp can look at.
const MAX_ARGS: usize = 6;

/// Above this many syscall names, ask libseccomp for a binary-tree filter (as runc does; with
/// libseccomp <= 2.5.4 the tree misbehaves on empty rule sets, so not for small ones).
const OPTIMIZE_THRESHOLD: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The configuration asks for something this runtime does not do.
    #[error("seccomp: {0} is not supported")]
    Unsupported(String),

    /// A field of `linux.seccomp` holds a value that cannot be used.
    #[error("seccomp: {field}: {reason}")]
    Invalid { field: String, reason: String },

    /// libseccomp refused an operation while building the filter.
    #[error("seccomp: {what}: {source}")]
    Libseccomp {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// The kernel refused the filter.
    #[error("seccomp: loading the filter: {source}{hint}")]
    Load {
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
}

impl SeccompError {
    fn lib(what: impl Into<String>, source: libseccomp::error::SeccompError) -> Self {
        Self::Libseccomp { what: what.into(), source }
    }
}

/// Builds the filter and loads it into the calling process. Called in the container's
/// init just before exec.
pub fn load(seccomp: &LinuxSeccomp) -> Result<(), SeccompError> {
    let filter = build(seccomp)?;
    load_filter(&filter)
}

/// Builds a libseccomp filter from `linux.seccomp` without loading it. Validates the whole
/// configuration, so a bad profile fails here (before fork, if called there).
pub fn build(seccomp: &LinuxSeccomp) -> Result<ScmpFilterContext, SeccompError> {
    let default_action = to_action(seccomp.default_action(), seccomp.default_errno_ret(), || "defaultErrnoRet".into())?;
    if default_action == ScmpAction::Notify {
        return Err(SeccompError::Unsupported("SCMP_ACT_NOTIFY as defaultAction".into()));
    }
    let syscalls: &[LinuxSyscall] = seccomp.syscalls().as_deref().unwrap_or_default();
    if let Some(call) = syscalls.iter().find(|c| c.action() == LinuxSeccompAction::ScmpActNotify) {
        return Err(SeccompError::Unsupported(format!("SCMP_ACT_NOTIFY (syscalls {})", names_for_msg(call.names()))));
    }

    let mut filter = ScmpFilterContext::new(default_action).map_err(|e| SeccompError::lib("creating the filter", e))?;

    for arch in seccomp.architectures().as_deref().unwrap_or_default() {
        filter.add_arch(to_arch(*arch)).map_err(|e| SeccompError::lib(format!("adding architecture {arch}"), e))?;
    }

    for flag in seccomp.flags().as_deref().unwrap_or_default() {
        let res = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => filter.set_ctl_tsync(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => filter.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => filter.set_ctl_ssb(true),
            // Only meaningful together with a notify listener (the kernel refuses it without
            // one), and SCMP_ACT_NOTIFY is refused above: nothing to do.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => continue,
        };
        res.map_err(|e| SeccompError::lib(format!("flag {flag}"), e))?;
    }

    let total_names: usize = syscalls.iter().map(|c| c.names().len()).sum();
    if total_names > OPTIMIZE_THRESHOLD {
        // Not fatal: older libseccomp has no binary tree, the filter is only slower.
        let _ = filter.set_ctl_optimize(2);
    }

    // no_new_privs is process.noNewPrivileges' business, not the filter's.
    filter.set_ctl_nnp(false).map_err(|e| SeccompError::lib("clearing the no_new_privs attribute", e))?;
    // Report the kernel's own errno when loading fails (libseccomp >= 2.5); optional.
    let _ = filter.set_api_sysrawrc(true);

    for (i, call) in syscalls.iter().enumerate() {
        add_syscall_rules(&mut filter, i, call, default_action)?;
    }
    Ok(filter)
}

/// Loads a filter made by [`build`] into the calling process (all threads with
/// `SECCOMP_FILTER_FLAG_TSYNC`).
pub fn load_filter(filter: &ScmpFilterContext) -> Result<(), SeccompError> {
    filter.load().map_err(|e| {
        let errno = e.sysrawrc().map(|rc| -rc).unwrap_or(libc::ECANCELED);
        let hint = if errno == libc::EACCES {
            " (without noNewPrivileges the filter must be loaded while CAP_SYS_ADMIN is held)"
        } else {
            ""
        };
        SeccompError::Load { source: std::io::Error::from_raw_os_error(errno), hint }
    })
}

/// Adds the rules of `syscalls[index]`, one syscall name at a time.
fn add_syscall_rules(
    filter: &mut ScmpFilterContext,
    index: usize,
    call: &LinuxSyscall,
    default_action: ScmpAction,
) -> Result<(), SeccompError> {
    // Error messages only: "syscalls[3].errnoRet [\"mkdir\", ...]".
    let field = |sub: &str| format!("syscalls[{index}]{sub} {}", names_for_msg(call.names()));
    let action = to_action(call.action(), call.errno_ret(), || field(".errnoRet"))?;
    let args: &[LinuxSeccompArg] = call.args().as_deref().unwrap_or_default();
    let conditions = to_conditions(args, |i| field(&format!(".args[{i}].index")))?;
    if action == default_action {
        // Redundant, and libseccomp refuses it.
        return Ok(());
    }

    // runc: when two conditions compare the same argument they cannot share a rule
    // (libseccomp allows one comparison per argument), so each gets a rule of its own.
    let mut per_arg = [0usize; MAX_ARGS];
    for arg in args {
        if let Some(n) = per_arg.get_mut(arg.index()) {
            *n += 1;
        }
    }
    let split = per_arg.iter().any(|&n| n > 1);

    for name in call.names() {
        if name.is_empty() {
            return Err(SeccompError::Invalid {
                field: format!("syscalls[{index}].names"),
                reason: "empty syscall name".into(),
            });
        }
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            // Unknown to libseccomp (newer kernel, other architecture): skipped, as runc does.
            continue;
        };
        let what = || format!("adding the rule for syscall \"{name}\" (syscalls[{index}])");
        if split {
            for cond in &conditions {
                filter
                    .add_rule_conditional(action, syscall, std::slice::from_ref(cond))
                    .map_err(|e| SeccompError::lib(what(), e))?;
            }
        } else {
            filter.add_rule_conditional(action, syscall, &conditions).map_err(|e| SeccompError::lib(what(), e))?;
        }
    }
    Ok(())
}

/// The action for an OCI action and its optional `errnoRet` (`errno_field` names it in errors).
fn to_action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    errno_field: impl Fn() -> String,
) -> Result<ScmpAction, SeccompError> {
    // SECCOMP_RET_DATA is 16 bits wide.
    let data = |default: u16| -> Result<u16, SeccompError> {
        match errno_ret {
            None => Ok(default),
            Some(v) => u16::try_from(v).map_err(|_| SeccompError::Invalid {
                field: errno_field(),
                reason: format!("{v} is out of range (0-65535)"),
            }),
        }
    };
    const EPERM: u16 = libc::EPERM as u16;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(data(EPERM)?)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(data(EPERM)?),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

/// The conditions of `args`; `index_field(i)` names `args[i].index` in errors.
fn to_conditions(
    args: &[LinuxSeccompArg],
    index_field: impl Fn(usize) -> String,
) -> Result<Vec<ScmpArgCompare>, SeccompError> {
    args.iter()
        .enumerate()
        .map(|(i, arg)| {
            let index = u32::try_from(arg.index()).ok().filter(|&ix| (ix as usize) < MAX_ARGS).ok_or_else(|| {
                SeccompError::Invalid {
                    field: index_field(i),
                    reason: format!("{} is out of range (0-{})", arg.index(), MAX_ARGS - 1),
                }
            })?;
            Ok(match arg.op() {
                LinuxSeccompOperator::ScmpCmpNe => ScmpArgCompare::new(index, ScmpCompareOp::NotEqual, arg.value()),
                LinuxSeccompOperator::ScmpCmpLt => ScmpArgCompare::new(index, ScmpCompareOp::Less, arg.value()),
                LinuxSeccompOperator::ScmpCmpLe => ScmpArgCompare::new(index, ScmpCompareOp::LessOrEqual, arg.value()),
                LinuxSeccompOperator::ScmpCmpEq => ScmpArgCompare::new(index, ScmpCompareOp::Equal, arg.value()),
                LinuxSeccompOperator::ScmpCmpGe => ScmpArgCompare::new(index, ScmpCompareOp::GreaterEqual, arg.value()),
                LinuxSeccompOperator::ScmpCmpGt => ScmpArgCompare::new(index, ScmpCompareOp::Greater, arg.value()),
                // (arg & value) == valueTwo, as runc and libseccomp-golang read it.
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    ScmpArgCompare::new(index, ScmpCompareOp::MaskedEqual(arg.value()), arg.value_two().unwrap_or(0))
                }
            })
        })
        .collect()
}

fn to_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

/// `["a", "b", ... N more]` for error messages, shortened for long lists.
fn names_for_msg(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = String::from("[");
    for (i, n) in names.iter().take(SHOWN).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("{n:?}"));
    }
    if names.len() > SHOWN {
        s.push_str(&format!(", ... {} more", names.len() - SHOWN));
    }
    s.push(']');
    s
}

/// The libseccomp version linked in, as "major.minor.micro" (for `--version`).
pub fn library_version() -> String {
    match libseccomp::ScmpVersion::current() {
        Ok(v) => format!("{}.{}.{}", v.major, v.minor, v.micro),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_json(json: &str) -> Result<ScmpFilterContext, SeccompError> {
        build(&serde_json::from_str(json).expect("profile"))
    }

    fn err(json: &str) -> String {
        match build_json(json) {
            Ok(_) => "built".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_syscalls_are_skipped() {
        build_json(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32","SCMP_ARCH_AARCH64","SCMP_ARCH_ARM"],
                "syscalls":[{"names":["read","no_such_syscall","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
        )
        .expect("build");
    }

    #[test]
    fn rules_like_runc() {
        // Rule equal to the default action: skipped, not refused.
        build_json(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        )
        .expect("same as default");
        // No names: no rule (runc expands rules per name).
        build_json(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":[],"action":"SCMP_ACT_ERRNO"}]}"#)
            .expect("no names");
        // Two conditions on one argument: one rule each (one rule would be refused).
        build_json(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["umask"],"action":"SCMP_ACT_ERRNO","args":[
                {"index":0,"value":9,"op":"SCMP_CMP_EQ"},{"index":0,"value":27,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .expect("split");
        // Every operator.
        build_json(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mmap"],"action":"SCMP_ACT_ERRNO","args":[
                {"index":0,"value":1,"op":"SCMP_CMP_NE"},{"index":1,"value":1,"op":"SCMP_CMP_LT"},
                {"index":2,"value":1,"op":"SCMP_CMP_LE"},{"index":3,"value":1,"op":"SCMP_CMP_EQ"},
                {"index":4,"value":1,"op":"SCMP_CMP_GE"},{"index":5,"value":1,"valueTwo":1,"op":"SCMP_CMP_MASKED_EQ"}]},
                {"names":["munmap"],"action":"SCMP_ACT_LOG","args":[{"index":0,"value":1,"op":"SCMP_CMP_GT"}]}]}"#,
        )
        .expect("operators");
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#),
            "seccomp: SCMP_ACT_NOTIFY as defaultAction is not supported"
        );
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#),
            r#"seccomp: SCMP_ACT_NOTIFY (syscalls ["mkdir"]) is not supported"#
        );
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_LOG"},
                    {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#),
            r#"seccomp: syscalls[1].args[0].index ["mkdir"]: 6 is out of range (0-5)"#
        );
        assert_eq!(
            err(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["a","b","c","d"],"action":"SCMP_ACT_ERRNO","errnoRet":65536}]}"#
            ),
            r#"seccomp: syscalls[0].errnoRet ["a", "b", "c", ... 1 more]: 65536 is out of range (0-65535)"#
        );
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_TRACE","defaultErrnoRet":65536}"#),
            "seccomp: defaultErrnoRet: 65536 is out of range (0-65535)"
        );
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir",""],"action":"SCMP_ACT_ERRNO"}]}"#),
            "seccomp: syscalls[0].names: empty syscall name"
        );
    }
}
