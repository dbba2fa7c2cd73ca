"""A study's defences: section: config checks (one error line naming the key), the jobs it plans (published and
controls, seeded controls per frame seed, the checkpoints an edit reads), and a run on the organism whose report
has the Defences section with its paired comparisons."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import yaml

from safety_subspaces.cli import main
from safety_subspaces.errors import UserError
from safety_subspaces.study.config import parse_study, study_document
from safety_subspaces.study.plan import defence_jobs
from safety_subspaces.study.store import Store

DEFENCES = [
    {"name": "safe_lora", "finetunes": ["harmful"], "num_layers": 4},
    {"name": "resta", "finetunes": ["contaminated"], "beta": 0.5},
    {"name": "safemerge", "finetunes": ["contaminated"], "reads": {"safety_update": "safety_tuned"}, "threshold": 0.5,
     "controls": ["random"]},
]


def config(**changes) -> dict:
    """A defences-only organism study with few items."""
    data = {
        "name": "organism-defences",
        "seed": 0,
        "random_seeds": 2,
        "models": {"base": "organism:base", "aligned": "organism:aligned", "safety_tuned": "organism:safety"},
        "finetunes": {"useful": "organism:useful", "harmful": "organism:harmful", "contaminated": "organism:contaminated"},
        "projection": {"grid": [], "energy": False},
        "overlap": {"weights": None, "activations": None},
        "evaluation": {
            "utility": {"task": "organism_arithmetic", "batch_size": 32, "limit": 16},
            "harm": {"prompts": "organism:harmful_eval", "judge": "organism", "max_new_tokens": 24, "batch_size": 32,
                     "limit": 16},
        },
        "defences": DEFENCES,
    }
    data.update(changes)
    return data


def test_entries_parse_with_their_options_controls_and_reads():
    study = parse_study(config())
    safe_lora, resta, safemerge = study.defences
    assert safe_lora.options == {"num_layers": 4} and safe_lora.controls == ["random_k", "random"]
    assert resta.controls == [] and resta.read_roles() == {"harmful": "harmful"}
    assert safemerge.read_roles() == {"safety_update": "safety_tuned"} and safemerge.controls == ["random"]
    assert parse_study(study_document(study)).defences == study.defences  # the stored form reads back the same


def test_planned_jobs_cover_published_controls_and_seeds():
    study = parse_study(config())
    fingerprints = {role: role for role in ("base", "aligned", "safety_tuned", "useful", "harmful", "contaminated")}
    jobs = defence_jobs(study, fingerprints)
    specs = [job.spec for job in jobs]
    # safe_lora: published + random_k x 2 seeds + random x 2 seeds; resta: 1; safemerge: published + random x 2
    assert len(jobs) == 5 + 1 + 3 and len({job.id for job in jobs}) == len(jobs)
    assert [s.role for s in specs[:5]] == ["defence", "control", "control", "control", "control"]
    assert {s.edit.options.get("subspace") for s in specs[:5]} == {None, "random_k", "random"}
    assert specs[5].others == {"harmful": "harmful"} and specs[6].others == {"safety_update": "safety_tuned"}
    changed = defence_jobs(study, {**fingerprints, "safety_tuned": "other"})  # a read model is part of the job's id
    assert [j.id for j in changed][:6] == [j.id for j in jobs][:6] and changed[6].id != jobs[6].id


def test_training_time_defences_plan_one_trained_model_per_variant():
    from safety_subspaces.study.recipes import trained_defences

    recipe = {"recipe": {"from": "aligned", "data": "organism:harmful", "max_steps": 4}}
    study = parse_study(config(finetunes={"harmful": recipe, "useful": "organism:useful"}, defences=[
        {"name": "lox", "finetunes": ["harmful"], "k": 2, "controls": ["random"]},
        {"name": "asft", "finetunes": ["harmful"], "lambda": 0.5, "controls": []}]))
    made = trained_defences(study)
    assert [(e.name, f, r, k, m) for e, f, r, k, m in made] == [
        ("lox", "harmful", "defence", "top_k", "harmful-lox-top_k"), ("lox", "harmful", "control", "random",
                                                                     "harmful-lox-random"),
        ("asft", "harmful", "defence", "top_k", "harmful-asft-top_k")]
    fingerprints = {role: role for role in ("base", "aligned", "safety_tuned", "useful", "harmful",
                                            *(m for *_, m in made))}
    jobs = defence_jobs(study, fingerprints)
    assert [(j.spec.scheme, j.spec.subspace, j.spec.trained) for j in jobs] == [(m.split("-")[1], m.split("-")[2], m)
                                                                                for *_, m in made]
    with pytest.raises(UserError, match="recipe.from is 'base'"):
        parse_study(config(finetunes={"harmful": {"recipe": {**recipe["recipe"], "from": "base"}}},
                           defences=[{"name": "asft", "finetunes": ["harmful"]}]))


@pytest.mark.parametrize("entry,needle", [
    ({"name": "safe_lora", "finetunes": ["harmful"], "thresold": 0.5}, "unknown option 'thresold' for edit 'safe_lora'"),
    ({"name": "safe_lora", "finetunes": ["harmful"], "num_layers": "many"}, "defences[0].num_layers"),
    ({"name": "safe_lora", "finetunes": ["nope"]}, "defences[0].finetunes[0]: 'nope' is not a fine-tune"),
    ({"name": "resta", "finetunes": ["contaminated"], "controls": ["random"]}, "resta has no subspace option"),
    ({"name": "resta", "finetunes": ["harmful"]}, "'harmful' is also a fine-tune it defends"),
    ({"name": "safemerge", "finetunes": ["harmful"]}, "safemerge reads safety_update"),
    ({"name": "lox", "finetunes": ["harmful"]}, "lox acts before or during fine-tuning, so it needs 'harmful' made by a "
                                                "recipe"),
    ({"name": "asft", "finetunes": ["harmful"], "lamda": 1}, "unknown option 'lamda' for constraint 'asft'"),
    ({"name": "asft", "finetunes": ["harmful"], "reads": {"harmful": "useful"}}, "asft reads no other model"),
    ({"name": "shield", "finetunes": ["harmful"]}, "unknown defence 'shield'"),
])
def test_bad_entries_are_one_error_naming_the_key(entry, needle):
    with pytest.raises(UserError) as caught:
        parse_study(config(defences=[entry]))
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_a_run_on_the_organism_reports_the_defences(organism_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_SUBSPACES_ZOO", str(organism_zoo))
    path = tmp_path / "study.yaml"
    finetunes = {**config()["finetunes"], "harmful_r": {"recipe": {
        "from": "aligned", "data": "organism:harmful", "lr": 1e-3, "max_steps": 6, "batch_size": 16, "grad_accum": 1,
        "warmup": 0.0, "max_length": 64, "precision": "fp32"}}}
    trained = [{"name": "lox", "finetunes": ["harmful_r"], "k": 4, "alpha": 0.5, "controls": ["random"],
                "metrics": ["harm"]},
               {"name": "asft", "finetunes": ["harmful_r"], "controls": [], "metrics": ["harm"]}]
    path.write_text(yaml.safe_dump(config(random_seeds=1, finetunes=finetunes, defences=[*DEFENCES, *trained])))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    store = Store(tmp_path / "run" / "results.sqlite")
    try:
        rows = store.rows("evaluation")
    finally:
        store.close()
    defended = [r for r in rows if r["variant"] in ("defence", "control")]
    assert {(r["scheme"], r["variant"], r["subspace"]) for r in defended} == {
        ("safe_lora", "defence", "top_k"), ("safe_lora", "control", "random_k"), ("safe_lora", "control", "random"),
        ("resta", "defence", ""), ("safemerge", "defence", "top_k"), ("safemerge", "control", "random"),
        ("lox", "defence", "top_k"), ("lox", "control", "random"), ("asft", "defence", "top_k")}
    assert (tmp_path / "run" / "models" / "aligned-lox-top_k" / "defence.json").is_file()
    manifest = (tmp_path / "run" / "models" / "harmful_r-asft-top_k" / "manifest.json").read_text()
    assert '"constraint"' in manifest
    safe_lora = [r for r in defended if r["scheme"] == "safe_lora"]
    assert all(r["modules_edited"] == 4 and 0 < r["energy_kept"] < 1 for r in safe_lora)
    with open(tmp_path / "run" / "comparisons.csv", newline="") as handle:
        comparisons = [r for r in csv.DictReader(handle) if r["family"] == "defences"]
    # per defence x fine-tune x headline metric (utility, harm): vs FT and vs each control
    assert len(comparisons) == 2 * (3 + 1 + 2) + (2 + 1)  # lox: vs FT, vs random; asft: vs FT (harm only)
    assert all(r["p_holm"] not in ("", None) for r in comparisons if r["p_value"] not in ("", None))
    report = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Defences</h2>" in report and "safe_lora on random_k (control)" in report
