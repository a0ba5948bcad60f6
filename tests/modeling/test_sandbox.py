"""The sandbox that runs model-written programs: each escape attempt is contained and reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmopt.modeling.sandbox import SandboxLimits, run_sandboxed

FAST = SandboxLimits(timeout_s=4, cpu_s=1, memory_mb=512, file_mb=1, max_processes=8)


def run(code: str, **kw):
    return run_sandboxed(code, kw.pop("limits", FAST), **kw)


def test_a_program_reports_its_result_and_output():
    r = run("print('solving')\nresult = {'status': 'optimal', 'objective': 3.5, 'x': [1, 2]}")
    assert r.ok and r.has_result and r.result == {"status": "optimal", "objective": 3.5, "x": [1, 2]}
    assert r.stdout == "solving"
    assert r.isolation["filesystem"] and r.isolation["network"] and r.isolation["proc"] == "private"


def test_a_printed_fake_result_line_is_not_the_result():
    r = run("print('RESULT {\"objective\": 999}')\nprint('0' * 32 + ' {\"objective\": 999}')\nresult = 1")
    assert r.result == 1 and "999" in r.stdout
    assert not run("print('{\"objective\": 999}')").has_result


def test_an_exception_is_an_error_with_its_traceback():
    r = run("def f():\n    return 1 / 0\nf()")
    assert r.status == "error" and "ZeroDivisionError" in r.error_summary()


def test_an_infinite_loop_stops_at_the_cpu_limit():
    r = run("while True:\n    pass")
    assert r.status == "cpu_limit" and "CPU limit of 1 s" in r.error_summary()


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit():
    r = run("import time\ntime.sleep(60)", limits=SandboxLimits(timeout_s=1, cpu_s=5))
    assert r.status == "timeout" and r.seconds < 30


def test_a_memory_bomb_fails_inside_the_sandbox():
    r = run("x = bytearray(3_000_000_000)")
    assert r.status == "error" and "MemoryError" in r.stderr


def test_a_fork_bomb_is_capped_and_killed():
    code = ("import os\nn = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n            pass\n"
            "        n += 1\n    except OSError:\n        break\nprint('capped after', n)\nresult = n")
    r = run(code, limits=SandboxLimits(timeout_s=2, cpu_s=1, max_processes=8))
    assert r.status in ("ok", "timeout", "cpu_limit")
    assert r.isolation["processes"] in ("cgroup", "rlimit")
    if r.has_result:
        assert r.result < 8


def test_writes_outside_its_folder_are_refused_and_inside_allowed(tmp_path):
    target = tmp_path / "escape.txt"
    r = run(f"open({str(target)!r}, 'w').write('x')")
    assert r.status == "error" and "PermissionError" in r.stderr and not target.exists()
    r = run("open('notes.txt', 'w').write('abc')\nresult = open('notes.txt').read()")
    assert r.result == "abc"


def test_a_huge_file_stops_at_the_file_size_limit():
    r = run("open('big.bin', 'wb').write(b'x' * 5_000_000)")
    assert r.status == "error" and "File too large" in r.stderr


def test_the_callers_secrets_are_out_of_reach():
    # the secret must be in the caller's environment from its start: /proc/<pid>/environ shows only that
    import json
    import subprocess
    import sys

    probe = ("import os, glob\nfound = []\n"
             "for p in glob.glob('/proc/[0-9]*/environ'):\n"
             "    try:\n        found.append(open(p, 'rb').read().decode(errors='replace'))\n"
             "    except OSError:\n        pass\n"
             "result = {'env': dict(os.environ), 'proc': found}")
    caller = ("import json, sys\nfrom lmopt.modeling.sandbox import SandboxLimits, run_sandboxed\n"
              "r = run_sandboxed(sys.stdin.read(), SandboxLimits(timeout_s=10))\nprint(json.dumps(r.result))")
    out = subprocess.run([sys.executable, "-c", caller], input=probe, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LMOPT_TEST_SECRET": "topsecret-1234"}, check=True).stdout
    seen = json.loads(out)
    assert seen["proc"] and "topsecret-1234" not in out  # its own /proc entries only
    assert set(seen["env"]) <= {"PATH", "HOME", "LANG", "PYTHONHASHSEED", "OMP_NUM_THREADS",
                                "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}


def test_no_network():
    r = run("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.sendto(b'x', ('192.0.2.1', 9))\nresult = 'sent'")  # UDP: Landlock does not cover it
    assert r.status == "error" and "unreachable" in r.stderr.lower()
    r = run("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=1)")
    assert r.status == "error"


def test_the_folder_is_removed_and_nothing_is_left_running():
    r = run("import os, subprocess\nsubprocess.Popen(['sleep', '30'])\nresult = os.getcwd()")
    assert r.ok and not Path(r.result).exists()
    lingering = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == "sleep\x0030\x00"]
    assert not lingering


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_bad_arguments():
    with pytest.raises(TypeError, match="Python program"):
        run_sandboxed(b"result = 1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        SandboxLimits(timeout_s=0)


def test_a_result_that_is_not_json_is_reported():
    r = run("result = {1, 2}")
    assert r.has_result and r.result is None and "result is not JSON: set" in r.stderr
