"""Benchmark the overlap analyses, each against a baseline measured in the same run.

weights:      MSO of U−A, H−A, B−A at 11 η values on Llama-shaped checkpoints (benchmarks/checkpoints.py): this toolkit
              (one exact decomposition per tensor per update, cold cache, every η from one cross product per pair)
              against 11 separate passes (a fresh exact decomposition of every update per η, then MSO per pair).
activations:  tokens/s of activation capture (hooks at the depth band, last prompt token, float64 second moments) against a
              plain forward pass (logits) of the same model on the same batches; also capture of every hidden state, and
              a forward pass of the decoder stack alone (no vocabulary projection: the capture overhead by itself).

    python benchmarks/bench_overlap.py [--part weights|activations|both] [--threads 1] [--small] [--workdir bench-out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

ETAS = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)
UPDATES = ("useful", "harmful", "base")


def machine() -> str:
    """A one-line machine description."""
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}"


# ----------------------------------------------------------------------------------------------------------- weights
def toolkit_weights(paths: dict[str, str], tensors: str, workdir: Path) -> dict:
    """This toolkit end to end (fingerprints, cold SVD cache, every tensor once, CSV and figure)."""
    from safety_subspaces.analyses.weight_overlap import WeightOverlapConfig, run_weight_overlap

    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        os.environ["SAFETY_SUBSPACES_HOME"] = str(Path(scratch) / "home")  # cold file-hash memo as well
        started = time.perf_counter()
        result = run_weight_overlap(WeightOverlapConfig(
            reference=paths["aligned"], updates={name: paths[name] for name in UPDATES}, out=Path(scratch) / "run",
            etas=ETAS, tensors=tensors, cache_dir=Path(scratch) / "cache",
        ))
        seconds = time.perf_counter() - started
    values = {(r["pair"], r["name"], r["eta"]): r["mso"] for r in result.rows if r["scope"] == "tensor"}
    return {"seconds": seconds, "decompositions": result.decompositions, "values": values}


def per_eta_weights(paths: dict[str, str], names: list[str]) -> dict:
    """The baseline: for each η a separate pass, decomposing every update of every tensor afresh (exact SVD)."""
    import torch

    from safety_subspaces import linalg
    from safety_subspaces.checkpoints import Checkpoint
    from safety_subspaces.analyses.common import pair_label

    reference = Checkpoint(paths["aligned"], role="reference")
    updates = {name: Checkpoint(paths[name], role=name) for name in UPDATES}
    started = time.perf_counter()
    values = {}
    for eta in ETAS:
        for name in names:
            base = reference.read(name).float()
            bases = {u: linalg.energy_basis(c.read(name).float() - base, eta) for u, c in updates.items()}
            for a, b in combinations(UPDATES, 2):
                values[(pair_label(a, b), name, eta)] = linalg.mso(bases[a], bases[b])
            del bases
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"seconds": time.perf_counter() - started, "decompositions": len(ETAS) * len(names) * len(UPDATES), "values": values}


def bench_weights(args) -> dict:
    """Generate (or reuse) the checkpoints and time both procedures."""
    import re

    from checkpoints import make_llama_checkpoints
    from safety_subspaces.checkpoints import Checkpoint

    size = dict(hidden=256, intermediate=1024, vocab=4000) if args.small else {}
    directory = args.workdir / ("llama-small" if args.small else "llama-2048")
    paths = {role: str(p) for role, p in make_llama_checkpoints(directory, roles=("base", "aligned", "useful", "harmful"), **size).items()}
    tensors = args.tensors if args.tensors is not None else (".*" if args.small else r"^model\.layers\.0\.")
    reference = Checkpoint(paths["aligned"])
    names = [n for n in reference.names if re.search(tensors, n) and len(reference.infos[n].shape) >= 2]
    ours = toolkit_weights(paths, tensors, args.workdir)
    theirs = per_eta_weights(paths, names)
    difference = max(abs(ours["values"][key] - value) for key, value in theirs["values"].items())
    shapes = sorted({tuple(reference.infos[n].shape) for n in names})
    return {
        "checkpoints": "small: hidden 256, intermediate 1024, vocab 4000, 4 layers" if args.small else
                       "hidden 2048, intermediate 8192, GQA 8/32 heads, vocab 32000, 4 layers, bf16",
        "tensors": f"{len(names)} matrices matching /{tensors}/, shapes {shapes}",
        "updates": "U−A, H−A, B−A; 3 pairs; 11 η",
        "toolkit_seconds": round(ours["seconds"], 2), "toolkit_decompositions": ours["decompositions"],
        "per_eta_seconds": round(theirs["seconds"], 2), "per_eta_decompositions": theirs["decompositions"],
        "speedup": round(theirs["seconds"] / ours["seconds"], 2),
        "max_abs_mso_difference": difference,
    }


# ------------------------------------------------------------------------------------------------------- activations
WORDS = ("how do i bake bread mix flour water then solve the equation for x if two trains leave a station at noon "
         "explain why the sky is blue write a poem about the sea tell me how to pick a lock build a fire prove that "
         "every prime greater than two is odd what is the derivative of a product of functions").split()


def prompts(count: int, seed: int = 0) -> list[str]:
    """Pseudo-sentences of 8 to 90 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 90))) + "?" for _ in range(count)]


def activation_model(small: bool):
    """A randomly initialised Llama-layout model (weights do not affect speed) and a BPE tokenizer with a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from safety_subspaces.organism.tokenizer import train_tokenizer

    hidden, layers, intermediate = (128, 4, 352) if small else (512, 8, 1408)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=1024,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = train_tokenizer(prompts(500, seed=1), vocab_size=600)
    return model, tokenizer, f"Llama layout, hidden {hidden}, {layers} layers, intermediate {intermediate}, vocab 32000, fp32"


def plain_forward(model, tokenizer, texts: list[str], batch_size: int) -> tuple[float, int]:
    """Seconds and non-pad tokens of plain forward passes (logits included) over the same batches capture uses;
    pass model.model for the decoder stack alone (no final projection to the vocabulary)."""
    import torch

    from safety_subspaces.generate import batches_by_length, encode, format_prompts

    started = time.perf_counter()
    formatted = format_prompts(tokenizer, texts, chat=True)
    tokens = 0
    for rows in batches_by_length(tokenizer, formatted, batch_size):
        encoded = encode(tokenizer, [formatted[i] for i in rows], chat=True)
        with torch.inference_mode():
            model(**encoded, use_cache=False)
        tokens += int(encoded["attention_mask"].sum())
    return time.perf_counter() - started, tokens


def captured(model, tokenizer, texts: list[str], batch_size: int, indices: list[int]) -> tuple[float, int]:
    """Seconds and tokens of activation capture (formatting, tokenising, forward, float64 moments)."""
    from safety_subspaces.analyses.capture import CaptureStats, capture

    stats = CaptureStats()
    started = time.perf_counter()
    capture(model, tokenizer, texts, indices, batch_size=batch_size, stats=stats)
    return time.perf_counter() - started, stats.tokens


def bench_activations(args) -> dict:
    """Interleaved rounds of the three procedures on the same prompts; medians."""
    from safety_subspaces.analyses.common import depth_band

    model, tokenizer, description = activation_model(args.small)
    texts = prompts(64 if args.small else 128, seed=2)
    hidden_states = model.config.num_hidden_layers + 1
    band = depth_band(hidden_states, 0.65, 0.90)
    runs = {"plain_forward": [], "plain_decoder_only": [], "capture_band": [], "capture_all": []}
    tokens = {}
    for _ in range(args.rounds):
        for name, call in (
            ("plain_forward", lambda: plain_forward(model, tokenizer, texts, args.batch_size)),
            ("plain_decoder_only", lambda: plain_forward(model.model, tokenizer, texts, args.batch_size)),
            ("capture_band", lambda: captured(model, tokenizer, texts, args.batch_size, band)),
            ("capture_all", lambda: captured(model, tokenizer, texts, args.batch_size, list(range(hidden_states)))),
        ):
            seconds, count = call()
            runs[name].append(seconds)
            tokens[name] = count
    assert len(set(tokens.values())) == 1, tokens
    rate = {name: tokens["plain_forward"] / statistics.median(values) for name, values in runs.items()}
    best = {name: tokens["plain_forward"] / min(values) for name, values in runs.items()}
    return {
        "model": description, "prompts": len(texts), "tokens": tokens["plain_forward"], "batch_size": args.batch_size,
        "band": band, "rounds": args.rounds,
        "tokens_per_second_median": {name: round(value, 1) for name, value in rate.items()},
        "tokens_per_second_best": {name: round(value, 1) for name, value in best.items()},
        "ratio_best_capture_band_vs_plain": round(best["capture_band"] / best["plain_forward"], 3),
        "ratio_best_capture_all_vs_decoder_only": round(best["capture_all"] / best["plain_decoder_only"], 3),
        "ratio_capture_band_vs_plain": round(rate["capture_band"] / rate["plain_forward"], 3),
        "ratio_capture_all_vs_plain": round(rate["capture_all"] / rate["plain_forward"], 3),
        "ratio_capture_all_vs_decoder_only": round(rate["capture_all"] / rate["plain_decoder_only"], 3),
        "seconds": {name: [round(v, 2) for v in values] for name, values in runs.items()},
    }


def main() -> None:
    """Run the chosen parts and print one JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["weights", "activations", "both"], default="both")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="small shapes: a quick check of the script")
    parser.add_argument("--tensors", help="weights: tensors to analyse (default: decoder block 0; all with --small)")
    parser.add_argument("--rounds", type=int, default=5, help="activations: interleaved rounds (medians and bests reported)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "threads": args.threads, "load_average_at_start": os.getloadavg()}
    if args.part in ("activations", "both"):
        report["activations"] = bench_activations(args)
    if args.part in ("weights", "both"):
        report["weights"] = bench_weights(args)
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
