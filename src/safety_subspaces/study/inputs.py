"""The study's resolve stage: check every input before anything runs (models, recipes' data, prompt sets against n,
judge settings) and find the local path of each model given as a checkpoint.

Nothing is built or written here. `run --check` calls it offline (hub models and hub data are listed as not checked);
`run` calls it online before it creates the run directory. An organism zoo that is not built yet is noted (`needs_zoo`)
and what depends on it is left for the materialise stage, which builds the zoo and resolves again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..model_dir import looks_like_hub_id
from .config import ModelSource, Study, organism_name


@dataclass
class CheckedInputs:
    """What the check found: local paths of the models given as checkpoints, and what it could not check."""

    paths: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    needs_zoo: bool = False  # an organism model or data set waits for the zoo to be built


def model_roles(study: Study) -> list[tuple[str, ModelSource]]:
    """Every model role of a study with its source, in dependency order."""
    roles = []
    for role in ("base", "aligned", "safety_tuned"):
        source = getattr(study.models, role)
        if source is not None:
            roles.append((role, source))
    return roles + list(study.finetunes.items())


def zoo_ready(checked: CheckedInputs) -> Path | None:
    """The default organism zoo if it is built; else None, noted (what needs it is checked once it exists)."""
    from .. import layout
    from ..paths import zoo_dir

    zoo = zoo_dir()
    if (zoo / layout.MANIFEST).exists():
        return zoo
    checked.needs_zoo = True
    note = f"organism models and data: the zoo {zoo} is not built yet (`run` builds it)"
    if note not in checked.notes:
        checked.notes.append(note)
    return None


def build_zoo() -> Path:
    """Build the default organism zoo (the materialise stage, when the inputs need it)."""
    from .. import progress
    from ..organism import build
    from ..paths import zoo_dir

    zoo = zoo_dir()
    progress.info(f"building the organism zoo in {zoo} (a few minutes, once)")
    build(zoo, preset="default")
    return zoo


def resolve_model_path(reference: str, role: str, *, offline: bool, checked: CheckedInputs) -> str | None:
    """A local directory for a model reference (organism:NAME, a directory, a hub id); None when offline can't tell."""
    from ..model_dir import resolve_model

    name = organism_name(reference, role)
    if name is not None:
        zoo = zoo_ready(checked)
        if zoo is None:
            return None
        path = zoo / name
        if not (path / "config.json").exists():
            raise UserError(f"{role}: organism model {name!r} is not in the zoo {zoo}")
        return str(path)
    if offline and not Path(reference).expanduser().exists() and looks_like_hub_id(reference):
        checked.notes.append(f"{role}: hub model {reference} (offline)")
        return None
    return str(resolve_model(reference, role=role))


def check_models(study: Study, *, offline: bool, checked: CheckedInputs) -> None:
    """Every model given as a checkpoint exists, loads safely (no pickle unless allowed) and matches the others."""
    from ..checkpoints import Checkpoint, check_compatible

    opened = {}
    for role, source in model_roles(study):
        if source.path is None:
            continue
        path = resolve_model_path(source.path, role, offline=offline, checked=checked)
        if path is None:
            continue
        checked.paths[role] = path
        opened[role] = Checkpoint(path, role=role, allow_pickle=study.allow_pickle)
    if len(opened) > 1:
        check_compatible(opened)
    for checkpoint in opened.values():
        checkpoint.close()


def check_recipes(study: Study, *, offline: bool, checked: CheckedInputs) -> None:
    """Each fine-tuning recipe starts from a model available before it and names data that can exist."""
    from .recipes import split_recipe, start_of

    available = [role for role, source in model_roles(study) if source.path is not None]
    for role, source in model_roles(study):
        if source.recipe is None:
            continue
        start = start_of(study, role, source)
        if start not in available:
            raise UserError(f"{role}.recipe.from: {start!r} is not a model available before {role}; "
                            f"use one of {', '.join(available) or 'the given checkpoints'}")
        data, options, recipe = split_recipe(source.recipe, f"{role}.recipe")
        for key in ("data", "source", "useful_source", "harmful_source"):
            if isinstance(source.recipe.get(key), str):
                check_data_reference(source.recipe[key], f"{role}.recipe.{key}", offline=offline, checked=checked)
        if isinstance(data, str) and Path(data).expanduser().is_file():  # a local data file: read it now, not mid-run
            from ..data import load_training_data

            try:
                load_training_data(data, seed=recipe.seed, method=recipe.method, **options)
            except UserError as exc:
                raise UserError(f"{role}.recipe.data: {exc}") from None
        available.append(role)


def check_data_reference(text: str, where: str, *, offline: bool, checked: CheckedInputs) -> None:
    """A data name that load_training_data accepts: a named set, a file that exists, organism:NAME, or a hub id."""
    from ..data import CONTAMINATED, SOURCES, TRAINING_SETS, looks_like_file
    from ..paths import zoo_data_file

    name = organism_name(text, where)
    if name is not None:
        zoo = zoo_ready(checked)
        if zoo is not None:
            zoo_data_file(name, zoo)
        return
    if text in TRAINING_SETS or text == CONTAMINATED or text in SOURCES or Path(text).expanduser().is_file():
        return
    if looks_like_file(text):
        raise UserError(f"{where}: data file {text}: no such file")
    if not looks_like_hub_id(text):
        raise UserError(f"{where}: unknown dataset {text!r}; use one of {', '.join([*TRAINING_SETS, CONTAMINATED])}, "
                        "a data file, organism:NAME or a hub id")


def is_local_source(text: str) -> bool:
    """Whether a prompt or data source is read from this machine (a file, even a missing one, or organism:NAME)."""
    from ..data import looks_like_file

    source = text.partition("@")[0]
    return source.startswith("organism:") or Path(source).expanduser().exists() or looks_like_file(source)


def loadable(text: str, *, offline: bool, checked: CheckedInputs, what: str) -> bool:
    """Whether to load a source now: local ones always (organism ones once the zoo exists), hub ones only online."""
    if text.startswith("organism:"):
        return zoo_ready(checked) is not None
    if offline and not is_local_source(text):
        checked.notes.append(f"{what}: {text} from the hub (offline)")
        return False
    return True


def check_prompt_sets(study: Study, *, offline: bool, checked: CheckedInputs) -> None:
    """Harm and over-refusal prompts can be read; every activation prompt set holds at least n prompts."""
    from ..evaluate.harm import load_harm_prompts
    from ..analyses.activation_overlap import PromptSource
    from ..paper import PROMPTS_PER_SET

    evaluation = study.evaluation
    for name, options in (("harm", evaluation.harm), ("benign", evaluation.benign)):
        if options is not None and loadable(options.prompts, offline=offline, checked=checked,
                                            what=f"evaluation.{name}.prompts"):
            load_harm_prompts(options.prompts, limit=options.limit)
    activations = study.overlap.activations
    if activations is None:
        return
    n = activations.options.get("n", PROMPTS_PER_SET)
    for name, text in activations.options.get("prompts", {}).items():
        where = f"overlap.activations.prompts.{name}"
        if not loadable(text, offline=offline, checked=checked, what=where):
            continue
        count = len(PromptSource.parse(text).load())
        if count < n and not activations.options.get("allow_fewer"):
            raise UserError(f"{where}: {text} has {count} prompts, fewer than overlap.activations.n = {n}; "
                            f"lower n to at most {count}")


def check_utility(study: Study, *, offline: bool, checked: CheckedInputs) -> None:
    """The utility task's local data files exist (the organism task's held-out file once the zoo exists)."""
    from ..evaluate.utility import ORGANISM_TASK, parse_data_files

    utility = study.evaluation.utility
    if utility is None:
        return
    for split, path in parse_data_files(utility.data_files).items():
        if not Path(path).expanduser().is_file():
            raise UserError(f"evaluation.utility.data_files.{split}: {path}: no such file")
    if utility.task == ORGANISM_TASK and not utility.data_files:
        zoo = zoo_ready(checked)
        if zoo is not None:
            from ..paths import zoo_data_file

            zoo_data_file("arithmetic_eval", zoo)
    elif not utility.data_files and offline:
        checked.notes.append(f"evaluation.utility: task {utility.task} and its data from lm-eval and the hub (offline)")


def check_judge(study: Study, *, offline: bool, checked: CheckedInputs) -> None:
    """Each harm judge can be built as configured (the rubric judge: rubric file, endpoint, model, its key in the
    environment; a judge that loads a model only checks its directory, the jobs load it); with over-refusal, at
    least one judge reports refusal (those that do judge the benign prompts)."""
    from ..evaluate.judges import JudgeRuntime, check_judge as check_one, check_refusal, refusing

    harm = study.evaluation.harm
    if harm is None:
        return
    runtime = JudgeRuntime(device="cpu", batch_size=harm.batch_size, allow_pickle=study.allow_pickle)
    several = len(harm.judges) > 1
    if study.evaluation.benign is not None and several and not refusing(harm.judges):
        names = ", ".join(spec.name for spec in harm.judges)
        raise UserError(f"evaluation.harm.judge: none of the judges {names} reports refusal, so none can measure "
                        "over-refusal on benign prompts; add one that does (wildguard, refusal, rubric, organism)")
    for index, spec in enumerate(harm.judges):
        key = "evaluation.harm.judge" + (f"[{index}]" if isinstance(harm.judge, list) else "")
        try:
            if study.evaluation.benign is not None and not several:
                check_refusal(spec)  # over-refusal reads the harm judge's refusal rate
            note = check_one(spec, runtime)
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None
        if note:
            checked.notes.append(f"{key}: {note}")


def check_inputs(study: Study, *, offline: bool) -> CheckedInputs:
    """Everything `run` validates before it creates the run directory (offline: hub inputs are noted, not fetched)."""
    checked = CheckedInputs()
    check_models(study, offline=offline, checked=checked)
    check_recipes(study, offline=offline, checked=checked)
    check_utility(study, offline=offline, checked=checked)
    check_prompt_sets(study, offline=offline, checked=checked)
    check_judge(study, offline=offline, checked=checked)
    return checked
