"""`lmopt run` / recipes: validation errors, a full run on a scripted model, resume, and the CLI."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from lmopt import runner
from lmopt.cli import app
from lmopt.lm import LM, Budget, ScriptedBackend
from lmopt.recipe import RecipeError, load_recipe, recipe_id

RECIPE = {
    "name": "t", "kind": "evaluate", "seed": 0, "cache": False,
    "task": {"name": "tweets", "kwargs": {"per_class": 10}, "split": {"n_train": 6, "n_test": 12}},
    "prompts": [{"name": "zero", "instruction": "Classify."}, {"name": "two-shot", "n_exemplars": 2}],
}


@pytest.fixture
def scripted(monkeypatch):
    backend = ScriptedBackend(lambda p, c, j: "", score_fn=lambda p, c: -1.0 if "positive" in c else -2.0)

    def fake_make_lm(spec, cache=True, budget=None, meter=None):
        return LM(backend, budget=Budget.from_dict(budget) if budget else None)

    monkeypatch.setattr("lmopt.lm.factory.make_lm", fake_make_lm)
    return backend


def test_evaluate_recipe_writes_results_report_plot_and_resumes(tmp_path, scripted):
    run_dir = runner.run_recipe(RECIPE, tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    assert [r["name"] for r in res["prompts"]] == ["zero", "two-shot"]
    # the scripted model always says "positive": accuracy = share of positives in the stratified test split
    assert res["prompts"][0]["accuracy"] == pytest.approx(4 / 12)
    assert res["prompts"][0]["details"]["prediction_counts"]["positive"] == 12
    assert len(res["prompts"][1]["prompt"]["exemplars"]) == 2
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    acc, cost = json.loads((run_dir / "accuracy.plot.json").read_text())["panels"]
    assert acc["ylim"] == [0, 1] and [b["height"] for b in acc["bars"]] == pytest.approx([4 / 12, 4 / 12])
    (chance,) = [ln for ln in acc["lines"] if ln["label"].startswith("chance")]
    assert chance["y"] == pytest.approx(res["chance"])
    assert acc["texts"] == ["0.333", "0.333"] and "n=12" in acc["ylabel"] and cost["ylabel"].startswith("tokens")
    assert "| zero | 0.333 |" in (run_dir / "report.md").read_text()
    calls = scripted.calls
    assert calls == 2 * 12 * 3
    runner.run_recipe(RECIPE, tmp_path)  # resume: everything is in the checkpoint
    assert scripted.calls == calls


def test_resume_after_interruption_redoes_only_missing_prompts(tmp_path, scripted):
    run_dir = tmp_path / recipe_id(RECIPE)
    runner.run_recipe(RECIPE, tmp_path)
    ckpt = json.loads((run_dir / "checkpoint.json").read_text())
    del ckpt["prompts"]["two-shot"]  # as if killed after the first prompt
    (run_dir / "checkpoint.json").write_text(json.dumps(ckpt))
    before = scripted.calls
    runner.run_recipe(RECIPE, tmp_path)
    assert scripted.calls - before == 12 * 3


@pytest.mark.parametrize("mutate, msg", [
    (lambda r: r.update(kind="train"), "kind 'train' is not known"),
    (lambda r: r.update(promts=[]), "promts"),
    (lambda r: r["prompts"].append({"name": "zero"}), "prompt names must be unique"),
    (lambda r: r["prompts"][0].update(n_exemplars=99), "wants 99 exemplars"),
    (lambda r: r["task"].update(name="imdb"), "unknown task 'imdb'"),
])
def test_invalid_recipes_are_rejected_with_the_reason(tmp_path, scripted, mutate, msg):
    bad = json.loads(json.dumps(RECIPE))
    mutate(bad)
    with pytest.raises((RecipeError, ValueError), match=msg):
        runner.run_recipe(bad, tmp_path)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_cli_run_and_error_exit_codes(tmp_path, scripted):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    cli = CliRunner()
    ok = cli.invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "runs" / recipe_id(RECIPE) / "results.json").exists()
    # A path far wider than any terminal: the message must keep it (and the reason) on one line, unbroken.
    missing = tmp_path / ("deep-" * 40) / "[missing].yaml"
    bad = cli.invoke(app, ["run", str(missing)])
    assert bad.exit_code == 2
    assert f"recipe {str(missing)!r} does not exist" in bad.output, bad.output


def test_packaged_demo_recipes_are_valid():
    from lmopt.optim_recipe import validate_optim_recipe
    from lmopt.prompt.recipe import validate_prompt_compare

    optim, prompt = (load_recipe(p) for p in runner.demo_recipes())
    assert [o.name for o in validate_optim_recipe(optim).optimizers] == ["AdamW", "Muon"]
    compare = validate_prompt_compare(prompt)
    assert compare.task.name == "last_letter" and [m.name for m in compare.methods] == ["random", "ease"]


def test_resumed_evaluate_run_keeps_the_usage_of_the_interrupted_one(tmp_path, scripted, monkeypatch):
    score = scripted.score

    def dies_on_the_second_prompt(prompts, conts):
        if scripted.calls >= 12 * 3:
            raise KeyboardInterrupt
        return score(prompts, conts)

    monkeypatch.setattr(scripted, "score", dies_on_the_second_prompt)
    with pytest.raises(KeyboardInterrupt):
        runner.run_recipe(RECIPE, tmp_path)
    monkeypatch.setattr(scripted, "score", score)
    resumed = json.loads((runner.run_recipe(RECIPE, tmp_path) / "results.json").read_text())["usage"]["total"]
    assert scripted.calls == resumed["calls"] == 2 * 12 * 3  # the first prompt's calls were not forgotten


def test_resumed_evaluate_run_is_held_to_the_budget_already_spent(tmp_path, scripted):
    cfg = {**RECIPE, "budget": {"task": {"calls": 2 * 12 * 3 - 1}}}
    run_dir = tmp_path / recipe_id(cfg)
    with pytest.raises(Exception, match="budget"):
        runner.run_recipe(cfg, tmp_path)  # the second prompt would exceed the limit
    assert list(json.loads((run_dir / "checkpoint.json").read_text())["prompts"]) == ["zero"]
    with pytest.raises(Exception, match="budget"):  # a fresh process must not get a fresh budget
        runner.run_recipe(cfg, tmp_path)


def test_info_prints_whole_asset_paths_on_a_narrow_terminal(monkeypatch, tmp_path):
    from lmopt import assets

    long_path = str(tmp_path / ("very-long-folder-name-" * 6) / "model.gguf")
    monkeypatch.setattr(assets, "available", lambda: {"smollm2": long_path, "minilm": None})
    monkeypatch.setenv("COLUMNS", "40")
    out = CliRunner().invoke(app, ["info"])
    assert out.exit_code == 0, out.output
    assert long_path in out.output  # one piece, neither cut nor wrapped
    assert "asset minilm" in out.output and "missing (run `make setup`)" in out.output


def test_written_files_follow_the_umask(tmp_path):
    import os

    from lmopt._io import write_json_atomic

    old = os.umask(0o022)
    try:
        mode = write_json_atomic(tmp_path / "a.json", {"x": 1}).stat().st_mode & 0o777
        os.umask(0o077)
        private = write_json_atomic(tmp_path / "b.json", {"x": 1}).stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert (mode, private) == (0o644, 0o600)


def test_generate_results_keep_samples_and_the_report_states_chance_and_noise(tmp_path, monkeypatch):
    backend = ScriptedBackend(lambda p, c, j: " positive, I think")
    monkeypatch.setattr("lmopt.lm.factory.make_lm", lambda spec, cache=True, budget=None, meter=None: LM(backend))
    recipe = {**RECIPE, "prompts": [{"name": "gen", "instruction": "Classify.", "mode": "generate"}]}
    run_dir = runner.run_recipe(recipe, tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    assert res["chance"] == pytest.approx(4 / 12)  # stratified: each label is a third of the test split
    samples = res["prompts"][0]["samples"]
    assert len(samples) == runner.N_SAMPLES
    assert all(s["output"] == " positive, I think" and s["input"] for s in samples)
    assert [s["score"] for s in samples] == [float(s["target"] == s["prediction"]) for s in samples]
    report = (run_dir / "report.md").read_text()
    assert "Chance level (always the most common test label): 0.333" in report
    assert "one binomial standard error at n=12 is up to ±0.136" in report  # sqrt(1/3 * 2/3 / 12)
    assert "' positive, I think'" in report


def test_an_all_zero_accuracy_chart_shows_its_zeros(tmp_path, monkeypatch):
    backend = ScriptedBackend(lambda p, c, j: " no idea")
    monkeypatch.setattr("lmopt.lm.factory.make_lm", lambda spec, cache=True, budget=None, meter=None: LM(backend))
    recipe = {**RECIPE, "prompts": [{"name": "gen", "instruction": "Classify.", "mode": "generate"}]}
    run_dir = runner.run_recipe(recipe, tmp_path)
    acc = json.loads((run_dir / "accuracy.plot.json").read_text())["panels"][0]
    assert [b["height"] for b in acc["bars"]] == [0.0] and acc["texts"] == ["0.000"] and acc["ylim"] == [0, 1]


def test_score_axes_stay_0_to_1_and_other_metrics_include_zero():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmopt._report import score_ylim

    fig, (a, b) = plt.subplots(1, 2)
    a.plot([0, 1], [0.0, 0.0016])
    score_ylim(a, [0.0, 0.0016])  # noise on a tiny scale must not look like a jump
    b.plot([0, 1], [-3.0, -2.0])
    score_ylim(b, [-3.0, -2.0])
    assert a.get_ylim() == (0, 1) and b.get_ylim()[0] <= -3.0 and b.get_ylim()[1] >= 0.0
    plt.close(fig)


def test_noise_level_is_the_binomial_standard_error():
    assert runner.noise_level(0.5, 100) == pytest.approx(0.05)
    assert runner.noise_level(0.0, 25) == pytest.approx((1 / 25 * 24 / 25 / 25) ** 0.5)  # never a zero error bar


def _write(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_an_invalid_recipe_leaves_no_run_directory_and_loads_no_model(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr("lmopt.lm.factory.make_lm", lambda *a, **k: loaded.append(1))
    bad = json.loads(json.dumps(RECIPE))
    bad["budget"] = {"task": {"calls": -5}}
    out = cli_run(tmp_path, bad, "--id", "same")
    assert out.exit_code == 2 and "budget limit calls must be a non-negative int" in out.output
    assert not (tmp_path / "runs" / "same").exists() and not loaded
    bad["budget"] = {"task": {"cals": 5}}
    assert "unknown budget limit(s) ['cals']" in cli_run(tmp_path, bad, "--id", "same").output


def test_a_corrected_recipe_runs_under_the_id_of_a_failed_one(tmp_path, scripted):
    bad = json.loads(json.dumps(RECIPE))
    bad["task"]["kwargs"] = {"per_class": -1}  # valid recipe, the task loader rejects it
    out = cli_run(tmp_path, bad, "--id", "same")
    assert out.exit_code == 2 and "per_class must be a positive int" in out.output
    assert "Traceback" not in out.output and out.output.count("error:") == 1
    assert not (tmp_path / "runs" / "same").exists()
    ok = cli_run(tmp_path, RECIPE, "--id", "same")
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("field, value, msg", [
    ("model", {"backend": "openai"}, "backend 'openai' needs id"),
    ("model", {"backend": "local", "timeout": 5}, "timeout only apply to backend 'openai'"),
    ("model", {"backend": "replay", "replay_path": "x.jsonl"}, "needs replay_path and replay_name"),
])
def test_model_sections_are_checked_before_anything_runs(tmp_path, field, value, msg):
    bad = {**json.loads(json.dumps(RECIPE)), field: value}
    out = cli_run(tmp_path, bad)
    assert out.exit_code == 2 and msg in out.output, out.output


def test_a_server_failure_is_one_error_line_with_the_resume_hint(tmp_path, monkeypatch):
    from lmopt.lm.openai_compat import LMConnectionError

    def down(p, c, j):
        raise LMConnectionError("cannot reach POST /v1/completions on openai:m@127.0.0.1:9; is the server running?")

    backend = ScriptedBackend(down)
    monkeypatch.setattr("lmopt.lm.factory.make_lm", lambda *a, **k: LM(backend))
    recipe = {**json.loads(json.dumps(RECIPE)), "prompts": [{"name": "g", "mode": "generate"}]}
    out = cli_run(tmp_path, recipe)
    assert out.exit_code == 1 and "Traceback" not in out.output
    (line,) = [ln for ln in out.output.splitlines() if ln.startswith("error:")]
    assert "LMConnectionError: cannot reach" in line and "run the same command again to resume" in line


def test_openai_model_options_reach_the_backend(monkeypatch):
    from lmopt.lm.factory import make_lm
    from lmopt.recipe import ModelSpec

    spec = ModelSpec(backend="openai", id="m", base_url="http://127.0.0.1:9/v1", split_n=True,
                     max_concurrency=3, timeout=7.5, max_retries=1)
    b = make_lm(spec.model_dump(), cache=False).backend
    assert (b.split_n, b.max_concurrency, b.timeout, b.max_retries) == (True, 3, 7.5, 1)


def test_version_option():
    from lmopt import __version__

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"lmopt {__version__}"


def cli_run(tmp_path, recipe, *args):
    return CliRunner().invoke(app, ["run", str(_write(tmp_path, recipe)), "--out", str(tmp_path / "runs"), *args])


def test_the_report_of_an_open_ended_task_says_it_has_no_chance_level(tmp_path, scripted):
    recipe = {**json.loads(json.dumps(RECIPE)), "prompts": [{"name": "g", "mode": "generate"}],
              "task": {"name": "arithmetic", "kwargs": {"size": 30, "seed": 0}, "split": {"n_train": 0, "n_test": 5}}}
    run_dir = runner.run_recipe(recipe, tmp_path)
    assert "Chance level: none for open-ended answers" in (run_dir / "report.md").read_text()
