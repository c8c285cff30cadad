//! The cgroup v2 device filter: an eBPF `BPF_PROG_TYPE_CGROUP_DEVICE` program assembled by hand
//! from the allow rules, loaded with `bpf(BPF_PROG_LOAD)` and attached to the container's cgroup
//! with `bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)`.
//!
//! # The program
//! The kernel calls it with `r1` pointing at `struct bpf_cgroup_dev_ctx { u32 access_type; u32
//! major; u32 minor; }`, where `access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*`. The
//! prologue loads the device type into `r2`, the requested access bits into `r3`, major into `r4`
//! and minor into `r5`; then one block per rule compares what the rule constrains and jumps to the
//! next block on any mismatch, or returns 1 (allow); after the last block the program returns 0
//! (deny). Access matches when every requested bit is allowed: `(r3 & allowed) == r3`.
//!
//! The program calls no helper, so no GPL-only function is involved: its license string is
//! berth's own ("Apache-2.0").
//!
//! # Lifetime
//! An attached program is held by the cgroup; the loader's fd is closed after attaching and the
//! program goes away with the cgroup's removal. Re-preparing a container attaches the new program
//! first and then detaches the ones attached before, so the cgroup is never unfiltered.
//!
//! # Kernel seam
//! The five `bpf(2)` commands used are behind [`BpfSys`]; [`LinuxBpf`] issues them, and the unit
//! tests use a recording double.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use tracing::{debug, info};

use super::CgroupError;
use super::devices::{DeviceAccess, DeviceKind, DeviceRule};

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn` (8 bytes; the register byte
/// holds dst in its low and src in its high nibble).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Insn {
    /// Opcode: class | operation | source.
    pub(super) code: u8,
    /// `dst | src << 4`.
    pub(super) regs: u8,
    /// Jump offset (instructions after the next one) or memory offset.
    pub(super) off: i16,
    /// Immediate operand.
    pub(super) imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
/// `BPF_LDX | BPF_MEM | BPF_W`: dst = *(u32 *)(src + off).
const LDX_MEM_W: u8 = 0x61;
/// `BPF_ALU | BPF_AND | BPF_K`: dst = (u32)dst & imm.
const ALU32_AND_K: u8 = 0x54;
/// `BPF_ALU | BPF_RSH | BPF_K`: dst = (u32)dst >> imm.
const ALU32_RSH_K: u8 = 0x74;
/// `BPF_ALU64 | BPF_MOV | BPF_X`: dst = src.
const ALU64_MOV_X: u8 = 0xbf;
/// `BPF_ALU64 | BPF_MOV | BPF_K`: dst = imm.
const ALU64_MOV_K: u8 = 0xb7;
/// `BPF_JMP | BPF_JNE | BPF_K`: if dst != imm goto pc + 1 + off.
const JMP_JNE_K: u8 = 0x55;
/// `BPF_JMP | BPF_JNE | BPF_X`: if dst != src goto pc + 1 + off.
const JMP_JNE_X: u8 = 0x5d;
/// `BPF_JMP | BPF_EXIT`.
const JMP_EXIT: u8 = 0x95;

/// `BPF_DEVCG_DEV_BLOCK` / `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | src << 4,
        off,
        imm,
    }
}

/// The comparisons of one rule, each jumping `off` (patched later) to the next rule on mismatch.
fn rule_block(rule: &DeviceRule) -> Vec<Insn> {
    let mut block = Vec::new();
    match rule.kind {
        DeviceKind::All => {}
        DeviceKind::Char => block.push(insn(JMP_JNE_K, R2, 0, 0, DEV_CHAR)),
        DeviceKind::Block => block.push(insn(JMP_JNE_K, R2, 0, 0, DEV_BLOCK)),
    }
    if rule.access != DeviceAccess::RWM {
        block.push(insn(ALU64_MOV_X, R1, R3, 0, 0));
        block.push(insn(ALU32_AND_K, R1, 0, 0, rule.access.bpf_mask() as i32));
        block.push(insn(JMP_JNE_X, R1, R3, 0, 0));
    }
    if let Some(major) = rule.major {
        // Majors and minors are at most 12 and 20 bits: they fit the signed immediate.
        block.push(insn(JMP_JNE_K, R4, 0, 0, major as i32));
    }
    if let Some(minor) = rule.minor {
        block.push(insn(JMP_JNE_K, R5, 0, 0, minor as i32));
    }
    block.push(insn(ALU64_MOV_K, R0, 0, 0, 1));
    block.push(insn(JMP_EXIT, 0, 0, 0, 0));
    // Every jump goes to the instruction after this block's exit.
    let len = block.len();
    for (i, ins) in block.iter_mut().enumerate() {
        if ins.code == JMP_JNE_K || ins.code == JMP_JNE_X {
            ins.off = (len - i - 1) as i16;
        }
    }
    block
}

/// Assembles the device filter allowing exactly `rules` (first match allows; no match denies).
pub(super) fn assemble(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut prog = vec![
        insn(LDX_MEM_W, R2, R1, 0, 0),
        insn(ALU32_AND_K, R2, 0, 0, 0xffff),
        insn(LDX_MEM_W, R3, R1, 0, 0),
        insn(ALU32_RSH_K, R3, 0, 0, 16),
        insn(LDX_MEM_W, R4, R1, 4, 0),
        insn(LDX_MEM_W, R5, R1, 8, 0),
    ];
    for rule in rules {
        prog.extend(rule_block(rule));
    }
    prog.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

/// Runs the assembled program on one access, as the kernel would: an interpreter for exactly
/// the instructions [`assemble`] emits, so unit tests check the encoding's behaviour too.
#[cfg(test)]
pub(super) fn interpret(prog: &[Insn], access_type: u32, major: u32, minor: u32) -> u64 {
    let ctx = [access_type, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        pc += 1;
        match i.code {
            LDX_MEM_W => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = u64::from(ctx[i.off as usize / 4]);
            }
            ALU32_AND_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
            ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
            ALU64_MOV_X => r[dst] = r[src],
            ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
            JMP_JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
            JMP_JNE_X if r[dst] != r[src] => pc += i.off as usize,
            JMP_JNE_K | JMP_JNE_X => {}
            JMP_EXIT => return r[0],
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

/// The `bpf(2)` commands the device filter needs: the kernel seam.
pub(super) trait BpfSys: Send + Sync + fmt::Debug {
    /// `BPF_PROG_LOAD` of a `CGROUP_DEVICE` program; with `log`, the verifier writes its log
    /// there (level 1).
    fn prog_load(&self, prog: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd>;
    /// `BPF_PROG_ATTACH` of `prog` to `cgroup` as `BPF_CGROUP_DEVICE` with `BPF_F_ALLOW_MULTI`.
    fn prog_attach(&self, cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()>;
    /// `BPF_PROG_QUERY`: ids of the device programs attached to `cgroup` itself.
    fn prog_query(&self, cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>>;
    /// `BPF_PROG_GET_FD_BY_ID`.
    fn prog_fd_by_id(&self, id: u32) -> io::Result<OwnedFd>;
    /// `BPF_PROG_DETACH` of `prog` from `cgroup`.
    fn prog_detach(&self, cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()>;
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (through `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH`/`DETACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` part of `union bpf_attr` (through `prog_cnt`).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The `BPF_*_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Issues `bpf(cmd, attr, sizeof *attr)`.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member `cmd` expects, and every pointer stored in it must
/// be valid for the access `cmd` makes (read or write) for the duration of the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller guarantees `attr` is the right member with valid pointers; the kernel
    // reads and writes at most `size_of::<T>()` bytes of it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of an fd a `bpf(2)` command just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned `fd` as a new descriptor of ours that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The real `bpf(2)` calls.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LinuxBpf;

impl BpfSys for LinuxBpf {
    fn prog_load(&self, prog: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
        let license = CString::new("Apache-2.0").expect("no NUL");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        attr.prog_name[..12].copy_from_slice(b"berth_device");
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = buf.len() as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: `attr` is the PROG_LOAD member; `insns` points at `prog.len()` instructions
        // laid out as `struct bpf_insn`, `license` at a NUL-terminated string and `log_buf` (if
        // set) at `log_size` writable bytes, all alive until the call returns.
        let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr)? };
        Ok(owned(fd))
    }

    fn prog_attach(&self, cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
        let mut attr = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: BPF_F_ALLOW_MULTI,
            ..Default::default()
        };
        // SAFETY: `attr` is the PROG_ATTACH member and holds no pointers; both fds are open.
        unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
    }

    fn prog_query(&self, cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
        let mut ids = vec![0u32; 64];
        let mut attr = QueryAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the PROG_QUERY member; `prog_ids` points at `prog_cnt` writable
        // u32s, alive until the call returns.
        unsafe { bpf(BPF_PROG_QUERY, &mut attr)? };
        ids.truncate((attr.prog_cnt as usize).min(64));
        Ok(ids)
    }

    fn prog_fd_by_id(&self, id: u32) -> io::Result<OwnedFd> {
        let mut attr = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        // SAFETY: `attr` is the GET_FD_BY_ID member and holds no pointers.
        let fd = unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)? };
        Ok(owned(fd))
    }

    fn prog_detach(&self, cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
        let mut attr = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        // SAFETY: `attr` is the PROG_DETACH member and holds no pointers; both fds are open.
        unsafe { bpf(BPF_PROG_DETACH, &mut attr) }.map(drop)
    }
}

/// Loads the filter for `rules` (on failure, again with the verifier log, which the error
/// carries), attaches it to the cgroup `dir`, then detaches the device programs that were
/// attached there before. Returns the program's length in instructions.
pub(super) fn install(
    sys: &dyn BpfSys,
    dir: &Path,
    rules: &[DeviceRule],
) -> Result<usize, CgroupError> {
    let prog = assemble(rules);
    let bpf_err = |op: &'static str| {
        move |source| CgroupError::Bpf {
            path: dir.to_path_buf(),
            op,
            source,
        }
    };
    let cgroup = std::fs::File::open(dir).map_err(bpf_err("open the cgroup directory"))?;
    let old = match sys.prog_query(cgroup.as_fd()) {
        Ok(ids) => ids,
        // Kernels before 4.15 cannot query; nothing of ours can be attached there either.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Vec::new(),
        Err(e) => return Err(bpf_err("BPF_PROG_QUERY")(e)),
    };
    let loaded = match sys.prog_load(&prog, None) {
        Ok(fd) => fd,
        Err(first) => {
            let mut log = vec![0u8; 1 << 20];
            let source = match sys.prog_load(&prog, Some(&mut log)) {
                Ok(_) => first,
                Err(e) => e,
            };
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            return Err(CgroupError::BpfLoad {
                path: dir.to_path_buf(),
                source,
                log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
            });
        }
    };
    sys.prog_attach(cgroup.as_fd(), loaded.as_fd())
        .map_err(bpf_err("BPF_PROG_ATTACH"))?;
    for id in old {
        let fd = match sys.prog_fd_by_id(id) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(bpf_err("BPF_PROG_GET_FD_BY_ID")(e)),
        };
        match sys.prog_detach(cgroup.as_fd(), fd.as_fd()) {
            Ok(()) => debug!(path = %dir.display(), id, "previous device filter detached"),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(bpf_err("BPF_PROG_DETACH")(e)),
        }
    }
    info!(path = %dir.display(), rules = rules.len(), insns = prog.len(), "device filter attached");
    Ok(prog.len())
}

#[cfg(test)]
pub(super) mod double {
    //! A recording [`BpfSys`] for fixture tests: every call is logged, errors can be injected.

    use std::sync::Mutex;

    use super::*;

    /// Records calls as strings; `fail_load` makes every load fail with EACCES and a log.
    #[derive(Debug, Default)]
    pub(in crate::cgroups) struct RecordingBpf {
        pub(in crate::cgroups) calls: Mutex<Vec<String>>,
        pub(in crate::cgroups) attached: Mutex<Vec<u32>>,
        pub(in crate::cgroups) fail_load: bool,
    }

    fn dummy_fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    impl BpfSys for RecordingBpf {
        fn prog_load(&self, prog: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("load {} log={}", prog.len(), log.is_some()));
            if self.fail_load {
                if let Some(buf) = log {
                    let text = b"0: (61) r2 = *(u32 *)(r1 +0)\ninvalid bpf_context access";
                    buf[..text.len()].copy_from_slice(text);
                }
                return Err(io::Error::from_raw_os_error(libc::EACCES));
            }
            Ok(dummy_fd())
        }
        fn prog_attach(&self, _: BorrowedFd<'_>, _: BorrowedFd<'_>) -> io::Result<()> {
            let mut attached = self.attached.lock().unwrap();
            let id = attached.iter().max().map_or(1, |m| m + 1);
            attached.push(id);
            self.calls.lock().unwrap().push(format!("attach {id}"));
            Ok(())
        }
        fn prog_query(&self, _: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
            self.calls.lock().unwrap().push("query".into());
            Ok(self.attached.lock().unwrap().clone())
        }
        fn prog_fd_by_id(&self, id: u32) -> io::Result<OwnedFd> {
            self.calls.lock().unwrap().push(format!("fd_by_id {id}"));
            self.attached.lock().unwrap().retain(|&a| a != id);
            Ok(dummy_fd())
        }
        fn prog_detach(&self, _: BorrowedFd<'_>, _: BorrowedFd<'_>) -> io::Result<()> {
            self.calls.lock().unwrap().push("detach".into());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::devices::default_rules;

    const READ: u32 = 2 << 16;
    const WRITE: u32 = 4 << 16;
    const MKNOD: u32 = 1 << 16;
    const CHAR: u32 = 2;
    const BLOCK: u32 = 1;

    #[test]
    fn encoding_of_a_rule_list() {
        let rules = [
            DeviceRule::char(1, Some(3), DeviceAccess::RWM),
            DeviceRule::char(136, None, DeviceAccess::RW),
        ];
        let prog = assemble(&rules);
        let raw: Vec<(u8, u8, i16, i32)> = prog
            .iter()
            .map(|i| (i.code, i.regs, i.off, i.imm))
            .collect();
        assert_eq!(
            raw,
            vec![
                (0x61, 0x12, 0, 0),      // r2 = *(u32 *)(r1 + 0)
                (0x54, 0x02, 0, 0xffff), // w2 &= 0xffff: device type
                (0x61, 0x13, 0, 0),      // r3 = *(u32 *)(r1 + 0)
                (0x74, 0x03, 0, 16),     // w3 >>= 16: access
                (0x61, 0x14, 4, 0),      // r4 = major
                (0x61, 0x15, 8, 0),      // r5 = minor
                // c 1:3 rwm
                (0x55, 0x02, 4, 2), // if r2 != CHAR goto next
                (0x55, 0x04, 3, 1), // if r4 != 1 goto next
                (0x55, 0x05, 2, 3), // if r5 != 3 goto next
                (0xb7, 0x00, 0, 1), // r0 = 1
                (0x95, 0x00, 0, 0), // exit
                // c 136:* rw
                (0x55, 0x02, 6, 2), // if r2 != CHAR goto next
                (0xbf, 0x31, 0, 0), // r1 = r3
                (0x54, 0x01, 0, 6), // w1 &= READ|WRITE
                (0x5d, 0x31, 3, 0), // if r1 != r3 goto next
                (0x55, 0x04, 2, 136),
                (0xb7, 0x00, 0, 1),
                (0x95, 0x00, 0, 0),
                // deny
                (0xb7, 0x00, 0, 0),
                (0x95, 0x00, 0, 0),
            ]
        );
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn program_behaviour_matches_the_rules() {
        let rules = default_rules();
        let prog = assemble(&rules);
        let run = |acc, kind, major, minor| interpret(&prog, acc | kind, major, minor);
        assert_eq!(run(READ, CHAR, 1, 3), 1, "read /dev/null");
        assert_eq!(run(READ | WRITE, CHAR, 1, 9), 1, "rw /dev/urandom");
        assert_eq!(run(MKNOD, CHAR, 1, 5), 1, "mknod zero");
        assert_eq!(run(READ | WRITE, CHAR, 136, 42), 1, "a pts");
        assert_eq!(run(MKNOD, CHAR, 136, 42), 0, "no mknod of pts");
        assert_eq!(run(READ, BLOCK, 1, 3), 0, "block 1:3 is not null");
        assert_eq!(run(READ, CHAR, 10, 237), 0, "loop-control");
        assert_eq!(run(MKNOD, BLOCK, 7, 0), 0, "mknod loop0");
        assert_eq!(run(READ, CHAR, 1, 11), 0, "kmsg");
        assert_eq!(run(READ, CHAR, 5, 1), 0, "console");
        // Cross-check against the rule semantics for a grid of accesses.
        for kind in [(CHAR, DeviceKind::Char), (BLOCK, DeviceKind::Block)] {
            for (major, minor) in [(1, 3), (1, 4), (5, 2), (136, 0), (7, 0), (4, 1)] {
                for acc in 1..8u32 {
                    let want = DeviceAccess {
                        mknod: acc & 1 != 0,
                        read: acc & 2 != 0,
                        write: acc & 4 != 0,
                    };
                    let expected = rules.iter().any(|r| r.allows(kind.1, major, minor, want));
                    assert_eq!(
                        run(acc << 16, kind.0, major, minor) == 1,
                        expected,
                        "{kind:?} {major}:{minor} access {acc}"
                    );
                }
            }
        }
        assert_eq!(
            interpret(&assemble(&[]), READ | CHAR, 1, 3),
            0,
            "no rules: deny all"
        );
    }

    #[test]
    fn install_attaches_then_detaches_the_previous_filter() {
        let dir = tempfile::TempDir::new().unwrap();
        let sys = double::RecordingBpf::default();
        install(&sys, dir.path(), &default_rules()).unwrap();
        install(&sys, dir.path(), &default_rules()).unwrap();
        let calls = sys.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "query",
                "load 50 log=false",
                "attach 1",
                "query",
                "load 50 log=false",
                "attach 2",
                "fd_by_id 1",
                "detach"
            ]
        );
        assert_eq!(*sys.attached.lock().unwrap(), vec![2]);
    }

    #[test]
    fn load_failure_carries_the_verifier_log() {
        let dir = tempfile::TempDir::new().unwrap();
        let sys = double::RecordingBpf {
            fail_load: true,
            ..Default::default()
        };
        let err = install(&sys, dir.path(), &default_rules()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("invalid bpf_context access"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            sys.calls
                .lock()
                .unwrap()
                .iter()
                .all(|c| !c.starts_with("attach")),
            "nothing attached"
        );
    }
}
