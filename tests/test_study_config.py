"""Study configs: every shipped config validates; bad keys and values are named with the allowed ones; planning."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from safety_subspaces.cli import main
from safety_subspaces.errors import UserError
from safety_subspaces.study.config import load_study, parse_study
from safety_subspaces.study.jobs import Job
from safety_subspaces.study.plan import plan
from safety_subspaces.study.runner import default_study_path

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))
MINIMAL = {
    "name": "mini",
    "models": {"base": "B", "aligned": "A"},
    "finetunes": {"useful": "U", "harmful": "H", "contaminated": "C"},
    "evaluation": {"harm": {"judge": "refusal"}},
}


def with_changes(**changes):
    """MINIMAL with top-level keys replaced."""
    return {**MINIMAL, **changes}


@pytest.mark.parametrize("path", [*STUDIES, default_study_path()], ids=lambda p: p.name)
def test_every_shipped_study_validates(path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")  # the rubric judge's key must be in the environment
    study = load_study(path)
    assert study.name
    assert main(["run", str(path), "--check"]) == 0
    assert "valid study" in capsys.readouterr().out


def test_paper_studies_are_present():
    names = {path.stem for path in STUDIES}
    for model in ("llama-3.2-1b", "llama-2-7b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"):
        assert model in names
    assert any("safety" in name for name in names) and any("dpo" in name for name in names)


@pytest.mark.parametrize("data,needle", [
    (with_changes(colour="red"), "unknown key 'colour'; allowed keys: name, models, finetunes"),
    (with_changes(projection={"subspaces": ["top_k", "diagonal"]}), "projection.subspaces[1]: unknown subspace kind 'diagonal'; choose one of top_k, random_k, random"),
    (with_changes(projection={"fractions": [0.5, 1.5]}), "projection.fractions[1]: 1.5 is outside (0, 1]"),
    (with_changes(projection={"grid": [{"scheme": "parallel", "finetune": "nope"}]}), "projection.grid[0].finetune: 'nope' is not a fine-tune"),
    (with_changes(projection={"grid": [{"scheme": "sideways", "finetune": "useful"}]}), "projection.grid[0].edit: unknown edit 'sideways'"),
    (with_changes(projection={"grid": [{"edit": {"name": "parallel", "fraction": "half"}, "finetune": "useful"}]}),
     "projection.grid[0].edit.fraction: expected a number, got 'half'"),
    (with_changes(executor={"kind": "slurm"}), "executor.name: unknown executor 'slurm'; choose one of local, ray"),
    (with_changes(executor={"name": "local", "workers": 2}), "executor: unknown option 'workers' for executor 'local'"),
    (with_changes(executor={"name": "ray", "cpus_per_worker": 0}), "executor.cpus_per_worker: must be greater than 0"),
    (with_changes(overlap={"weights": {"updates": ["useful", "harmful"], "eta": [2.0]}}), "overlap.weights: eta: energy fraction 2.0 is outside (0, 1]"),
    (with_changes(overlap={"activations": {"prompts": {"a": "x.jsonl"}}}), "overlap.activations: prompts: activation overlap needs at least two prompt sets"),
    (with_changes(analyses=[{"name": "spectral_sorcery"}]), "analyses[0].name: unknown analysis 'spectral_sorcery'"),
    (with_changes(reference="safety_tuned"), "needs models.safety_tuned"),
    (with_changes(models={"aligned": "A"}), "missing required key 'base'"),
    (with_changes(finetunes={}), "at least one fine-tune"),
    (with_changes(evaluation={"harm": {"judge": "rubric"}}), "evaluation.harm.judge: judge 'rubric' needs option 'model'"),
    (with_changes(evaluation={"harm": {"judge": {"name": "rubric", "model": "m", "timeout": "soon"}}}),
     "evaluation.harm.judge.timeout: expected a number, got 'soon'"),
    (with_changes(evaluation={"harm": {"judge": "rubric", "judge_model": "m"}}),
     "evaluation.harm.judge_model: judge options now go with the judge: judge: {name: rubric, model: ...}"),
    (with_changes(evaluation={"harm": {"judge": "gpt"}}), "evaluation.harm.judge: unknown judge 'gpt'; choose one of"),
    (with_changes(projection={"grid": [], "energy": False}, overlap={"weights": None, "activations": None}), "no jobs"),
    (with_changes(projection={"fractions": []}), "the grid has no jobs"),
    (with_changes(seed="x"), "seed: expected an integer"),
    (with_changes(finetunes={"useful": {"path": "U", "recipe": {"data": "useful"}}}), "either path or recipe"),
])
def test_bad_configs_name_the_key(data, needle):
    with pytest.raises(UserError) as info:
        parse_study(data)
    assert needle in str(info.value)


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_changes(projection={"schemes": ["parallel"]})))
    assert main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'schemes'" in err[0] and str(path) in err[0]
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_plan_counts_and_stable_ids():
    study = parse_study(MINIMAL)
    fingerprints = {role: role * 4 for role in ("base", "aligned", "useful", "harmful", "contaminated")}
    jobs = plan(study, fingerprints, num_layers=4)
    kinds = [job.kind for job in jobs]
    # paper grid: 4 entries x 3 subspaces x 5 fractions, plus references base/aligned/3 fine-tunes, energy, overlaps
    assert kinds.count("evaluate") == 60 + 5
    analyses = [job.spec.analysis.name for job in jobs if job.kind == "analysis"]
    assert analyses == ["energy", "weight_overlap", "activation_overlap", "activation_overlap", "activation_overlap"]
    assert len({job.id for job in jobs}) == len(jobs)
    assert [job.id for job in plan(study, fingerprints, num_layers=4)] == [job.id for job in jobs]
    changed = plan(study, {**fingerprints, "harmful": "other"}, num_layers=4)
    moved = {a.id for a in jobs} ^ {b.id for b in changed}
    assert moved and all("useful" not in job.label for job in jobs
                         if job.id in moved and job.kind == "evaluate" and job.spec.edit is not None)
    for job in jobs:  # the store's plain form reads back into the same typed spec
        assert Job.parse(job.id, job.kind, job.plain()) == job


def test_one_layer_at_a_time_multiplies_jobs():
    study = parse_study(with_changes(projection={"layers": "each", "subspaces": ["top_k"], "fractions": [0.5]},
                                     overlap={"weights": None, "activations": None}))
    jobs = plan(study, {r: r for r in ("base", "aligned", "useful", "harmful", "contaminated")}, num_layers=3)
    layers = sorted({job.spec.layer for job in jobs if job.kind == "evaluate" and job.spec.edit is not None})
    assert layers == [0, 1, 2]


def test_a_worker_builds_each_judge_once(tmp_path):
    from safety_subspaces.study.config import study_document
    from safety_subspaces.study.worker import Context, Worker

    worker = Worker(Context(study_document(parse_study(MINIMAL)), {}, str(tmp_path)))
    first = worker.judge({"name": "refusal"}, 8)
    assert worker.judge("refusal", 8) is first  # reused across jobs (a classifier would not reload its model)
    assert worker.judge("organism", 8) is not first and worker.judge("refusal", 4) is not first


def test_resolving_a_study_never_builds_the_zoo(tmp_path, monkeypatch):
    from safety_subspaces.study.runner import resolve

    monkeypatch.setenv("SAFETY_SUBSPACES_ZOO", str(tmp_path / "zoo"))
    resolved = resolve(load_study(default_study_path()))
    assert resolved.needs_zoo and resolved.paths == {}  # every model waits for the materialise stage
    assert any("not built yet" in note for note in resolved.notes)
    assert not (tmp_path / "zoo").exists()


def test_random_seeds_add_frames_of_seeded_kinds_and_keep_the_first_seed_jobs():
    from safety_subspaces.runtime import frame_seeds

    fingerprints = {role: role * 4 for role in ("base", "aligned", "useful", "harmful", "contaminated")}
    one = plan(parse_study(MINIMAL), fingerprints, num_layers=4)
    three = plan(parse_study(with_changes(random_seeds=3)), fingerprints, num_layers=4)
    assert {job.id for job in one} <= {job.id for job in three}  # S = 1 is seed 0 of S: every stored number stays
    extra = [job for job in three if job.id not in {j.id for j in one}]
    evaluated = [job for job in extra if job.kind == "evaluate"]
    assert evaluated and {job.spec.edit.options["subspace"] for job in evaluated} == {"random_k", "random"}
    assert len(evaluated) == 4 * 2 * 5 * 2  # grid entries x seeded kinds x fractions x two more seeds
    seeds = frame_seeds(parse_study(MINIMAL).seed, 3)
    assert {job.spec.seed for job in evaluated} == set(seeds[1:]) and len(set(seeds)) == 3
    energy = [job for job in extra if job.kind == "analysis"]
    assert [job.spec.analysis.name for job in energy] == ["energy", "energy"]  # random kinds only, per extra seed
    assert all("top_k" not in job.spec.analysis.options["subspaces"] for job in energy)
