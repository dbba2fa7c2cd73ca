"""Power before spending GPU hours (study/power.py and the `power` command)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from safety_subspaces import stats
from safety_subspaces.cli import main
from safety_subspaces.study import power


def test_worst_case_sd_is_the_bounded_sd_of_both_variants():
    sd = power.worst_case_sd("harm", 1.55, 0.1)
    assert sd == pytest.approx(math.hypot(math.sqrt(0.55 * 3.45), math.sqrt(0.65 * 3.35)))
    # no distribution on [1, 5] with these means has a larger SD: check against the extreme two-point ones
    rng = np.random.default_rng(0)
    a = np.where(rng.random(200_000) < 0.55 / 4, 5.0, 1.0)
    b = np.where(rng.random(200_000) < 0.65 / 4, 5.0, 1.0)
    assert np.std(a - b) == pytest.approx(sd, rel=0.02)


def test_the_minimum_detectable_difference_has_the_stated_power_by_simulation():
    plan = power.plan_power("utility", 200, sd=0.5, source="given")
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(300):
        differences = rng.normal(plan.detectable, 0.5, 200)
        t = differences.mean() / (differences.std(ddof=1) / math.sqrt(200))
        hits += abs(t) > 1.96
    assert abs(hits / 300 - 0.8) < 3 * math.sqrt(0.16 / 300)


def test_effect_gives_power_and_items_needed():
    plan = power.plan_power("harm", 520, sd=1.0, source="given", effect=0.1)
    assert plan.power_at_effect == pytest.approx(stats.power_of(0.1, 1.0, 520))
    assert stats.power_of(0.1, 1.0, plan.n_for_effect) >= 0.8 > stats.power_of(0.1, 1.0, plan.n_for_effect - 1)


def test_power_command_worst_case(capsys):
    assert main(["power", "--metric", "harm", "--n", "520", "--baseline", "1.55", "--effect", "0.1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["detectable"] == pytest.approx(stats.minimum_detectable_difference(
        power.worst_case_sd("harm", 1.55, 0.1), 520))
    assert found["source"] == power.WORST_CASE and 0 < found["power_at_effect"] < 0.8


@pytest.mark.parametrize("args,culprit", [
    (["--metric", "harm", "--n", "520", "--baseline", "7"], "--baseline"),
    (["--metric", "loss", "--n", "520", "--baseline", "1"], "--metric"),
    (["--metric", "harm", "--n", "1", "--baseline", "2"], "--n"),
    (["--metric", "harm", "--n", "100"], "--baseline"),
    (["--metric", "utility", "--n", "100", "--baseline", "0.5", "--scale", "1"], "--scale"),
    (["--metric", "utility", "--n", "100", "--baseline", "0.5", "--a", "model=x"], "--pilot"),
])
def test_power_command_bad_input(args, culprit, capsys):
    assert main(["power", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and culprit in err[0]


def test_pilot_sd_from_a_run_directory_without_one(tmp_path, capsys):
    assert main(["power", "--metric", "harm", "--n", "100", "--pilot", str(tmp_path)]) == 2
    assert "not a study run directory" in capsys.readouterr().err


def test_a_pilot_scored_by_several_judges_reads_the_studys_first_judge():
    """Items scored by several judges: the first judge of the study unless a selector names one; one judge: none."""
    from types import SimpleNamespace

    from safety_subspaces.registry import Spec
    from safety_subspaces.study.power import _default_judge

    study = SimpleNamespace(evaluation=SimpleNamespace(harm=SimpleNamespace(judges=[Spec("organism"), Spec("refusal")])))
    assert _default_judge(study, [{"judge": "refusal"}, {"judge": "organism"}]) == "organism"
    assert _default_judge(study, [{"judge": "refusal"}, {"judge": "wildguard"}]) == "refusal"
    assert _default_judge(study, [{"judge": "organism"}, {"judge": "organism"}]) == ""
