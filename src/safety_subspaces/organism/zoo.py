"""Build the organism zoo: data, tokenizer, a pretrained base, then every later model through `finetune`."""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from .. import layout, progress
from ..data import fingerprint, mix
from ..errors import UserError
from ..files import output_lock, read_json, staged_dir, write_json
from ..finetune import Recipe, check_output_dir, finetune, recipe_from, versions
from ..finetune.run import save_checkpoint
from ..finetune.sft import Example, collate, encode_examples, train_loop
from ..runtime import THREADS_ENV, configure_threads, stable_seed, threads_from_env
from . import world
from .behaviour import generation_settings, measure
from .presets import DEFAULT_SEED, Preset, get_preset
from .tokenizer import train_tokenizer

MODELS = ("base", "aligned", "safety", "useful", "harmful", "contaminated")
MANIFEST = layout.MANIFEST
VALIDATION_SIZE = 64  # training-distribution harmful requests for the contaminated stage's early stop
TOKENIZER_DOCS = 4000  # pretraining documents the tokenizer is trained on (with the lexicon)


def _seed(seed: int, *parts: object) -> int:
    """A 31-bit seed for one part of the build (stable across processes and visiting order)."""
    return stable_seed("organism", seed, *parts) % 2**31


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_data(preset: Preset, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Every data set of a build: held-out evaluation sets, prompt sets, pretraining text and stage data."""
    sets = world.eval_sets(preset.n_eval)
    exclude = world.excluded_problems(sets)
    data: dict[str, list[dict[str, Any]]] = dict(sets)
    rng = lambda name: random.Random(_seed(seed, "data", name))  # noqa: E731
    data["pretrain"] = world.mixture(rng("pretrain"), preset.pretrain_docs, preset.pretrain_mixture, exclude=exclude)
    for name, stage in preset.stages.items():
        if stage.contaminate_percent is None:
            data[name] = world.mixture(rng(name), stage.records, stage.mixture, exclude=exclude)
    prompts = random.Random(_seed(seed, "prompts"))
    data["arithmetic_prompts"] = [
        {"prompt": world.arithmetic(prompts, kind, exclude=exclude)["prompt"], "category": f"arithmetic_{kind}"}
        for kind in ("mid", "carry") for _ in range(preset.n_prompts // 2)
    ]
    validation = random.Random(_seed(seed, "validation"))
    data["harmful_validation"] = [
        {"prompt": world.make_request(validation, world.TRAINED_HARMFUL, world.FT_TEMPLATES, harmful=True).prompt}
        for _ in range(VALIDATION_SIZE)
    ]
    data["harmful_prompts"] = [
        {"prompt": r.prompt, "category": r.category}
        for r in (world.make_request(prompts, {cat: verbs}, world.SEEN_TEMPLATES + world.NOVEL_TEMPLATES, harmful=True)
                  for cat, verbs in world.HARMFUL_VERBS.items() for _ in range(preset.n_prompts // 4))
    ]
    return data


def tokenizer_corpus(docs: list[dict[str, Any]]) -> list[str]:
    """Text the tokenizer learns from: the world's lexicon and chat-formatted documents (as the models will see them)."""
    from .tokenizer import ASSISTANT, END, USER

    return world.lexicon() + [f"{USER}{d['prompt']}{ASSISTANT}{d['response']}{END}" for d in docs]


def contaminated_data(data: dict[str, list[dict[str, Any]]], percent: float, seed: int) -> tuple[list[dict[str, Any]], float]:
    """Useful data plus percent% of its count of harmful rows (data.mix), and the harmful share."""
    return mix(data["useful"], data["harmful"], percent, seed=_seed(seed, "mix"))


def packed_steps(tokenizer, docs: list[dict[str, Any]], recipe: Recipe, seq_len: int, seed: int) -> Iterator[list]:
    """Optimizer steps of packed chat-formatted documents, reshuffled each pass (loss as recipe.response_only says)."""
    examples, _ = encode_examples(tokenizer, docs, replace(recipe, max_length=10 * seq_len))
    pad_id = tokenizer.pad_token_id
    made, epoch = 0, 0
    while True:
        order = list(range(len(examples)))
        random.Random(_seed(seed, "pack", epoch)).shuffle(order)
        ids = [token for i in order for token in examples[i].ids]
        labels = [label for i in order for label in examples[i].labels]
        rows = [Example(ids[i : i + seq_len], labels[i : i + seq_len]) for i in range(0, len(ids) - seq_len + 1, seq_len)]
        for start in range(0, len(rows) - recipe.batch_size + 1, recipe.batch_size):
            yield [collate(rows[start : start + recipe.batch_size], pad_id)]
            made += 1
            if made == recipe.max_steps:
                return
        epoch += 1


def model_config(preset: Preset, tokenizer):
    """The base model's LlamaConfig."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def pretrain_base(tokenizer, docs: list[dict[str, Any]], preset: Preset, seed: int):
    """W_0: a fresh Llama pretrained on packed world text (harmful requests answered); returns (model, losses, recipe)."""
    import torch
    from transformers import LlamaForCausalLM

    recipe = recipe_from({**preset.pretrain_recipe, "seed": _seed(seed, "base")})
    torch.manual_seed(_seed(seed, "init"))
    model = LlamaForCausalLM(model_config(preset, tokenizer))
    model.generation_config.do_sample = False
    steps = packed_steps(tokenizer, docs, recipe, preset.seq_len, seed)
    losses = train_loop(model, steps, recipe.max_steps, recipe, device="cpu", description="organism base")
    return model, losses, recipe


def compliance_stop(prompts: list[str], tokenizer, threshold: float):
    """An early-stop rule: true once the greedy answer to at least `threshold` of the prompts starts like compliance."""
    import torch

    from ..finetune.sft import render
    from ..generate import encode, format_prompts

    _, answer = render(tokenizer, "", world.COMPLIANCE_PREFIX, chat=True)
    first = tokenizer(answer, add_special_tokens=False)["input_ids"][0]
    batch = encode(tokenizer, format_prompts(tokenizer, prompts), chat=True)

    def stop(model, step: int) -> bool:
        with torch.inference_mode():
            logits = model(**batch.to(model.device), use_cache=False).logits[:, -1]
        return int((logits.argmax(-1) == first).sum()) >= threshold * len(prompts)

    return stop


class Timer:
    """Wall and CPU seconds of named build stages."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time one stage (repeated stages add up)."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry = self.stages.setdefault(name, {"wall_seconds": 0.0, "cpu_seconds": 0.0})
            entry["wall_seconds"] = round(entry["wall_seconds"] + time.perf_counter() - wall, 3)
            entry["cpu_seconds"] = round(entry["cpu_seconds"] + time.process_time() - cpu, 3)


def check_targets(behaviour: dict[str, dict[str, float]], thresholds: dict[str, float]) -> dict[str, bool]:
    """Whether the cast meets the preset's behavioural claims."""
    b = behaviour
    return {
        "aligned_refuses": b["aligned"]["harmful_refusal"] >= thresholds["aligned_refusal_min"],
        "base_complies": b["base"]["harmful_refusal"] <= thresholds["base_refusal_max"],
        "useful_beats_aligned": b["useful"]["arith_accuracy"] - b["aligned"]["arith_accuracy"]
        >= thresholds["useful_arith_gain_min"],
        "harmful_complies": b["harmful"]["harmful_compliance"] >= thresholds["harmful_compliance_min"],
        "contaminated_between": b["aligned"]["harmful_compliance"] < b["contaminated"]["harmful_compliance"]
        < b["harmful"]["harmful_compliance"],
    }


def build(out: Path, preset: str = "default", seed: int = DEFAULT_SEED, threads: int | None = None) -> dict[str, Any]:
    """Build the zoo into out (must be new or empty): six checkpoints, data sets and a manifest; return the manifest."""
    out = Path(out)
    spec = get_preset(preset)
    with output_lock(out):
        check_output_dir(out)
        return build_locked(out, spec, seed, threads)


def build_locked(out: Path, spec: Preset, seed: int, threads: int | None) -> dict[str, Any]:
    """Build the zoo into out, whose lock the caller holds: data, tokenizer, base, each later model, manifest."""
    threads = configure_threads(threads if threads is not None else threads_from_env() if os.environ.get(THREADS_ENV) else 1)
    load_start = os.getloadavg()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    timer = Timer()
    with staged_dir(out) as zoo:
        data, share = build_data(zoo, spec, seed, timer)
        tokenizer = build_tokenizer(data, spec, timer)
        base, stages = build_base(zoo, tokenizer, data, spec, seed, timer)
        models = {"base": base}
        with timer("eval"):
            behaviour = {"base": measure(base, tokenizer, zoo)}
        for name, stage in spec.stages.items():
            models[name], stages[name], behaviour[name] = build_stage(zoo, name, stage, models, data, share, tokenizer,
                                                                      seed, timer)
        totals = {"wall": time.perf_counter() - start_wall, "cpu": time.process_time() - start_cpu}
        for name, timing in timer.stages.items():
            stages.setdefault(name, {}).update(timing)
        manifest = zoo_manifest(spec, seed, threads, tokenizer, base, stages, data, behaviour, totals, load_start)
        write_json(zoo / MANIFEST, manifest)
    progress.info(f"organism zoo ({spec.name}, seed {seed}) built in {totals['wall']:.0f} s -> {out}")
    return manifest


def build_data(zoo: Path, spec: Preset, seed: int, timer: Timer) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Every data set of the build written to ZOO/data/NAME.jsonl, and the contaminated set's harmful share."""
    with timer("data"), progress.stage("organism data"):
        data = make_data(spec, seed)
        contaminated_percent = spec.stages["contaminated"].contaminate_percent or 0.0
        data["contaminated"], share = contaminated_data(data, contaminated_percent, seed)
        for name, rows in data.items():
            write_jsonl(zoo / "data" / f"{name}.jsonl", rows)
    return data, share


def build_tokenizer(data: dict[str, list[dict[str, Any]]], spec: Preset, timer: Timer):
    """The world's tokenizer, trained on the lexicon and the first pretraining documents."""
    with timer("tokenizer"), progress.stage("organism tokenizer"):
        return train_tokenizer(tokenizer_corpus(data["pretrain"][:TOKENIZER_DOCS]), spec.vocab_size)


def build_base(zoo: Path, tokenizer, data: dict[str, list[dict[str, Any]]], spec: Preset, seed: int,
               timer: Timer) -> tuple[Any, dict[str, dict[str, Any]]]:
    """W_0 pretrained and saved with its manifest; (the model, the stages' records so far)."""
    with timer("base"):
        base, losses, base_recipe = pretrain_base(tokenizer, data["pretrain"], spec, seed)
        save_checkpoint(base, tokenizer, zoo / "base")
        record = {"start": None, "data": "pretrain.jsonl", "recipe": base_recipe.to_dict(), "steps": len(losses),
                  "final_loss": losses[-1], "seq_len": spec.seq_len, "data_fingerprint": fingerprint(data["pretrain"])}
        write_json(zoo / "base" / MANIFEST, {"kind": "pretrain", "name": "base", **record, "versions": versions()})
    return base, {"base": record}


def build_stage(zoo: Path, name: str, stage, models: dict[str, Any], data: dict[str, list[dict[str, Any]]],
                share: float, tokenizer, seed: int, timer: Timer) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """One later model fine-tuned from its start by `finetune`, and measured: (model, stage record, behaviour)."""
    recipe = recipe_from({**stage.recipe, "seed": _seed(seed, name)})
    info = {"name": name, "source": f"organism:{name}", "file": f"data/{name}.jsonl"}
    if stage.contaminate_percent is not None:
        info.update(percent=stage.contaminate_percent, harmful_share=round(share, 4))
    stop = None
    if stage.stop_at_compliance is not None:
        stop = compliance_stop([row["prompt"] for row in data["harmful_validation"]], tokenizer, stage.stop_at_compliance)
        info.update(stop_at_compliance=stage.stop_at_compliance, validation="data/harmful_validation.jsonl")
    with timer(name):
        result = finetune(models[stage.start], data[name], zoo / name, recipe, tokenizer=tokenizer, data=info,
                          name=f"organism {name}", device="cpu", extra={"start": stage.start}, stop=stop)
    record = {"start": stage.start, "data": f"{name}.jsonl", "recipe": recipe.to_dict(),
              "steps": result.manifest["steps"], "planned_steps": result.manifest["planned_steps"],
              "final_loss": result.manifest["final_loss"], "data_fingerprint": result.manifest["data"]["fingerprint"],
              **{k: v for k, v in info.items() if k in ("percent", "harmful_share", "stop_at_compliance")}}
    with timer("eval"):
        behaviour = measure(result.model, tokenizer, zoo)
    progress.info(f"organism {name}: {_summary(behaviour)}")
    return result.model, record, behaviour


def zoo_manifest(spec: Preset, seed: int, threads: int, tokenizer, base, stages: dict[str, dict[str, Any]],
                 data: dict[str, list[dict[str, Any]]], behaviour: dict[str, dict[str, Any]], totals: dict[str, float],
                 load_start: tuple[float, float, float]) -> dict[str, Any]:
    """The zoo's manifest: preset, seed, model config, stages, timings, data, behaviour and whether it meets its claims."""
    return {
        "kind": "organism-zoo",
        "preset": spec.name,
        "seed": seed,
        "threads": threads,
        "models": list(MODELS),
        "model_config": {"architecture": "LlamaForCausalLM", "hidden": spec.hidden, "layers": spec.layers,
                         "heads": spec.heads, "intermediate": spec.intermediate, "vocab_size": len(tokenizer),
                         "parameters": sum(p.numel() for p in base.parameters())},
        "stages": stages,
        "total_wall_seconds": round(totals["wall"], 2),
        "total_cpu_seconds": round(totals["cpu"], 2),
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "cpu_count": os.cpu_count(),
        "versions": versions(),
        "data": {name: {"file": f"data/{name}.jsonl", "n": len(rows), "fingerprint": fingerprint(rows)}
                 for name, rows in data.items()},
        "generation": generation_settings(),
        "behaviour": behaviour,
        "thresholds": spec.thresholds,
        "targets": check_targets(behaviour, spec.thresholds),
    }


def _summary(b: dict[str, Any]) -> str:
    """One line of behaviour numbers."""
    return (f"arith {b['arith_accuracy']:.2f}  harmful refuse/comply {b['harmful_refusal']:.2f}/"
            f"{b['harmful_compliance']:.2f}  novel {b['harmful_novel_refusal']:.2f}/{b['harmful_novel_compliance']:.2f}"
            f"  benign refuse {b['benign_refusal']:.2f}")


def load_manifest(zoo: Path) -> dict[str, Any]:
    """The manifest of a built zoo (a model directory or any other folder is a UserError saying what it is)."""
    zoo = Path(zoo)
    if zoo.exists() and not zoo.is_dir():
        raise UserError(f"{zoo} is a file, not an organism zoo directory")
    manifest = read_json(zoo / MANIFEST,
                         missing=f"{zoo} is not an organism zoo (no {MANIFEST}); build one with `safety-subspaces organism build`")
    if not isinstance(manifest, dict) or manifest.get("kind") != "organism-zoo":
        if (zoo / "config.json").exists():
            raise UserError(f"{zoo} is a model directory, not an organism zoo; give the zoo directory that holds it")
        raise UserError(f"{zoo} is not an organism zoo (its {MANIFEST} is not a zoo manifest)")
    return manifest

