//! System call names and numbers of the architecture berth is built for, for seccomp profiles.
//!
//! The numbers come from the `libc` crate (`SYS_*` of the build target), so they are right for
//! whatever x86_64 or aarch64 target berth is compiled for; the few calls `libc` lacks (removed
//! ones, very new ones) are listed with their numbers from the kernel's syscall tables. Names of
//! other architectures (the 32-bit ABIs, arch-specific calls) are known too, so a profile written
//! for several architectures (like Docker's) is accepted: those entries do not apply here.

macro_rules! from_libc {
    ($($sys:ident)*) => {
        &[$((stringify!($sys), libc::$sys as i64)),*]
    };
}

/// Calls with the same name on x86_64 and aarch64 (numbers differ).
const COMMON: &[(&str, i64)] = from_libc![
    SYS_accept SYS_accept4 SYS_acct SYS_add_key SYS_adjtimex SYS_bind SYS_bpf SYS_brk
    SYS_capget SYS_capset SYS_chdir SYS_chroot SYS_clock_adjtime SYS_clock_getres
    SYS_clock_gettime SYS_clock_nanosleep SYS_clock_settime SYS_clone SYS_clone3 SYS_close
    SYS_close_range SYS_connect SYS_copy_file_range SYS_delete_module SYS_dup SYS_dup3
    SYS_epoll_create1 SYS_epoll_ctl SYS_epoll_pwait SYS_epoll_pwait2 SYS_eventfd2 SYS_execve
    SYS_execveat SYS_exit SYS_exit_group SYS_faccessat SYS_faccessat2 SYS_fadvise64
    SYS_fallocate SYS_fanotify_init SYS_fanotify_mark SYS_fchdir SYS_fchmod SYS_fchmodat
    SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr SYS_finit_module
    SYS_flistxattr SYS_flock SYS_fremovexattr SYS_fsconfig SYS_fsetxattr SYS_fsmount SYS_fsopen
    SYS_fspick SYS_fstat SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv
    SYS_get_mempolicy SYS_get_robust_list SYS_getcpu SYS_getcwd SYS_getdents64 SYS_getegid
    SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer SYS_getpeername SYS_getpgid SYS_getpid
    SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrusage
    SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid SYS_gettimeofday SYS_getuid
    SYS_getxattr SYS_init_module SYS_inotify_add_watch SYS_inotify_init1 SYS_inotify_rm_watch
    SYS_io_cancel SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit SYS_io_uring_enter
    SYS_io_uring_register SYS_io_uring_setup SYS_ioctl SYS_ioprio_get SYS_ioprio_set SYS_kcmp
    SYS_kexec_load SYS_keyctl SYS_kill SYS_landlock_add_rule SYS_landlock_create_ruleset
    SYS_landlock_restrict_self SYS_lgetxattr SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr
    SYS_lookup_dcookie SYS_lremovexattr SYS_lseek SYS_lsetxattr SYS_madvise SYS_mbind
    SYS_membarrier SYS_memfd_create SYS_memfd_secret SYS_migrate_pages SYS_mincore SYS_mkdirat
    SYS_mknodat SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap SYS_mount SYS_mount_setattr
    SYS_move_mount SYS_move_pages SYS_mprotect SYS_mq_getsetattr SYS_mq_notify SYS_mq_open
    SYS_mq_timedreceive SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl
    SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync SYS_munlock SYS_munlockall SYS_munmap
    SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat SYS_nfsservctl SYS_open_by_handle_at
    SYS_open_tree SYS_openat SYS_openat2 SYS_perf_event_open SYS_personality SYS_pidfd_getfd
    SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe2 SYS_pivot_root SYS_pkey_alloc SYS_pkey_free
    SYS_pkey_mprotect SYS_ppoll SYS_prctl SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64
    SYS_process_madvise SYS_process_mrelease SYS_process_vm_readv SYS_process_vm_writev
    SYS_pselect6 SYS_ptrace SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_quotactl SYS_quotactl_fd
    SYS_read SYS_readahead SYS_readlinkat SYS_readv SYS_reboot SYS_recvfrom SYS_recvmmsg
    SYS_recvmsg SYS_remap_file_pages SYS_removexattr SYS_renameat2 SYS_request_key
    SYS_restart_syscall SYS_rseq SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask
    SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend SYS_rt_sigtimedwait
    SYS_rt_tgsigqueueinfo SYS_sched_get_priority_max SYS_sched_get_priority_min
    SYS_sched_getaffinity SYS_sched_getattr SYS_sched_getparam SYS_sched_getscheduler
    SYS_sched_rr_get_interval SYS_sched_setaffinity SYS_sched_setattr SYS_sched_setparam
    SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_semctl SYS_semget SYS_semop
    SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto SYS_set_mempolicy
    SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_tid_address SYS_setdomainname
    SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname SYS_setitimer SYS_setns
    SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid SYS_setreuid
    SYS_setsid SYS_setsockopt SYS_settimeofday SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl
    SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack SYS_signalfd4 SYS_socket SYS_socketpair
    SYS_splice SYS_statfs SYS_statx SYS_swapoff SYS_swapon SYS_symlinkat SYS_sync SYS_syncfs
    SYS_sysinfo SYS_syslog SYS_tee SYS_tgkill SYS_timer_create SYS_timer_delete
    SYS_timer_getoverrun SYS_timer_gettime SYS_timer_settime SYS_timerfd_create
    SYS_timerfd_gettime SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_umask
    SYS_umount2 SYS_uname SYS_unlinkat SYS_unshare SYS_userfaultfd SYS_utimensat SYS_vhangup
    SYS_vmsplice SYS_wait4 SYS_waitid SYS_write SYS_writev];

/// x86_64-only calls in `libc`.
#[cfg(target_arch = "x86_64")]
const ARCH: &[(&str, i64)] = from_libc![
    SYS__sysctl SYS_access SYS_afs_syscall SYS_alarm SYS_arch_prctl SYS_chmod SYS_chown
    SYS_creat SYS_dup2 SYS_epoll_create SYS_epoll_ctl_old SYS_epoll_wait SYS_epoll_wait_old
    SYS_eventfd SYS_fchmodat2 SYS_fork SYS_futimesat SYS_get_thread_area SYS_getdents
    SYS_getpgrp SYS_getpmsg SYS_getrlimit SYS_inotify_init SYS_ioperm SYS_iopl
    SYS_kexec_file_load SYS_lchown SYS_link SYS_lstat SYS_mkdir SYS_mknod SYS_modify_ldt
    SYS_open SYS_pause SYS_pipe SYS_poll SYS_putpmsg SYS_readlink SYS_rename SYS_renameat
    SYS_rmdir SYS_security SYS_select SYS_set_thread_area SYS_setrlimit SYS_signalfd SYS_stat
    SYS_symlink SYS_sync_file_range SYS_sysfs SYS_time SYS_tuxcall SYS_unlink SYS_uselib
    SYS_ustat SYS_utime SYS_utimes SYS_vfork SYS_vserver];

/// aarch64-only calls in `libc` (none today: aarch64 uses the generic table).
#[cfg(target_arch = "aarch64")]
const ARCH: &[(&str, i64)] = &[];

/// Calls missing from `libc`: numbers from the kernel's `syscall_64.tbl`.
#[cfg(target_arch = "x86_64")]
const EXTRA: &[(&str, i64)] = &[
    ("create_module", 174),
    ("get_kernel_syms", 177),
    ("query_module", 178),
    ("io_pgetevents", 333),
    ("uretprobe", 335),
];

/// Calls missing from `libc`: numbers from the kernel's generic `unistd.h`.
#[cfg(target_arch = "aarch64")]
const EXTRA: &[(&str, i64)] = &[
    ("renameat", 38),
    ("sync_file_range", 84),
    ("getrlimit", 163),
    ("setrlimit", 164),
    ("io_pgetevents", 292),
    ("kexec_file_load", 294),
    ("fchmodat2", 452),
];

/// Other architectures: the common names only (berth is tested on x86_64).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH: &[(&str, i64)] = &[];
/// Other architectures: nothing beyond `libc`.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const EXTRA: &[(&str, i64)] = &[];

/// Calls numbered alike on every architecture (the unified table from 424 on) that `libc`
/// lacks.
const UNIFIED: &[(&str, i64)] = &[
    ("cachestat", 451),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("statmount", 457),
    ("listmount", 458),
    ("lsm_get_self_attr", 459),
    ("lsm_set_self_attr", 460),
    ("lsm_list_modules", 461),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
    ("open_tree_attr", 467),
    ("file_getattr", 468),
    ("file_setattr", 469),
    ("listns", 470),
];

/// Names of calls that exist on other architectures only (i386 and the other 32-bit ABIs, arm,
/// powerpc, s390, mips, riscv), plus the x86_64-only ones (foreign when built for aarch64).
const ELSEWHERE: &str = "\
    _llseek _newselect bdflush break chown32 clock_adjtime64 clock_getres_time64 clock_gettime64
    clock_nanosleep_time64 clock_settime64 fadvise64_64 fchown32 fcntl64 fstat64 fstatat64
    fstatfs64 ftime ftruncate64 futex_time64 getegid32 geteuid32 getgid32 getgroups32
    getresgid32 getresuid32 getuid32 gtty idle io_pgetevents_time64 ipc lchown32 lock
    lstat64 mmap2 mpx mq_timedreceive_time64 mq_timedsend_time64 nice oldfstat oldlstat
    oldolduname oldstat olduname ppoll_time64 prof profil pselect6_time64 readdir
    recvmmsg_time64 rt_sigtimedwait_time64 sched_rr_get_interval_time64 semtimedop_time64
    sendfile64 setfsgid32 setfsuid32 setgid32 setgroups32 setregid32 setresgid32 setresuid32
    setreuid32 setuid32 sgetmask sigaction signal sigpending sigprocmask sigreturn
    sigsuspend socketcall ssetmask stat64 statfs64 stime stty timer_gettime64
    timer_settime64 timerfd_gettime64 timerfd_settime64 truncate64 ugetrlimit ulimit umount
    utimensat_time64 vm86 vm86old waitpid
    arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls usr26 usr32
    sync_file_range2 spu_create spu_run subpage_prot switch_endian sys_debug_setcontext
    multiplexer rtas swapcontext pciconfig_iobase pciconfig_read pciconfig_write
    s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr s390_guarded_storage s390_sthyi
    riscv_flush_icache riscv_hwprobe sysmips cachectl oldumount get_tls atomic_barrier
    atomic_cmpxchg_32 memory_ordering recv send
    _sysctl access afs_syscall alarm arch_prctl chmod chown creat dup2 epoll_create
    epoll_ctl_old epoll_wait epoll_wait_old eventfd fork futimesat get_thread_area getdents
    getpgrp getpmsg inotify_init ioperm iopl lchown link lstat mkdir mknod modify_ldt open pause
    pipe poll putpmsg readlink rename rmdir security select set_thread_area signalfd stat
    symlink sysfs time tuxcall unlink uselib ustat utime utimes vfork vserver create_module
    get_kernel_syms query_module uretprobe";

/// How a system call name resolves on this architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// The call's number here.
    Native(i64),
    /// A real call, but of another architecture: a profile entry for it does not apply here.
    Foreign,
    /// Not a system call name berth knows (a typo?).
    Unknown,
}

/// Resolves a system call name for the architecture berth is built for.
pub fn resolve(name: &str) -> Syscall {
    let native = COMMON
        .iter()
        .chain(ARCH)
        .map(|(n, nr)| (n.strip_prefix("SYS_").unwrap_or(n), *nr))
        .chain(EXTRA.iter().chain(UNIFIED).copied())
        .find(|(n, _)| *n == name);
    match native {
        Some((_, nr)) => Syscall::Native(nr),
        None if ELSEWHERE.split_whitespace().any(|n| n == name) => Syscall::Foreign,
        None => Syscall::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve() {
        assert_eq!(resolve("execve"), Syscall::Native(libc::SYS_execve));
        assert_eq!(resolve("mkdirat"), Syscall::Native(libc::SYS_mkdirat));
        assert_eq!(resolve("listmount"), Syscall::Native(458));
        assert_eq!(resolve("socketcall"), Syscall::Foreign);
        assert_eq!(resolve("arm_fadvise64_64"), Syscall::Foreign);
        assert_eq!(resolve("mkdri"), Syscall::Unknown);
        assert_eq!(resolve(""), Syscall::Unknown);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(resolve("mkdir"), Syscall::Native(83));
            assert_eq!(resolve("create_module"), Syscall::Native(174));
            assert_eq!(resolve("umount"), Syscall::Foreign);
        }
    }

    #[test]
    fn no_name_is_listed_twice_with_different_numbers() {
        let mut seen = std::collections::HashMap::new();
        for (n, nr) in COMMON
            .iter()
            .chain(ARCH)
            .map(|(n, nr)| (n.strip_prefix("SYS_").unwrap_or(n), *nr))
            .chain(EXTRA.iter().chain(UNIFIED).copied())
        {
            if let Some(old) = seen.insert(n, nr) {
                assert_eq!(old, nr, "{n}");
            }
        }
        let mut numbers: Vec<i64> = seen.values().copied().collect();
        numbers.sort_unstable();
        let before = numbers.len();
        numbers.dedup();
        assert_eq!(before, numbers.len(), "two names share a number");
    }
}
