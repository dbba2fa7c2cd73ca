"""Hostile and bad inputs across every command: exit code 2, one `error:` line naming the culprit, no traceback,
nothing written, inputs byte-identical. Also output locks, stale locks and partial directories of killed processes.

Tests run as root, where chmod does not bite: read-only file systems, permission denials and full disks are simulated
by making os.mkdir / os.open / os.fsync refuse paths under the test's output directory with the real errno; /proc
and a file where a directory is expected are real.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from support import factories
from safety_subspaces.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
PROMPTS = [f"tell me a fact about the number {i}." for i in range(8)]
RECORDS = [{"prompt": f"what is {i} + 1?", "response": f"the answer is {i + 1}."} for i in range(16)]


# ------------------------------------------------------------------------------------------------ fixtures


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def variant(source: Path, target: Path, change) -> Path:
    """A copy of a checkpoint whose tensors were changed by change(tensors) (saved as safetensors again)."""
    shutil.copytree(source, target)
    tensors = weights(target)
    change(tensors)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Inputs every case reads: tiny real checkpoints (good, pickle-only, NaN, hostile tensor name, other shape),
    data files (good and broken), a zoo-like data folder, a real fine-tuned model directory and study YAMLs."""
    root = tmp_path_factory.mktemp("world")
    base = factories.tiny_model(seed=0)
    aligned = factories.perturbed(base, seed=1, rank=3)
    w = {
        "base": factories.save(base, root / "base"),
        "aligned": factories.save(aligned, root / "aligned"),
        "ft": factories.save(factories.perturbed(aligned, seed=2, rank=2, scale=0.02), root / "ft"),
        "wide": factories.save(factories.tiny_model(seed=3, intermediate=40), root / "wide"),
    }
    w["pickled"] = root / "pickled"
    shutil.copytree(w["ft"], w["pickled"])
    torch.save(weights(w["pickled"]), w["pickled"] / "pytorch_model.bin")
    (w["pickled"] / "model.safetensors").unlink()

    def poison(tensors):
        tensors["model.layers.0.self_attn.v_proj.weight"][0, 0] = float("nan")

    w["nan"] = variant(w["ft"], root / "nan", poison)
    w["slash"] = variant(w["ft"], root / "slash", lambda t: t.update({"../../escape": torch.zeros(2)}))
    w["good"] = write_jsonl(root / "good.jsonl", RECORDS)
    w["prompts"] = write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    w["prompts2"] = write_jsonl(root / "prompts2.jsonl", [{"prompt": p.replace("fact", "story")} for p in PROMPTS])
    w["bad_utf8"] = root / "bad_utf8.jsonl"
    w["bad_utf8"].write_bytes(b'{"prompt": "fine", "response": "ok"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    w["bad_quote"] = root / "bad_quote.csv"
    w["bad_quote"].write_text('prompt,response\nhello,world\n"never closed,x\nmore,rows\n', encoding="utf-8")
    w["bad_utf8_csv"] = root / "bad_utf8.csv"
    w["bad_utf8_csv"].write_bytes(b"prompt\nfine\n\xff\xfebad\n")
    w["rubric"] = root / "rubric.md"
    w["rubric"].write_bytes(b"{request} {response} \xff\n")
    w["zoo"] = root / "zoo"
    write_jsonl((w["zoo"] / "data").mkdir(parents=True) or w["zoo"] / "data" / "arithmetic_eval.jsonl",
                [{"prompt": f"{i} + 1 =", "answer": str(i + 1)} for i in range(4)])
    w["empty_dir"] = root / "empty_dir"
    w["empty_dir"].mkdir()
    from safety_subspaces.finetune import Recipe, finetune

    finetune(str(w["ft"]), RECORDS, root / "finetuned", Recipe(lr=1e-3, batch_size=4, grad_accum=1, max_steps=1),
             device="cpu")
    w["finetuned"] = root / "finetuned"
    return w


def study(world, path: Path, **changes) -> Path:
    """A tiny study over the world's checkpoints (refusal judge, local prompts), with top-level keys changed."""
    config = {
        "name": "tiny",
        "models": {"base": str(world["base"]), "aligned": str(world["aligned"])},
        "finetunes": {"useful": str(world["ft"])},
        "projection": {"subspaces": ["top_k"], "fractions": [0.5],
                       "grid": [{"scheme": "parallel", "finetune": "useful", "metrics": ["harm"]}]},
        "evaluation": {"utility": None, "harm": {"prompts": str(world["prompts"]), "judge": "refusal",
                                                 "max_new_tokens": 2, "batch_size": 8, "limit": 2}},
        "overlap": {"weights": {"updates": ["useful", "base"], "eta": [0.5]}, "activations": None},
        "device": "cpu",
    }
    config.update(changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def digest(root: Path) -> str:
    """A hash of every path name and file content under root."""
    h = hashlib.sha256()
    for item in sorted(Path(root).rglob("*")):
        h.update(str(item.relative_to(root)).encode())
        if item.is_file():
            h.update(item.read_bytes())
    return h.hexdigest()


def call(argv: list[str]) -> int:
    """main(argv)'s exit code (usage errors exit through SystemExit)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return int(exit_.code)


def refused(capsys, world, outputs: Path, argv: list, *culprits: str) -> str:
    """Run argv expecting exit 2, one `error:` line naming every culprit, no traceback, nothing written under
    outputs and every input byte-identical; return the line."""
    before_inputs, before_outputs = digest(world["base"].parent), digest(outputs)
    code = call(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for culprit in culprits:
        assert str(culprit) in lines[0], (culprit, lines[0])
    assert digest(outputs) == before_outputs, sorted(p.name for p in outputs.rglob("*"))
    assert digest(world["base"].parent) == before_inputs
    return lines[0]


@pytest.fixture
def outputs(tmp_path) -> Path:
    out = tmp_path / "outputs"
    out.mkdir()
    return out


def project(world, out, *extra, finetuned=None):
    finetuned = finetuned or f"useful={world['ft']}"
    return ["project", "--base", world["base"], "--aligned", world["aligned"], f"--finetuned={finetuned}",
            "--out", out, "--fractions", "0.5", *extra]


def weights_cmd(world, out, *extra, update=None):
    return ["overlap", "weights", "--reference", world["aligned"], "--update", f"base={world['base']}",
            "--update", update or f"useful={world['ft']}", "--eta", "0.5", "--out", out, *extra]


def activations_cmd(world, out, *extra, model=None):
    return ["overlap", "activations", "--model", model or f"m={world['aligned']}", "--prompts", f"a={world['prompts']}",
            "--prompts", f"b={world['prompts2']}", "--n", "4", "--eta", "0.5", "--depth", "0,1", "--out", out, *extra]


def utility_cmd(world, out, *extra, model=None):
    return ["evaluate", "utility", "--model", model or world["ft"], "--task", "organism_arithmetic", "--zoo",
            world["zoo"], "--limit", "2", "--max-gen-toks", "2", "--device", "cpu", "--out", out, *extra]


def harm_cmd(world, out, *extra, model=None, prompts=None):
    return ["evaluate", "harm", "--model", model or world["ft"], "--prompts", prompts or world["prompts"], "--judge",
            "refusal", "--limit", "2", "--max-new-tokens", "2", "--device", "cpu", "--out", out, *extra]


def finetune_cmd(world, out, *extra, model=None, data=None):
    return ["finetune", "--model", model or world["ft"], "--data", data or world["good"], "--out", out,
            "--batch-size", "4", "--grad-accum", "1", "--max-steps", "1", "--lr", "1e-3", "--device", "cpu", *extra]


# ------------------------------------------------------------------------------------------------ §2: names that become paths


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ".hidden", "x\ny", "-dash", "a" * 65])
def test_project_finetune_names_that_would_escape(world, outputs, capsys, name):
    line = refused(capsys, world, outputs, project(world, outputs / "run", "--write", "parallel:top_k:0.5",
                                                   "--models-out", outputs / "models", finetuned=f"{name}={world['ft']}"),
                   "--finetuned name", repr(name))
    assert "letters, digits" in line


def test_project_write_names_an_unsafe_finetune(world, outputs, capsys):
    refused(capsys, world, outputs, project(world, outputs / "run", "--write", "../up:parallel:top_k:0.5",
                                            "--models-out", outputs / "models"), "'../up'")


def test_overlap_names_that_would_escape(world, outputs, capsys):
    refused(capsys, world, outputs, weights_cmd(world, outputs / "w", update=f"../u={world['ft']}"), "'../u'")
    refused(capsys, world, outputs, activations_cmd(world, outputs / "a", "--prompts", f"/etc={world['prompts']}"),
            "'/etc'")


@pytest.mark.parametrize("changes,culprit", [
    ({"name": "../evil"}, "study name '../evil'"),
    ({"name": "/tmp/evil"}, "study name '/tmp/evil'"),
    ({"finetunes": {"../x": "U"}}, "fine-tune name '../x'"),
    ({"models": {"base": "organism:../../etc", "aligned": "A"}}, "organism name '../../etc'"),
    ({"finetunes": {"useful": {"recipe": {"data": "organism:a/b"}}}}, "organism name 'a/b'"),
    ({"overlap": {"weights": None, "activations": {"models": ["aligned"], "prompts": {"../a": "x", "b": "y"}}}},
     "prompt set name '../a'"),
])
def test_study_names_that_would_escape(world, outputs, tmp_path, capsys, changes, culprit):
    path = study(world, tmp_path / "study.yaml", **changes)
    refused(capsys, world, outputs, ["run", path, "--check"], culprit)
    refused(capsys, world, outputs, ["run", path, "--out", outputs / "run"], culprit)


def test_hostile_tensor_name_and_shard_index(world, outputs, tmp_path, capsys):
    refused(capsys, world, outputs, project(world, outputs / "run", finetuned=f"useful={world['slash']}"),
            "'../../escape'", "not a valid tensor name")
    sharded = tmp_path / "sharded"
    shutil.copytree(world["ft"], sharded)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../../etc/passwd"}}))
    before = digest(tmp_path / "sharded")
    refused(capsys, world, outputs, project(world, outputs / "run", finetuned=f"useful={sharded}"),
            "'../../etc/passwd'", "not a file name")
    assert digest(sharded) == before


def test_report_refuses_a_tampered_config(world, outputs, tmp_path, capsys):
    from safety_subspaces.study.store import Store

    run = outputs / "run"
    run.mkdir()
    Store(run / "results.sqlite").close()
    (run / "config.yaml").write_text(yaml.safe_dump({"kind": "study", "config": {
        "name": "tampered", "models": {"base": "B", "aligned": "A"}, "finetunes": {"../../x": "X"},
        "evaluation": {"harm": {"judge": "refusal"}},
        "projection": {"grid": [{"scheme": "parallel", "finetune": "../../x", "metrics": ["harm"]}], "fractions": [0.5]}}}))
    refused(capsys, world, outputs, ["report", run], "'../../x'")  # the stored config is parsed back into the typed study


# ------------------------------------------------------------------------------------------------ §2: pickle-only checkpoints


@pytest.mark.parametrize("command", ["project", "finetune", "utility", "harm", "weights", "activations"])
def test_pickle_only_checkpoints_need_allow_pickle(world, outputs, capsys, command):
    out, model = outputs / "out", world["pickled"]
    argv = {
        "project": project(world, out, finetuned=f"useful={model}"),
        "finetune": finetune_cmd(world, out, model=model),
        "utility": utility_cmd(world, out, model=model),
        "harm": harm_cmd(world, out, model=model),
        "weights": weights_cmd(world, out, update=f"useful={model}"),
        "activations": activations_cmd(world, out, model=f"m={model}"),
    }[command]
    refused(capsys, world, outputs, argv, "pytorch_model.bin", "--allow-pickle")


def test_allow_pickle_loads_with_weights_only(world, outputs, capsys):
    assert call(harm_cmd(world, outputs / "h", "--allow-pickle", model=world["pickled"])) == 0
    assert (outputs / "h" / "results.csv").exists()
    capsys.readouterr()


def test_study_refuses_pickle_unless_allowed(world, outputs, tmp_path, capsys):
    path = study(world, tmp_path / "study.yaml", finetunes={"useful": str(world["pickled"])})
    refused(capsys, world, outputs, ["run", path, "--check"], "useful", "--allow-pickle")
    refused(capsys, world, outputs, ["run", path, "--out", outputs / "run"], "--allow-pickle")
    assert call(["run", path, "--check", "--allow-pickle"]) == 0
    allowed = study(world, tmp_path / "allowed.yaml", finetunes={"useful": str(world["pickled"])}, allow_pickle=True)
    assert call(["run", allowed, "--check"]) == 0
    capsys.readouterr()


def test_models_load_safetensors_only_unless_allowed(world):
    from safety_subspaces.errors import UserError
    from safety_subspaces.models import load_model

    with pytest.raises(UserError, match="--allow-pickle"):
        load_model(world["pickled"], device="cpu")
    model = load_model(world["pickled"], device="cpu", allow_pickle=True)
    assert torch.equal(model.state_dict()["model.norm.weight"], weights(world["ft"])["model.norm.weight"])


# ------------------------------------------------------------------------------------------------ §3: NaN/Inf weights and a diverging run


@pytest.mark.parametrize("command", ["finetune", "utility", "harm", "activations"])
def test_nan_weights_are_named(world, outputs, capsys, command):
    out, model = outputs / "out", world["nan"]
    argv = {"finetune": finetune_cmd(world, out, model=model), "utility": utility_cmd(world, out, model=model),
            "harm": harm_cmd(world, out, model=model), "activations": activations_cmd(world, out, model=f"m={model}")}
    refused(capsys, world, outputs, argv[command], "model.layers.0.self_attn.v_proj.weight", "NaN or Inf")


def test_a_diverging_finetune_stops_and_writes_no_checkpoint(world, outputs, capsys):
    refused(capsys, world, outputs, finetune_cmd(world, outputs / "ft", "--lr", "1e30", "--max-steps", "4"),
            "loss became nan", "no checkpoint was written")


# ------------------------------------------------------------------------------------------------ §3: bad files and values


@pytest.mark.parametrize("case", [
    "finetune-missing-file", "finetune-missing-model-first", "finetune-utf8", "finetune-quote", "finetune-limit-0",
    "finetune-batch-0", "finetune-grad-accum-0", "finetune-out-is-file", "finetune-out-not-empty",
    "harm-quote", "harm-utf8-csv", "harm-utf8-jsonl", "harm-missing", "harm-limit-0", "harm-max-new-tokens-0",
    "harm-batch-0", "harm-judge-workers-0", "harm-rubric-no-key", "harm-rubric-not-utf8",
    "utility-limit-0", "utility-batch-0", "utility-fewshot-negative", "utility-missing-data", "utility-max-gen-toks-0",
    "activations-n-0", "activations-n-negative", "activations-batch-0", "activations-fewer-than-n",
    "weights-one-update", "weights-eta-0", "project-shard-0", "project-shard-negative", "project-threads-0",
    "project-threads-negative", "project-out-is-file", "organism-show-model-dir", "organism-show-file",
    "organism-show-empty", "organism-build-preset", "organism-build-out-is-file", "organism-build-threads-0",
    "report-not-a-run", "run-workers-0",
])
def test_bad_values_and_files(world, outputs, capsys, monkeypatch, case):
    out = outputs / "out"
    (outputs / "full").mkdir()
    (outputs / "full" / "keep.txt").write_text("mine")
    monkeypatch.delenv("MISSING_KEY", raising=False)
    cases = {
        "finetune-missing-file": (finetune_cmd(world, out, data="./nowhere.jsonl"), ["nowhere.jsonl", "no such file"]),
        "finetune-missing-model-first": (finetune_cmd(world, out, model=outputs / "nomodel", data="./nowhere.jsonl"),
                                         ["nomodel", "no such directory"]),
        "finetune-utf8": (finetune_cmd(world, out, data=world["bad_utf8"]), ["bad_utf8.jsonl", "line 2", "UTF-8"]),
        "finetune-quote": (finetune_cmd(world, out, data=world["bad_quote"]), ["bad_quote.csv", "line 3", "unterminated quote"]),
        "finetune-limit-0": (finetune_cmd(world, out, "--limit", "0"), ["--limit", "at least 1"]),
        "finetune-batch-0": (finetune_cmd(world, out, "--batch-size", "0"), ["batch size", "at least 1"]),
        "finetune-grad-accum-0": (finetune_cmd(world, out, "--grad-accum", "-1"), ["gradient accumulation"]),
        "finetune-out-is-file": (finetune_cmd(world, world["good"]), ["good.jsonl", "not a directory"]),
        "finetune-out-not-empty": (finetune_cmd(world, outputs / "full"), ["full", "not empty"]),
        "harm-quote": (harm_cmd(world, out, prompts=world["bad_quote"]), ["bad_quote.csv", "line 3", "unterminated quote"]),
        "harm-utf8-csv": (harm_cmd(world, out, prompts=world["bad_utf8_csv"]), ["bad_utf8.csv", "line 3", "UTF-8"]),
        "harm-utf8-jsonl": (harm_cmd(world, out, prompts=world["bad_utf8"]), ["bad_utf8.jsonl", "line 2", "UTF-8"]),
        "harm-missing": (harm_cmd(world, out, prompts="nowhere.csv"), ["nowhere.csv", "no such file"]),
        "harm-limit-0": (harm_cmd(world, out, "--limit", "0"), ["--limit", "at least 1"]),
        "harm-max-new-tokens-0": (harm_cmd(world, out, "--max-new-tokens", "0"), ["--max-new-tokens", "at least 1, got 0"]),
        "harm-batch-0": (harm_cmd(world, out, "--batch-size", "-3"), ["--batch-size", "at least 1, got -3"]),
        "harm-judge-workers-0": (harm_cmd(world, out, "--judge", "rubric", "--judge-arg", "model=m", "--judge-arg", "workers=0"),
                                 ["judge workers", "at least 1"]),
        "harm-rubric-no-key": (harm_cmd(world, out, "--judge", "rubric", "--judge-arg", "model=m", "--judge-arg", "key_env=MISSING_KEY"),
                               ["MISSING_KEY", "not set"]),
        "harm-rubric-not-utf8": (harm_cmd(world, out, "--judge", "rubric", "--judge-arg", "model=m", "--judge-arg", f"rubric={world['rubric']}"),
                                 ["rubric.md", "line 1", "UTF-8"]),
        "utility-limit-0": (utility_cmd(world, out, "--limit", "0"), ["--limit", "at least 1"]),
        "utility-batch-0": (utility_cmd(world, out, "--batch-size", "0"), ["batch size", "at least 1"]),
        "utility-fewshot-negative": (utility_cmd(world, out, "--num-fewshot", "-1"), ["--num-fewshot", "at least 0"]),
        "utility-missing-data": (utility_cmd(world, out, "--data", "test=nowhere.jsonl"), ["nowhere.jsonl", "not found"]),
        "utility-max-gen-toks-0": (utility_cmd(world, out, "--max-gen-toks", "0"), ["--max-gen-toks", "at least 1"]),
        "activations-n-0": (activations_cmd(world, out, "--n", "0"), ["--n", "at least 1"]),
        "activations-n-negative": (activations_cmd(world, out, "--n", "-5"), ["--n", "at least 1"]),
        "activations-batch-0": (activations_cmd(world, out, "--batch-size", "0"), ["--batch-size", "at least 1"]),
        "activations-fewer-than-n": (activations_cmd(world, out, "--n", "99"), ["prompts.jsonl", "fewer than --n 99"]),
        "weights-one-update": (["overlap", "weights", "--reference", world["aligned"], "--update", f"u={world['ft']}",
                                "--out", out], ["at least two updates"]),
        "weights-eta-0": (weights_cmd(world, out, "--eta", "0"), ["--eta", "outside (0, 1]"]),
        "project-shard-0": (project(world, out, "--shard-size", "0"), ["--shard-size", "greater than 0"]),
        "project-shard-negative": (project(world, out, "--shard-size", "-2"), ["--shard-size", "greater than 0"]),
        "project-threads-0": (project(world, out, "--threads", "0"), ["--threads", "at least 1"]),
        "project-threads-negative": (project(world, out, "--threads", "-4"), ["--threads", "at least 1"]),
        "project-out-is-file": (project(world, world["good"]), ["good.jsonl", "not a directory"]),
        "organism-show-model-dir": (["organism", "show", world["finetuned"]], ["finetuned", "is a model directory"]),
        "organism-show-file": (["organism", "show", world["good"]], ["good.jsonl", "is a file"]),
        "organism-show-empty": (["organism", "show", world["empty_dir"]], ["empty_dir", "not an organism zoo"]),
        "organism-build-preset": (["organism", "build", "--preset", "huge", "--out", out], ["'huge'", "preset"]),
        "organism-build-out-is-file": (["organism", "build", "--preset", "test", "--out", world["good"]],
                                       ["good.jsonl", "not a directory"]),
        "organism-build-threads-0": (["organism", "build", "--threads", "0", "--out", out], ["--threads"]),
        "report-not-a-run": (["report", world["empty_dir"]], ["empty_dir", "not a study run directory"]),
        "run-workers-0": (["run", "--check", "--workers", "0"], ["--workers", "at least 1"]),
    }
    argv, culprits = cases[case]
    refused(capsys, world, outputs, argv, *culprits)


def test_threads_from_the_environment(world, outputs, capsys, monkeypatch):
    monkeypatch.setenv("SAFETY_SUBSPACES_THREADS", "zero")
    refused(capsys, world, outputs, project(world, outputs / "run"), "SAFETY_SUBSPACES_THREADS", "'zero'")


# ------------------------------------------------------------------------------------------------ §3: study configs, run --check and run


def test_run_given_a_directory(world, outputs, capsys):
    refused(capsys, world, outputs, ["run", world["empty_dir"]], "empty_dir", "is a directory")


@pytest.mark.parametrize("text,culprits", [
    ("name: a\nseed: 1\nseed: 2\n", ["duplicate key 'seed'", "line 3", "line 2"]),
    ("name: a\nmodels:\n  base: B\n  base: C\n", ["duplicate key 'base'", "line 4"]),
    ("name: a\nmodels: {base: B\n", ["not valid YAML"]),
])
def test_bad_yaml(world, outputs, tmp_path, capsys, text, culprits):
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    refused(capsys, world, outputs, ["run", path, "--check"], str(path), *culprits)


def test_non_utf8_yaml(world, outputs, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"name: a\n# caf\xe9\n")
    refused(capsys, world, outputs, ["run", path, "--check"], "study.yaml", "line 2", "UTF-8")


@pytest.mark.parametrize("changes,culprits", [
    ({"models": {"base": "/nowhere/base", "aligned": "A"}}, ["/nowhere/base", "no such directory"]),
    ({"finetunes": {"useful": "WIDE"}}, ["mismatched shapes", "useful"]),
    ({"overlap": {"weights": None, "activations": {"models": ["aligned"], "n": 50,
                                                   "prompts": {"a": "PROMPTS", "b": "PROMPTS2"}}}},
     ["overlap.activations.prompts.a", "8 prompts", "fewer than"]),
    ({"evaluation": {"utility": None, "harm": {"prompts": "PROMPTS", "judge": {
        "name": "rubric", "endpoint": "http://127.0.0.1:9/v1", "model": "m", "key_env": "MISSING_KEY"}}}},
     ["evaluation.harm.judge", "MISSING_KEY"]),
    ({"evaluation": {"utility": None, "harm": {"prompts": "PROMPTS", "judge": {"name": "classifier", "model": "/nowhere/guard"}}}},
     ["evaluation.harm.judge", "/nowhere/guard", "no such directory"]),
    ({"evaluation": {"utility": None, "harm": {"prompts": "/nowhere/prompts.jsonl", "judge": "refusal"}}},
     ["/nowhere/prompts.jsonl", "no such file"]),
    ({"evaluation": {"utility": {"task": "gsm8k", "data_files": {"test": "/nowhere/t.jsonl"}},
                     "harm": {"prompts": "PROMPTS", "judge": "refusal"}}}, ["data_files.test", "/nowhere/t.jsonl"]),
    ({"finetunes": {"useful": {"recipe": {"data": "/nowhere/data.jsonl"}}}}, ["useful.recipe.data", "no such file"]),
    ({"finetunes": {"useful": {"recipe": {"data": "BADCSV"}}}}, ["useful.recipe.data", "line 3", "unterminated quote"]),
    ({"finetunes": {"useful": {"recipe": {"data": "useful", "from": "harmful"}}}}, ["useful.recipe.from", "'harmful'"]),
    ({"executor": {"kind": "ray", "workers": 0}}, ["executor.workers", "at least 1"]),
    ({"threads": 0}, ["threads", "at least 1"]),
    ({"evaluation": {"utility": None, "harm": {"prompts": "PROMPTS", "judge": "refusal", "batch_size": 0}}},
     ["evaluation.harm.batch_size", "at least 1"]),
    ({"evaluation": {"utility": {"limit": -1}, "harm": {"prompts": "PROMPTS", "judge": "refusal"}}},
     ["evaluation.utility.limit"]),
])
def test_run_check_validates_what_run_validates(world, outputs, tmp_path, capsys, monkeypatch, changes, culprits):
    monkeypatch.delenv("MISSING_KEY", raising=False)
    text = json.dumps(changes).replace('"WIDE"', json.dumps(str(world["wide"]))) \
        .replace('"PROMPTS"', json.dumps(str(world["prompts"]))).replace('"PROMPTS2"', json.dumps(str(world["prompts2"]))) \
        .replace('"BADCSV"', json.dumps(str(world["bad_quote"])))
    path = study(world, tmp_path / "study.yaml", **json.loads(text))
    refused(capsys, world, outputs, ["run", path, "--check"], *culprits)
    refused(capsys, world, outputs, ["run", path, "--out", outputs / "run", "--no-report"], *culprits)


def test_run_check_passes_a_good_study_and_creates_nothing(world, outputs, tmp_path, capsys):
    path = study(world, tmp_path / "study.yaml")
    before = digest(outputs)
    assert call(["run", path, "--check", "--out", outputs / "run"]) == 0
    assert "valid study 'tiny'" in capsys.readouterr().out
    assert digest(outputs) == before


def test_run_check_refuses_an_output_that_is_a_file(world, outputs, tmp_path, capsys):
    path = study(world, tmp_path / "study.yaml")
    refused(capsys, world, outputs, ["run", path, "--check", "--out", world["good"]], "good.jsonl", "not a directory")


# ------------------------------------------------------------------------------------------------ §3: output-side OS errors


def under(path, root: Path) -> bool:
    try:
        Path(os.fsdecode(path)).absolute().relative_to(root)
        return True
    except (TypeError, ValueError):
        return False


def refuse_writes(monkeypatch, root: Path, code: int) -> None:
    """Make the OS refuse, with errno `code`, to create directories or files under root (a read-only file system or
    a permission denial); a full disk refuses the data instead: fsync of a file under root fails with ENOSPC."""
    real_mkdir, real_open, real_fsync = os.mkdir, os.open, os.fsync
    fail = OSError(code, os.strerror(code))

    def mkdir(path, *args, **kwargs):
        if under(path, root):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and under(path, root):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fsync(fd):
        if under(os.readlink(f"/proc/self/fd/{fd}"), root):
            raise fail
        return real_fsync(fd)

    if code == errno.ENOSPC:
        monkeypatch.setattr(os, "fsync", fsync)
    else:
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC], ids=["read-only", "denied", "full"])
@pytest.mark.parametrize("command", ["project", "weights", "activations", "utility", "finetune", "run"])
def test_output_os_errors(world, outputs, tmp_path, capsys, monkeypatch, command, code):
    target = outputs / "deep" / "out"  # its parent does not exist yet: created and removed again on failure
    argv = {
        "project": project(world, target), "weights": weights_cmd(world, target),
        "activations": activations_cmd(world, target), "utility": utility_cmd(world, target),
        "finetune": finetune_cmd(world, target),
        "run": ["run", study(world, tmp_path / "study.yaml"), "--out", target, "--no-report"],
    }[command]
    refuse_writes(monkeypatch, outputs, code)
    line = refused(capsys, world, outputs, argv, str(outputs / "deep"), os.strerror(code))
    assert line.startswith(("error: cannot create directory", "error: cannot write"))
    assert ".partial-" not in line and ".tmp-" not in line  # the path as the user will know it


def test_harm_on_a_full_disk_names_the_journal(world, outputs, capsys, monkeypatch):
    refuse_writes(monkeypatch, outputs, errno.ENOSPC)
    code = call(harm_cmd(world, outputs / "h"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("error: cannot write") and "No space left on device" in err and str(outputs / "h") in err


@pytest.mark.parametrize("command", ["project", "finetune", "harm", "run", "organism"])
def test_output_under_proc_and_under_a_file(world, outputs, tmp_path, capsys, command):
    for target, culprits in ((Path("/proc/no-such-dir/out"), ["/proc/no-such-dir", "No such file or directory"]),
                             (world["good"] / "out", [str(world["good"]), "is a file, not a directory"])):
        argv = {"project": project(world, target), "finetune": finetune_cmd(world, target),
                "harm": harm_cmd(world, target),
                "run": ["run", study(world, tmp_path / "study.yaml"), "--out", target, "--no-report"],
                "organism": ["organism", "build", "--preset", "test", "--out", target]}[command]
        refused(capsys, world, outputs, argv, *culprits)


def test_report_on_a_full_disk(world, outputs, tmp_path, capsys, monkeypatch):
    run = outputs / "run"
    assert call(["run", study(world, tmp_path / "study.yaml"), "--out", run, "--no-report"]) == 0
    capsys.readouterr()
    refuse_writes(monkeypatch, outputs, errno.ENOSPC)
    line = refused(capsys, world, outputs, ["report", run], str(run), "No space left on device")
    assert ".tmp-" not in line


def test_store_on_a_full_disk(tmp_path):
    import sqlite3

    from safety_subspaces.errors import UserError
    from safety_subspaces.study.store import Store

    store = Store(tmp_path / "results.sqlite")
    store.add_jobs([("j", "energy", {})])

    class FullDisk:
        """A connection whose writes fail as SQLite's do when the disk is full."""

        def __init__(self, real):
            self.real = real

        def execute(self, sql, *args):
            if sql.startswith("INSERT"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.real.execute(sql, *args)

        def executemany(self, sql, *args):
            raise sqlite3.OperationalError("database or disk is full")

        @property
        def in_transaction(self):
            return self.real.in_transaction

    real = store.connection
    store.connection = FullDisk(real)
    with pytest.raises(UserError, match="results.sqlite: database or disk is full"):
        store.complete("j", [("energy", {"x": 1})], 1.0)
    store.connection = real
    assert store.status("j") == "pending" and store.rows("energy") == []
    store.close()


# ------------------------------------------------------------------------------------------------ §3: locks and leftovers of killed processes


HOLDER = """
import sys, time
from contextlib import ExitStack
from safety_subspaces.files import output_lock
with ExitStack() as stack:
    for path in sys.argv[1:]:
        stack.enter_context(output_lock(path))
    print("held", flush=True)
    time.sleep(120)
"""


def child(script: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True, env=env)


def test_busy_outputs_are_refused_and_stale_locks_taken_over(world, outputs, tmp_path, capsys):
    path = study(world, tmp_path / "study.yaml")
    commands = {
        "project": project(world, outputs / "p"), "weights": weights_cmd(world, outputs / "w"),
        "activations": activations_cmd(world, outputs / "a"), "utility": utility_cmd(world, outputs / "u"),
        "harm": harm_cmd(world, outputs / "h"), "finetune": finetune_cmd(world, outputs / "f"),
        "run": ["run", path, "--out", outputs / "r", "--no-report"],
    }
    outs = [outputs / name for name in "pwauhfr"]
    holder = child(HOLDER, *outs)
    try:
        assert holder.stdout.readline().strip() == "held"
        for name, argv in commands.items():
            refused(capsys, world, outputs, argv, "is in use by process", str(holder.pid))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert all((out.parent / f".{out.name}.lock").exists() for out in outs)  # left behind by the killed holder
    for name, argv in commands.items():
        assert call(argv) == 0, (name, capsys.readouterr().err)
    capsys.readouterr()
    assert not list(outputs.glob(".*.lock"))


PARTIAL = """
import os, signal, sys
from safety_subspaces.files import staged_dir
with staged_dir(sys.argv[1]) as stage:
    (stage / "config.yaml").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_partial_directories_of_killed_processes_are_cleaned(world, outputs, capsys):
    out = outputs / "p"
    killed = child(PARTIAL, out)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert [p.name.startswith(".p.partial-") for p in outputs.iterdir()] == [True]
    assert call(project(world, out)) == 0
    capsys.readouterr()
    assert sorted(p.name for p in outputs.iterdir()) == ["p"]
    assert (out / "energy.csv").exists()


def test_live_partial_directories_are_left_alone(tmp_path):
    from safety_subspaces.files import remove_stale, staged_dir

    with staged_dir(tmp_path / "x") as stage:
        remove_stale(tmp_path, ".x.partial-")  # its owner (this process) is alive
        assert stage.exists()


# ------------------------------------------------------------------------------------------------ real processes: no traceback


@pytest.mark.parametrize("argv,culprit", [
    (["run", "/proc"], "is a directory"),
    (["organism", "show", "/proc/self"], "not an organism zoo"),
    (["overlap", "weights", "--reference", "/nowhere", "--update", "a=/x", "--update", "b=/y", "--out", "/proc/x"],
     "/nowhere"),
])
def test_subprocess_exit_code_and_one_line(argv, culprit):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-m", "safety_subspaces", *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and culprit in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_subprocess_pickle_and_proc(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for argv, culprit in ((project(world, tmp_path / "o", finetuned=f"u={world['pickled']}"), "--allow-pickle"),
                          (project(world, "/proc/nope/out"), "/proc/nope")):
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "safety_subspaces", *map(str, argv)], capture_output=True,
                              text=True, env=env, timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and culprit in lines[0], done.stderr
        assert "Traceback" not in done.stderr and time.time() - started < 300
    assert not (tmp_path / "o").exists()
