"""Benchmark: the default left-basis decomposition (`linalg.left_singular`, method auto) against the previous one.

On a vocab x hidden embedding-shaped float32 matrix (default 151,936 x 896, Qwen2.5-0.5B's) built as
M = Q diag(sigma) V^T with Q, V Haar, three spectra:

  mild       sigma_i log-uniform from 1 to 0.1 (condition 10): the old method's fastest case (nothing below its cut)
  decaying   sigma_i = 1 / (1 + i / 8): a realistic power-law-like update spectrum (condition ~113)
  ill        sigma_i log-uniform from 1 to 1e-8 (condition 1e8)

Each decomposition runs in a fresh process (so its peak RSS is its own), timed around the call only:

  new        this toolkit's auto: for this shape the gram route (eigh of the float64 Gram matrix, U = M V Sigma^-1 in
             float64 row blocks) when the spectrum it shows has condition <= 1e3, else the qr route (float64 TSQR
             in row blocks, SVD of R, the same U pass)
  qr         (with --also-qr) the qr route forced, for comparison
  old        the previous auto, kept here only as the baseline: eigh of the float64 Gram matrix, directions below
             sigma_max * max(m, n) * eps_float32 replaced by a seeded random completion
  reference  numpy's float64 SVD of M (with --check): the accuracy reference, not a contender

Accuracy: energy kept by top-k projections (k = round(rho * r), rho in FRACTIONS) of a seeded update
T = Q C + N whose energy lies half in M's column space and half outside, against the numpy reference.

    python benchmarks/bench_decompose.py [--threads 2] [--repeat 3] [--rows 151936 --cols 896] [--cases mild,decaying,ill]
                                         [--also-qr] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

FRACTIONS = (0.01, 0.25, 0.5, 0.75, 0.99, 1.0)
BLOCK = 8192  # rows per generated block


# ------------------------------------------------------------------------------------- the previous method (baseline)
def old_left_singular(matrix):
    """The previous `left_singular(method="auto")`: float32 LAPACK SVD, or Gram eigh for m >= 4n (n <= 16384)."""
    import torch

    m, n = matrix.shape
    if m >= 4 * n and n <= 16384:
        return _old_gram_left(matrix)
    if m >= n:
        u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
        return u, s
    _, s, vh = torch.linalg.svd(matrix.T, full_matrices=False)
    return vh.T, s


def _old_completion(basis, total_columns: int, seed: int = 0):
    """The previous seeded orthonormal completion of a basis to total_columns columns."""
    import torch

    m, k = basis.shape
    generator = torch.Generator().manual_seed(seed)
    extra = torch.randn(m, total_columns - k, generator=generator, dtype=basis.dtype)
    for _ in range(2):
        extra = extra - basis @ (basis.T @ extra)
    q, _ = torch.linalg.qr(extra)
    return torch.cat([basis, q], dim=1)


def _old_gram_left(matrix, chunk_rows: int = 4096):
    """The previous Gram route: eigh of the float64 Gram matrix, a float32 cut, a random completion."""
    import torch

    m, n = matrix.shape
    gram = torch.zeros(n, n, dtype=torch.float64)
    for start in range(0, m, chunk_rows):
        block = matrix[start : start + chunk_rows].double()
        gram += block.T @ block
    eigenvalues, vectors = torch.linalg.eigh(gram)
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1)
    singular = eigenvalues.sqrt()
    tolerance = float(singular[0]) * max(m, n) * torch.finfo(torch.float32).eps
    keep = int((singular > tolerance).sum())
    left = torch.empty(m, keep, dtype=torch.float32)
    for start in range(0, m, chunk_rows):
        block = matrix[start : start + chunk_rows].double()
        left[start : start + chunk_rows] = ((block @ vectors[:, :keep]) / singular[:keep]).float()
    if keep < n:
        left = _old_completion(left, n)
    return left, singular.float()


# ------------------------------------------------------------------------------------------------- test matrices
def spectrum(case: str, n: int):
    """The singular values of a case."""
    import torch

    if case == "mild":
        return torch.logspace(0, -1, n, dtype=torch.float64)
    if case == "decaying":
        return 1.0 / (1.0 + torch.arange(n, dtype=torch.float64) / 8)
    if case == "ill":
        return torch.logspace(0, -8, n, dtype=torch.float64)
    raise ValueError(case)


def gaussian_block(index: int, rows: int, cols: int, seed: int):
    """Block `index` of a seeded Gaussian matrix (regenerated identically in every process)."""
    import torch

    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed * 1_000_003 + index), dtype=torch.float64)


def build(case: str, m: int, n: int, with_task: bool):
    """M = Q diag(sigma) V^T (float32) and, if asked, T = Q C + N (float32, half its energy outside span(Q)).

    Q = G L^-T from a Gaussian G = Q L^T (Cholesky of G^T G): Haar, never held in float64 as a whole.
    """
    import torch

    blocks = [(i, start, min(BLOCK, m - start)) for i, start in enumerate(range(0, m, BLOCK))]
    gram = torch.zeros(n, n, dtype=torch.float64)
    for i, _, rows in blocks:
        g = gaussian_block(i, rows, n, seed=1)
        gram += g.T @ g
    inverse_t = torch.linalg.solve_triangular(torch.linalg.cholesky(gram), torch.eye(n, dtype=torch.float64), upper=False).T
    right, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    weights = inverse_t @ torch.diag(spectrum(case, n)) @ right.T
    coefficients = torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    matrix = torch.empty(m, n, dtype=torch.float32)
    task = torch.empty(m, n, dtype=torch.float32) if with_task else None
    inside = inverse_t @ coefficients
    noise_scale = (n / m) ** 0.5  # ||N||_F ~ ||Q C||_F
    for i, start, rows in blocks:
        g = gaussian_block(i, rows, n, seed=1)
        matrix[start : start + rows] = (g @ weights).float()
        if task is not None:
            noise = gaussian_block(i, rows, n, seed=4) * noise_scale
            task[start : start + rows] = (g @ inside + noise).float()
    return matrix, task


def energies(left, task, ks: list[int]) -> list[float]:
    """Energy kept by the top-k projection of the task for each k (float64 accumulation over row blocks)."""
    import torch

    coefficients = torch.zeros(left.shape[1], task.shape[1], dtype=torch.float64)
    for start in range(0, left.shape[0], BLOCK):
        coefficients += left[start : start + BLOCK].double().T @ task[start : start + BLOCK].double()
    cumulative = torch.cumsum((coefficients**2).sum(dim=1), dim=0)
    total = float((task.double() ** 2).sum())
    return [float(cumulative[min(k, left.shape[1]) - 1]) / total if k else 0.0 for k in ks]


# ---------------------------------------------------------------------------------------------------- measurement
def child(method: str, case: str, m: int, n: int, check: bool) -> dict:
    """Build the matrix, time one decomposition (wall and CPU), and report peak RSS and energies."""
    import torch

    from safety_subspaces import linalg

    matrix, task = build(case, m, n, with_task=check)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = time.perf_counter(), time.process_time()
    if method in ("new", "qr"):
        left, singular = linalg.left_singular(matrix, method="auto" if method == "new" else "qr")
    elif method == "old":
        left, singular = old_left_singular(matrix)
    else:
        import numpy as np

        u, s, _ = np.linalg.svd(matrix.double().numpy(), full_matrices=False)
        rank = int(np.sum(s > s[0] * max(m, n) * np.finfo(np.float64).eps))
        left, singular = torch.from_numpy(u[:, :rank]), torch.from_numpy(s[:rank])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "method": method, "case": case, "wall_s": wall, "cpu_s": cpu, "columns": int(left.shape[1]),
        "peak_rss_gib": peak / 1024**2, "peak_rss_above_inputs_gib": max(peak - rss_before, 0) / 1024**2,
        "sigma_max": float(singular[0]), "sigma_min_kept": float(singular[-1]),
    }
    if check:
        ks = [max(1, round(f * n)) for f in FRACTIONS]
        result["ks"] = ks
        result["energies"] = energies(left, task, ks)
    return result


def in_subprocess(method: str, case: str, args: argparse.Namespace) -> dict:
    """One measurement in a fresh Python process; its load average before and after."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--child", method, "--case", case, "--rows", str(args.rows), "--cols",
               str(args.cols), "--threads", str(args.threads), *(["--check"] if args.check else [])]
    load_before = os.getloadavg()[0]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["load_1min_before_after"] = [load_before, os.getloadavg()[0]]
    return result


def main() -> None:
    """Run old and new (and the numpy reference with --check) on each case; print a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=151_936)
    parser.add_argument("--cols", type=int, default=896)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="mild,decaying,ill")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per method and case, interleaved (ratios of the fastest)")
    parser.add_argument("--check", action="store_true", help="also compare energies kept with numpy's float64 SVD")
    parser.add_argument("--also-qr", action="store_true", help="also time the qr route forced")
    parser.add_argument("--child", choices=["new", "old", "qr", "reference"])
    parser.add_argument("--case", default="decaying")
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(args.child, args.case, args.rows, args.cols, args.check)))
        return

    report = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
              "threads": args.threads, "shape": [args.rows, args.cols], "cases": {}}
    for case in args.cases.split(","):
        runs: dict[str, list[dict]] = {"old": [], "new": [], **({"qr": []} if args.also_qr else {})}
        for _ in range(args.repeat):  # interleaved, so a change in the machine's load hits both alike
            for method in runs:
                runs[method].append(in_subprocess(method, case, args))
        best = {method: min(results, key=lambda r: r["wall_s"]) for method, results in runs.items()}
        entry = {"runs": runs, **{f"{kind}_ratio_{method}_over_old": best[method][f"{kind}_s"] / best["old"][f"{kind}_s"]
                                  for method in runs if method != "old" for kind in ("wall", "cpu")}}
        if args.check:
            reference = in_subprocess("reference", case, args)
            entry["reference"] = reference
            for method in runs:
                entry[f"max_energy_error_{method}"] = max(
                    abs(a - b) for a, b in zip(best[method]["energies"], reference["energies"]))
        report["cases"][case] = entry
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
