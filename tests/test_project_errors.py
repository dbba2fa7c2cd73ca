"""Every bad input of `project`: one clear line naming the culprit, exit code 2, nothing written, inputs untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from support import factories
from safety_subspaces.cli import main
from support.factories import FINETUNES, make_cast, state


@pytest.fixture(scope="module")
def cast(tmp_path_factory) -> dict[str, Path]:
    return make_cast(tmp_path_factory.mktemp("errcast"), arch="llama", tie=False)


def digest(path: Path) -> str:
    """A hash of every file under a directory."""
    h = hashlib.sha256()
    for file in sorted(Path(path).rglob("*")):
        if file.is_file():
            h.update(file.name.encode() + file.read_bytes())
    return h.hexdigest()


def run_cli(cast, tmp_path, capsys, *extra, finetunes=FINETUNES, base=None, aligned=None):
    """Run `project`; return (code, stderr, out dir)."""
    out = tmp_path / "run"
    args = ["project", "--base", str(base or cast["base"]), "--aligned", str(aligned or cast["aligned"]), "--out", str(out)]
    for name in finetunes:
        args += ["--finetuned", f"{name}={cast[name] if name in cast else name}"]
    before = {name: digest(path) for name, path in cast.items()}
    code = main([*args, *extra])
    err = capsys.readouterr().err
    assert {name: digest(path) for name, path in cast.items()} == before  # inputs never modified
    return code, err, out


def assert_clean_error(code, err, out, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith(("error:", "safety-subspaces project: error:")), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_mismatched_shapes_list_the_tensors(cast, tmp_path, capsys):
    other = factories.save(factories.tiny_model("llama", intermediate=40), tmp_path / "other")
    code, err, out = run_cli(cast, tmp_path, capsys, base=other)
    assert_clean_error(code, err, out, "mismatched shapes", "mlp.down_proj.weight")


def test_mismatched_architectures(cast, tmp_path, capsys):
    other = factories.save(factories.tiny_model("qwen2"), tmp_path / "qwen")
    code, err, out = run_cli(cast, tmp_path, capsys, base=other)
    assert_clean_error(code, err, out, "mismatched architectures")


def test_missing_tensor(cast, tmp_path, capsys):
    broken = copy_model(cast["useful"], tmp_path / "missing")
    tensors = state(broken)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    code, err, out = run_cli(dict(cast, useful=broken), tmp_path, capsys)
    assert_clean_error(code, err, out, "lacks model.layers.1.mlp.up_proj.weight")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_corrupt_safetensors(cast, tmp_path, capsys, damage):
    broken = copy_model(cast["harmful"], tmp_path / damage)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + data[20:])
    code, err, out = run_cli(dict(cast, harmful=broken), tmp_path, capsys)
    assert_clean_error(code, err, out, str(weights))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weight(cast, tmp_path, capsys, bad):
    broken = copy_model(cast["contaminated"], tmp_path / "nan")
    tensors = state(broken)
    tensors["model.layers.0.self_attn.v_proj.weight"][0, 0] = bad
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    code, err, out = run_cli(dict(cast, contaminated=broken), tmp_path, capsys, "--write", "parallel:top_k:0.5",
                             "--models-out", str(tmp_path / "models"))
    assert_clean_error(code, err, out, "model.layers.0.self_attn.v_proj.weight", "NaN or Inf")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("fractions", ["0", "1.5", "-0.2", "0.5,2"])
def test_fraction_outside_unit_interval(cast, tmp_path, capsys, fractions):
    code, err, out = run_cli(cast, tmp_path, capsys, "--fractions", fractions)
    assert_clean_error(code, err, out, "outside (0, 1]")


def test_no_finetune(cast, tmp_path, capsys):
    code, err, out = run_cli(cast, tmp_path, capsys, finetunes=())
    assert_clean_error(code, err, out, "no fine-tune")


def test_output_directory_with_a_different_run(cast, tmp_path, capsys):
    assert run_cli(cast, tmp_path, capsys, "--fractions", "0.5")[0] == 0
    before = digest(tmp_path / "run")
    code, err, _ = run_cli(cast, tmp_path, capsys, "--fractions", "0.25")
    assert code == 2 and "already holds a different run" in err and len(err.strip().splitlines()) == 1
    assert digest(tmp_path / "run") == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code = main(["project", "--base", str(cast["base"]), "--aligned", str(cast["aligned"]),
                 "--finetuned", f"useful={cast['useful']}", "--out", str(foreign)])
    assert code == 2 and "not empty" in capsys.readouterr().err


def test_pickle_only_checkpoint(cast, tmp_path, capsys):
    pickled = copy_model(cast["useful"], tmp_path / "pickled")
    tensors = state(pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(tensors, pickled / "pytorch_model.bin")
    code, err, out = run_cli(dict(cast, useful=pickled), tmp_path, capsys)
    assert_clean_error(code, err, out, "pickle", "--allow-pickle")
    code, err, out = run_cli(dict(cast, useful=pickled), tmp_path, capsys, "--allow-pickle")
    assert code == 0, err
    # a pickle with arbitrary objects is refused by weights_only=True
    evil = copy_model(pickled, tmp_path / "evil")
    torch.save({"weights": tensors, "hook": print}, evil / "pytorch_model.bin")
    (tmp_path / "second").mkdir()
    code, err, out = run_cli(dict(cast, useful=evil), tmp_path / "second", capsys, "--allow-pickle")
    assert_clean_error(code, err, out, "weights_only=True")


def test_model_needing_remote_code(cast, tmp_path, capsys):
    custom = copy_model(cast["harmful"], tmp_path / "custom")
    factories.write_config(custom, auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    code, err, out = run_cli(dict(cast, harmful=custom), tmp_path, capsys)
    assert_clean_error(code, err, out, "needs remote code", "--trust-remote-code")


def test_usage_errors_are_one_line(cast, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["project", "--base", str(cast["base"]), "--aligned", str(cast["aligned"]), "--finetuned", "oops", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "NAME=VALUE" in err


def test_missing_directory(cast, tmp_path, capsys):
    code, err, out = run_cli(cast, tmp_path, capsys, base=tmp_path / "nowhere")
    assert_clean_error(code, err, out, "nowhere")


def test_write_without_models_out_and_bad_spec(cast, tmp_path, capsys):
    code, err, out = run_cli(cast, tmp_path, capsys, "--write", "parallel:top_k:0.5")
    assert_clean_error(code, err, out, "--models-out")
    code, err, out = run_cli(cast, tmp_path, capsys, "--write", "sideways:top_k:0.5", "--models-out", str(tmp_path / "m"))
    assert_clean_error(code, err, out, "sideways")
