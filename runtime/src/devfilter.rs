//! Device rules as a `BPF_PROG_TYPE_CGROUP_DEVICE` program: how cgroup v2 enforces
//! `linux.resources.devices`. Pure: rules in, instructions out; [`crate::bpf`] loads them.
//!
//! Semantics (the v1 devices controller's and the OCI meaning): the rules apply in order and
//! a later rule overrides an earlier one, decided per access bit. A request (a device and a
//! set of r/w/m bits) is allowed when, for each requested bit, the last rule that matches the
//! device and includes that bit is an allow rule. When no rule decides a bit, it is denied.
//!
//! The program walks the rules from the last to the first, keeping the requested bits not
//! decided yet in R3: a matching deny rule that covers an undecided bit returns 0; a matching
//! allow rule clears its bits and returns 1 once none remain; falling off the end returns 0.
//!
//! Which rules: the spec's, then [`DEFAULT_RULES`] (what libcgroups' v1 devices controller
//! appends on cgroup v1, so v1 and v2 enforce the same list).

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// `BPF_DEVCG_ACC_*`: the access bits of a request.
pub const ACC_MKNOD: u8 = 1;
pub const ACC_READ: u8 = 2;
pub const ACC_WRITE: u8 = 4;
pub const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// `BPF_DEVCG_DEV_*`: the device type of a request.
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;

/// More rules than this are refused (a spec has a few dozen at most). Each rule takes at
/// most 9 instructions, so a program stays far below the kernel's limit (1M instructions
/// for a privileged loader; the verifier's budget is 1M instructions processed, which the
/// largest list stays well inside, see runtime/tests/bpf_devices.rs) and every jump offset
/// fits in 16 bits.
pub const MAX_RULES: usize = 1024;

/// Device type a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `a`: block and character devices.
    All,
    /// `b`
    Block,
    /// `c`
    Char,
}

/// One device rule, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Kind,
    /// None: any major.
    pub major: Option<u32>,
    /// None: any minor.
    pub minor: Option<u32>,
    /// `ACC_*` bits, never empty.
    pub access: u8,
}

impl Rule {
    const fn allow_char(major: u32, minor: Option<u32>, access: u8) -> Rule {
        Rule { allow: true, kind: Kind::Char, major: Some(major), minor, access }
    }

    /// True when the rule applies to a device of type `dev_type` (`DEV_*`), major, minor.
    pub fn matches(&self, dev_type: u32, major: u32, minor: u32) -> bool {
        let kind = match self.kind {
            Kind::All => true,
            Kind::Block => dev_type == DEV_BLOCK,
            Kind::Char => dev_type == DEV_CHAR,
        };
        kind && self.major.is_none_or(|m| m == major) && self.minor.is_none_or(|m| m == minor)
    }
}

/// What every container may use besides its spec's rules, applied after them (so a spec
/// cannot deny them): exactly what libcgroups' v1 devices controller writes after the spec's
/// rules (runc's `AllowedDevices` plus `c 5:1 rwm`, as crun has too).
pub const DEFAULT_RULES: &[Rule] = &[
    // mknod of any node (opening it is another matter)
    Rule { allow: true, kind: Kind::Char, major: None, minor: None, access: ACC_MKNOD },
    Rule { allow: true, kind: Kind::Block, major: None, minor: None, access: ACC_MKNOD },
    Rule::allow_char(1, Some(3), ACC_ALL),    // /dev/null
    Rule::allow_char(1, Some(5), ACC_ALL),    // /dev/zero
    Rule::allow_char(1, Some(7), ACC_ALL),    // /dev/full
    Rule::allow_char(5, Some(0), ACC_ALL),    // /dev/tty
    Rule::allow_char(1, Some(9), ACC_ALL),    // /dev/urandom
    Rule::allow_char(1, Some(8), ACC_ALL),    // /dev/random
    Rule::allow_char(5, Some(1), ACC_ALL),    // /dev/console
    Rule::allow_char(136, None, ACC_ALL),     // /dev/pts/*
    Rule::allow_char(5, Some(2), ACC_ALL),    // /dev/ptmx
    Rule::allow_char(10, Some(200), ACC_ALL), // /dev/net/tun
];

#[derive(Debug, thiserror::Error)]
pub enum DevFilterError {
    #[error("linux.resources.devices[{index}]: {reason}")]
    BadRule { index: usize, reason: String },
    #[error("linux.resources.devices has {count} rules; at most {MAX_RULES} are supported")]
    TooMany { count: usize },
    #[error("the device rules make a BPF program too large ({insns} instructions)")]
    TooLarge { insns: usize },
}

/// The spec's rules, validated (as runc does: type a, b or c; access a non-empty subset of
/// "rwm"; a negative major or minor means any, like an absent one).
pub fn rules_from_spec(devs: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, DevFilterError> {
    if devs.len() > MAX_RULES {
        return Err(DevFilterError::TooMany { count: devs.len() });
    }
    devs.iter()
        .enumerate()
        .map(|(index, d)| {
            let bad = |reason: String| DevFilterError::BadRule { index, reason };
            let kind = match d.typ().unwrap_or_default() {
                LinuxDeviceType::A => Kind::All,
                LinuxDeviceType::B => Kind::Block,
                LinuxDeviceType::C => Kind::Char,
                t @ (LinuxDeviceType::U | LinuxDeviceType::P) => {
                    return Err(bad(format!("type {:?} is not a device cgroup type (use a, b or c)", t.as_str())))
                }
            };
            let number = |what: &str, v: Option<i64>| match v {
                None => Ok(None),
                Some(n) if n < 0 => Ok(None),
                Some(n) => u32::try_from(n).map(Some).map_err(|_| bad(format!("{what} {n} is out of range"))),
            };
            let major = number("major", d.major())?;
            let minor = number("minor", d.minor())?;
            let text = d.access().as_deref().unwrap_or("");
            let mut access = 0;
            for c in text.chars() {
                access |= match c {
                    'r' => ACC_READ,
                    'w' => ACC_WRITE,
                    'm' => ACC_MKNOD,
                    _ => return Err(bad(format!("access {text:?}: use a combination of r, w and m"))),
                };
            }
            if access == 0 {
                return Err(bad("access is empty: use a combination of r, w and m".into()));
            }
            Ok(Rule { allow: d.allow(), kind, major, minor, access })
        })
        .collect()
}

/// The rules in force for a container: the spec's, then [`DEFAULT_RULES`].
pub fn with_defaults(mut rules: Vec<Rule>) -> Vec<Rule> {
    rules.extend_from_slice(DEFAULT_RULES);
    rules
}

// ----------------------------------------------------------------------------------------
// Instructions

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg and src_reg, 4 bits each (bitfield order follows the byte order).
    regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        #[cfg(target_endian = "little")]
        let regs = (src << 4) | (dst & 0xf);
        #[cfg(target_endian = "big")]
        let regs = (dst << 4) | (src & 0xf);
        Insn { code, regs, off, imm }
    }

    pub fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0xf
        } else {
            self.regs >> 4
        }
    }

    pub fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0xf
        }
    }
}

/// The opcodes the generator emits (class | op | source).
pub mod op {
    /// BPF_LDX | BPF_W | BPF_MEM: dst = *(u32 *)(src + off)
    pub const LDX_W: u8 = 0x61;
    /// BPF_ALU | BPF_AND | BPF_K: dst = (u32)dst & imm
    pub const AND32_K: u8 = 0x54;
    /// BPF_ALU | BPF_RSH | BPF_K: dst = (u32)dst >> imm
    pub const RSH32_K: u8 = 0x74;
    /// BPF_ALU | BPF_XOR | BPF_K: dst = (u32)dst ^ imm
    pub const XOR32_K: u8 = 0xa4;
    /// BPF_ALU64 | BPF_MOV | BPF_X: dst = src
    pub const MOV64_X: u8 = 0xbf;
    /// BPF_ALU64 | BPF_MOV | BPF_K: dst = (s64)imm
    pub const MOV64_K: u8 = 0xb7;
    /// BPF_JMP | BPF_JNE | BPF_K
    pub const JNE_K: u8 = 0x55;
    /// BPF_JMP | BPF_JEQ | BPF_K
    pub const JEQ_K: u8 = 0x15;
    /// BPF_JMP | BPF_JSET | BPF_K
    pub const JSET_K: u8 = 0x45;
    /// BPF_JMP | BPF_EXIT
    pub const EXIT: u8 = 0x95;
}

// Registers: R1 holds the context (struct bpf_cgroup_dev_ctx) on entry, then is scratch.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2; // device type
const R3: u8 = 3; // requested access bits not decided yet
const R4: u8 = 4; // major
const R5: u8 = 5; // minor

/// Where a jump goes, resolved once the program is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    NextRule,
    Deny,
    Allow,
}

/// The program for `rules` (in spec order; see the module docs for the semantics).
pub fn program(rules: &[Rule]) -> Result<Vec<Insn>, DevFilterError> {
    // The defaults are always added: allow for them beyond MAX_RULES.
    if rules.len() > MAX_RULES + DEFAULT_RULES.len() {
        return Err(DevFilterError::TooMany { count: rules.len() });
    }
    let mut p = vec![
        // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
        // access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*
        Insn::new(op::LDX_W, R2, R1, 0, 0),
        Insn::new(op::AND32_K, R2, 0, 0, 0xffff),
        Insn::new(op::LDX_W, R3, R1, 0, 0),
        Insn::new(op::RSH32_K, R3, 0, 0, 16),
        Insn::new(op::LDX_W, R4, R1, 4, 0),
        Insn::new(op::LDX_W, R5, R1, 8, 0),
    ];
    let mut jumps: Vec<(usize, Target)> = Vec::new();
    let mut next_rule: Vec<usize> = Vec::new();
    let mut any_allow = false;
    for r in rules.iter().rev() {
        if r.access == 0 {
            continue; // decides nothing (rules_from_spec refuses these)
        }
        let mut jump = |p: &mut Vec<Insn>, insn: Insn, to: Target| {
            match to {
                Target::NextRule => next_rule.push(p.len()),
                t => jumps.push((p.len(), t)),
            }
            p.push(insn);
        };
        match r.kind {
            Kind::All => {}
            Kind::Block => jump(&mut p, Insn::new(op::JNE_K, R2, 0, 0, DEV_BLOCK as i32), Target::NextRule),
            Kind::Char => jump(&mut p, Insn::new(op::JNE_K, R2, 0, 0, DEV_CHAR as i32), Target::NextRule),
        }
        for (reg, num) in [(R4, r.major), (R5, r.minor)] {
            let Some(n) = num else { continue };
            // R1 = number ^ n (32 bits: exact for every u32, no sign extension), then
            // compare R1 with 0. Comparing R4/R5 themselves would let the verifier learn
            // their value on each path, and the paths through a long rule list would then
            // differ everywhere: it gives up after 1M instructions (E2BIG) at a few hundred
            // rules. A copy changed by an ALU op is no longer tied to R4/R5.
            p.push(Insn::new(op::MOV64_X, R1, reg, 0, 0));
            p.push(Insn::new(op::XOR32_K, R1, 0, 0, n as i32));
            jump(&mut p, Insn::new(op::JNE_K, R1, 0, 0, 0), Target::NextRule);
        }
        let bits = i32::from(r.access);
        if r.allow {
            any_allow = true;
            p.push(Insn::new(op::AND32_K, R3, 0, 0, !bits));
            jump(&mut p, Insn::new(op::JEQ_K, R3, 0, 0, 0), Target::Allow);
        } else {
            jump(&mut p, Insn::new(op::JSET_K, R3, 0, 0, bits), Target::Deny);
        }
        let here = p.len();
        for i in next_rule.drain(..) {
            jumps_fix(&mut p, i, here)?;
        }
        if r.kind == Kind::All && r.major.is_none() && r.minor.is_none() && r.access == ACC_ALL {
            break; // decides every request: the earlier rules cannot matter
        }
    }
    let deny = p.len();
    p.push(Insn::new(op::MOV64_K, R0, 0, 0, 0));
    p.push(Insn::new(op::EXIT, 0, 0, 0, 0));
    let allow = p.len();
    if any_allow {
        p.push(Insn::new(op::MOV64_K, R0, 0, 0, 1));
        p.push(Insn::new(op::EXIT, 0, 0, 0, 0));
    }
    for (i, t) in jumps {
        jumps_fix(&mut p, i, if t == Target::Allow { allow } else { deny })?;
    }
    Ok(p)
}

/// Points the jump at `at` to instruction `to` (offsets count from the next instruction).
fn jumps_fix(p: &mut [Insn], at: usize, to: usize) -> Result<(), DevFilterError> {
    let off = to.checked_sub(at + 1).and_then(|d| i16::try_from(d).ok());
    match off {
        Some(off) => {
            p[at].off = off;
            Ok(())
        }
        None => Err(DevFilterError::TooLarge { insns: p.len() }),
    }
}

#[cfg(test)]
mod tests;
