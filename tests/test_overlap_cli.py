"""`safety-subspaces overlap weights|activations` through the CLI: results, JSON, and every bad input (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import factories
from safety_subspaces.cli import main

PROMPTS = ["how do i bake bread?", "what is 12 + 7?", "tell me how to pick a lock.", "write a poem about the sea.",
           "explain gravity.", "mix flour and water", "the sea is wide and blue."]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny models (two share hidden 32, one has hidden 48, one lacks a chat template) and prompt files."""
    root = tmp_path_factory.mktemp("overlap-cli")
    tokenizer = factories.tiny_tokenizer()
    model = factories.tiny_model(layers=3)
    paths = {
        "A": factories.save(model, root / "A", tokenizer=tokenizer),
        "U": factories.save(factories.perturbed(model, seed=1, rank=2), root / "U", tokenizer=tokenizer),
        "H": factories.save(factories.perturbed(model, seed=2, rank=2), root / "H", tokenizer=tokenizer),
        "wide": factories.save(factories.tiny_model(layers=3, hidden=48), root / "wide", tokenizer=tokenizer),
        "plain": factories.save(factories.tiny_model(layers=3), root / "plain", tokenizer=factories.tiny_tokenizer(chat_template=False)),
    }
    for name, prompts in (("a", PROMPTS), ("b", [p.upper() for p in PROMPTS])):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    paths["empty"] = root / "empty.jsonl"
    paths["empty"].write_text("")
    return paths


def test_weights_cli_prints_json_with_depth_rows(files, tmp_path, capsys):
    code = main(["overlap", "weights", "--reference", str(files["A"]), "--update", f"useful={files['U']}",
                 "--update", f"harmful={files['H']}", "--eta", "0.5,0.99", "--out", str(tmp_path / "w"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["depth_layers"] == {"p70": 2, "p85": 2} and "mean over the block's matrix" in report["aggregation"]
    assert {(r["pair"], r["eta"]) for r in report["rows"] if r["name"] == "p70"} == {("useful vs harmful", 0.5), ("useful vs harmful", 0.99)}
    assert (tmp_path / "w" / "weight_overlap.csv").exists() and (tmp_path / "w" / "figures" / "weight_overlap.png").exists()


def test_activations_cli_prints_tables(files, tmp_path, capsys):
    code = main(["overlap", "activations", "--model", f"m={files['A']}", "--prompts", f"a={files['a']}",
                 "--prompts", f"b={files['b']}", "--n", "7", "--eta", "0.5,0.9", "--depth", "0.3,0.9", "--out", str(tmp_path / "a")])
    assert code == 0
    out = capsys.readouterr().out
    assert "activation MSO, m, uncentred, mean over hidden states 1-2" in out and "centred" in out and "a vs b" in out
    rows = (tmp_path / "a" / "activation_overlap.csv").read_text().splitlines()
    assert rows[0].startswith("model,pair,layer,eta,centered,k_a,k_b,d,mso,mso_random")


def bad(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI expecting exit 2 and one 'error:' line on stderr that mentions every needle."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def activations(files, tmp_path, *extra: str) -> list[str]:
    """An activations command line on model A with prompt sets a and b."""
    return ["overlap", "activations", "--model", str(files["A"]), "--prompts", f"a={files['a']}",
            "--prompts", f"b={files['b']}", "--out", str(tmp_path / "out"), *extra]


def test_prompt_set_smaller_than_n(files, tmp_path, capsys):
    bad(capsys, activations(files, tmp_path, "--n", "50"), "prompt set 'a'", "7 prompts, fewer than --n 50", "--allow-fewer")
    assert not (tmp_path / "out").exists()
    assert main(activations(files, tmp_path, "--n", "50", "--allow-fewer", "--eta", "0.5")) == 0
    assert "fewer than --n 50: using all of them" in (tmp_path / "out" / "manifest.json").read_text()


def test_models_with_different_hidden_sizes(files, tmp_path, capsys):
    bad(capsys, activations(files, tmp_path, "--model", f"wide={files['wide']}", "--n", "7"),
        "must share a hidden size", "wide has 48", "A has 32")


@pytest.mark.parametrize("etas", ["0,0.5", "1.5", "-0.2", "nan"])
def test_eta_outside_unit_interval(files, tmp_path, capsys, etas):
    bad(capsys, activations(files, tmp_path, "--n", "7", "--eta", etas), "--eta", "outside (0, 1]")
    bad(capsys, ["overlap", "weights", "--reference", str(files["A"]), "--update", f"u={files['U']}",
                 "--update", f"h={files['H']}", "--eta", etas, "--out", str(tmp_path / "w")], "--eta", "outside (0, 1]")


def test_empty_prompt_file(files, tmp_path, capsys):
    bad(capsys, activations(files, tmp_path, "--prompts", f"e={files['empty']}", "--n", "7"), "empty.jsonl", "is empty")


@pytest.mark.parametrize("extra,needles", [
    (["--window", "generated"], ["--window 'generated'"]),
    (["--depth", "0.9,0.5"], ["--depth 0.9,0.5"]),
    (["--depth", "0.1,0.2"], ["selects no hidden state", "widen the band"]),
    (["--pairs", "a:z"], ["no prompt set named 'z'"]),
    (["--prompts", "c=missing.jsonl"], ["missing.jsonl", "no such file"]),
    (["--prompts", "c=x@category"], ["SRC@FIELD=VALUE"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--prompts", "a b=x.jsonl"], ["'a b'"]),
])
def test_other_bad_activation_inputs(files, tmp_path, capsys, extra, needles):
    bad(capsys, activations(files, tmp_path, "--n", "7", *extra), *needles)
    assert not (tmp_path / "out").exists()


def test_missing_chat_template_and_missing_model(files, tmp_path, capsys):
    argv = ["overlap", "activations", "--model", str(files["plain"]), "--prompts", f"a={files['a']}",
            "--prompts", f"b={files['b']}", "--n", "7", "--out", str(tmp_path / "out")]
    bad(capsys, argv, "no chat template", "--raw-prompts")
    assert main([*argv, "--raw-prompts", "--eta", "0.5"]) == 0
    bad(capsys, activations(files, tmp_path, "--model", str(tmp_path / "nowhere"), "--n", "7"), "nowhere")


def test_bad_weight_inputs(files, tmp_path, capsys):
    def weights(*extra: str) -> list[str]:
        return ["overlap", "weights", "--reference", str(files["A"]), "--out", str(tmp_path / "w"), *extra]

    bad(capsys, weights("--update", f"u={files['U']}"), "at least two updates")
    bad(capsys, weights("--update", f"u={files['U']}", "--update", f"w={files['wide']}"), "mismatched shapes")
    bad(capsys, weights("--update", f"u={files['U']}", "--update", f"u={files['H']}"), "given twice")
    bad(capsys, weights("--update", f"u={files['U']}", "--update", f"h={files['H']}", "--tensors", "("), "not a valid regular expression")
    bad(capsys, weights("--update", f"u={files['U']}", "--update", f"h={files['H']}", "--tensors", "nothing_matches"), "no matrix tensor")
    bad(capsys, weights("--update", f"u={files['U']}", "--update", f"h={files['H']}", "--depth-percentiles", "120"), "120")
    bad(capsys, weights("--update", f"u={files['U']}", "--update", f"h={files['H']}", "--pairs", "u:x"), "no update named 'x'")
    assert not (tmp_path / "w").exists()


def test_overlap_without_an_analysis_prints_help_and_exits_2(capsys):
    assert main(["overlap"]) == 2
    assert "weights" in capsys.readouterr().err


def test_end_to_end_on_the_organism(organism_zoo, tmp_path, capsys, monkeypatch):
    zoo = organism_zoo
    monkeypatch.setenv("SAFETY_SUBSPACES_ZOO", str(tmp_path / "no-zoo-here"))  # --zoo, not the default, must be used
    assert main(["overlap", "weights", "--reference", str(zoo / "aligned"), "--update", f"useful={zoo / 'useful'}",
                 "--update", f"harmful={zoo / 'harmful'}", "--update", f"base={zoo / 'base'}", "--eta", "0.1,0.5,0.9",
                 "--out", str(tmp_path / "w"), "--json"]) == 0
    weights = json.loads(capsys.readouterr().out)
    layers = json.loads((zoo / "aligned" / "config.json").read_text())["num_hidden_layers"]
    assert weights["depth_layers"]["p70"] == int(0.7 * layers)
    pairs = {row["pair"] for row in weights["rows"]}
    assert pairs == {"useful vs harmful", "useful vs base", "harmful vs base"}
    assert all(0 <= row["mso"] <= 1 and 0 < row["mso_random"] <= 1 for row in weights["rows"])

    assert main(["overlap", "activations", "--model", f"aligned={zoo / 'aligned'}", "--model", f"useful={zoo / 'useful'}",
                 "--prompts", "useful=organism:arithmetic_eval", "--prompts", "harmful=organism:harmful_eval",
                 "--prompts", "violence=organism:harmful_eval@category=violence", "--n", "64", "--allow-fewer",
                 "--eta", "0.5,0.9", "--zoo", str(zoo), "--out", str(tmp_path / "a"), "--json"]) == 0
    activations = json.loads(capsys.readouterr().out)
    assert set(activations["bands"]) == {"aligned", "useful"} and activations["prompt_counts"]["harmful"] == 64
    rows = {(r["model"], r["pair"], r["centered"], r["eta"]): r for r in activations["rows"]}
    for model in ("aligned", "useful"):
        # the shared mean direction dominates uncentred MSO; a subset of a prompt set overlaps it more than another set
        assert rows[(model, "useful vs harmful", False, 0.5)]["mso"] > rows[(model, "useful vs harmful", True, 0.5)]["mso"]
        subset = rows[(model, "harmful vs violence", True, 0.9)]
        assert subset["mso"] > rows[(model, "useful vs harmful", True, 0.9)]["mso"]
        assert subset["mso"] > subset["mso_random"]
    assert (tmp_path / "a" / "figures" / "activation_overlap_centered.png").exists()
