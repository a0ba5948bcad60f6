"""Search spaces in prompts: how configurations are written, read back, repaired and rejected."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution as C
from optuna.distributions import FloatDistribution as F
from optuna.distributions import IntDistribution as I

from lmopt.bo import check_space, describe_space, format_config, parse_config
from lmopt.bo.space import config_key, decimals

SPACE = {"depth": I(1, 15), "frac": F(0.0, 0.5), "lr": F(1e-4, 10.0, log=True), "kind": C(["gini", "entropy"]),
         "step": F(0.0, 1.0, step=0.25)}


def test_values_are_written_with_the_decimals_of_the_lower_bound_and_at_least_two():
    assert decimals(SPACE["frac"]) == 2  # released rule: 0 decimals, every value would print as "0"
    assert decimals(SPACE["lr"]) == 4
    assert decimals(SPACE["step"]) == 2
    text = format_config({"depth": 7, "frac": 0.314159, "lr": 0.00123, "kind": "gini", "step": 0.75}, SPACE)
    assert text == "depth: 7, frac: 0.31, lr: 0.0012, kind: gini, step: 0.75"
    assert format_config({"depth": 7, "frac": 0.3, "lr": 1.0, "kind": "gini", "step": 0.0}, SPACE,
                         sep=" is ").startswith("depth is 7, frac is 0.30")


def test_the_space_description_names_ranges_types_and_choices():
    text = describe_space(SPACE)
    assert "- depth: [1, 15] (int)" in text
    assert "- frac: [0.00, 0.50] (float, precise to 2 decimals)" in text
    assert "- lr: [0.0001, 10.0000] (float, precise to 4 decimals, log scale)" in text
    assert "- kind: one of [gini, entropy] (categorical)" in text
    assert "multiple of 0.25 from 0.00" in text


@pytest.mark.parametrize("text", [
    "## depth: 7, frac: 0.31, lr: 0.0012, kind: gini, step: 0.75 ##",
    "Sure! ## depth: 7, frac: 0.31, lr: 0.0012, kind: gini, step: 0.75 ## hope it helps",
    '{"depth": 7, "frac": 0.31, "lr": 0.0012, "kind": "gini", "step": 0.75}',
    "kind = gini, step = 0.75, depth = 7, lr = 1.2e-3, frac = 0.31",
])
def test_tolerant_parsing_of_the_format(text):
    p = parse_config(text, SPACE)
    assert p.params == {"depth": 7, "frac": 0.31, "lr": 0.0012, "kind": "gini", "step": 0.75}
    assert p.repaired == ()


def test_repairs_only_where_the_meaning_is_certain():
    p = parse_config("## Depth: 7.0, frac: 0.31, lr: 0.0012, kind: GINI, step: 0.7500000001 ##", SPACE)
    assert p.params == {"depth": 7, "frac": 0.31, "lr": 0.0012, "kind": "gini", "step": 0.75}
    assert isinstance(p.params["depth"], int)
    assert set(p.repaired) == {"Depth->depth", "depth", "kind", "step"}


@pytest.mark.parametrize("text, reason", [
    ("## depth: 16, frac: 0.31, lr: 0.01, kind: gini, step: 0.5 ##", "out of space: depth 16 is outside [1, 15]"),
    ("## depth: 7.5, frac: 0.31, lr: 0.01, kind: gini, step: 0.5 ##", "out of space: depth 7.5 is not an integer"),
    ("## depth: 7, frac: 0.6, lr: 0.01, kind: gini, step: 0.5 ##", "out of space: frac 0.6 is outside [0, 0.5]"),
    ("## depth: 7, frac: 0.3, lr: 0.01, kind: log_loss, step: 0.5 ##", "out of space: kind 'log_loss' is not one"),
    ("## depth: 7, frac: 0.3, lr: 0.01, kind: gini, step: 0.6 ##", "out of space: step 0.6 is not a multiple"),
    ("## depth: 7, frac: 0.3, lr: nan, kind: gini, step: 0.5 ##", "out of space: lr 'nan' is not a number"),
    ("## depth: 7, frac: 0.3, kind: gini, step: 0.5 ##", "missing lr"),
    ("## depth: 7, frac: 0.3, lr: 0.01, kind: gini, step: 0.5, gamma: 2 ##", "unknown parameter 'gamma'"),
    ("## depth: 7, depth: 8, frac: 0.3, lr: 0.01, kind: gini, step: 0.5 ##", "parameter 'depth' given twice"),
    ("I cannot help with that.", "unparseable"),
])
def test_invalid_values_are_rejected_with_the_reason_never_clipped(text, reason):
    p = parse_config(text, SPACE)
    assert p.params is None
    assert p.reason.startswith(reason), p.reason


def test_numeric_categorical_choices_and_duplicate_identity():
    space = {"n": C([16, 32, 64]), "x": F(0.0, 1.0)}
    assert parse_config("n: 32.0, x: 0.5", space).params == {"n": 32, "x": 0.5}
    a = config_key({"n": 32, "x": 0.123456789}, space)
    assert a == config_key({"n": 32, "x": 0.1234567891}, space)  # 8 decimals, as the released filter
    assert a != config_key({"n": 32, "x": 0.1234567}, space)


def test_unsupported_spaces_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="non-empty mapping"):
        check_space({})
    with pytest.raises(ValueError, match="cannot be written in a prompt"):
        check_space({"a b": F(0, 1)})
    with pytest.raises(ValueError, match="unsupported distribution"):
        check_space({"a": object()})
