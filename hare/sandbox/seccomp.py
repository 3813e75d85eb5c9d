"""The seccomp filter every sandboxed snippet runs under (hare/sandbox/runner.py hands it to bwrap).

Why a filter on top of namespaces: a user namespace gives the snippet root-like powers inside
it, and the kernel surface those powers reach (new namespaces, mounts, BPF, keyrings, perf,
ptrace of its siblings) is where container escapes come from. The filter denies those calls
with EPERM before the kernel looks at them. It is compiled once per process with libseccomp
(Debian's ``libseccomp2``, loaded through ctypes so no Python binding is needed) for the native
architecture only: a call made through another ABI (i386 ``int 0x80`` on x86_64) kills the
process, so a denied call cannot be reached by its 32-bit number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

# Denied outright (EPERM). The floor is ptrace, setns, unshare, mount, bpf, keyctl and
# perf_event_open; the rest are the same class: kernel state a snippet has no use for.
DENIED: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "setns", "unshare", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd",
    "open_by_handle_at", "name_to_handle_at", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "swapon", "swapoff", "reboot", "syslog",
    "acct", "quotactl", "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "personality", "io_uring_setup", "io_uring_enter", "io_uring_register",
)
# clone() may make processes but no namespace: a flag test on its first argument. clone3 passes
# its flags in memory a filter cannot read, so it answers ENOSYS and libc falls back to clone.
CLONE_NS_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080,
}

_ACT_ALLOW = 0x7FFF0000
_CMP_MASKED_EQ = 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class SeccompUnavailable(RuntimeError):
    """libseccomp is missing: the sandbox cannot build its filter."""


@functools.lru_cache(maxsize=1)
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable("libseccomp is not installed (apt-get install libseccomp2)") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


@functools.lru_cache(maxsize=1)
def seccomp_bpf() -> bytes:
    """The compiled BPF program (``struct sock_filter`` array) that bwrap's ``--seccomp FD`` takes."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        def rule(action: int, name: str, cmps: list[_ArgCmp] | None = None) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a call on this architecture (e.g. iopl on arm64): nothing to deny
                return
            arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps or []), arr)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp rule for {name} failed: {os.strerror(-rc)}")

        for name in DENIED:
            rule(_act_errno(errno.EPERM), name)
        for flag in CLONE_NS_FLAGS.values():
            rule(_act_errno(errno.EPERM), "clone", [_ArgCmp(0, _CMP_MASKED_EQ, flag, flag)])
        rule(_act_errno(errno.ENOSYS), "clone3")
        read_fd, write_fd = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, write_fd)
            os.close(write_fd)
            write_fd = -1
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(read_fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
    finally:
        lib.seccomp_release(ctx)


def denied_calls() -> list[str]:
    """What the filter denies, as the sandbox reports it (``clone``/``clone3``: namespace flags)."""
    return [*DENIED, "clone(CLONE_NEW*)", "clone3"]
