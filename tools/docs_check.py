"""Run every complete Python example in README.md and docs/*.md and report how long each takes.

    python tools/docs_check.py [--limit 60] [--timeout 600] [--only README.md] [--out runs/docs-check]

A block is *complete* when every name it reads is imported or assigned in the block itself and it has no
``...`` placeholder; such a block is run as written, in its own ``python -I`` process in a fresh temporary
directory with an empty LM call cache, and must exit 0 within ``--limit`` seconds, or within 1.5x the time a
leading ``# runtime: about N min`` comment declares (an example that says how long it takes and prints its
progress). Other blocks are API fragments that read the
reader's own objects (``model``, ``ds``, ...): they are listed with those names and not run. So is a block
whose first line is a ``# needs: ...`` comment (a key or a server the example cannot run without). The exit status
is 1 when any complete block fails or runs past the limit. ``make docs-check`` calls this.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^[ \t]*```python\n(.*?)^[ \t]*```", re.S | re.M)


@dataclass
class Block:
    doc: str
    index: int
    line: int  # 1-based line of the opening fence
    source: str
    free_names: list[str] = field(default_factory=list)
    has_ellipsis: bool = False

    def _marker(self, key: str) -> str:
        """The value of a ``# key: value`` comment among the block's leading comment lines."""
        for line in self.source.lstrip().splitlines():
            if not line.startswith("#"):
                break
            if line.startswith(f"# {key}:"):
                return line.split(":", 1)[1].strip()
        return ""

    @property
    def needs(self) -> str:
        return self._marker("needs")

    def limit(self, default: float) -> float:
        """``# runtime: about N s`` (or ``N min``) declares a longer run; it may take up to 1.5x the stated time."""
        m = re.fullmatch(r"(?:about\s+)?(\d+(?:\.\d+)?)\s*(s|min)\b.*", self._marker("runtime"))
        if not m:
            return default
        return 1.5 * float(m.group(1)) * (60 if m.group(2) == "min" else 1)

    @property
    def complete(self) -> bool:
        return not self.free_names and not self.has_ellipsis and not self.needs


def _bound_names(tree: ast.AST) -> set[str]:
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def analyse(source: str) -> tuple[list[str], bool]:
    """(names read but never bound in the block, whether it contains an ``...`` placeholder)."""
    tree = ast.parse(source)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    free = sorted(read - _bound_names(tree) - set(dir(builtins)))
    ellipsis = any(isinstance(n, ast.Constant) and n.value is Ellipsis for n in ast.walk(tree))
    return free, ellipsis


def blocks_of(path: Path, root: Path = ROOT) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    out = []
    for i, m in enumerate(_BLOCK.finditer(text)):
        source = textwrap.dedent(m.group(1))
        free, ellipsis = analyse(source)
        out.append(Block(str(path.relative_to(root)), i, text[:m.start()].count("\n") + 1, source, free, ellipsis))
    return out


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _cold_call_cache(tmp: Path) -> Path:
    """An lmopt cache folder without the LM call cache: the converted model files are shared with the user's
    cache (converting them is a one-off), but every LM call of an example is made afresh, as on first use."""
    from lmopt.assets import cache_dir

    real = cache_dir()
    cache = tmp / "lmopt-cache"
    cache.mkdir()
    if real.is_dir():
        for entry in real.iterdir():
            if not entry.name.startswith("calls.sqlite"):
                (cache / entry.name).symlink_to(entry.resolve())
    return cache


def run_block(block: Block, timeout: float) -> dict:
    """Run one block in an isolated interpreter; returns status ('ok', 'failed', 'timeout'), seconds, output tail."""
    with tempfile.TemporaryDirectory(prefix="lmopt-docs-") as tmp:
        script = Path(tmp) / "example.py"
        script.write_text(block.source, encoding="utf-8")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LMOPT_CACHE": str(_cold_call_cache(Path(tmp)))}
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return {"status": "timeout", "seconds": time.perf_counter() - start, "output": out[-2000:]}
        seconds = time.perf_counter() - start
        output = (proc.stdout + proc.stderr)[-2000:]
        return {"status": "ok" if proc.returncode == 0 else "failed", "seconds": seconds, "output": output,
                "returncode": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=60.0, help="seconds a complete example may take (default 60)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds after which an example is killed")
    ap.add_argument("--only", action="append", default=[], help="check only these documents (repeatable)")
    ap.add_argument("--out", default="runs/docs-check", help="folder for results.json")
    args = ap.parse_args(argv)
    docs = [ROOT / d for d in args.only] if args.only else documents()
    for d in docs:
        if not d.is_file():
            ap.error(f"no such document: {d}")
    rows, bad = [], 0
    for doc in docs:
        for b in blocks_of(doc):
            where = f"{b.doc}:{b.line}"
            if not b.complete:
                reads = ", ".join(b.free_names + (["'...'"] if b.has_ellipsis else []))
                why = f"needs {b.needs}" if b.needs else f"reads {reads}"
                print(f"fragment  {where:<24} not run: {why}", flush=True)
                rows.append({**asdict(b), "needs": b.needs, "status": "fragment"})
                continue
            print(f"running   {where:<24} ...", flush=True)
            r = run_block(b, args.timeout)
            r["limit_s"] = b.limit(args.limit)
            over = r["status"] == "ok" and r["seconds"] > r["limit_s"]
            if r["status"] != "ok" or over:
                bad += 1
            verdict = "SLOW" if over else r["status"].upper() if r["status"] != "ok" else "ok"
            print(f"{verdict:<9} {where:<24} {r['seconds']:7.1f} s (limit {r['limit_s']:.0f} s)", flush=True)
            if r["status"] != "ok":
                print(textwrap.indent(r["output"].rstrip(), "    | "), flush=True)
            rows.append({**asdict(b), **r})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"limit_s": args.limit, "load_average": os.getloadavg(),
                                                  "blocks": rows}, indent=2), encoding="utf-8")
    ran = [r for r in rows if r["status"] != "fragment"]
    print(f"{len(ran)} examples run, {len(rows) - len(ran)} fragments listed, {bad} failed or over their time "
          f"limit; load average {os.getloadavg()[0]:.2f}; details in {out / 'results.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
