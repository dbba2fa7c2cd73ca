"""Benchmark: evaluating projected models by in-memory weight swaps vs writing each projected checkpoint and loading it.

On the organism zoo, for the same projections, in one run: (a) `LiveModel.apply` + evaluation + `restore` on one
resident model; (b) `write_checkpoint` of the projected weights + `load_model` + the same evaluation. The overhead
is everything but the evaluation itself (timed separately around the same call). Prints JSON.

    python benchmarks/bench_swap.py [--zoo ZOO] [--threads 1] [--prompts 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SPECS = ["parallel:top_k:0.25", "parallel:random:0.5", "orthogonal:top_k:0.75", "orthogonal:random_k:0.25",
         "parallel:top_k:0.99", "orthogonal:random:0.99"]


def evaluate(model, tokenizer, prompts) -> tuple[float, float]:
    """Harm score of the model on the prompts (organism judge) and the seconds it took."""
    from safety_subspaces.evaluate import evaluate_harm, make_judge

    start = time.perf_counter()
    result = evaluate_harm(model, tokenizer, prompts=prompts, judge=make_judge("organism"), max_new_tokens=24,
                           batch_size=64, labels={"model": "bench"})
    return result.metric("harm_score"), time.perf_counter() - start


def main() -> None:
    """Run both procedures over the same projections."""
    import torch

    from safety_subspaces.checkpoints import Checkpoint, write_checkpoint
    from safety_subspaces.evaluate import load_harm_prompts
    from safety_subspaces.models import load_model, load_tokenizer
    from safety_subspaces.paths import zoo_dir
    from safety_subspaces.checkpoints import TensorFilter
    from safety_subspaces.edits import EditInputs, ProjectionSpec
    from safety_subspaces.edits.apply import LiveModel, edited_state
    from safety_subspaces.subspaces import AlignmentSubspaces

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=zoo_dir())
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    zoo = args.zoo
    prompts = load_harm_prompts("organism:harmful_eval", zoo=zoo, limit=args.prompts)
    base, aligned, harmful = (Checkpoint(zoo / name, role=name, keep_bytes=1 << 28) for name in ("base", "aligned", "harmful"))
    subspaces = AlignmentSubspaces(base, aligned, cache_root=Path(tempfile.mkdtemp()), keep_bytes=1 << 30)
    for name in aligned.names:  # warm the SVD cache: both procedures read the same bases
        subspaces.spectrum(name)
    tokenizer = load_tokenizer(zoo / "aligned")
    model = load_model(zoo / "aligned")
    live = LiveModel(model, subspaces, aligned.names)
    evaluate(model, tokenizer, prompts[:8])  # warm-up

    swap = {"total": [], "eval": [], "scores": []}
    for text in SPECS:
        start = time.perf_counter()
        live.apply(harmful, ProjectionSpec.parse(text))
        score, seconds = evaluate(model, tokenizer, prompts)
        live.restore()
        swap["total"].append(time.perf_counter() - start)
        swap["eval"].append(seconds)
        swap["scores"].append(score)

    write = {"total": [], "eval": [], "scores": []}
    scratch = Path(tempfile.mkdtemp())
    for index, text in enumerate(SPECS):
        start = time.perf_counter()
        directory = scratch / f"m{index}"
        write_checkpoint(directory, edited_state(ProjectionSpec.parse(text), EditInputs(subspaces, harmful), TensorFilter()), template=aligned)
        loaded = load_model(directory)
        score, seconds = evaluate(loaded, load_tokenizer(directory), prompts)
        del loaded
        shutil.rmtree(directory)
        write["total"].append(time.perf_counter() - start)
        write["eval"].append(seconds)
        write["scores"].append(score)

    def overhead(d):
        return statistics.median(t - e for t, e in zip(d["total"], d["eval"]))

    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "load_average_at_end": os.getloadavg(),
        "threads": args.threads, "zoo": str(zoo), "projections": SPECS, "prompts": len(prompts),
        "in_memory": {"median_total_s": statistics.median(swap["total"]), "median_overhead_s": overhead(swap)},
        "write_and_load": {"median_total_s": statistics.median(write["total"]), "median_overhead_s": overhead(write)},
        "overhead_ratio": overhead(write) / overhead(swap),
        "total_ratio": statistics.median(write["total"]) / statistics.median(swap["total"]),
        "same_scores": swap["scores"] == write["scores"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
