"""AsFT as a fine-tuning constraint: larger λ keeps less of the update outside C's range (full and LoRA), the
penalty is what numpy computes from the written weights, the recipe key and the CLI flags, and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from support import factories
from safety_subspaces.cli import main
from safety_subspaces.finetune import Recipe, finetune, recipe_from
from safety_subspaces.errors import UserError

RECORDS = [{"prompt": f"what is {a} + {b}?", "response": f"the answer is {a + b}."} for a in range(6) for b in range(4)]
FAST = {"lr": 1e-2, "batch_size": 4, "grad_accum": 1, "warmup": 0.0, "scheduler": "constant", "max_steps": 12, "max_grad_norm": None}
FRACTION = 0.25


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama base and its 'aligned' model (a low-rank-plus-noise update), saved with a tokenizer."""
    root = tmp_path_factory.mktemp("asft")
    base = factories.tiny_model(seed=0)
    aligned = factories.perturbed(base, seed=1, rank=3)
    return {"base": factories.save(base, root / "base"), "aligned": factories.save(aligned, root / "aligned"),
            "root": root}


def numpy_frame(models, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(U, σ) of Δ_A of one tensor, by numpy in float64."""
    base, aligned = factories.state(models["base"]), factories.state(models["aligned"])
    delta = (aligned[name].double() - base[name].double()).numpy()
    u, s, _ = np.linalg.svd(delta, full_matrices=False)
    return u, s


def outside(models, out: Path, projector: str, share: bool = True) -> float:
    """Pooled Σ ‖K ΔW‖² (/ Σ ‖ΔW‖² for the share) over decoder matrices, K = I − P_k (exact) or I − C, by numpy."""
    aligned, trained = factories.state(models["aligned"]), factories.state(out)
    num = den = 0.0
    for name, weight in trained.items():
        if weight.ndim != 2 or ".layers." not in name:
            continue
        u, s = numpy_frame(models, name)
        if projector == "exact":
            k = max(1, round(FRACTION * min(weight.shape)))
            operator = u[:, :k] @ u[:, :k].T
        else:
            operator = (u * s**2) @ u.T / np.sqrt((s**2).sum())
        delta = (weight.double() - aligned[name].double()).numpy()
        num += float((((np.eye(len(operator)) - operator) @ delta) ** 2).sum())
        den += float((delta**2).sum())
    return num / den if share else num


def train(models, tmp_path: Path, label: str, constraint, **knobs) -> Path:
    """Fine-tune the aligned model with the constraint (None: plain SFT); the output directory."""
    recipe = recipe_from({**FAST, **knobs, "constraint": constraint})
    out = tmp_path / label
    finetune(models["aligned"], RECORDS, out, recipe, base=models["base"], cache_dir=models["root"] / "svd")
    return out


@pytest.mark.parametrize("projector", ["exact", "safe_lora"])
def test_larger_lambda_keeps_less_energy_outside_the_range(models, tmp_path, projector):
    """exact: the share of ‖ΔW‖² outside span(U_k) falls with λ. safe_lora: C's eigenvalues σ²/‖V‖_F are far below 1
    here, so I − C is close to I and shrinks all of ΔW: what falls is ‖(I − C) ΔW‖² itself (C is no projector)."""
    options = {"projector": projector, **({"fraction": FRACTION} if projector == "exact" else {})}
    values = []
    for weight in (0.0, 0.05, 5.0):
        out = train(models, tmp_path, f"{projector}-{weight}", {"name": "asft", "lambda": weight, **options})
        values.append(outside(models, out, projector, share=projector == "exact"))
    assert values[0] > values[1] > values[2]
    assert values[2] < 0.5 * values[0]


def test_penalty_is_numpys_from_the_weights_and_recorded(models, tmp_path):
    out = train(models, tmp_path, "recorded", {"name": "asft", "lambda": 0.5, "projector": "safe_lora"}, max_steps=3)
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["constraint"]
    assert record["name"] == "asft" and record["lambda"] == 0.5 and record["modules"] == 14
    assert manifest["recipe"]["constraint"] == {"name": "asft", "lambda": 0.5, "projector": "safe_lora"}
    assert len(record["penalty_curve"]) == 3 and record["penalty_first"] == 0.0  # W = W_A at the first step
    # the penalty at step 3 is that of the weights after 2 updates: numpy's λ Σ ‖(I − C)(W − W_A)‖² of a 2-step run
    # (constant learning rate, so its 2 steps are this run's first 2)
    two = train(models, tmp_path, "two", {"name": "asft", "lambda": 0.5, "projector": "safe_lora"}, max_steps=2)
    aligned, trained = factories.state(models["aligned"]), factories.state(two)
    expected = 0.0
    for name, weight in trained.items():
        if weight.ndim == 2 and ".layers." in name:
            u, s = numpy_frame(models, name)
            c = (u * s**2) @ u.T / np.sqrt((s**2).sum())
            delta = (weight.double() - aligned[name].double()).numpy()
            expected += 0.5 * float((((np.eye(len(c)) - c) @ delta) ** 2).sum())
    assert record["penalty_curve"][2] == pytest.approx(expected, rel=1e-3)


def test_lora_penalty_on_b_a_shrinks_with_lambda(models, tmp_path):
    from safetensors.torch import load_file

    shares = []
    for weight in (0.0, 50.0):
        out = train(models, tmp_path, f"lora-{weight}", {"name": "asft", "lambda": weight, "projector": "exact",
                                                        "fraction": FRACTION}, lora_rank=4, lora_targets="q_proj,v_proj")
        factors = load_file(str(out / "adapter_model.safetensors"))
        num = den = 0.0
        for key, b in factors.items():
            if ".lora_B." not in key:
                continue
            a = factors[key.replace(".lora_B.", ".lora_A.")].double()
            name = key.split("base_model.model.", 1)[1].split(".lora_B.")[0] + ".weight"
            u, _ = numpy_frame(models, name)
            k = max(1, round(FRACTION * min(b.shape[0], a.shape[1])))
            update = (b.double() @ a).numpy()
            num += float((((np.eye(len(u)) - u[:, :k] @ u[:, :k].T) @ update) ** 2).sum())
            den += float((update**2).sum())
        shares.append(num / den)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["constraint"]["modules"] == 4  # q_proj and v_proj of 2 layers
    assert shares[1] < 0.5 * shares[0]


def test_the_cli_flags_train_with_the_constraint(models, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "cli"
    code = main(["finetune", "--model", str(models["aligned"]), "--base", str(models["base"]), "--data", str(data),
                 "--constraint", "asft", "--constraint-arg", "lambda=2", "--max-steps", "2", "--batch-size", "4",
                 "--grad-accum", "1", "--lr", "1e-3", "--cache-dir", str(models["root"] / "svd"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["constraint"]["lambda"] == 2.0


@pytest.mark.parametrize("args,needle", [
    (["--constraint", "asft", "--constraint-arg", "lamda=1"], "unknown option 'lamda' for constraint 'asft'"),
    (["--constraint", "asft", "--constraint-arg", "lambda=much"], "lambda"),
    (["--constraint", "asft", "--constraint-arg", "lambda=-1"], "lambda must be a finite number >= 0"),
    (["--constraint", "asft", "--constraint-arg", "projector=exact"], "projector exact needs fraction"),
    (["--constraint", "nope"], "unknown constraint 'nope'"),
    (["--constraint", "asft"], "needs the base model W_0"),
    (["--base", "B"], "--base is read by a training constraint only"),
    (["--constraint", "asft", "--method", "dpo"], "applies to SFT runs only"),
])
def test_bad_constraint_options_are_one_error_line(models, tmp_path, capsys, args, needle):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / "bad"
    code = main(["finetune", "--model", str(models["aligned"]), "--data", str(data), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


def test_a_study_recipe_names_the_constraint():
    recipe = recipe_from({"constraint": "asft"})
    assert recipe.constraint.name == "asft" and recipe.to_dict()["constraint"] == {"name": "asft"}
    assert "constraint" not in Recipe().to_dict()  # recipes without one record as before
    with pytest.raises(UserError, match="constraint.lambda: expected a number"):
        recipe_from({"constraint": {"name": "asft", "lambda": "x"}})
