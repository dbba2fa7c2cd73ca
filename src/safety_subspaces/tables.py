"""Every result table's name and leading columns, declared once: producers, CSV writers, the store and the report use these.

Rows are plain dicts; a table's CSV starts with its columns and adds the other keys of its rows, sorted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """A result table: its name (the CSV's stem and the store's table) and its leading columns."""

    name: str
    columns: tuple[str, ...]
    doc: str = ""

    @property
    def csv(self) -> str:
        """The CSV file name of the table in a run directory."""
        return f"{self.name}.csv"


ENERGY = Table(
    "energy",
    ("finetune", "subspace", "scheme", "fraction", "k_total", "energy_kept", "cos_task_proj", "cos_task_align",
     "scope", "name"),
    "energy kept by every fine-tune x subspace kind x scheme x rank fraction, at model, layer and tensor scope",
)
EVALUATION = Table(
    "evaluation",
    ("model", "variant", "subspace", "scheme", "fraction", "metric", "value", "n", "invalid", "ci_low", "ci_high",
     "ci_method", "seeds"),
    "utility and harm metrics of reference and edited models, each with its 95 % interval over items (and seeds)",
)
ITEMS = Table(
    "items",
    ("model", "variant", "subspace", "scheme", "fraction", "seed", "layer", "metric", "item", "key", "outcome", "answer",
     "job"),
    "per-item outcomes of every evaluation cell: the values whose mean is the metric (correct 0/1, judge score, refusal "
    "0/1), the extracted answer or score, and the item's key in the run's samples",
)
COMPARISONS = Table(
    "comparisons",
    ("family", "comparison", "finetune", "scheme", "metric", "judge", "a", "b", "at", "statistic", "estimate", "ci_low",
     "ci_high", "p_value", "p_holm", "n", "seeds_a", "seeds_b", "method"),
    "paired comparisons of variants scored on the same items: estimate, 95 % bootstrap interval, two-sided p-value and "
    "Holm's adjustment across every comparison of one report",
)
WEIGHT_OVERLAP = Table(
    "weight_overlap",
    ("pair", "name", "layer", "eta", "k_a", "k_b", "d", "mso", "mso_random", "mso_random_q95", "scope", "tensors"),
    "Mode Subspace Overlap of weight updates per tensor, layer and depth percentile",
)
ACTIVATION_OVERLAP = Table(
    "activation_overlap",
    ("model", "pair", "layer", "eta", "centered", "k_a", "k_b", "d", "mso", "mso_random", "mso_random_q95", "mso_low",
     "mso_high", "scope", "layers", "n_a", "n_b", "window"),
    "Mode Subspace Overlap of residual-stream activations per hidden state and over the depth band",
)
PAPER_TABLES = Table("paper_tables", ("table", "row", "fraction", "value"), "the report's paper-style tables, flat")

RESULT_TABLES: dict[str, Table] = {table.name: table for table in (ENERGY, EVALUATION, ITEMS, WEIGHT_OVERLAP,
                                                                    ACTIVATION_OVERLAP)}
