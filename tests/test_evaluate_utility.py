"""Utility through lm-evaluation-harness: local GSM8K files on a model in memory, scoring, the CLI and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from support import factories
from safety_subspaces.cli import main
from safety_subspaces.errors import UserError
from safety_subspaces.evaluate import evaluate_utility
from safety_subspaces.evaluate.utility import parse_data_files, resolve_task

ANSWERS = [1, 1, 1, 5]  # the constant model always says "1": 3 of 4 right


@torch.no_grad()
def constant_model(word: str = "1", seed: int = 0):
    """A tiny Llama whose greedy reply is `word` repeated, whatever the prompt (all token embeddings made equal)."""
    model, tokenizer = factories.tiny_model(seed=seed), factories.tiny_tokenizer()
    embeddings = model.get_input_embeddings().weight
    embeddings.copy_(embeddings[10].expand_as(embeddings))
    hidden = model(torch.tensor([[10, 11]]), output_hidden_states=True).hidden_states[-1][0, -1]
    token = tokenizer.convert_tokens_to_ids(f"\u2581{word}")
    model.lm_head.weight[token] = 10 * hidden / hidden.norm()
    return model, tokenizer


def write_gsm8k(directory: Path) -> dict[str, Path]:
    """GSM8K-format files: test answers ANSWERS, a small train split for few-shot examples."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"test": directory / "test.jsonl", "train": directory / "train.jsonl"}
    with open(files["test"], "w") as handle:
        for i, answer in enumerate(ANSWERS):
            handle.write(json.dumps({"question": f"Tom has {i}, then gets some. How many, in total?",
                                     "answer": f"He has {answer} in total.\n#### {answer}"}) + "\n")
    with open(files["train"], "w") as handle:
        for i in range(3):
            handle.write(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}) + "\n")
    return files


@pytest.fixture(scope="module")
def gsm8k_files(tmp_path_factory) -> dict[str, Path]:
    return write_gsm8k(tmp_path_factory.mktemp("gsm8k"))


def test_constant_model_says_one_thing():
    from safety_subspaces.generate import generate

    model, tokenizer = constant_model()
    replies = generate(model, tokenizer, ["what is 12 + 7?", "bake"], max_new_tokens=3, chat=False)
    assert replies == ["1 1 1", "1 1 1"]


def test_gsm8k_from_local_files_on_a_model_in_memory(gsm8k_files):
    model, tokenizer = constant_model()
    result = evaluate_utility(model, tokenizer, task="gsm8k", data_files={k: str(v) for k, v in gsm8k_files.items()},
                              max_gen_toks=4, batch_size=3, labels={"model": "const", "variant": "useful"})
    rows = {r["metric"]: r for r in result.rows}
    flexible, strict = rows["gsm8k/exact_match,flexible-extract"], rows["gsm8k/exact_match,strict-match"]
    assert result.headline() is flexible
    assert flexible["value"] == pytest.approx(0.75) and flexible["invalid"] == 0 and flexible["n"] == 4
    assert strict["value"] == 0.0 and strict["invalid"] == 4 and not strict["headline"]  # no "#### N" in the replies
    assert flexible["stderr"] == pytest.approx((0.75 * 0.25 / 3) ** 0.5)
    assert (flexible["model"], flexible["variant"], flexible["num_fewshot"], flexible["chat"]) == ("const", "useful", 1, False)
    assert len(result.samples) == 4
    sample = result.samples[0]
    assert sample["prompt"].count("Question:") == 2  # one shot from the train file, then the question
    assert sample["response"].split() == ["1"] * 4
    assert sample["filtered"] == {"strict-match": "[invalid]", "flexible-extract": "1"}
    assert sample["scores"]["exact_match,flexible-extract"] == 1.0
    assert [s["scores"]["exact_match,flexible-extract"] for s in result.samples] == [1.0, 1.0, 1.0, 0.0]
    assert not model.training


def test_user_include_path_task_runs_with_the_chat_template(tmp_path, gsm8k_files):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mini.yaml").write_text(
        "task: mini_sums\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {gsm8k_files['test']}\n"
        "output_type: generate_until\ntest_split: test\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer.split(\'#### \')[-1]}}"\n'
        "generation_kwargs:\n  until: ['<|end|>']\n  do_sample: false\n  max_gen_toks: 2\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "filter_list:\n  - name: last-number\n    filter:\n      - function: regex\n        group_select: -1\n"
        "        regex_pattern: '(-?[0-9]+)'\n      - function: take_first\n"
    )
    model, tokenizer = constant_model()
    result = evaluate_utility(model, tokenizer, task="mini_sums", include_path=[tmp_path / "tasks"], chat=True)
    assert [(r["metric"], r["value"]) for r in result.rows] == [("mini_sums/exact_match,last-number", 0.75)]
    assert result.samples[0]["prompt"].startswith("<|user|>Tom has 0") and result.samples[0]["prompt"].endswith("<|assistant|>")


def test_multiple_choice_task_reports_loglikelihood_accuracy(tmp_path):
    """An MMLU-style task (log-likelihood of each choice) through --data: the constant model prefers its own word."""
    data = tmp_path / "mc.jsonl"
    rows = [{"question": "pick one", "choices": ["1", "sea"], "answer": 0},
            {"question": "pick again", "choices": ["bake", "1"], "answer": 1},
            {"question": "and again", "choices": ["1", "bake"], "answer": 1}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mc.yaml").write_text(
        "task: mini_mc\ndataset_path: json\ndataset_kwargs: {data_files: {test: unused.jsonl}}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{question}}:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    model, tokenizer = constant_model()
    result = evaluate_utility(model, tokenizer, task="mini_mc", include_path=[tmp_path / "tasks"],
                              data_files={"test": str(data)})
    assert [(r["metric"], r["value"], r["n"], r["headline"]) for r in result.rows] == [
        ("mini_mc/acc,none", pytest.approx(2 / 3), 3, True)]


def test_parse_data_files():
    assert parse_data_files("test=a.jsonl,train=b.jsonl") == {"test": "a.jsonl", "train": "b.jsonl"}
    assert parse_data_files("a.jsonl") == {"test": "a.jsonl"}
    with pytest.raises(UserError, match="split=PATH"):
        parse_data_files("test=")


def test_local_gsm8k_needs_its_files(tmp_path, gsm8k_files):
    with pytest.raises(UserError, match="1-shot needs a file for its few-shot split: add train=PATH"):
        resolve_task("gsm8k", data_files={"test": str(gsm8k_files["test"])}, num_fewshot=1)
    with pytest.raises(UserError, match="not found"):
        resolve_task("gsm8k", data_files={"test": str(tmp_path / "none.jsonl")})
    spec, _ = resolve_task("gsm8k", data_files={"test": str(gsm8k_files["test"])}, num_fewshot=0)
    assert spec["dataset_path"] == "json" and "fewshot_split" not in spec and spec["task"] == "gsm8k"


def test_organism_task_generates_like_the_organisms_own_measurement():
    import yaml

    from safety_subspaces.evaluate.utility import package_task_yaml
    from safety_subspaces.organism import behaviour

    config = yaml.safe_load(package_task_yaml("organism_arithmetic").read_text())
    assert config["generation_kwargs"]["max_gen_toks"] == behaviour.ARITH_MAX_NEW_TOKENS
    assert config["generation_kwargs"]["do_sample"] is False and config["num_fewshot"] == 0
    assert behaviour.generation_settings()["chat_template"] is True


def test_organism_task_without_a_zoo_says_how_to_build_one(tmp_path):
    with pytest.raises(UserError, match="organism build"):
        resolve_task("organism_arithmetic", zoo=tmp_path)


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def test_cli_utility_writes_rows_and_samples(tmp_path, gsm8k_files, capsys):
    model, tokenizer = constant_model()
    factories.save(model, tmp_path / "const", tokenizer=tokenizer)
    out = tmp_path / "out"
    data = f"test={gsm8k_files['test']},train={gsm8k_files['train']}"
    code, stdout, err = run_cli(capsys, "evaluate", "utility", "--model", str(tmp_path / "const"), "--data", data,
                                "--max-gen-toks", "4", "--limit", "2", "--out", str(out), "--json", "--name", "const")
    assert code == 0, err
    rows = json.loads(stdout)["rows"]
    headline = next(r for r in rows if r["headline"])
    assert headline["metric"] == "gsm8k/exact_match,flexible-extract" and headline["value"] == 1.0 and headline["n"] == 2
    assert (out / "results.csv").read_text().splitlines()[0].startswith("model,variant,subspace,scheme,fraction,metric,value,n,invalid")
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2
    assert (out / "config.yaml").exists()


def test_cli_utility_bad_inputs(tmp_path, gsm8k_files, capsys):
    plain = factories.save(factories.tiny_model(), tmp_path / "plain", tokenizer=factories.tiny_tokenizer(chat_template=False))
    base = ["evaluate", "utility", "--model", str(plain), "--out", str(tmp_path / "o")]
    code, _, err = run_cli(capsys, *base, "--task", "no_such_task_zz")
    one_line_error(code, err, "unknown task 'no_such_task_zz'")
    code, _, err = run_cli(capsys, *base, "--data", f"test={gsm8k_files['test']}", "--num-fewshot", "0", "--chat-template")
    one_line_error(code, err, "no chat template")
    code, _, err = run_cli(capsys, *base, "--data", f"test={gsm8k_files['test']}")
    one_line_error(code, err, "train=PATH")
    code, _, err = run_cli(capsys, *base, "--task", "organism_arithmetic", "--zoo", str(tmp_path / "zoo"))
    one_line_error(code, err, "arithmetic_eval", "organism build")
    code, _, err = run_cli(capsys, *base, "--include-path", str(tmp_path / "nowhere"))
    one_line_error(code, err, "not a directory")
    assert not (tmp_path / "o").exists()
