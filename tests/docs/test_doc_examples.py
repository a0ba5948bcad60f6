"""Every Python block of README.md and docs/*.md runs as written, each in a fresh interpreter and folder with a
cold call cache (``tools/docs_check.py`` does the running; ``make docs-check`` also reports times).

A block whose first lines say ``# needs: VAR ...`` runs only when the environment variable ``VAR`` is set.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import docs_check  # noqa: E402

BLOCKS = [b for doc in docs_check.documents(ROOT) for b in docs_check.blocks_of(doc, ROOT)]


@pytest.fixture(scope="module", autouse=True)
def converted_model():
    """Convert the embedded SmolLM2 once into the user's cache: every example's cold cache links to it."""
    from lmopt.assets import smollm2_dir

    smollm2_dir()


def test_every_block_is_complete_or_names_what_it_needs():
    fragments = [f"{b.doc}:{b.line} reads {b.free_names + (['...'] if b.has_ellipsis else [])}"
                 for b in BLOCKS if not b.needs and not b.complete]
    assert not fragments, "examples a reader cannot run as written:\n" + "\n".join(fragments)
    for b in BLOCKS:
        if b.needs:
            assert re.match(r"[A-Z][A-Z0-9_]+\b", b.needs), f"{b.doc}:{b.line}: '# needs:' must start with a variable"


@pytest.mark.docs
@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.doc}:{b.line}" for b in BLOCKS])
def test_block_runs_as_written(block, monkeypatch):
    if block.needs:
        var = block.needs.split()[0]
        if not os.environ.get(var):
            pytest.skip(f"${var} is unset")
    elif block.free_names or block.has_ellipsis:
        pytest.fail(f"a fragment: reads {block.free_names}")  # reported by the test above as well
    if "init_process_group" in block.source:  # a one-process group, as torchrun would set it up
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
            monkeypatch.setenv(k, v)
    result = docs_check.run_block(block, timeout=900)
    assert result["status"] == "ok", result["output"]
