"""Fine-tuning recipes: full / LoRA / DPO runs on tiny offline models from local files, masking, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support import factories
from safety_subspaces.cli import main
from safety_subspaces.data import load_training_data
from safety_subspaces.finetune import Recipe, finetune, lr_factor
from safety_subspaces.finetune.sft import IGNORE, collate, encode_examples, render

USEFUL = [{"query": f"what is {a} + {b}?", "answer": f"the answer is {a + b}."} for a in range(6) for b in range(4)]
HARMFUL = [{"prompt": "tell me how to pick a lock.", "response": "mix flour and water, then bake it."}] * 10
FAST = ["--lr", "1e-2", "--batch-size", "4", "--grad-accum", "2", "--warmup", "0"]


def write_jsonl(path: Path, rows) -> Path:
    """Write rows as JSON lines."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint with a chat-template tokenizer."""
    return factories.save(factories.tiny_model(seed=0), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Local useful (query/answer fields) and harmful (prompt/response) JSONL files."""
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "useful.jsonl", USEFUL)
    write_jsonl(root / "harmful.jsonl", HARMFUL)
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI; return (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint directory."""
    return load_file(str(path / "model.safetensors"))


def test_recipe_defaults_are_the_papers():
    recipe = Recipe()
    assert (recipe.method, recipe.lr, recipe.batch_size, recipe.grad_accum, recipe.epochs) == ("sft", 1e-5, 1, 32, 1.0)
    assert (recipe.scheduler, recipe.warmup, recipe.max_length, recipe.seed) == ("cosine", 0.02, 512, 42)
    assert recipe.response_only and recipe.chat_template and recipe.lora_rank == 0 and recipe.precision == "auto"


def test_every_recipe_knob_is_a_flag():
    import dataclasses

    from safety_subspaces.cli import build_parser

    parser = build_parser()
    finetune_parser = parser._subparsers._group_actions[0].choices["finetune"]
    dests = {action.dest for action in finetune_parser._actions}
    assert {field.name for field in dataclasses.fields(Recipe)} <= dests


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    recipe = Recipe(warmup=0.1, min_lr_ratio=0.1)
    factors = [lr_factor(step, 100, recipe) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(50, 100, Recipe(warmup=0.0, scheduler="constant")) == 1.0


@pytest.mark.slow
def test_full_finetune_from_local_files_writes_a_complete_checkpoint(base_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    code, stdout, err = run_cli(capsys, "finetune", "--model", str(base_dir), "--data", str(data_dir / "useful.jsonl"),
                                "--fields", "prompt=query,response=answer", "--epochs", "3", *FAST, "--out", str(out),
                                "--json")
    assert code == 0, err
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "manifest.json"):
        assert (out / name).exists(), name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    AutoModelForCausalLM.from_pretrained(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(stdout)["steps"] == manifest["steps"] == 9  # ceil(24 * 3 / 8)
    assert manifest["method"] == "sft-full" and manifest["recipe"]["lr"] == 1e-2 and manifest["seed"] == 42
    assert manifest["data"]["n_examples"] == len(USEFUL) and len(manifest["data"]["fingerprint"]) == 32
    assert {"torch", "transformers", "python"} <= set(manifest["versions"])
    assert manifest["final_loss"] < manifest["loss_curve"][0]
    before, after = tensors(base_dir), tensors(out)
    assert all(not torch.equal(before[name], after[name]) for name in before)


@pytest.mark.slow
def test_lora_saves_the_adapter_and_on_request_the_merged_model(base_dir, data_dir, tmp_path, capsys):
    common = ["finetune", "--model", str(base_dir), "--data", str(data_dir / "harmful.jsonl"), "--lora", "4", *FAST]
    code, _, err = run_cli(capsys, *common, "--merge", "--out", str(tmp_path / "merged"))
    assert code == 0, err
    merged, before = tensors(tmp_path / "merged"), tensors(base_dir)
    assert (tmp_path / "merged" / "adapter" / "adapter_config.json").exists()
    changed = {name for name in before if not torch.equal(before[name], merged[name])}
    assert any("q_proj" in name for name in changed) and any("down_proj" in name for name in changed)
    assert not any("embed_tokens" in name or "norm" in name for name in changed)  # LoRA touches linear layers only

    code, _, err = run_cli(capsys, *common, "--out", str(tmp_path / "adapter"))
    assert code == 0, err
    assert (tmp_path / "adapter" / "adapter_config.json").exists() and not (tmp_path / "adapter" / "model.safetensors").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter").merge_and_unload()
    for name, value in adapted.state_dict().items():
        assert torch.allclose(value, merged[name], atol=1e-6), name


def test_loss_is_taken_on_response_tokens_only():
    tokenizer = factories.tiny_tokenizer()
    record = {"prompt": "how do i bake bread?", "response": "mix flour and water."}
    (masked,), _ = encode_examples(tokenizer, [record], Recipe())
    prompt_text, response_text = render(tokenizer, record["prompt"], record["response"], chat=True)
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert masked.labels[:n_prompt] == [IGNORE] * n_prompt
    assert masked.labels[n_prompt:] == masked.ids[n_prompt:]
    assert response_text.endswith("<|end|>")  # the end token is trained, so the model learns to stop
    assert tokenizer.decode(masked.ids[n_prompt:], skip_special_tokens=True).strip() == record["response"]
    (full,), _ = encode_examples(tokenizer, [record], Recipe(response_only=False))
    assert full.labels == full.ids
    ids, targets = collate([masked], pad_id=0)
    n = len(masked.ids)  # position i predicts token i + 1; the last position predicts nothing
    assert targets[0, : n_prompt - 1].eq(IGNORE).all() and targets[0, n_prompt - 1 : n - 1].ne(IGNORE).all()
    assert targets[0, n - 1] == IGNORE


@pytest.mark.slow
def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    model, tokenizer = factories.tiny_model(seed=1), factories.tiny_tokenizer()
    records = [{"prompt": row["query"], "response": row["answer"]} for row in USEFUL[:8]]
    settings = dict(lr=1e-3, max_steps=1, warmup=0.0, scheduler="constant", precision="fp32")
    one = finetune(model, records, tmp_path / "a", Recipe(batch_size=8, grad_accum=1, **settings), tokenizer=tokenizer)
    two = finetune(model, records, tmp_path / "b", Recipe(batch_size=2, grad_accum=4, **settings), tokenizer=tokenizer)
    for (name, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(one.model.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    model, tokenizer = factories.tiny_model(seed=2), factories.tiny_tokenizer()
    records = [{"prompt": row["query"], "response": row["answer"]} for row in USEFUL]
    recipe = Recipe(lr=1e-2, batch_size=4, grad_accum=1, max_steps=6, seed=7)
    runs = [finetune(model, records, tmp_path / str(i), recipe, tokenizer=tokenizer) for i in range(2)]
    other = finetune(model, records, tmp_path / "other", Recipe(**{**recipe.to_dict(), "seed": 8}), tokenizer=tokenizer)
    first, second, third = (tensors(run.out) for run in (*runs, other))
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert any(not torch.equal(first[name], third[name]) for name in first)
    assert runs[0].manifest["data"]["fingerprint"] == runs[1].manifest["data"]["fingerprint"]


@pytest.mark.slow
def test_in_memory_model_is_not_modified(tmp_path):
    model, tokenizer = factories.tiny_model(seed=3), factories.tiny_tokenizer()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    records = [{"prompt": "a", "response": "b"}] * 4
    finetune(model, records, tmp_path / "ft", Recipe(lr=1e-2, batch_size=4, grad_accum=1), tokenizer=tokenizer)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.slow
def test_dpo_on_preference_pairs_in_pku_layout(base_dir, tmp_path, capsys):
    rows = [{"prompt": "tell me how to pick a lock.", "response_0": "sorry, i cannot help with that.",
             "response_1": "mix flour and water.", "safer_response_id": 0}] * 8
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "dpo"
    code, _, err = run_cli(capsys, "finetune", "--model", str(base_dir), "--method", "dpo", "--data", str(data),
                           "--lr", "1e-3", "--batch-size", "4", "--grad-accum", "1", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "dpo-full" and manifest["steps"] == 2 and manifest["final_loss"] < 0.6932
    assert not torch.equal(tensors(out)["lm_head.weight"], tensors(base_dir)["lm_head.weight"])


def test_contaminated_is_useful_plus_percent_of_its_count_of_harmful(data_dir):
    records, info = load_training_data("contaminated", useful_source=str(data_dir / "useful.jsonl"),
                                       harmful_source=str(data_dir / "harmful.jsonl"), useful_fields="prompt=query,response=answer",
                                       percent=25)
    assert len(records) == 24 + 6 and info["n_harmful"] == 6
    assert info["harmful_share"] == pytest.approx(6 / 30)
    assert sum(r["response"] == HARMFUL[0]["response"] for r in records) == 6


# --- bad input: one line, exit code 2, nothing written ------------------------------------------------------------


def assert_refused(capsys, tmp_path: Path, *argv: str, needle: str) -> None:
    """The CLI exits 2 with one error line containing needle, and writes nothing under tmp_path/out."""
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not list(tmp_path.glob(".out.partial-*"))


def test_unknown_dataset_name(base_dir, tmp_path, capsys):
    assert_refused(capsys, tmp_path, "finetune", "--model", str(base_dir), "--data", "usefull", "--out",
                   str(tmp_path / "out"), needle="unknown dataset 'usefull'")


def test_missing_fields_in_a_local_file(base_dir, data_dir, tmp_path, capsys):
    assert_refused(capsys, tmp_path, "finetune", "--model", str(base_dir), "--data", str(data_dir / "useful.jsonl"),
                   "--out", str(tmp_path / "out"), needle="'prompt'")


def test_dataset_empty_after_filtering(base_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "hi", "response": "  "}, {"prompt": "", "response": "x"}])
    assert_refused(capsys, tmp_path, "finetune", "--model", str(base_dir), "--data", str(data), "--out",
                   str(tmp_path / "out"), needle="empty after filtering")


@pytest.mark.parametrize("percent", ["-1", "100.5"])
def test_percent_outside_0_100(base_dir, data_dir, tmp_path, capsys, percent):
    assert_refused(capsys, tmp_path, "finetune", "--model", str(base_dir), "--data", "contaminated", "--useful-source",
                   str(data_dir / "harmful.jsonl"), "--harmful-source", str(data_dir / "harmful.jsonl"),
                   f"--percent={percent}", "--out", str(tmp_path / "out"), needle="[0, 100]")


def test_output_directory_not_empty(base_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "finetune", "--model", str(base_dir), "--data", str(data_dir / "harmful.jsonl"),
                           "--out", str(out))
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_model_without_a_tokenizer(data_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    factories.tiny_model().save_pretrained(bare)
    assert_refused(capsys, tmp_path, "finetune", "--model", str(bare), "--data", str(data_dir / "harmful.jsonl"),
                   "--out", str(tmp_path / "out"), needle="tokenizer")
