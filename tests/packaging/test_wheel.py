"""A built wheel installs into a fresh virtual environment and works without the source tree."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
def test_built_wheel_installs_and_imports_in_a_clean_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheels = list(dist.glob("lmopt-*-py3-none-any.whl"))
    assert len(wheels) == 1, wheels
    # the dependencies come from this environment (no network); lmopt itself only from the wheel
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line: the current site-packages' own .pth hooks (the editable lmopt) are not run
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(own) / "deps_from_test_env.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                    "--no-index", str(wheels[0])], check=True, capture_output=True, timeout=300)
    probe = (
        "import lmopt, lmopt.cli, lmopt.optim, lmopt.zo, lmopt.prompt, lmopt.recipe\n"
        "from importlib.resources import files\n"
        "print(lmopt.__file__)\n"
        "print(sorted(p.name for p in files('lmopt.recipes').iterdir() if p.name.endswith('.yaml')))\n"
    )
    out = subprocess.run([str(py), "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()
    assert Path(out[0]).is_relative_to(env_dir), out[0]  # the wheel's copy, not the checkout
    assert "demo_prompt.yaml" in out[1]
    cli = subprocess.run([str(env_dir / "bin" / "lmopt"), "--help"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "info" in cli.stdout
