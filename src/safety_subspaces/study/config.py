"""The study config: one YAML file names the models, fine-tunes, projection grid, evaluations, analyses and executor.

A value naming a registered thing (a subspace kind, an edit, a judge, an analysis, an executor) is its NAME or
`{name: NAME, option: value}`, checked by the registry that owns it: the same names, options and checks as on the
command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from .. import paper
from ..analyses import ANALYSES, build_analysis
from ..edits import EDITS
from ..errors import UserError
from ..evaluate.judges import DEFAULT_JUDGE, JUDGES
from ..files import read_text
from ..analyses.common import check_svd_method
from ..linalg import check_fraction
from ..names import check_name
from ..registry import Spec
from ..schema import as_plain, build
from ..subspaces import SUBSPACES
from .executors import DEFAULT_EXECUTOR, EXECUTORS, check_executor

ModelRole = Literal["base", "aligned", "safety_tuned"]
Metric = Literal["utility", "harm", "benign"]
SubspaceKind = SUBSPACES.name_type()
EditSpec = EDITS.spec_type()
ExecutorSpec = EXECUTORS.spec_type()
AnalysisSpec = ANALYSES.spec_type()
WeightOverlapSpec = ANALYSES.spec_type(fixed="weight_overlap")
ActivationOverlapSpec = ANALYSES.spec_type(fixed="activation_overlap")


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
    """Which fine-tune an edit is evaluated on, and with which metrics (`scheme: NAME` is sugar for `edit: NAME`).

    An edit that takes `subspace` and `fraction` options runs once per subspace kind and rank fraction of the grid.
    """

    finetune: str
    edit: EditSpec  # type: ignore[valid-type]
    metrics: list[Metric] = field(default_factory=lambda: ["utility", "harm"])

    @staticmethod
    def coerce(value: Any, where: str) -> Any:
        """`scheme: NAME` (the projection schemes' older key) means `edit: NAME`."""
        if isinstance(value, dict) and "scheme" in value:
            if "edit" in value:
                raise UserError(f"{where}: give scheme or edit, not both")
            value = {("edit" if key == "scheme" else key): item for key, item in value.items()}
        return value

    @property
    def scheme(self) -> str:
        """The edit's name (a projection scheme's, in the paper's grid)."""
        return self.edit.name


def paper_grid() -> list[GridEntry]:
    """The paper's tables: parallel for useful (utility), harmful (harm), contaminated (both); orthogonal for contaminated."""
    return [
        GridEntry("useful", Spec("parallel"), ["utility"]),
        GridEntry("harmful", Spec("parallel"), ["harm"]),
        GridEntry("contaminated", Spec("parallel"), ["utility", "harm"]),
        GridEntry("contaminated", Spec("orthogonal"), ["utility", "harm"]),
    ]


DEFAULT_CONTROLS = ("random_k", "random")
DEFENCE_KEYS = ("name", "finetunes", "metrics", "controls", "reads")


@dataclass
class DefenceEntry:
    """A published defence on some fine-tunes, with its random-subspace controls.

    name is a registered edit (post-hoc: safe_lora, safemerge, resta; applied in memory to each fine-tune), transform
    (lox: W_A' written into the run directory, then each fine-tune's recipe run from it) or constraint (asft: each
    fine-tune's recipe run with the constraint); the last two need fine-tunes made by recipes from the reference.
    Every key besides name, finetunes, metrics, controls and reads is an option of the defence. Each fine-tune is
    evaluated defended as published (its own `subspace`, top_k by default) and once per control, the same defence
    with `subspace` replaced by a subspace kind that keeps Σ (default random_k and random; none for a defence without
    a subspace, such as resta). `reads` names, per checkpoint an edit reads, the study model that is that checkpoint
    (resta's harmful defaults to the fine-tune called harmful).
    """

    name: str
    finetunes: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=lambda: ["utility", "harm"])
    controls: list[SubspaceKind] | None = None  # type: ignore[valid-type]
    reads: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def coerce(value: Any, where: str) -> Any:
        """The edit's options are the entry's other keys; a transform or constraint is pointed to where it runs."""
        if not isinstance(value, dict):
            return value
        given = value.get("options") or {}  # the stored form (config.yaml) holds them under options
        if not isinstance(given, dict):
            raise UserError(f"{_key(where, 'options')}: expected a mapping of the defence's options")
        options = {**given, **{key: item for key, item in value.items() if key not in (*DEFENCE_KEYS, "options")}}
        return {**{key: item for key, item in value.items() if key in DEFENCE_KEYS}, "options": options}

    @property
    def kind(self) -> str:
        """edit (post-hoc, applied in memory), transform (lox: W_A' fine-tuned by the recipes) or constraint (asft)."""
        from ..defend import defence_kind

        return defence_kind(self.name, "defence")

    def registry(self) -> Any:
        """The registry the defence is registered in."""
        from ..defend import registries

        return registries()[self.kind]

    def takes_subspace(self) -> bool:
        """Whether the defence has a subspace option (and so controls)."""
        return self.registry().get(self.name).accepts("subspace")

    def check(self, where: str) -> None:
        """A registered defence whose options hold up; controls only for one built on a subspace."""
        from ..defend import defence_kind

        kind = defence_kind(self.name, _key(where, "name"))
        registry = self.registry()
        self.name = registry.canonical(self.name, _key(where, "name"))
        self.options = registry.options(self.name, self.options, where, partial=True)
        if self.controls is None:
            self.controls = list(DEFAULT_CONTROLS) if self.takes_subspace() else []
        if self.controls and not self.takes_subspace():
            raise UserError(f"{_key(where, 'controls')}: {self.name} has no subspace option, so no subspace control")
        if not self.finetunes:
            raise UserError(f"{_key(where, 'finetunes')}: give at least one fine-tune")
        if kind != "edit" and self.reads:
            raise UserError(f"{_key(where, 'reads')}: {self.name} reads no other model")
        reads = getattr(registry.get(self.name).factory, "reads", {}) if kind == "edit" else {}
        for name, what in reads.items():
            if name not in self.reads and name != "harmful":
                raise UserError(f"{_key(where, 'reads')}: {self.name} reads {name} ({what}); name the study model, "
                                f"e.g. reads: {{{name}: MODEL}}")

    def published(self) -> Spec:
        """The defence as configured (its own subspace, top_k by default)."""
        return Spec(self.name, dict(self.options))

    def variants(self) -> list[tuple[str, Spec]]:
        """('defence', the published spec) and ('control', the spec on each control's subspace kind)."""
        published = self.published()
        return [("defence", published), *(("control", published.with_options(subspace=kind))
                                           for kind in self.controls or [])]

    def read_roles(self) -> dict[str, str]:
        """Per checkpoint the edit reads, the study model role that is it."""
        reads = getattr(self.registry().get(self.name).factory, "reads", {}) if self.kind == "edit" else {}
        return {name: self.reads.get(name, "harmful" if name == "harmful" else name) for name in reads}


class _SvdMethods:
    """Annotated[str, ...] checker: analyses.common.check_svd_method."""

    def convert(self, value: Any, where: str) -> str:
        """The method name (a UserError naming where and the methods otherwise)."""
        return check_svd_method(value, f"{where}:")


SvdMethod = Annotated[str, _SvdMethods()]


@dataclass
class Projection:
    """The projection grid: subspace kinds x rank fractions x grid entries, whole model or one layer at a time."""

    subspaces: list[SubspaceKind] = field(default_factory=lambda: list(paper.SUBSPACE_KINDS))  # type: ignore[valid-type]
    fractions: list[float] = field(default_factory=lambda: list(paper.FRACTIONS))
    grid: list[GridEntry] = field(default_factory=paper_grid)
    layers: Literal["all", "each"] | list[int] = "all"
    tensors: str | None = None
    energy: bool = True
    svd_method: SvdMethod = "auto"

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
    judge: JudgeSpec | list[JudgeSpec] = field(default_factory=lambda: Spec(DEFAULT_JUDGE))  # one, or several
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
            judges = value.get("judge")  # each judge's own message (unknown judge, bad option), not the union's
            if isinstance(judges, list):
                for index, entry in enumerate(judges):
                    JUDGES.spec(entry, f"{_key(where, 'judge')}[{index}]")
            elif judges is not None:
                JUDGES.spec(judges, _key(where, "judge"))
        return value

    @property
    def judges(self) -> list[Spec]:
        """The judges of the replies, in order: the first judges as the replies are generated, the others re-score
        the stored replies (a judge list names several; each gets its own rows)."""
        return list(self.judge) if isinstance(self.judge, list) else [self.judge]

    def check(self, where: str) -> None:
        """Counts are positive; there is a judge, each has every option it needs, and none is named twice alike."""
        for name in ("limit", "max_new_tokens", "batch_size"):
            _at_least(getattr(self, name), 1, _key(where, name))
        if not self.judges:
            raise UserError(f"{_key(where, 'judge')}: name at least one judge")
        seen = []
        for index, judge in enumerate(self.judges):
            key = _key(where, "judge") + (f"[{index}]" if isinstance(self.judge, list) else "")
            JUDGES.options(judge.name, judge.options, key)
            if (judge.name, judge.options) in seen:
                raise UserError(f"{key}: judge {judge.name} is named twice with the same options")
            seen.append((judge.name, judge.options))


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
class Inference:
    """How the report turns per-item outcomes into intervals and tests (report settings: no job depends on them)."""

    bootstrap: int = 2000  # percentile-bootstrap resamples of items (and seeds) for intervals and comparisons
    level: float = 0.95  # coverage of every interval; comparisons test at 1 − level
    power: float = 0.8  # the power `run --check` and `power` size the minimum detectable difference for

    def check(self, where: str) -> None:
        """At least 100 resamples; level and power inside (0, 1)."""
        _at_least(self.bootstrap, 100, _key(where, "bootstrap"))
        for name in ("level", "power"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise UserError(f"{_key(where, name)}: must lie strictly between 0 and 1, got {value!r}")


def paper_weight_overlap() -> Spec:
    """The paper's weight comparison: the useful and harmful updates and −Δ_A (the base)."""
    return Spec("weight_overlap", {"updates": ["useful", "harmful", "base"]})


def paper_activation_overlap() -> Spec:
    """The paper's activation comparison: MATH against two harmful sets in the aligned, useful and contaminated models."""
    return Spec("activation_overlap", {"models": ["aligned", "useful", "contaminated"],
                                       "prompts": {"useful": "math", "harmful1": "beavertails_unsafe_all",
                                                   "harmful2": "toxigen"}})


def check_analysis(spec: Spec, where: str) -> None:
    """An analysis' options hold up (its factory checks them; nothing is loaded)."""
    try:
        build_analysis(spec.name, spec.options, where)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


@dataclass
class Overlap:
    """The overlap analyses (either may be omitted): the options of weight_overlap and of activation_overlap."""

    weights: WeightOverlapSpec | None = field(default_factory=paper_weight_overlap)  # type: ignore[valid-type]
    activations: ActivationOverlapSpec | None = field(default_factory=paper_activation_overlap)  # type: ignore[valid-type]

    def check(self, where: str) -> None:
        """Each analysis' options hold up."""
        for name in ("weights", "activations"):
            if getattr(self, name) is not None:
                check_analysis(getattr(self, name), _key(where, name))


@dataclass
class Study:
    """A whole study."""

    name: str
    models: Models
    finetunes: dict[str, ModelSource]
    reference: Literal["aligned", "safety_tuned"] = "aligned"
    seed: int = 42
    random_seeds: int = 1  # independent frames of every seeded subspace kind (random_k, random); the first is `seed`'s
    projection: Projection = field(default_factory=Projection)
    evaluation: Evaluation = field(default_factory=Evaluation)
    overlap: Overlap = field(default_factory=Overlap)
    analyses: list[AnalysisSpec] = field(default_factory=list)  # more registered analyses  # type: ignore[valid-type]
    defences: list[DefenceEntry] = field(default_factory=list)  # published post-hoc defences and their controls
    executor: ExecutorSpec = field(default_factory=lambda: Spec(DEFAULT_EXECUTOR))  # type: ignore[valid-type]
    inference: Inference = field(default_factory=Inference)
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    # per worker: tensors and bases kept in memory between projected models. 64 MiB holds the whole organism; at
    # real sizes reads from the page cache cost less than the memory (BENCHMARKS.md, "Real-model scale")
    memory_gb: float = 0.0625
    allow_pickle: bool = False  # accept pickle-only checkpoints (read with torch.load(weights_only=True))

    @staticmethod
    def coerce(value: Any, where: str) -> Any:
        """`executor: {kind: NAME, ...}` (the older key) means `{name: NAME, ...}`."""
        executor = value.get("executor") if isinstance(value, dict) else None
        if isinstance(executor, dict) and "kind" in executor:
            if "name" in executor:
                raise UserError("executor: give name or kind, not both")
            value = {**value, "executor": {("name" if k == "kind" else k): v for k, v in executor.items()}}
        return value

    def check(self, where: str) -> None:
        """Names that become paths are safe; cross-references: the reference model exists; grid, overlaps and
        metrics name known fine-tunes."""
        check_name(self.name, "study")
        for role in self.finetunes:
            check_name(role, "finetunes: fine-tune")
        _at_least(self.threads, 1, "threads")
        _at_least(self.random_seeds, 1, "random_seeds")
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
            updates = self.overlap.weights.options.get("updates", [])
            for i, name in enumerate(updates):
                if name not in roles or name == self.reference:
                    raise UserError(f"overlap.weights.updates[{i}]: {name!r} is not a model other than the reference; use {', '.join(sorted(roles - {self.reference}))}")
            if len(updates) < 2:
                raise UserError("overlap.weights.updates: need at least two updates to compare")
        if self.overlap.activations is not None:
            for i, name in enumerate(self.overlap.activations.options.get("models") or []):
                if name not in roles:
                    raise UserError(f"overlap.activations.models[{i}]: {name!r} is not a model; use {', '.join(sorted(roles))}")
        for i, spec in enumerate(self.analyses):
            check_analysis(spec, f"analyses[{i}]")
        for i, defence in enumerate(self.defences):
            for j, name in enumerate(defence.finetunes):
                if name not in self.finetunes:
                    raise UserError(f"defences[{i}].finetunes[{j}]: {name!r} is not a fine-tune; known: {', '.join(known)}")
            for metric in defence.metrics:
                if getattr(self.evaluation, metric) is None:
                    raise UserError(f"defences[{i}].metrics: {metric!r} needs evaluation.{metric}")
            if defence.kind != "edit":
                for j, name in enumerate(defence.finetunes):
                    source = self.finetunes.get(name)
                    if source is not None and source.recipe is None:
                        raise UserError(f"defences[{i}].finetunes[{j}]: {defence.name} acts before or during "
                                        f"fine-tuning, so it needs {name!r} made by a recipe (finetunes.{name}.recipe);"
                                        f" {name!r} is a given checkpoint")
                    if source is not None and source.recipe.get("from", self.reference) != self.reference:
                        raise UserError(f"defences[{i}].finetunes[{j}]: {defence.name} defends fine-tunes of the "
                                        f"reference; finetunes.{name}.recipe.from is {source.recipe['from']!r}")
            for read, role in defence.read_roles().items():
                if role not in roles:
                    raise UserError(f"defences[{i}].reads.{read}: {role!r} is not a model; use {', '.join(sorted(roles))}")
                if role in defence.finetunes:
                    raise UserError(f"defences[{i}].reads.{read}: {role!r} is also a fine-tune it defends")
        check_executor(self.executor, "executor")
        if isinstance(self.projection.layers, list) and not self.projection.layers:
            raise UserError("projection.layers: an empty list selects nothing; use all, each, or layer indices")
        if not self.projection.grid and self.overlap.weights is None and self.overlap.activations is None \
                and not self.projection.energy and not self.analyses and not self.defences:
            raise UserError("the study has no jobs: the projection grid is empty and no overlap, energy or other analysis "
                            "is asked for")
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
