"""The report's Reading states a conclusion only where its interval supports it (study/report/reading.py)."""

from __future__ import annotations

import pytest

from safety_subspaces import stats
from safety_subspaces.evaluate.comparisons import comparison_row, holm_adjust
from safety_subspaces.study.report.comparisons import change_is_resolved
from safety_subspaces.study.report.reading import change_sentence, control_sentences, overlap_reading


def row(family, estimate, low, high, p, *, statistic="share of change kept", b="random", at="energy kept 0.4 (ϱ = 0.25)"):
    found = comparison_row(family, f"top_k − {b}", stats.Comparison(estimate, low, high, p, 520), a="top_k", b=b,
                           statistic=statistic, at=at, finetune="harmful", scheme="parallel", metric="harm_score")
    return holm_adjust([found])[0]


def test_a_supported_difference_is_stated_with_its_interval_and_holm_p():
    lines = control_sentences("harm", [row("top_k vs controls", 0.12, 0.05, 0.19, 0.003)])
    assert lines == ["  top_k vs random at equal energy kept: top_k keeps 0.12 more of the harm score change than random "
                     "at ϱ = 0.25 (95 % CI [0.05, 0.19], p = 0.003 (Holm))."]


def test_an_interval_across_zero_reads_indistinguishable():
    lines = control_sentences("harm", [row("top_k vs controls", 0.01, -0.04, 0.06, 0.6)])
    assert lines == ["  top_k vs random at equal energy kept: indistinguishable at ϱ = 0.25 (95 % CI [-0.04, 0.06])."]
    # significant before correction, not after: still indistinguishable
    family = holm_adjust([row("f", 0.05, 0.001, 0.1, 0.03), row("f", 0.3, 0.1, 0.5, 0.02), row("f", 0, -1, 1, 0.5)])
    assert family[0]["p_holm"] == pytest.approx(0.06)
    assert control_sentences("harm", family[:1]) == [
        "  top_k vs random at equal energy kept: indistinguishable at ϱ = 0.25 (95 % CI [0.00, 0.10], not significant "
        "after Holm's correction)."]


def test_a_change_below_the_resolution_is_too_small_to_compare():
    small = row("change", 0.025, -0.01, 0.06, 0.2, statistic="difference")
    assert not change_is_resolved(small)
    sentence = change_sentence("utility of the contaminated fine-tune", "utility", small)
    assert sentence.startswith("utility of the contaminated fine-tune: change too small to compare: the fine-tune "
                               "moves utility by +0.025 (95 % CI [-0.010, 0.060]: its interval includes 0), below "
                               "the resolution of 520 items")
    wide = row("change", 0.1, 0.01, 0.19, 0.03, statistic="difference")  # excludes 0 but half-width 0.09 > 0.05
    assert not change_is_resolved(wide) and "wider than the change" in change_sentence("t", "utility", wide)
    clear = row("change", 1.2, 1.0, 1.4, 0.001, statistic="difference")
    assert change_is_resolved(clear) and "moves the harm score by +1.200" in change_sentence("t", "harm", clear)


def test_mso_is_read_against_its_null_quantile_and_its_interval():
    rows = [{"pair": "a vs b", "eta": 0.5, "mso": 0.3, "mso_random": 0.1, "mso_random_q95": 0.2, "mso_low": 0.25,
             "mso_high": 0.35},
            {"pair": "a vs c", "eta": 0.5, "mso": 0.3, "mso_random": 0.1, "mso_random_q95": 0.2, "mso_low": 0.15,
             "mso_high": 0.45}]
    line = overlap_reading(rows, "activations", key="pair")[0]
    assert "a vs b 0.30 [0.25, 0.35] (random 0.10, 95 % null quantile 0.20: above chance)" in line
    assert "a vs c 0.30 [0.15, 0.45] (random 0.10, 95 % null quantile 0.20: not clearly above chance)" in line


def test_a_run_without_per_item_outcomes_says_it_has_no_intervals():
    from safety_subspaces.study.config import parse_study
    from safety_subspaces.study.report.reading import measured

    study = parse_study({"name": "old", "models": {"base": "organism:base", "aligned": "organism:aligned"},
                         "finetunes": {"harmful": "organism:harmful"},
                         "projection": {"grid": [{"scheme": "parallel", "finetune": "harmful", "metrics": ["harm"]}]},
                         "evaluation": {"harm": {"prompts": "organism:harmful_eval", "judge": "organism"}},
                         "overlap": {"weights": None, "activations": None}})
    rows = [{"model": "aligned", "variant": "reference", "metric_group": "harm", "metric": "harm_score", "n": 520,
             "judge": "organism", "prompts": "organism:harmful_eval"}]
    lines = measured(study, rows, has_items=False)
    assert "judge organism on organism:harmful_eval, n = 520 prompts" in lines[0]
    assert "one seed per random subspace kind" in lines[0] and "base = organism:base" in lines[0]
    assert "stored no per-item outcomes" in lines[1] and "without intervals" in lines[1]
