"""Studies end to end on the organism (test preset): run, resume after SIGKILL, Ray on CPU, run-dir identity, report."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from safety_subspaces.cli import main
from safety_subspaces.study.store import Store


def study_config(**changes) -> dict:
    """A small organism study: every job kind, few items."""
    config = {
        "name": "organism-mini",
        "seed": 0,
        "models": {"base": "organism:base", "aligned": "organism:aligned"},
        "finetunes": {"useful": "organism:useful", "harmful": "organism:harmful", "contaminated": "organism:contaminated"},
        "projection": {"subspaces": ["top_k", "random"], "fractions": [0.25, 0.75]},
        "evaluation": {
            "utility": {"task": "organism_arithmetic", "batch_size": 32, "limit": 16},
            "harm": {"prompts": "organism:harmful_eval", "judge": "organism", "max_new_tokens": 24, "batch_size": 32, "limit": 16},
        },
        "overlap": {
            "weights": {"updates": ["useful", "harmful", "base"], "eta": [0.1, 0.5, 0.9]},
            "activations": {"models": ["aligned", "useful"], "n": 16, "eta": [0.1, 0.5, 0.9],
                            "prompts": {"useful": "organism:arithmetic_eval", "harmful": "organism:harmful_eval"}},
        },
    }
    config.update(changes)
    return config


def write_study(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def zoo_env(organism_zoo, monkeypatch):
    monkeypatch.setenv("SAFETY_SUBSPACES_ZOO", str(organism_zoo))
    return organism_zoo


@pytest.fixture(scope="module")
def finished_run(organism_zoo, tmp_path_factory):
    """One complete local run of the small study, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("study")
    previous = os.environ.get("SAFETY_SUBSPACES_ZOO")
    os.environ["SAFETY_SUBSPACES_ZOO"] = str(organism_zoo)
    try:
        study = write_study(root / "study.yaml", study_config())
        assert main(["run", str(study), "--out", str(root / "run")]) == 0
    finally:
        if previous is None:
            os.environ.pop("SAFETY_SUBSPACES_ZOO", None)
        else:
            os.environ["SAFETY_SUBSPACES_ZOO"] = previous
    return root


def rows_of(run_dir: Path, table: str) -> list[dict]:
    store = Store(run_dir / "results.sqlite")
    try:
        return store.rows(table)
    finally:
        store.close()


def test_run_completes_every_job_and_reports(finished_run):
    run_dir = finished_run / "run"
    store = Store(run_dir / "results.sqlite")
    jobs = store.jobs()
    store.close()
    assert jobs and all(job["status"] == "done" for job in jobs)
    evaluation = rows_of(run_dir, "evaluation")
    projected = {(r["model"], r["scheme"], r["subspace"], r["fraction"]) for r in evaluation if r["variant"] == "projected"}
    assert len(projected) == 4 * 2 * 2  # the paper grid (4 scheme x fine-tune entries) x 2 kinds x 2 fractions
    assert {r["model"] for r in evaluation if r["variant"] == "reference"} == {"base", "aligned", "useful", "harmful", "contaminated"}
    assert rows_of(run_dir, "energy") and rows_of(run_dir, "weight_overlap") and rows_of(run_dir, "activation_overlap")
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and "Reading" in html
    for name in ("evaluation.csv", "energy.csv", "weight_overlap.csv", "activation_overlap.csv", "paper_tables.csv"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "figures" / "energy_kept.png").exists()


def test_every_evaluation_cell_has_its_items_interval_and_comparisons(finished_run):
    run_dir = finished_run / "run"
    evaluation = rows_of(run_dir, "evaluation")
    items = rows_of(run_dir, "items")
    headline = [r for r in evaluation if r["metric"] in ("harm_score", "refusal_rate") or r.get("headline")]
    assert headline and all(r["n"] == 16 and r["ci_low"] <= r["value"] <= r["ci_high"] for r in headline)
    by_cell = {(r["job"], r["metric"]): r for r in items}
    for row in headline:  # each cell's value is the mean of its stored per-item outcomes, keyed like its samples
        record = by_cell[(row["job"], row["metric"])]
        valid = [v for v in record["outcomes"] if v is not None]
        assert len(record["keys"]) == 16 and sum(valid) / len(valid) == pytest.approx(row["value"])
    harm = next(r for r in items if r["metric"] == "harm_score" and r["variant"] == "projected")
    assert harm["judge"] == "organism"
    replies = (run_dir / "samples" / harm["job"] / "harm" / "generations.jsonl").read_text().splitlines()
    assert len(replies) == 16
    lines = list(csv.DictReader((run_dir / "items.csv").open()))
    assert {"item", "key", "outcome", "answer", "judge"} <= set(lines[0])
    comparisons = list(csv.DictReader((run_dir / "comparisons.csv").open()))
    families = {r["family"] for r in comparisons}
    assert families == {"change", "top_k vs controls"}
    controls = [r for r in comparisons if r["family"] == "top_k vs controls"]
    assert {r["at"].split(" ")[0] for r in controls} == {"ϱ", "energy"} and all(r["n"] == "16" for r in controls)
    for row in comparisons:
        assert float(row["ci_low"]) <= float(row["ci_high"])
        if row["statistic"] == "difference":
            assert float(row["ci_low"]) <= float(row["estimate"]) <= float(row["ci_high"])
        assert float(row["p_value"]) <= float(row["p_holm"]) <= 1


def test_reference_rows_reproduce_the_zoo_manifest(finished_run, organism_zoo):
    behaviour = json.loads((organism_zoo / "manifest.json").read_text())["behaviour"]
    harm = [r for r in rows_of(finished_run / "run", "evaluation")
            if r["variant"] == "reference" and r["metric"] == "refusal_rate"]
    assert harm
    for row in harm:  # the first 16 held-out prompts: refusal share within sampling of the zoo's rate over all of them
        assert abs(row["value"] - behaviour[row["model"]]["harmful_refusal"]) <= 0.35


def test_rerun_skips_finished_jobs_and_duplicates_nothing(finished_run, zoo_env, capsys):
    run_dir = finished_run / "run"
    before = len(rows_of(run_dir, "evaluation"))
    assert main(["run", str(finished_run / "study.yaml"), "--out", str(run_dir), "--no-report"]) == 0
    assert "0 jobs run" in capsys.readouterr().out
    assert len(rows_of(run_dir, "evaluation")) == before


def test_report_regenerates_from_the_store(finished_run, tmp_path):
    run_dir = finished_run / "run"
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "Mode subspace overlap" in (run_dir / "report.html").read_text()


def test_different_config_is_refused_unless_forced(finished_run, zoo_env, tmp_path, capsys):
    other = write_study(tmp_path / "other.yaml", study_config(seed=1, overlap={"weights": None, "activations": None},
                                                              projection={"grid": [], "energy": True}))
    assert main(["run", str(other), "--out", str(finished_run / "run")]) == 2
    err = capsys.readouterr().err
    assert "holds a different study" in err and "--force" in err
    assert main(["run", str(other), "--out", str(finished_run / "run"), "--force", "--no-report"]) == 0
    assert (finished_run / "run-2" / "results.sqlite").exists()


def test_missing_model_and_unstartable_executor(zoo_env, tmp_path, capsys):
    missing = write_study(tmp_path / "m.yaml", study_config(models={"base": str(tmp_path / "nowhere"), "aligned": "organism:aligned"}))
    assert main(["run", str(missing), "--out", str(tmp_path / "r1")]) == 2
    assert "nowhere" in capsys.readouterr().err
    ray = write_study(tmp_path / "ray.yaml", study_config(executor={"kind": "ray", "address": "127.0.0.1:9"}))
    assert main(["run", str(ray), "--out", str(tmp_path / "r2")]) == 2
    assert "ray executor could not start" in capsys.readouterr().err


def test_sigkill_mid_run_then_resume(zoo_env, tmp_path):
    config = study_config(projection={"subspaces": ["top_k", "random_k", "random"], "fractions": [0.25, 0.5, 0.75]},
                          overlap={"weights": None, "activations": None})
    study = write_study(tmp_path / "kill.yaml", config)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "safety_subspaces", "run", str(study), "--out", str(run_dir), "--no-report"]
    env = {**os.environ, "SAFETY_SUBSPACES_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    done = 0
    while time.time() < deadline and process.poll() is None:
        if (run_dir / "results.sqlite").exists():
            with sqlite3.connect(run_dir / "results.sqlite", timeout=30) as probe:
                try:
                    done = probe.execute("SELECT COUNT(*) FROM jobs WHERE status = 'done'").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
            if done >= 4:
                break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = Store(run_dir / "results.sqlite")
    finished_before = store.done_ids()
    rows_before = {(r["job"], r["metric"]) for r in store.rows("evaluation")}
    store.close()
    assert len(finished_before) >= 4
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    store = Store(run_dir / "results.sqlite")
    jobs = store.jobs()
    evaluation = store.rows("evaluation")
    store.close()
    assert all(job["status"] == "done" for job in jobs)
    keys = [(r["job"], r["metric"]) for r in evaluation]
    assert len(keys) == len(set(keys))  # no duplicated row
    assert rows_before <= set(keys)  # nothing finished before the kill was lost
    evaluated = {job["id"] for job in jobs if job["kind"] == "evaluate"}
    assert {r["job"] for r in evaluation} == evaluated


def test_ray_executor_on_cpu_matches_local(finished_run, zoo_env, tmp_path):
    config = study_config(projection={"subspaces": ["top_k"], "fractions": [0.25], "energy": False},
                          overlap={"weights": None, "activations": None},
                          executor={"kind": "ray", "workers": 2})
    study = write_study(tmp_path / "ray.yaml", config)
    assert main(["run", str(study), "--out", str(tmp_path / "ray"), "--no-report"]) == 0
    ray_rows = {(r["model"], r["variant"], r["scheme"], r["subspace"], r["fraction"], r["metric"]): r["value"]
                for r in rows_of(tmp_path / "ray", "evaluation")}
    local_rows = {(r["model"], r["variant"], r["scheme"], r["subspace"], r["fraction"], r["metric"]): r["value"]
                  for r in rows_of(finished_run / "run", "evaluation")}
    shared = set(ray_rows) & set(local_rows)
    assert len(shared) >= 10
    assert all(ray_rows[key] == local_rows[key] for key in shared)


def test_power_from_a_pilot_run_and_in_the_config_check(finished_run, zoo_env, capsys):
    from safety_subspaces import stats

    run_dir = finished_run / "run"
    assert main(["power", "--metric", "utility", "--n", "200", "--pilot", str(run_dir), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    headline = next(r["metric"] for r in rows_of(run_dir, "evaluation") if r.get("headline"))
    items = {r["model"]: r for r in rows_of(run_dir, "items") if r["metric"] == headline and r["variant"] == "reference"}
    useful, aligned = items["useful"], items["aligned"]
    assert found["sd"] == pytest.approx(stats.paired_sd(useful["outcomes"], aligned["outcomes"]))
    assert "useful/reference − aligned/reference on 16 items" in found["source"]
    assert main(["run", str(finished_run / "study.yaml"), "--check", "--out", str(finished_run / "checked")]) == 0
    out = capsys.readouterr().out
    assert "power: utility: on n = 16 paired items" in out and "power: harm: on n = 16 paired items" in out
