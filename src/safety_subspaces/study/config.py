"""The study config: one YAML file names the models, fine-tunes, projection grid, evaluations, overlaps and executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import UserError
from ..evaluate.judges import DEFAULT_JUDGE, JUDGES
from ..registry import Spec
from ..files import read_text
from ..linalg import check_fraction
from ..names import check_name
from ..schema import as_plain, build

ModelRole = Literal["base", "aligned", "safety_tuned"]
Metric = Literal["utility", "harm", "benign"]
PAPER_FRACTIONS = [0.01, 0.25, 0.5, 0.75, 0.99]
PAPER_ETAS = [0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99]


def _at_least(value: float | None, minimum: float, where: str) -> None:
    """A number (None: unset) is at least minimum."""
    if value is not None and not value >= minimum:
        raise UserError(f"{where}: must be at least {minimum:g}, got {value!r}")


def _positive(value: float | None, where: str) -> None:
    """A number (None: unset) is greater than zero."""
    if value is not None and not value > 0:
        raise UserError(f"{where}: must be greater than 0, got {value!r}")


def _key(where: str, name: str) -> str:
    """A dotted config key (where may be empty at the top level)."""
    return f"{where}.{name}" if where else name


ORGANISM_PREFIX = "organism:"


def organism_name(reference: str, where: str) -> str | None:
    """The NAME of an 'organism:NAME' reference (checked to be one safe path component), else None."""
    if not reference.startswith(ORGANISM_PREFIX):
        return None
    return check_name(reference[len(ORGANISM_PREFIX):], f"{where}: organism")


def _fractions(values: list[float], where: str) -> None:
    """Every value lies in (0, 1]."""
    for i, value in enumerate(values):
        try:
            check_fraction(value)
        except ValueError:
            raise UserError(f"{where}[{i}]: {value!r} is outside (0, 1]") from None


@dataclass
class ModelSource:
    """A model: an existing checkpoint (directory, hub id, or organism:NAME) or a fine-tuning recipe to run."""

    path: str | None = None
    recipe: dict[str, Any] | None = None

    @staticmethod
    def coerce(value: Any, where: str) -> Any:
        """A bare string means a path."""
        return {"path": value} if isinstance(value, str) else value

    def check(self, where: str) -> None:
        """Exactly one of path and recipe; an organism:NAME path names one safe component."""
        if (self.path is None) == (self.recipe is None):
            raise UserError(f"{where}: give either path or recipe")
        if self.path is not None:
            organism_name(self.path, f"{where}.path")
        if self.recipe is not None:
            for key in ("data", "source", "useful_source", "harmful_source"):
                if isinstance(self.recipe.get(key), str):
                    organism_name(self.recipe[key], f"{where}.recipe.{key}")
            if "data" not in self.recipe:
                raise UserError(f"{where}.recipe: missing required key 'data'")
            from .recipes import split_recipe

            split_recipe(self.recipe, f"{where}.recipe")


@dataclass
class Models:
    """Base, aligned and (optionally) safety-tuned models."""

    base: ModelSource
    aligned: ModelSource | None = None
    safety_tuned: ModelSource | None = None


@dataclass
class GridEntry:
    """Which fine-tune a scheme is evaluated on, and with which metrics."""

    scheme: Literal["parallel", "orthogonal", "opposite"]
    finetune: str
    metrics: list[Metric] = field(default_factory=lambda: ["utility", "harm"])


def paper_grid() -> list[GridEntry]:
    """The paper's tables: parallel for useful (utility), harmful (harm), contaminated (both); orthogonal for contaminated."""
    return [
        GridEntry("parallel", "useful", ["utility"]),
        GridEntry("parallel", "harmful", ["harm"]),
        GridEntry("parallel", "contaminated", ["utility", "harm"]),
        GridEntry("orthogonal", "contaminated", ["utility", "harm"]),
    ]


@dataclass
class Projection:
    """The projection grid: subspace kinds x rank fractions x grid entries, whole model or one layer at a time."""

    subspaces: list[Literal["top_k", "random_k", "random"]] = field(default_factory=lambda: ["top_k", "random_k", "random"])
    fractions: list[float] = field(default_factory=lambda: list(PAPER_FRACTIONS))
    grid: list[GridEntry] = field(default_factory=paper_grid)
    layers: Literal["all", "each"] | list[int] = "all"
    tensors: str | None = None
    energy: bool = True
    svd_method: Literal["auto", "gram", "qr", "svd"] = "auto"  # linalg.SVD_METHODS

    def check(self, where: str) -> None:
        """Fractions in (0, 1]; a non-empty grid needs subspaces and fractions."""
        _fractions(self.fractions, f"{where}.fractions")
        if self.grid and not (self.subspaces and self.fractions):
            raise UserError(f"{where}: the grid has no jobs (subspaces or fractions is empty)")


@dataclass
class Utility:
    """Utility through lm-evaluation-harness."""

    task: str = "gsm8k"
    num_fewshot: int | None = None  # None: the task's default (GSM8K: 1-shot, as the paper)
    limit: int | None = None
    batch_size: int = 8
    chat: bool | None = None  # None: the task's default
    data_files: dict[str, str] | None = None
    max_gen_toks: int | None = None

    def check(self, where: str) -> None:
        """Counts and sizes are positive (few-shot may be 0)."""
        _at_least(self.num_fewshot, 0, _key(where, "num_fewshot"))
        for name in ("limit", "batch_size", "max_gen_toks"):
            _at_least(getattr(self, name), 1, _key(where, name))


JudgeSpec = JUDGES.spec_type()
OLD_JUDGE_KEYS = {"judge_endpoint": "endpoint", "judge_model": "model", "judge_key_env": "key_env",
                  "classifier": "model", "rubric_file": "rubric", "concurrency": "workers"}


@dataclass
class Harm:
    """Harmfulness: greedy generation on harmful prompts, judged 1-5 by a registered judge."""

    prompts: str = "advbench"
    judge: JudgeSpec = field(default_factory=lambda: Spec(DEFAULT_JUDGE))
    limit: int | None = None
    max_new_tokens: int = 512
    batch_size: int = 16
    chat: bool = True

    @staticmethod
    def coerce(value: Any, where: str) -> Any:
        """Refuse the keys older configs used for judge options, saying where they went."""
        if isinstance(value, dict):
            for key, option in OLD_JUDGE_KEYS.items():
                if key in value:
                    raise UserError(f"{_key(where, key)}: judge options now go with the judge: "
                                    f"judge: {{name: {value.get('judge', DEFAULT_JUDGE)}, {option}: ...}}")
        return value

    def check(self, where: str) -> None:
        """Counts are positive; the judge has every option it needs."""
        for name in ("limit", "max_new_tokens", "batch_size"):
            _at_least(getattr(self, name), 1, _key(where, name))
        JUDGES.options(self.judge.name, self.judge.options, _key(where, "judge"))


@dataclass
class Benign:
    """Over-refusal on benign prompts (XSTest-style), judged by the same machinery."""

    prompts: str = "xstest"
    limit: int | None = None

    def check(self, where: str) -> None:
        """A limit is positive."""
        _at_least(self.limit, 1, _key(where, "limit"))


@dataclass
class Evaluation:
    """What each evaluated model variant is measured on."""

    utility: Utility | None = field(default_factory=Utility)
    harm: Harm | None = field(default_factory=Harm)
    benign: Benign | None = None
    mmlu: bool = False
    references: bool = True


@dataclass
class WeightOverlap:
    """MSO of weight updates relative to the reference model."""

    eta: list[float] = field(default_factory=lambda: list(PAPER_ETAS))
    updates: list[str] = field(default_factory=lambda: ["useful", "harmful", "base"])
    percentiles: list[float] = field(default_factory=lambda: [70.0, 85.0])
    tensors: str | None = None

    def check(self, where: str) -> None:
        """Etas in (0, 1]."""
        _fractions(self.eta, f"{where}.eta")


@dataclass
class ActivationOverlap:
    """MSO of residual-stream activations of prompt sets."""

    models: list[str] = field(default_factory=lambda: ["aligned", "useful", "contaminated"])
    prompts: dict[str, str] = field(default_factory=lambda: {"useful": "math", "harmful1": "beavertails_unsafe_all", "harmful2": "toxigen"})
    n: int = 5000
    eta: list[float] = field(default_factory=lambda: list(PAPER_ETAS))
    depth: list[float] = field(default_factory=lambda: [0.65, 0.90])
    window: str = "last"
    raw_prompts: bool = False
    batch_size: int = 16

    def check(self, where: str) -> None:
        """Etas in (0, 1], a depth band, at least two prompt sets with safe names, positive n and batch size."""
        _fractions(self.eta, f"{where}.eta")
        _at_least(self.n, 1, f"{where}.n")
        _at_least(self.batch_size, 1, f"{where}.batch_size")
        for name in self.prompts:
            check_name(name, f"{where}.prompts: prompt set")
        if len(self.depth) != 2 or not 0 <= self.depth[0] < self.depth[1] <= 1:
            raise UserError(f"{where}.depth: expected [low, high] with 0 <= low < high <= 1, got {self.depth}")
        if len(self.prompts) < 2:
            raise UserError(f"{where}.prompts: need at least two prompt sets to compare")


@dataclass
class Overlap:
    """Overlap analyses (either may be omitted)."""

    weights: WeightOverlap | None = field(default_factory=WeightOverlap)
    activations: ActivationOverlap | None = field(default_factory=ActivationOverlap)


@dataclass
class Executor:
    """Where jobs run: in this process, or on Ray workers that keep a model resident."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0

    def check(self, where: str) -> None:
        """Worker counts and resources are positive."""
        _at_least(self.workers, 1, _key(where, "workers"))
        _at_least(self.gpus_per_worker, 0, _key(where, "gpus_per_worker"))
        _positive(self.cpus_per_worker, _key(where, "cpus_per_worker"))


@dataclass
class Study:
    """A whole study."""

    name: str
    models: Models
    finetunes: dict[str, ModelSource]
    reference: Literal["aligned", "safety_tuned"] = "aligned"
    seed: int = 42
    projection: Projection = field(default_factory=Projection)
    evaluation: Evaluation = field(default_factory=Evaluation)
    overlap: Overlap = field(default_factory=Overlap)
    executor: Executor = field(default_factory=Executor)
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    memory_gb: float = 4.0  # per worker: tensors and bases kept in memory between projected models
    allow_pickle: bool = False  # accept pickle-only checkpoints (read with torch.load(weights_only=True))

    def check(self, where: str) -> None:
        """Names that become paths are safe; cross-references: the reference model exists; grid, overlaps and
        metrics name known fine-tunes."""
        check_name(self.name, "study")
        for role in self.finetunes:
            check_name(role, "finetunes: fine-tune")
        _at_least(self.threads, 1, "threads")
        _positive(self.memory_gb, "memory_gb")
        if getattr(self.models, self.reference) is None:
            raise UserError(f"reference: {self.reference!r} needs models.{self.reference}")
        if not self.finetunes:
            raise UserError("finetunes: give at least one fine-tune")
        known = list(self.finetunes)
        for i, entry in enumerate(self.projection.grid):
            if entry.finetune not in self.finetunes:
                raise UserError(f"projection.grid[{i}].finetune: {entry.finetune!r} is not a fine-tune; known: {', '.join(known)}")
            for metric in entry.metrics:
                if metric == "utility" and self.evaluation.utility is None or metric == "harm" and self.evaluation.harm is None \
                        or metric == "benign" and self.evaluation.benign is None:
                    raise UserError(f"projection.grid[{i}].metrics: {metric!r} needs evaluation.{metric}")
        roles = {"base", "aligned", "safety_tuned", *known}
        if self.overlap.weights is not None:
            for i, name in enumerate(self.overlap.weights.updates):
                if name not in roles or name == self.reference:
                    raise UserError(f"overlap.weights.updates[{i}]: {name!r} is not a model other than the reference; use {', '.join(sorted(roles - {self.reference}))}")
            if len(self.overlap.weights.updates) < 2:
                raise UserError("overlap.weights.updates: need at least two updates to compare")
        if self.overlap.activations is not None:
            for i, name in enumerate(self.overlap.activations.models):
                if name not in roles:
                    raise UserError(f"overlap.activations.models[{i}]: {name!r} is not a model; use {', '.join(sorted(roles))}")
        if isinstance(self.projection.layers, list) and not self.projection.layers:
            raise UserError("projection.layers: an empty list selects nothing; use all, each, or layer indices")
        if not self.projection.grid and self.overlap.weights is None and self.overlap.activations is None and not self.projection.energy:
            raise UserError("the study has no jobs: the projection grid is empty and no overlap or energy analysis is asked for")
        if self.evaluation.benign is not None and self.evaluation.harm is None:
            raise UserError("evaluation.benign: over-refusal is judged by the harm judge; configure evaluation.harm too")

    def model_source(self, role: str) -> ModelSource:
        """The source of a model role (base, aligned, safety_tuned) or fine-tune."""
        if role in self.finetunes:
            return self.finetunes[role]
        source = getattr(self.models, role, None)
        if source is None:
            raise UserError(f"no model {role!r} in this study")
        return source


def parse_study(data: Any, *, origin: str = "study") -> Study:
    """Validate a loaded YAML mapping into a Study."""
    if not isinstance(data, dict):
        raise UserError(f"{origin}: expected a mapping at the top level")
    return build(Study, data, "")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping holding the same key twice (plain YAML keeps the last silently)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """Construct a mapping, refusing a repeated key (named, with both lines)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: the base constructor reports it
        if first is not None:
            raise UserError(f"duplicate key {key!r} on line {key_node.start_mark.line + 1} "
                            f"(first given on line {first}); give each key once")
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path, what: str) -> Any:
    """The content of a YAML file (UTF-8, no repeated keys); problems are UserErrors naming the file and line."""
    text = read_text(path, what=what)
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML ({where}{problem})") from None


def load_study(path: Path) -> Study:
    """Read and validate a study YAML file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"study config {path} does not exist")
    if path.is_dir():
        raise UserError(f"study config {path} is a directory; give the study's YAML file")
    data = read_yaml(path, "study config")
    try:
        return parse_study(data, origin=str(path))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def study_document(study: Study) -> dict[str, Any]:
    """The resolved study as plain data (written to config.yaml)."""
    return as_plain(study)
