"""Run untrusted Python (model-written solver programs) in a separate, limited process.

Nothing a model writes is ``exec``-ed in the caller's process. :func:`run_sandboxed` writes the program to a
fresh temporary directory and runs it with ``python -I`` (isolated mode: no user site, no ``PYTHON*``
variables, no current directory on ``sys.path``) under these limits, set in the child before it starts:

- CPU seconds (``RLIMIT_CPU``), address space (``RLIMIT_AS``), size of any file written (``RLIMIT_FSIZE``)
  and a wall-clock timeout after which the whole process group is killed (``SIGKILL``), children too;
- a process limit: a ``pids`` cgroup when the caller may create one (root), else ``RLIMIT_NPROC`` (which
  the kernel does not enforce for root), so a fork bomb stops at ``max_processes``;
- an environment of ``PATH``, ``HOME`` (the temporary directory), ``LANG`` and one-thread BLAS settings
  only: no API keys or other secrets of the caller;
- writes confined to the temporary directory (its working directory, removed afterwards) by Landlock, which
  also refuses TCP connect/bind and signals to processes outside the sandbox (Linux 5.13+; unprivileged);
- no network and no view of other processes: the program runs under ``unshare`` in new network, PID and
  mount namespaces (inside a new user namespace when not root), with only a down loopback device and its own
  ``/proc`` (so the caller's environment in ``/proc/<pid>/environ`` is out of reach).

Each mechanism the kernel refuses is reported in :attr:`SandboxResult.isolation` (``network``, ``proc``,
``filesystem``, ``processes``), never silently assumed.

The program reports its answer by assigning a JSON-serialisable ``result`` (e.g. ``result = {"status":
"optimal", "objective": 12.0}``). The runner prints it on a line tagged with a random token handed over on
stdin and deleted before the program runs; lines the program prints itself are never taken for the
result, whatever they look like. This guards against programs that print a plausible result line, not
against one that deliberately searches its own process memory for the token; the process and kernel
limits above are the security boundary.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK = (444, 445, 446)  # create_ruleset, add_rule, restrict_self (same on x86_64 and aarch64)
_LL_WRITE = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << b for b in range(6, 13))  # write, remove, make_*
_LL_REFER, _LL_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_LL_NET_TCP = (1 << 0) | (1 << 1)  # bind, connect (ABI 4)
_LL_SCOPES = (1 << 0) | (1 << 1)  # abstract unix sockets, signals (ABI 6)
_PIDS_CGROUP = Path("/sys/fs/cgroup/pids")
_OUTPUT_CHARS = 20_000
_MARK = "lmopt-sandbox: no "
_CPU_EXIT = 128 + signal.SIGXCPU

# The runner the child executes: read the token, forget it, confine writes, run the program, print the tagged
# result. It imports this module (stdlib only) for the Landlock call.
_RUNNER = r'''
import json, runpy, sys
token = sys.stdin.readline().strip()
sys.stdin = open("/dev/null")
program, work = sys.argv[1], sys.argv[2]
import os, signal
from lmopt.modeling.sandbox import _CPU_EXIT, _MARK, _landlock
def _cpu(signum, frame):
    os.write(2, (_MARK + "cpu time left\n").encode())
    os._exit(_CPU_EXIT)
signal.signal(signal.SIGXCPU, _cpu)
if not _landlock(work):
    sys.stderr.write(_MARK + "filesystem\n")
def _main(token=token):
    try:
        ns = runpy.run_path(program, run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
        ns = {}
    value = ns.get("result")
    try:
        text = json.dumps({"set": "result" in ns, "value": value})
    except (TypeError, ValueError) as e:
        text = json.dumps({"set": True, "value": None, "error": f"result is not JSON: {type(value).__name__}: {e}"})
    sys.stdout.flush()
    sys.stdout.write("\n" + token + " " + text + "\n")
    sys.stdout.flush()
del token
_main()
'''
_NAMESPACES = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
_NS_PROBE: dict[bool, bool] = {}  # running as root -> the unshare command works here


def _namespace_prefix() -> list[str]:
    """``unshare`` with new network, PID and mount namespaces (its own /proc, so the caller's environment in
    /proc/<pid>/environ is out of sight), inside a new user namespace when not root; [] if not permitted."""
    root = os.geteuid() == 0
    cmd = _NAMESPACES + ([] if root else ["--map-root-user"])
    if root not in _NS_PROBE:
        try:
            ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        _NS_PROBE[root] = ok
    return cmd if _NS_PROBE[root] else []


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run (see the module docstring)."""

    timeout_s: float = 30.0
    cpu_s: int = 30
    memory_mb: int = 2048
    file_mb: int = 16
    max_processes: int = 8

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_mb", "max_processes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {v!r}")


@dataclass
class SandboxResult:
    """What a sandboxed program did. ``status``: ``ok`` (exited 0), ``error`` (an exception or non-zero exit),
    ``timeout`` (killed at the wall-clock limit), ``cpu_limit`` (stopped at its CPU seconds), ``killed``
    (another signal). ``result`` is the program's ``result`` (``has_result`` tells None from unset)."""

    status: str
    result: Any = None
    has_result: bool = False
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    isolation: dict[str, Any] = field(default_factory=dict)
    limits: SandboxLimits = field(default_factory=SandboxLimits)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def error_summary(self, lines: int = 8) -> str:
        """The last lines of stderr (the traceback), or why the run stopped: what a self-debug prompt shows."""
        if self.status == "timeout":
            return f"the program did not finish within {self.limits.timeout_s:g} s (wall clock) and was killed"
        tail = "\n".join(self.stderr.strip().splitlines()[-lines:])
        if self.status == "cpu_limit":
            return f"the program used up its CPU limit of {self.limits.cpu_s} s and was stopped"
        if self.status == "killed":
            why = {signal.SIGKILL: "a kill (memory or CPU limit)",
                   signal.SIGSEGV: "a crash (often the memory limit)"}.get(-(self.returncode or 0), "a signal")
            return f"the program was stopped by {why}" + (f":\n{tail}" if tail else "")
        return tail or f"the program exited with status {self.returncode}"


def _landlock(work: str) -> bool:
    """Allow writes below ``work`` only, refuse TCP bind/connect and outside signals; False if unsupported."""
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(_SYS_LANDLOCK[0], None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1 or libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    fs = _LL_WRITE | (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0)
    attr = struct.pack("<QQQ", fs, _LL_NET_TCP if abi >= 4 else 0, _LL_SCOPES if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = libc.syscall(_SYS_LANDLOCK[0], buf, size, 0)
    if ruleset < 0:
        return False
    fd = os.open(work, os.O_PATH | os.O_CLOEXEC)
    rule = ctypes.create_string_buffer(struct.pack("<Qi", fs, fd), 12)  # packed path_beneath_attr
    ok = libc.syscall(_SYS_LANDLOCK[1], ruleset, 1, rule, 0) == 0 and \
        libc.syscall(_SYS_LANDLOCK[2], ruleset, 0) == 0
    os.close(fd)
    os.close(ruleset)
    return ok


def _child_setup(limits: SandboxLimits, cgroup: Path | None) -> Any:
    """The ``preexec_fn`` (runs in the child before ``exec``): own session, cgroup, resource limits. What the
    kernel refuses is written to stderr as a marker line, read back by the parent."""

    def setup() -> None:
        os.setsid()
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        cpu = math.ceil(limits.cpu_s)  # whole seconds; never 0 (which would stop the program at once)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = int(limits.memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        size = int(limits.file_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if cgroup is None:
            if os.geteuid() == 0:
                os.write(2, (_MARK + "processes\n").encode())
            n = _processes_of(os.getuid()) + int(limits.max_processes)  # the limit counts all of the user's
            resource.setrlimit(resource.RLIMIT_NPROC, (n, n))

    return setup


def _processes_of(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _new_pids_cgroup(limit: int) -> Path | None:
    """A fresh pids cgroup (v1 or v2 hierarchy) capped at ``limit`` processes, or None if not permitted."""
    for base in (_PIDS_CGROUP, Path("/sys/fs/cgroup")):
        if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
            continue
        path = base / f"lmopt-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(limit))
            return path
        except OSError:
            try:
                path.rmdir()
            except OSError:
                pass
    return None


def _remove_cgroup(path: Path) -> None:
    for _ in range(50):  # kill what is left (a fork bomb's children), then remove the empty group
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    try:
        path.rmdir()
    except OSError:
        pass


def run_sandboxed(code: str, limits: SandboxLimits | None = None, *, isolate_network: bool = True
                  ) -> SandboxResult:
    """Run ``code`` (a Python program that sets ``result``) in a limited subprocess; never raises for what the
    program does (errors, timeouts and limits come back in the :class:`SandboxResult`).

    The program runs on this interpreter, so it sees the solver packages installed here. Linux only
    (namespaces, Landlock, ``/proc``). ``isolate_network=False`` skips the namespaces (and so also shares
    ``/proc``): for programs that must reach a licence server.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str holding a Python program, got {type(code).__name__}")
    if not sys.platform.startswith("linux"):
        raise OSError("run_sandboxed needs Linux (resource limits, namespaces, Landlock)")
    limits = limits or SandboxLimits()
    token = secrets.token_hex(16)
    cgroup = _new_pids_cgroup(int(limits.max_processes))
    try:
        with tempfile.TemporaryDirectory(prefix="lmopt-sandbox-") as tmp:
            work = Path(tmp)
            (work / "program.py").write_text(code, encoding="utf-8")
            (work / "runner.py").write_text(_RUNNER, encoding="utf-8")
            env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
                   "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            prefix = _namespace_prefix() if isolate_network else []
            cmd = [*prefix, sys.executable, "-I", "-B", str(work / "runner.py"), str(work / "program.py"), str(work)]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                    preexec_fn=_child_setup(limits, cgroup))
            try:
                out, err = proc.communicate(token + "\n", timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                out, err = proc.communicate()
                timed_out = True
            _kill_group(proc.pid)  # children the program left behind
            seconds = time.perf_counter() - t0
    finally:
        if cgroup is not None:
            _remove_cgroup(cgroup)
    refused = {m for m in ("filesystem", "processes") if f"{_MARK}{m}\n" in err}
    for m in refused:
        err = err.replace(f"{_MARK}{m}\n", "")
    isolation = {"network": bool(prefix), "proc": "private" if prefix else "shared",
                 "filesystem": "filesystem" not in refused,
                 "processes": "cgroup" if cgroup is not None else ("rlimit" if "processes" not in refused else None)}
    value, has = None, False
    kept = []
    for line in out.splitlines():
        if line.startswith(token + " "):
            envelope = json.loads(line[len(token) + 1:])
            value, has = envelope["value"], envelope["set"]
            if "error" in envelope:
                err += envelope["error"] + "\n"
        else:
            kept.append(line)
    cpu_out = f"{_MARK}cpu time left\n" in err and proc.returncode == _CPU_EXIT  # the runner's handler
    err = err.replace(f"{_MARK}cpu time left\n", "")
    # unshare passes a signal that killed the program on by re-raising it, which fails for some signals
    signalled = proc.returncode < 0 or "unshare: sigprocmask unblock failed" in err
    if timed_out:
        status = "timeout"
    elif cpu_out:
        status = "cpu_limit"
    elif proc.returncode == 0:
        status = "ok"
    elif signalled:
        status = "killed"
    else:
        status = "error"
    stdout = "\n".join(kept).strip("\n")
    return SandboxResult(status, value, has, proc.returncode, stdout[-_OUTPUT_CHARS:], err[-_OUTPUT_CHARS:],
                         seconds, isolation, limits)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
