//! The generator checked without a kernel: a small interpreter for the instructions it
//! emits, compared with a direct reading of the semantics over many rule lists and requests.

use super::*;

/// Runs `prog` on a request as the kernel would (only the opcodes the generator emits).
fn run(prog: &[Insn], dev_type: u32, access: u32, major: u32, minor: u32) -> u64 {
    let mut ctx = [0u8; 12];
    ctx[0..4].copy_from_slice(&((access << 16) | dev_type).to_ne_bytes());
    ctx[4..8].copy_from_slice(&major.to_ne_bytes());
    ctx[8..12].copy_from_slice(&minor.to_ne_bytes());
    const CTX: u64 = 0xc7c7_0000;
    let mut r = [0u64; 11];
    r[1] = CTX;
    let mut pc = 0usize;
    for _ in 0..=prog.len() {
        let i = prog[pc];
        let (d, s) = (usize::from(i.dst()), usize::from(i.src()));
        let imm64 = i64::from(i.imm) as u64;
        let jump = |cond: bool| if cond { pc + 1 + i.off as usize } else { pc + 1 };
        pc = match i.code {
            op::LDX_W => {
                assert_eq!(r[s], CTX, "load from the context only");
                let at = usize::try_from(i.off).expect("offset");
                assert!(at + 4 <= ctx.len() && at % 4 == 0, "load at {at}");
                r[d] = u64::from(u32::from_ne_bytes(ctx[at..at + 4].try_into().expect("4 bytes")));
                pc + 1
            }
            op::AND32_K => {
                r[d] = u64::from(r[d] as u32 & i.imm as u32);
                pc + 1
            }
            op::RSH32_K => {
                r[d] = u64::from((r[d] as u32) >> i.imm);
                pc + 1
            }
            op::XOR32_K => {
                r[d] = u64::from(r[d] as u32 ^ i.imm as u32);
                pc + 1
            }
            op::MOV64_X => {
                r[d] = r[s];
                pc + 1
            }
            op::MOV64_K => {
                r[d] = imm64;
                pc + 1
            }
            op::JNE_K => jump(r[d] != imm64),
            op::JEQ_K => jump(r[d] == imm64),
            op::JSET_K => jump(r[d] & imm64 != 0),
            op::EXIT => return r[0],
            c => panic!("unexpected opcode {c:#x} at {pc}"),
        };
    }
    panic!("no exit: the program loops");
}

/// The semantics, read directly: per requested bit, the last matching rule that includes
/// it decides; no such rule denies.
fn reference(rules: &[Rule], dev_type: u32, access: u8, major: u32, minor: u32) -> bool {
    (0..8).map(|b| 1u8 << b).filter(|bit| access & bit != 0).all(|bit| {
        rules.iter().rev().find(|r| r.access & bit != 0 && r.matches(dev_type, major, minor)).is_some_and(|r| r.allow)
    })
}

/// What the kernel's verifier checks of the control flow (check_cfg): jumps forward and
/// inside the program, every instruction reachable, the last one an exit, R0 set.
fn check_cfg(prog: &[Insn]) {
    assert!(!prog.is_empty());
    assert_eq!(prog.last().map(|i| i.code), Some(op::EXIT), "ends with exit");
    let mut reached = vec![false; prog.len()];
    reached[0] = true;
    for (pc, i) in prog.iter().enumerate() {
        if !reached[pc] {
            panic!("instruction {pc} is unreachable: {prog:?}");
        }
        let jumps = matches!(i.code, op::JNE_K | op::JEQ_K | op::JSET_K);
        if jumps {
            assert!(i.off >= 0, "backward jump at {pc}");
            let to = pc + 1 + i.off as usize;
            assert!(to < prog.len(), "jump out of the program at {pc}");
            reached[to] = true;
        }
        if i.code != op::EXIT && pc + 1 < prog.len() {
            reached[pc + 1] = true;
        }
        if i.code == op::EXIT {
            assert_eq!(prog[pc - 1].code, op::MOV64_K, "R0 is set right before each exit");
        }
    }
}

fn rule(allow: bool, kind: Kind, major: Option<u32>, minor: Option<u32>, access: &str) -> Rule {
    let access = access.chars().fold(0, |a, c| {
        a | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => panic!("access {c}"),
        }
    });
    Rule { allow, kind, major, minor, access }
}

const NUMBERS: &[u32] = &[0, 1, 3, 5, 8, 10, 136, 229, 0x7fff_ffff, 0x8000_0000, u32::MAX];

/// Compares program and reference on every request built from NUMBERS (plus 7, not in any
/// rule), both device types, every access combination (and one bit no rule has).
fn compare(rules: &[Rule]) {
    let prog = program(rules).expect("program");
    check_cfg(&prog);
    let numbers: Vec<u32> = NUMBERS.iter().copied().chain([7]).collect();
    for dev_type in [DEV_BLOCK, DEV_CHAR] {
        for access in (1u8..=7).chain([8, 8 | 2]) {
            for &major in &numbers {
                for &minor in &numbers {
                    let got = run(&prog, dev_type, u32::from(access), major, minor);
                    let want = reference(rules, dev_type, access, major, minor);
                    assert_eq!(
                        got,
                        u64::from(want),
                        "type {dev_type} access {access:#b} {major}:{minor}\nrules {rules:?}\nprogram {prog:?}"
                    );
                }
            }
        }
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn rule(&mut self) -> Rule {
        let kind = [Kind::All, Kind::Block, Kind::Char][self.below(3)];
        let mut num = || if self.below(3) == 0 { None } else { Some(NUMBERS[self.below(NUMBERS.len())]) };
        let (major, minor) = (num(), num());
        Rule { allow: self.below(2) == 0, kind, major, minor, access: 1 + self.below(7) as u8 }
    }
}

#[test]
fn empty_list_denies_everything() {
    let prog = program(&[]).expect("program");
    check_cfg(&prog);
    assert_eq!(prog.len(), 8, "prologue and deny: {prog:?}");
    compare(&[]);
}

#[test]
fn default_list() {
    compare(DEFAULT_RULES);
    let rules = with_defaults(vec![rule(false, Kind::All, None, None, "rwm")]);
    compare(&rules);
    let prog = program(&rules).expect("program");
    let allowed = |t, a: u8, ma, mi| run(&prog, t, u32::from(a), ma, mi) == 1;
    assert!(allowed(DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), "/dev/null");
    assert!(allowed(DEV_BLOCK, ACC_MKNOD, 254, 0), "mknod of any node, as runc");
    assert!(!allowed(DEV_BLOCK, ACC_READ, 254, 0), "no block device read");
    assert!(!allowed(DEV_BLOCK, ACC_READ | ACC_MKNOD, 254, 0));
    assert!(!allowed(DEV_CHAR, ACC_READ, 10, 229), "no /dev/fuse unless the spec says so");
    assert!(allowed(DEV_CHAR, ACC_READ | ACC_WRITE, 136, 4), "pts");
}

#[test]
fn spec_rules_then_defaults() {
    let spec = vec![
        rule(false, Kind::All, None, None, "rwm"),
        rule(true, Kind::Char, Some(10), Some(229), "rwm"),
        // A spec cannot deny a default: they come after it.
        rule(false, Kind::Char, Some(1), Some(3), "rwm"),
    ];
    let rules = with_defaults(spec);
    compare(&rules);
    let prog = program(&rules).expect("program");
    assert_eq!(run(&prog, DEV_CHAR, u32::from(ACC_READ | ACC_WRITE), 10, 229), 1);
    assert_eq!(run(&prog, DEV_CHAR, u32::from(ACC_READ), 1, 3), 1);
}

#[test]
fn per_bit_override() {
    // rw allowed by a wildcard, w taken back for one device, m never given.
    let rules = [
        rule(true, Kind::Char, Some(10), None, "rw"),
        rule(false, Kind::Char, Some(10), Some(229), "w"),
        rule(true, Kind::Char, Some(10), Some(229), "m"),
    ];
    compare(&rules);
    let prog = program(&rules).expect("program");
    let req = |a: u8, mi| run(&prog, DEV_CHAR, u32::from(a), 10, mi);
    assert_eq!(req(ACC_READ, 229), 1);
    assert_eq!(req(ACC_READ | ACC_WRITE, 229), 0);
    assert_eq!(req(ACC_READ | ACC_MKNOD, 229), 1);
    assert_eq!(req(ACC_READ | ACC_WRITE, 1), 1);
    assert_eq!(req(ACC_MKNOD, 1), 0);
}

#[test]
fn type_a_and_wildcards() {
    compare(&[rule(true, Kind::All, None, None, "rwm")]);
    compare(&[rule(true, Kind::All, Some(8), None, "r")]);
    compare(&[rule(true, Kind::All, None, None, "m"), rule(false, Kind::Block, None, Some(0), "m")]);
    compare(&[rule(true, Kind::All, None, None, "rwm"), rule(false, Kind::All, Some(u32::MAX), None, "rw")]);
    compare(&[rule(false, Kind::All, None, None, "rwm"), rule(true, Kind::Block, Some(0x8000_0000), Some(3), "r")]);
    // Everything before an all-matching rule is dead and left out.
    let dead = [rule(true, Kind::Char, Some(1), Some(3), "rwm"), rule(false, Kind::All, None, None, "rwm")];
    compare(&dead);
    assert_eq!(program(&dead).expect("program").len(), 9, "prologue, deny all, deny exit");
}

#[test]
fn random_rule_lists_match_the_reference() {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    for n in 0..400 {
        let len = 1 + rng.below(if n % 10 == 0 { 40 } else { 8 });
        let rules: Vec<Rule> = (0..len).map(|_| rng.rule()).collect();
        compare(&rules);
    }
}

#[test]
fn size_is_bounded() {
    let mut rng = Rng(42);
    let rules: Vec<Rule> = (0..MAX_RULES).map(|_| rng.rule()).collect();
    let prog = program(&with_defaults(rules)).expect("the largest list");
    check_cfg(&prog);
    assert!(prog.len() <= 9 * (MAX_RULES + DEFAULT_RULES.len()) + 10, "{} instructions", prog.len());
    let spec = vec![LinuxDeviceCgroup::default(); MAX_RULES + 1];
    let err = rules_from_spec(&spec).expect_err("too many").to_string();
    assert_eq!(err, "linux.resources.devices has 1025 rules; at most 1024 are supported");
    let too_many = vec![rule(true, Kind::Char, None, None, "r"); MAX_RULES + DEFAULT_RULES.len() + 1];
    assert!(program(&too_many).is_err());
}

#[test]
fn spec_rules_are_validated() {
    let parse = |json: &str| {
        let devs: Vec<LinuxDeviceCgroup> = serde_json::from_str(json).expect("test json");
        rules_from_spec(&devs)
    };
    let ok = parse(
        r#"[{"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"},
            {"allow": true, "type": "b", "major": -1, "minor": 4294967295, "access": "m"}]"#,
    )
    .expect("valid");
    assert_eq!(
        ok,
        [
            rule(false, Kind::All, None, None, "rwm"),
            rule(true, Kind::Char, Some(10), Some(229), "rw"),
            rule(true, Kind::Block, None, Some(u32::MAX), "m"),
        ]
    );
    for (json, msg) in [
        (r#"[{"allow": true, "type": "c"}]"#, "linux.resources.devices[0]: access is empty"),
        (r#"[{"allow": true, "access": ""}]"#, "access is empty"),
        (r#"[{"allow": true, "access": "rwm"}, {"allow": true, "access": "rwx"}]"#, "devices[1]: access \"rwx\""),
        (r#"[{"allow": true, "type": "p", "access": "r"}]"#, "type \"p\" is not a device cgroup type"),
        (r#"[{"allow": true, "type": "u", "access": "r"}]"#, "type \"u\""),
        (r#"[{"allow": true, "type": "c", "major": 4294967296, "access": "r"}]"#, "major 4294967296 is out of range"),
    ] {
        let err = parse(json).expect_err(json).to_string();
        assert!(err.contains(msg), "{json}: {err}");
        assert!(!err.contains('\n'));
    }
}
