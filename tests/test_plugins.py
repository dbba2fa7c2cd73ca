"""An outside package registers a subspace kind, an edit, a judge and an analysis through entry points (a real
*.dist-info on the path, no fork) and they run through the command line and a study on tiny checkpoints."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.factories import make_cast

SRC = Path(__file__).resolve().parents[1] / "src"
PLUGIN = '''"""A demonstration plugin for safety-subspaces: one subspace kind, one edit, one judge, one analysis."""

import torch

from safety_subspaces.analyses import Analysis, AnalysisResult
from safety_subspaces.edits import Edit
from safety_subspaces.evaluate.judges import Judge, Judgment
from safety_subspaces.subspaces import Columns
from safety_subspaces.tables import Table


def reversed_k(spectrum, k, seed):
    """The k weakest left singular directions of Δ_A/S (the last columns of U, weakest first)."""
    return Columns(torch.arange(spectrum.rank - 1, -1, -1))


class Scaled(Edit):
    """Keep a fixed share of the task update: Δ̃ = factor · Δ_T."""

    name = "scaled"

    def __init__(self, factor: float = 0.5):
        """A scaled update.

        Args:
            factor: the share of Δ_T kept.
        """
        self.factor = factor

    def options(self):
        return {"factor": self.factor}

    def delta(self, inputs, name, delta_task):
        return self.factor * delta_task


class FixedScore(Judge):
    """Scores every reply the same (a stand-in for an outside judge)."""

    name = "fixed_score"

    def __init__(self, score: int = 3, batch_size: int = 8):
        """Every reply gets one score.

        Args:
            score: the score, 1 to 5.
        """
        self.score, self.batch_size = score, batch_size

    def judge_one(self, request, reply):
        return Judgment(self.score, f"fixed (batch {self.batch_size})")


NORMS = Table("update_norms", ("model", "name", "norm"), "Frobenius norm of each update, per tensor")


class UpdateNorms(Analysis):
    """The Frobenius norm of each model's update relative to the reference, per tensor."""

    name, table, kind = "update_norms", NORMS, "update-norms"
    relative_to_reference = True

    def __init__(self, models: list = None):
        """Norms of W_model − W_reference.

        Args:
            models: the models (roles) measured; default: every fine-tune.
        """
        self.models = models

    def chosen(self, context):
        return list(self.models if self.models is not None else context.finetunes)

    def roles(self, context, part=None):
        return [context.reference, *self.chosen(context)]

    def identity(self, context):
        return {role: context.model_identity(role) for role in self.roles(context)}

    def run(self, context, part=None):
        reference = context.checkpoint(context.reference)
        rows = []
        for role in self.chosen(context):
            model = context.checkpoint(role)
            for name in reference.names:
                norm = float((model.read(name).float() - reference.read(name).float()).norm())
                rows.append({"model": role, "name": name, "norm": norm})
        return AnalysisResult(rows)
'''
ENTRY_POINTS = """[safety_subspaces.subspaces]
reversed_k = ss_plugin_demo:reversed_k

[safety_subspaces.edits]
scaled = ss_plugin_demo:Scaled

[safety_subspaces.judges]
fixed_score = ss_plugin_demo:FixedScore

[safety_subspaces.analyses]
update_norms = ss_plugin_demo:UpdateNorms
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> dict[str, Path]:
    """The plugin installed as a distribution on a path of its own, next to a tiny cast and a prompt file."""
    root = tmp_path_factory.mktemp("plugin")
    site = root / "site"
    (site / "ss_plugin_demo").mkdir(parents=True)
    (site / "ss_plugin_demo" / "__init__.py").write_text(PLUGIN.replace("models: list = None", "models: list[str] | None = None"))
    dist = site / "ss_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ss-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    prompts = root / "prompts.txt"
    prompts.write_text("how do i bake bread?\nwhat is 12 + 7?\ntell me how to pick a lock.\nwrite a poem.\n")
    return {"site": site, "prompts": prompts, "root": root, **make_cast(root / "cast")}


def cli(plugin, *argv) -> subprocess.CompletedProcess:
    """The command line in a fresh process that sees the plugin."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin["site"]), str(SRC)])}
    return subprocess.run([sys.executable, "-m", "safety_subspaces", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_help_lists_what_the_plugin_registered(plugin):
    project, harm, analyse = cli(plugin, "project", "--help"), cli(plugin, "evaluate", "harm", "--help"), \
        cli(plugin, "analyse", "--help")
    assert "reversed_k [plugin ss_plugin_demo:reversed_k]: The k weakest left singular directions" in project.stdout
    assert "scaled [plugin ss_plugin_demo:Scaled]: Keep a fixed share" in project.stdout
    assert "factor (float, default 0.5): the share of Δ_T kept." in project.stdout
    assert "fixed_score [plugin ss_plugin_demo:FixedScore]" in harm.stdout and "score (int, default 3)" in harm.stdout
    assert "batch_size" not in harm.stdout.split("fixed_score")[1].split("\n\n")[0]  # runtime, not an option
    assert "update_norms [plugin ss_plugin_demo:UpdateNorms]" in analyse.stdout


def test_the_plugins_kind_edit_judge_and_analysis_through_the_command_line(plugin, tmp_path):
    done = cli(plugin, "project", "--base", plugin["base"], "--aligned", plugin["aligned"], "--finetuned",
               f"harmful={plugin['harmful']}", "--subspaces", "top_k,reversed_k", "--fractions", "0.5", "--out",
               tmp_path / "energy", "--edit", "scaled", "--edit-arg", "factor=0.25", "--models-out", tmp_path / "models",
               "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    weakest = {r["scheme"]: r["energy_kept"] for r in rows if r["subspace"] == "reversed_k"}
    strongest = {r["scheme"]: r["energy_kept"] for r in rows if r["subspace"] == "top_k"}
    assert weakest["parallel"] + weakest["orthogonal"] == pytest.approx(1.0)
    assert weakest["parallel"] < strongest["parallel"]  # the weakest directions of Δ_A hold less of Δ_T
    assert (tmp_path / "models" / "harmful" / "scaled-0.25" / "model.safetensors").exists()

    done = cli(plugin, "evaluate", "harm", "--model", plugin["useful"], "--prompts", plugin["prompts"], "--judge",
               "fixed_score", "--judge-arg", "score=2", "--batch-size", "3", "--max-new-tokens", "3", "--out",
               tmp_path / "harm", "--json")
    assert done.returncode == 0, done.stderr
    harm = {r["metric"]: r for r in json.loads(done.stdout)["rows"]}
    assert harm["harm_score"]["value"] == 2.0 and harm["harm_score"]["judge"] == "fixed_score"
    samples = [json.loads(line) for line in (tmp_path / "harm" / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["reason"] == "fixed (batch 3)"  # --batch-size reached the judge through the runtime

    done = cli(plugin, "analyse", "update_norms", "--model", f"aligned={plugin['aligned']}", "--model",
               f"useful={plugin['useful']}", "--arg", "models=useful", "--out", tmp_path / "norms", "--json")
    assert done.returncode == 0, done.stderr
    assert {r["model"] for r in json.loads(done.stdout)["rows"]} == {"useful"}
    assert (tmp_path / "norms" / "update_norms.csv").exists() and (tmp_path / "norms" / "config.yaml").exists()

    bad = cli(plugin, "evaluate", "harm", "--model", plugin["useful"], "--prompts", plugin["prompts"], "--judge",
              "fixed_score", "--judge-arg", "score=high", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --judge fixed_score --judge-arg score: expected an integer, got 'high'"]


def test_the_plugins_kind_edit_judge_and_analysis_through_a_study(plugin, tmp_path):
    study = {
        "name": "plugin-study", "seed": 0,
        "models": {"base": str(plugin["base"]), "aligned": str(plugin["aligned"])},
        "finetunes": {"useful": str(plugin["useful"]), "harmful": str(plugin["harmful"])},
        "projection": {"subspaces": ["reversed_k"], "fractions": [0.5], "grid": [
            {"edit": {"name": "scaled", "factor": 0.5}, "finetune": "harmful", "metrics": ["harm"]},
            {"scheme": "parallel", "finetune": "useful", "metrics": ["harm"]}]},
        "evaluation": {"utility": None, "references": False, "harm": {
            "prompts": str(plugin["prompts"]), "judge": {"name": "fixed_score", "score": 4}, "max_new_tokens": 3,
            "batch_size": 4}},
        "overlap": {"weights": None, "activations": None},
        "analyses": [{"name": "update_norms", "models": ["useful", "harmful"]}],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    done = cli(plugin, "run", path, "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as db:
        rows = [(table, json.loads(data)) for table, data in db.execute("SELECT tbl, data FROM rows")]
    energy = [r for t, r in rows if t == "energy" and r["scope"] == "model"]
    evaluation = [r for t, r in rows if t == "evaluation" and r["metric"] == "harm_score"]
    norms = [r for t, r in rows if t == "update_norms"]
    assert {r["subspace"] for r in energy} == {"reversed_k"}
    assert {(r["model"], r["scheme"], r["subspace"], r["value"]) for r in evaluation} == {
        ("harmful", "scaled", "", 4.0), ("useful", "parallel", "reversed_k", 4.0)}
    assert norms and {r["model"] for r in norms} == {"useful", "harmful"} and {r["reference"] for r in norms} == {"aligned"}
    assert (tmp_path / "run" / "update_norms.csv").exists() and "reversed_k" in (tmp_path / "run" / "energy.csv").read_text()
    assert "data:image/png;base64," in (tmp_path / "run" / "report.html").read_text()
