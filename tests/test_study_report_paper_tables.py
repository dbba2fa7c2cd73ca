"""Paper-table cells with their intervals, seeded kinds averaged over frame seeds (study/report/paper_tables.py)."""

from __future__ import annotations

import numpy as np
import pytest

from safety_subspaces import stats
from safety_subspaces.study.report.paper_tables import value_of


def test_a_seeded_cell_is_the_mean_over_seeds_with_an_interval_over_items_and_seeds():
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 2, (3, 40)).astype(float)
    labels = {"model": "harmful", "variant": "projected", "scheme": "parallel", "subspace": "random", "fraction": 0.25,
              "metric": "acc", "layer": None}
    rows = [{**labels, "seed": s, "value": frames[s].mean(), "n": 40, "ci_low": 0.0, "ci_high": 1.0} for s in range(3)]
    items = [{**labels, "seed": s, "keys": [str(i) for i in range(40)], "outcomes": list(frames[s])} for s in range(3)]
    items.append({**labels, "layer": 3, "seed": 0, "keys": ["x"], "outcomes": [1.0]})  # a one-layer edit: not this cell
    cell = value_of(rows, items, bootstrap=500, **{k: labels[k] for k in ("model", "variant", "scheme", "subspace",
                                                                          "fraction")})
    assert cell.seeds == 3 and cell.n == 40 and cell.value == pytest.approx(frames.mean())
    assert cell.per_seed == pytest.approx(tuple(frames.mean(axis=1)))
    direct = stats.mean_interval(frames, bootstrap=500, seed=0)
    assert cell.low < cell.value < cell.high and cell.high - cell.low == pytest.approx(direct.high - direct.low, rel=0.3)


def test_a_single_row_keeps_its_stored_interval():
    rows = [{"model": "aligned", "variant": "reference", "value": 0.5, "n": 200, "ci_low": 0.43, "ci_high": 0.57}]
    cell = value_of(rows, model="aligned", variant="reference")
    assert (cell.value, cell.low, cell.high, cell.n, cell.seeds) == (0.5, 0.43, 0.57, 200, 1)
    assert cell.interval() == "[0.43, 0.57]" and value_of(rows, model="missing").value is None
