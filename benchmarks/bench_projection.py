"""Benchmark: the weight engine vs the reference code's per-combination procedure, on Llama-shaped checkpoints.

Computes the same 30 pooled energy ratios (3 fine-tunes x 2 schemes x 5 fractions, top_k) two ways, each in a fresh
process (so peak RSS is its own): this engine (one exact decomposition per tensor, streamed, cold cache), and the
naive procedure (a fresh torch.svd_lowrank(Δ_A, q=k, niter=2) per fine-tune x scheme x fraction, all three models'
tensors resident, as the reference code intended). Prints a JSON report (figures for BENCHMARKS.md).

    python benchmarks/bench_projection.py --workdir bench-out [--threads 2] [--small] [--also-exact]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

FINETUNES = ("useful", "harmful", "contaminated")
SCHEMES = ("parallel", "orthogonal")
FRACTIONS = (0.01, 0.25, 0.5, 0.75, 0.99)


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def engine(paths: dict[str, str], cache: str) -> dict:
    """This toolkit: one pass, one exact decomposition per tensor, tensors streamed."""
    from safety_subspaces.checkpoints import Checkpoint
    from safety_subspaces.analyses.energy import energy_table
    from safety_subspaces.subspaces import AlignmentSubspaces

    start = time.perf_counter()
    base, aligned = Checkpoint(paths["base"], role="base"), Checkpoint(paths["aligned"], role="aligned")
    finetunes = {name: Checkpoint(paths[name], role=name) for name in FINETUNES}
    subspaces = AlignmentSubspaces(base, aligned, cache_root=Path(cache))
    rows, _ = energy_table(subspaces, finetunes, aligned.names, kinds=["top_k"], fractions=FRACTIONS, schemes=SCHEMES)
    ratios = {f"{r['finetune']}|{r['scheme']}|{r['fraction']}": r["energy_kept"] for r in rows if r["scope"] == "model"}
    return {"seconds": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib(), "ratios": ratios,
            "decompositions": subspaces.cache.computed}


def naive(paths: dict[str, str], exact: bool) -> dict:
    """The reference procedure: fresh decomposition of Δ_A per (fine-tune, scheme, fraction), models resident."""
    import torch
    from safetensors.torch import load_file

    def load(path: str) -> dict[str, torch.Tensor]:
        state = {}
        for shard in sorted(Path(path).glob("*.safetensors")):
            state.update(load_file(str(shard)))
        return state

    start = time.perf_counter()
    base, aligned = load(paths["base"]), load(paths["aligned"])
    ratios = {}
    for name in FINETUNES:
        finetuned = load(paths[name])
        for scheme in SCHEMES:
            for fraction in FRACTIONS:
                kept = total = 0.0
                for key in aligned:
                    delta_align = aligned[key].float() - base[key].float()
                    delta_task = finetuned[key].float() - aligned[key].float()
                    matrix = delta_align if delta_align.ndim == 2 else delta_align.reshape(-1, 1)
                    task = delta_task if delta_task.ndim == 2 else delta_task.reshape(-1, 1)
                    k = max(1, round(fraction * min(matrix.shape)))
                    if exact:
                        u = torch.linalg.svd(matrix, full_matrices=False)[0][:, :k]
                    else:
                        u = torch.svd_lowrank(matrix, q=k, niter=2)[0][:, :k]
                    parallel = u @ (u.T @ task)
                    projected = parallel if scheme == "parallel" else task - parallel
                    kept += float((projected.double() ** 2).sum())
                    total += float((task.double() ** 2).sum())
                ratios[f"{name}|{scheme}|{fraction}"] = kept / total
        del finetuned
    return {"seconds": time.perf_counter() - start, "peak_rss_gib": peak_rss_gib(), "ratios": ratios}


def in_subprocess(mode: str, paths: dict[str, str], threads: int, cache: str) -> dict:
    """Run one measurement in a fresh Python process and return its JSON result."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", mode, "--paths", json.dumps(paths), "--threads", str(threads), "--cache", cache]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    """Generate checkpoints, run both procedures, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="hidden 256 / intermediate 1024 / vocab 4000: a quick check")
    parser.add_argument("--also-exact", action="store_true", help="also time the reference code as shipped (exact SVD per combination)")
    parser.add_argument("--child", choices=["engine", "naive", "exact"])
    parser.add_argument("--paths")
    parser.add_argument("--cache")
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        paths = json.loads(args.paths)
        result = engine(paths, args.cache) if args.child == "engine" else naive(paths, exact=args.child == "exact")
        print(json.dumps(result))
        return

    from checkpoints import make_llama_checkpoints

    size = dict(hidden=256, intermediate=1024, vocab=4000) if args.small else {}
    directory = args.workdir / ("llama-small" if args.small else "llama-2048")
    paths = {role: str(path) for role, path in make_llama_checkpoints(directory, **size).items()}
    with tempfile.TemporaryDirectory() as cache:
        ours = in_subprocess("engine", paths, args.threads, cache)
    theirs = in_subprocess("naive", paths, args.threads, "")
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "load_average_at_end": os.getloadavg(),
        "threads": args.threads,
        "shape": "small" if args.small else "hidden 2048, intermediate 8192, GQA 8/32, vocab 32000, 4 layers, bf16",
        "engine": {k: v for k, v in ours.items() if k != "ratios"},
        "naive_svd_lowrank": {k: v for k, v in theirs.items() if k != "ratios"},
        "speedup": theirs["seconds"] / ours["seconds"],
        "rss_ratio": ours["peak_rss_gib"] / theirs["peak_rss_gib"],
        "max_abs_ratio_difference": max(abs(ours["ratios"][key] - theirs["ratios"][key]) for key in ours["ratios"]),
        "ratios_engine": ours["ratios"],
    }
    if args.also_exact:
        shipped = in_subprocess("exact", paths, args.threads, "")
        report["naive_exact_svd"] = {k: v for k, v in shipped.items() if k != "ratios"}
        report["speedup_vs_exact"] = shipped["seconds"] / ours["seconds"]
        report["max_abs_difference_vs_exact"] = max(abs(ours["ratios"][k] - shipped["ratios"][k]) for k in ours["ratios"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
