"""Everything the toolkit writes follows the umask: 0644 files and 0755 directories under 022, 0600 / 0700 under 077
(never mkstemp's 0600 or mkdtemp's 0700 regardless of the umask)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from support import factories
from safety_subspaces import files
from safety_subspaces.checkpoints import Checkpoint, write_checkpoint
from safety_subspaces.evaluate.journal import Journal
from safety_subspaces.finetune import Recipe, finetune
from safety_subspaces.analyses.energy import ProjectConfig, WriteRequest, run_project
from safety_subspaces.study.store import Store


@pytest.fixture(scope="module")
def cast(tmp_path_factory) -> dict[str, Path]:
    """A tiny base, aligned and fine-tuned checkpoint (written under the default umask)."""
    root = tmp_path_factory.mktemp("cast")
    base = factories.tiny_model(seed=0)
    aligned = factories.perturbed(base, seed=1, rank=3)
    tuned = factories.perturbed(aligned, seed=2, scale=0.02, rank=2)
    return {name: factories.save(model, root / name) for name, model in
            (("base", base), ("aligned", aligned), ("useful", tuned))}


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request, tmp_path, monkeypatch):
    """Run the test under a umask, with a fresh toolkit home so its caches are created under it too."""
    monkeypatch.setenv("SAFETY_SUBSPACES_HOME", str(tmp_path / "home"))
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def wrong_modes(root: Path, umask: int) -> list[str]:
    """Paths under root (root included) whose permission bits are not 0666 / 0777 less the umask."""
    wrong = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        wanted = (0o777 if path.is_dir() else 0o666) & ~umask
        if mode != wanted:
            wrong.append(f"{path.relative_to(root.parent)} {oct(mode)} (want {oct(wanted)})")
    return wrong


def test_atomic_writers_and_staged_directories(umask, tmp_path):
    out = tmp_path / "run"
    with files.staged_dir(out) as stage:
        files.write_json(stage / "manifest.json", {"a": 1})
        files.write_yaml(stage / "config.yaml", {"b": 2})
        files.write_csv(stage / "nested" / "table.csv", [{"x": 1.5}], ["x"])
        files.atomic_write_chunks(stage / "blob.bin", [b"ab", memoryview(b"cd")])
    with files.staged_dir(out) as stage:  # a second stage merged into the existing directory
        files.atomic_write_text(stage / "more" / "notes.txt", "hello")
    files.atomic_write_text(out / "manifest.json", "{}")  # replacing a file keeps the umask's mode
    assert (out / "more" / "notes.txt").read_text() == "hello"
    assert wrong_modes(out, umask) == []


def test_checkpoints_caches_store_and_journals(umask, cast, tmp_path):
    result = run_project(ProjectConfig(
        base=str(cast["base"]), reference=str(cast["aligned"]), finetunes={"useful": str(cast["useful"])},
        out=tmp_path / "energy", subspaces=["top_k"], fractions=[0.5], writes=[WriteRequest.parse("parallel:top_k:0.5")],
        models_out=tmp_path / "models"))
    assert result.rows
    aligned = Checkpoint(cast["aligned"])
    sharded = write_checkpoint(tmp_path / "sharded", ((name, aligned.read(name)) for name in aligned.names),
                               template=aligned, shard_bytes=20_000)
    assert (sharded / "model.safetensors.index.json").exists()
    (tmp_path / "study").mkdir()
    store = Store(tmp_path / "study" / "results.sqlite")
    try:
        store.add_jobs([("job", "energy", {})])
        store.complete("job", [("energy", {"v": 1})], 0.1)
        (tmp_path / "journal").mkdir()
        Journal(tmp_path / "journal" / "generations.jsonl").append({"k": 1})
        home = Path(os.environ["SAFETY_SUBSPACES_HOME"])
        assert any((home / "svd").rglob("*.safetensors")) and (home / "file-hashes.json").exists()
        wrong = [line for root in ("energy", "models", "sharded", "study", "journal", "home")
                 for line in wrong_modes(tmp_path / root, umask)]
    finally:
        store.close()
    assert wrong == []


@pytest.mark.slow
def test_finetuned_checkpoint(umask, tmp_path):
    records = [{"prompt": "what is 1 + 1?", "response": "2"}, {"prompt": "what is 2 + 2?", "response": "4"}]
    recipe = Recipe(lr=1e-3, batch_size=2, grad_accum=1, max_steps=2)
    finetune(factories.tiny_model(seed=3), records, tmp_path / "ft", recipe, tokenizer=factories.tiny_tokenizer())
    assert (tmp_path / "ft" / "manifest.json").exists()
    assert wrong_modes(tmp_path / "ft", umask) == []


def test_the_organism_zoo_follows_the_sessions_umask(organism_zoo):
    assert wrong_modes(organism_zoo, files.current_umask()) == []


def test_current_umask_reads_without_changing_it():
    previous = os.umask(0o027)
    try:
        assert files.current_umask() == 0o027 and files.current_umask() == 0o027
    finally:
        os.umask(previous)
