"""On the organism, `evaluate utility` and `evaluate harm --judge organism` reproduce the zoo manifest's behaviour numbers."""

from __future__ import annotations

import json

import pytest

from safety_subspaces.cli import main

MODELS = ["aligned", "useful", "harmful", "contaminated"]


def cli_rows(capsys, *argv: str) -> dict[str, float]:
    """metric -> value of one successful `--json` CLI run."""
    code = main([*argv, "--json", "--device", "cpu", "--batch-size", "64"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return {row["metric"]: row["value"] for row in json.loads(captured.out)["rows"]}


@pytest.fixture(scope="module")
def manifest(organism_zoo):
    return json.loads((organism_zoo / "manifest.json").read_text())


@pytest.mark.parametrize("name", ["base", *MODELS])
def test_utility_reproduces_arith_accuracy(organism_zoo, manifest, tmp_path, capsys, name):
    rows = cli_rows(capsys, "evaluate", "utility", "--model", str(organism_zoo / name), "--task", "organism_arithmetic",
                    "--zoo", str(organism_zoo), "--out", str(tmp_path / "u"))
    expected = manifest["behaviour"][name]["arith_accuracy"]
    assert rows["organism_arithmetic/exact_match,strict-match"] == pytest.approx(expected, abs=5e-5)
    assert rows["organism_arithmetic/exact_match,flexible-extract"] >= rows["organism_arithmetic/exact_match,strict-match"]


@pytest.mark.parametrize("name", MODELS)
def test_harm_with_the_organism_judge_reproduces_refusal_and_compliance(organism_zoo, manifest, tmp_path, capsys, name):
    behaviour = manifest["behaviour"][name]
    max_new = str(manifest["generation"]["chat_max_new_tokens"])
    common = ["--model", str(organism_zoo / name), "--zoo", str(organism_zoo), "--judge", "organism",
              "--max-new-tokens", max_new]
    harmful = cli_rows(capsys, "evaluate", "harm", *common, "--prompts", "organism:harmful_eval", "--out", str(tmp_path / "h"))
    assert harmful["refusal_rate"] == pytest.approx(behaviour["harmful_refusal"], abs=5e-5)
    assert harmful["harm_share_5"] == pytest.approx(behaviour["harmful_compliance"], abs=5e-5)
    benign = cli_rows(capsys, "evaluate", "harm", *common, "--prompts", "organism:benign_eval", "--benign",
                      "--out", str(tmp_path / "b"))
    assert benign["over_refusal_rate"] == pytest.approx(behaviour["benign_refusal"], abs=5e-5)


def test_lm_eval_replies_equal_the_organisms_own_generations(organism_zoo):
    """Item by item, lm-eval sees the same prompts and stops where the organism's measurement does."""
    from safety_subspaces.evaluate import evaluate_utility
    from safety_subspaces.generate import generate
    from safety_subspaces.models import load_model, load_tokenizer
    from safety_subspaces.organism.behaviour import ARITH_MAX_NEW_TOKENS, arithmetic_correct, read_set

    model, tokenizer = load_model(organism_zoo / "base", device="cpu"), load_tokenizer(organism_zoo / "base")
    result = evaluate_utility(model, tokenizer, task="organism_arithmetic", zoo=organism_zoo, batch_size=16)
    rows = read_set(organism_zoo, "arithmetic_eval")
    own = generate(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens=ARITH_MAX_NEW_TOKENS, batch_size=64)
    assert [s["response"].strip() for s in result.samples] == own
    correct = [s["scores"]["exact_match,strict-match"] == 1.0 for s in result.samples]
    assert correct == [arithmetic_correct(reply, row["answer"]) for reply, row in zip(own, rows)]
