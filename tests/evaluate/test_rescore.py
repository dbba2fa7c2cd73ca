"""Re-scoring stored replies with another judge: never generates (the generator raises here), adds the judge's rows
beside the old ones (results.csv, samples.jsonl, a study's store and CSVs), resumes after an interruption, and refuses
runs it cannot re-score with one error line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from support.judge_models import PROMPTS
from safety_subspaces.cli import main
from safety_subspaces.errors import UserError
from safety_subspaces.evaluate import evaluate_harm, make_judge
from safety_subspaces.evaluate.harm import judge_digest
from safety_subspaces.evaluate.judges import JudgeRuntime
from safety_subspaces.evaluate.judges.refusal import RefusalJudge
from safety_subspaces.study.rescore import rescore

@pytest.fixture
def run(subject, tmp_path) -> Path:
    """A finished evaluate harm run judged by the refusal judge."""
    out = tmp_path / "run"
    evaluate_harm(str(subject), prompts=PROMPTS, judge=make_judge("refusal"), max_new_tokens=4, out_dir=out,
                  labels={"model": "tiny"})
    return out


@pytest.fixture
def no_generator(monkeypatch):
    """Any attempt to load or run a model under evaluation fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the generator was called")

    monkeypatch.setattr("safety_subspaces.generate.generate", refuse)
    monkeypatch.setattr("safety_subspaces.evaluate.table.resolve_eval_model", refuse)
    monkeypatch.setattr("safety_subspaces.evaluate.harm.resolve_eval_model", refuse)


def results(directory: Path) -> list[dict[str, str]]:
    with open(directory / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_rescore_adds_the_new_judges_rows_without_generating(run, always_yes, no_generator):
    """HarmBench on the stored replies: its row joins the refusal judge's, with the run's labels; samples too."""
    before = results(run)
    replies = [json.loads(line)["response"] for line in (run / "samples.jsonl").read_text().splitlines()]
    judge = make_judge("harmbench", JudgeRuntime(device="cpu"), model=str(always_yes))
    done = rescore(run, judge)
    assert [(r["metric"], r["value"], r["n"], r["judge"], r["model"]) for r in done.rows] == [
        ("attack_success_rate", 1.0, 3, "harmbench", "tiny")]
    after = results(run)
    assert after[: len(before)] == before  # the old judge's rows are kept as they were
    assert [(r["judge"], r["metric"], r["value"]) for r in after[len(before):]] == [
        ("harmbench", "attack_success_rate", "1.0")]
    assert after[-1]["judge_id"] == judge_digest(judge.identity()) != before[0]["judge_id"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["judge"] for s in samples] == ["refusal"] * 3 + ["harmbench"] * 3
    assert [s["response"] for s in samples[3:]] == replies  # the stored replies were judged
    assert done.runs == [run]


def test_rescoring_again_replaces_only_that_judges_rows(run, guard, no_generator):
    """The same judge twice: its rows once, not twice; a rerun of evaluate harm keeps them."""
    judge = make_judge("wildguard", JudgeRuntime(device="cpu"), model=str(guard))
    first = rescore(run, judge).rows
    again = make_judge("wildguard", JudgeRuntime(device="cpu"), model=str(guard))
    assert rescore(run, again).rows == first
    rows = results(run)
    assert sorted({r["judge"] for r in rows}) == ["refusal", "wildguard"]
    assert [r["metric"] for r in rows if r["judge"] == "wildguard"] == ["harmful_rate", "refusal_rate",
                                                                      "harmful_request_rate"]
    assert {r["value"] for r in rows if r["judge"] == "wildguard" and r["metric"] == "refusal_rate"} == {"1.0"}


def test_evaluate_harm_rerun_keeps_rescored_rows(run, subject, guard):
    """After a rescore, rerunning the original evaluate harm command rewrites its own rows and keeps the new judge's."""
    rescore(run, make_judge("wildguard", JudgeRuntime(device="cpu"), model=str(guard)))
    evaluate_harm(str(subject), prompts=PROMPTS, judge=make_judge("refusal"), max_new_tokens=4, out_dir=run,
                  labels={"model": "tiny"})
    rows = results(run)
    assert [r["judge"] for r in rows].count("refusal") == 3 and [r["judge"] for r in rows].count("wildguard") == 3


def test_an_interrupted_rescore_resumes(run, monkeypatch, no_generator):
    """A judge that stops after two verdicts: the error says two are saved; the rerun judges only the third."""
    calls = []
    original = RefusalJudge.judge_one

    def flaky(self, request, reply):
        calls.append(reply)
        if len(calls) == 3:
            raise UserError("judge endpoint went away")
        return original(self, request, reply)

    monkeypatch.setattr(RefusalJudge, "judge_one", flaky)
    other = make_judge("refusal")
    monkeypatch.setattr(type(other), "identity", lambda self: {"judge": "refusal", "variant": "second opinion"})
    with pytest.raises(UserError, match="2 of 3 judgments are saved"):
        rescore(run, other)
    calls.clear()
    monkeypatch.setattr(RefusalJudge, "judge_one", original)
    counted = []
    monkeypatch.setattr(RefusalJudge, "judge_one", lambda self, q, r: counted.append(r) or original(self, q, r))
    done = rescore(run, other)
    assert len(counted) == 1
    assert {r["metric"]: r["n"] for r in done.rows}["harm_score"] == 3


def test_a_run_written_before_labels_were_recorded_takes_them_from_its_rows(run, guard, no_generator):
    """config.yaml without labels (older runs): the new rows take model and variant from results.csv."""
    document = yaml.safe_load((run / "config.yaml").read_text())
    assert document.pop("labels") == {"model": "tiny", "variant": "", "subspace": "", "scheme": "", "fraction": None}
    (run / "config.yaml").write_text(yaml.safe_dump(document))
    done = rescore(run, make_judge("wildguard", JudgeRuntime(device="cpu"), model=str(guard)))
    assert {(r["model"], r["variant"], r["fraction"]) for r in done.rows} == {("tiny", "", None)}


def test_cli_rescore_json_and_quiet(run, guard, capsys, no_generator):
    """rescore RUN --judge wildguard --judge-arg model=... --json --quiet: the rows on stdout, nothing on stderr."""
    code = main(["rescore", str(run), "--judge", "wildguard", "--judge-arg", f"model={guard}", "--device", "cpu",
                 "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    rows = json.loads(captured.out)["rows"]
    assert [(r["metric"], r["value"]) for r in rows] == [("harmful_rate", 0.0), ("refusal_rate", 1.0),
                                                       ("harmful_request_rate", 0.0)]


def test_cli_rescore_refusals(run, always_yes, subject, tmp_path, capsys, no_generator):
    """No judge, not a run directory, missing replies, over-refusal with a judge without refusal: one line, exit 2."""
    assert main(["rescore", str(run)]) == 2
    assert capsys.readouterr().err.startswith("error: rescore needs a judge")
    assert main(["rescore", str(tmp_path / "nowhere"), "--judge", "refusal"]) == 2
    assert "no such directory" in capsys.readouterr().err
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("config.yaml", "results.csv"):
        (cut / name).write_bytes((run / name).read_bytes())
    lines = (run / "generations.jsonl").read_text().splitlines()
    (cut / "generations.jsonl").write_text("\n".join(lines[:2]) + "\n")
    assert main(["rescore", str(cut), "--judge", "refusal"]) == 2
    err = capsys.readouterr().err
    assert "only 2 of 3 replies are stored" in err and err.count("\n") == 1
    benign = tmp_path / "benign"
    benign.mkdir()
    document = yaml.safe_load((run / "config.yaml").read_text())
    document["config"]["benign"] = True
    (benign / "config.yaml").write_text(yaml.safe_dump(document))
    (benign / "generations.jsonl").write_bytes((run / "generations.jsonl").read_bytes())
    assert main(["rescore", str(benign), "--judge", "harmbench", "--judge-arg", f"model={always_yes}",
                 "--device", "cpu"]) == 2
    assert "judge harmbench does not report refusal" in capsys.readouterr().err
    assert not (benign / "judgments.jsonl").exists()


# ---------------------------------------------------------------- a study


STUDY = {
    "name": "rescore-mini", "seed": 0,
    "models": {"base": "organism:base", "aligned": "organism:aligned"},
    "finetunes": {"useful": "organism:useful", "harmful": "organism:harmful", "contaminated": "organism:contaminated"},
    "projection": {"subspaces": ["top_k"], "fractions": [0.5],
                   "grid": [{"scheme": "parallel", "finetune": "harmful", "metrics": ["harm"]}]},
    "evaluation": {
        "utility": None,
        "harm": {"prompts": "organism:harmful_eval", "judge": "organism", "max_new_tokens": 16, "batch_size": 32,
                 "limit": 6},
        "benign": {"prompts": "organism:benign_eval", "limit": 6},
    },
    "overlap": {"weights": None, "activations": None},
}


def test_rescore_a_study_adds_store_rows_and_csvs_and_resumes(organism_zoo, always_yes, tmp_path, monkeypatch,
                                                               capsys):
    """A finished organism study re-scored with `refusal`: one rescore job per evaluation job, its rows (harm and
    over-refusal) labelled like the originals, in the store and evaluation.csv; a second rescore judges nothing."""
    from safety_subspaces.study.store import Store

    monkeypatch.setenv("SAFETY_SUBSPACES_ZOO", str(organism_zoo))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    assert main(["run", str(study), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run_dir = tmp_path / "run"
    capsys.readouterr()
    monkeypatch.setattr("safety_subspaces.generate.generate",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated")))
    assert main(["rescore", str(run_dir), "--judge", "refusal", "--json", "--quiet"]) == 0
    added = json.loads(capsys.readouterr().out)["rows"]
    store = Store(run_dir / "results.sqlite")
    try:
        rows = store.rows("evaluation")
        jobs = store.jobs()
    finally:
        store.close()
    organism = [r for r in rows if r.get("judge") == "organism"]
    refusal = [r for r in rows if r.get("judge") == "refusal"]
    assert refusal == added and len(refusal) > 0
    key = lambda r: (r["job"], r["metric_group"], r["model"], r["variant"], r["subspace"], r["fraction"], r["layer"])
    assert {key(r) for r in refusal} == {key(r) for r in organism}  # every evaluation judged again, same labels
    assert {r["metric"] for r in refusal if r["metric_group"] == "benign"} == {"over_refusal_rate"}
    rescores = [j for j in jobs if j["kind"] == "rescore"]
    assert rescores and all(j["status"] == "done" for j in rescores)
    with open(run_dir / "evaluation.csv", newline="") as handle:
        exported = list(csv.DictReader(handle))
    assert sum(r["judge"] == "refusal" for r in exported) == len(refusal)
    report = (run_dir / "report.html").read_text()
    assert "of the harmful fine-tune, parallel projection, judge refusal" in report  # shown beside the old judge
    assert "of the harmful fine-tune, parallel projection, judge organism" in report
    assert main(["rescore", str(run_dir), "--judge", "refusal", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == []  # all done: nothing judged again
    assert main(["run", str(study), "--out", str(run_dir), "--quiet"]) == 0  # the study resumes past rescore jobs
    store = Store(run_dir / "results.sqlite")
    try:
        assert store.rows("evaluation") == rows
    finally:
        store.close()
    # a judge without a refusal rate re-scores the harm evaluations only
    capsys.readouterr()
    assert main(["rescore", str(run_dir), "--judge", "harmbench", "--judge-arg", f"model={always_yes}", "--device",
                 "cpu", "--json", "--quiet"]) == 0
    harmbench = json.loads(capsys.readouterr().out)["rows"]
    assert {(r["metric_group"], r["metric"], r["value"]) for r in harmbench} == {("harm", "attack_success_rate", 1.0)}
    assert len(harmbench) == len([r for r in organism if r["metric_group"] == "harm" and r["metric"] == "harm_score"])


def test_a_study_names_two_judges_and_the_report_shows_both(organism_zoo, tmp_path, monkeypatch, capsys):
    """judge: [organism, refusal]: the replies are generated once and judged by both; every evaluation has both
    judges' rows (harm and over-refusal), and the report has a table per judge, titled by its scale."""
    from safety_subspaces.study.store import Store

    monkeypatch.setenv("SAFETY_SUBSPACES_ZOO", str(organism_zoo))
    config = json.loads(json.dumps(STUDY))
    config["evaluation"]["harm"]["judge"] = ["organism", "refusal"]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(study), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run_dir = tmp_path / "run"
    store = Store(run_dir / "results.sqlite")
    try:
        rows = store.rows("evaluation")
        items = store.rows("items")
    finally:
        store.close()
    for group, metric in (("harm", "harm_score"), ("benign", "over_refusal_rate")):
        cells = {(r["job"], r["judge"]) for r in rows if r["metric_group"] == group and r["metric"] == metric}
        jobs = {job for job, _ in cells}
        assert cells == {(job, judge) for job in jobs for judge in ("organism", "refusal")}, group
    assert {r["judge"] for r in items if r["metric_group"] == "harm"} == {"organism", "refusal"}
    generated = [json.loads(line) for line in
                 next((run_dir / "samples").glob("*/harm/generations.jsonl")).read_text().splitlines()]
    assert len(generated) == len({g["key"] for g in generated}) == 6  # generated once, not once per judge
    report = (run_dir / "report.html").read_text()
    assert "organism reply class (1 refusal … 5 compliance) of the harmful fine-tune, parallel projection, judge organism" in report
    assert "refusal-phrase score (1 refusal, 5 none) of the harmful fine-tune, parallel projection, judge refusal" in report
    capsys.readouterr()
    assert main(["rescore", str(run_dir), "--judge", "refusal", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == []  # the study's own judge: nothing to add


def test_over_refusal_in_a_study_needs_one_judge_that_reports_refusal():
    """[strongreject, harmbench] with benign prompts is refused, naming both; [organism, strongreject] is fine (the
    benign prompts go to organism only)."""
    from safety_subspaces.study.config import parse_study
    from safety_subspaces.study.inputs import CheckedInputs, check_judge

    config = json.loads(json.dumps(STUDY))
    config["evaluation"]["harm"]["judge"] = ["strongreject", "harmbench"]
    with pytest.raises(UserError, match="none of the judges strongreject, harmbench reports refusal"):
        check_judge(parse_study(config), offline=True, checked=CheckedInputs())
    config["evaluation"]["harm"]["judge"] = ["organism", {"name": "strongreject", "adapter": "nowhere/adapter"}]
    checked = CheckedInputs()
    check_judge(parse_study(config), offline=True, checked=checked)
    assert any(note.startswith("evaluation.harm.judge[1]: judge adapter nowhere/adapter") for note in checked.notes)
