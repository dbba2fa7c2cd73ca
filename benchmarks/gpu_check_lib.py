"""The Python steps of benchmarks/gpu_check.sh: versions, the study config, the CPU-vs-device comparison, the report.

    python benchmarks/gpu_check_lib.py versions --out versions.json
    python benchmarks/gpu_check_lib.py study --family DIR --out study.yaml --device cuda [--executor ray] ...
    python benchmarks/gpu_check_lib.py compare --device-run DIR --cpu-run DIR --tolerance 1e-5 --out compare.json
    python benchmarks/gpu_check_lib.py report --work DIR --out gpu_check.json --device cuda ...
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scale import study_config, study_jobs, write_prompts  # noqa: E402  (no torch at import)

COMPARED = ("energy_kept", "cos_task_proj", "cos_task_align")
KEY = ("finetune", "subspace", "scheme", "fraction", "scope", "name")


def module_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict:
    """Software versions and the accelerator as torch and nvidia-smi see them."""
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    for name in ("transformers", "safetensors", "tokenizers", "ray", "lm-eval", "datasets", "safety-subspaces"):
        info[name] = module_version(name)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({"device_name": props.name, "device_memory_bytes": props.total_memory,
                     "device_capability": list(torch.cuda.get_device_capability(0)),
                     "tf32_matmul": torch.backends.cuda.matmul.allow_tf32})
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def energy_rows(run_dir: Path) -> dict[tuple, dict]:
    """The energy.csv rows of a project run by key (fine-tune, subspace, scheme, fraction, scope, name)."""
    with open(Path(run_dir) / "energy.csv", newline="") as handle:
        return {tuple(row[k] for k in KEY): row for row in csv.DictReader(handle)}


def number(text: str) -> float:
    """A CSV cell as a float (empty: nan)."""
    return float(text) if text not in ("", None) else math.nan


def compare_runs(device_run: Path, cpu_run: Path, tolerance: float) -> dict:
    """Layer and tensor rows of the one-layer CPU run against the same rows of the device run."""
    device, cpu = energy_rows(device_run), energy_rows(cpu_run)
    keys = [key for key, row in cpu.items() if row["scope"] in ("layer", "tensor")]
    missing = [key for key in keys if key not in device]
    worst = {column: 0.0 for column in COMPARED}
    where: dict[str, list] = {}
    k_mismatch = 0
    for key in keys:
        if key in missing:
            continue
        if device[key]["k_total"] != cpu[key]["k_total"]:
            k_mismatch += 1
        for column in COMPARED:
            a, b = number(device[key][column]), number(cpu[key][column])
            gap = 0.0 if (math.isnan(a) and math.isnan(b)) else abs(a - b)
            if math.isnan(gap):
                gap = math.inf
            if gap > worst[column]:
                worst[column], where[column] = gap, list(key)
    largest = max(worst.values()) if worst else math.inf
    passed = bool(keys) and not missing and k_mismatch == 0 and largest <= tolerance
    return {"rows_compared": len(keys) - len(missing), "rows_missing_on_device": len(missing),
            "k_total_mismatches": k_mismatch, "max_abs_diff": worst, "worst_row": where, "tolerance": tolerance,
            "passed": passed}


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cuda_peaks(directory: Path) -> list[dict]:
    """The CUDA allocator peaks the step's processes recorded (benchmarks/gpu_site/sitecustomize.py)."""
    if not Path(directory).is_dir():
        return []
    return [stats for path in sorted(Path(directory).glob("*.json")) if (stats := read_json(path))]


def report(work: Path, order: list[str], device: str, preset: str, layers: str | None, budget: float,
           elapsed: float) -> dict:
    """gpu_check.json: versions, every step's measurements, the comparison, the studies' jobs, pass or fail."""
    steps = {}
    for name in order:
        step = read_json(work / "steps" / f"{name}.json")
        skipped = (work / "steps" / f"{name}.skipped").read_text().strip() if (work / "steps" / f"{name}.skipped").exists() else None
        if step is None:
            steps[name] = {"status": "skipped", "reason": skipped} if skipped else {"status": "not run"}
            continue
        step["status"] = "ok" if step["rc"] == 0 else ("timed out" if step["timed_out"] else "failed")
        step["cuda_peaks"] = cuda_peaks(work / "cuda-stats" / name)
        if step["status"] != "ok" and step.get("log"):
            step["log_tail"] = Path(step["log"]).read_text(errors="replace")[-3000:]
        steps[name] = step
    studies = {}
    for name in ("study", "study_ray"):
        run_dir = work / "runs" / name
        if (run_dir / "results.sqlite").exists():
            jobs = study_jobs(run_dir)
            studies[name] = {"jobs": jobs, "failed": sum(1 for job in jobs if job["status"] != "done")}
    comparison = read_json(work / "compare.json")
    required = ["build", "project_device", "project_cpu_layer0", "overlap_device", "study"]
    problems = [f"{name}: {steps[name]['status']}" for name in required if steps.get(name, {}).get("status") != "ok"]
    problems += [f"{name}: {s['failed']} job(s) failed" for name, s in studies.items() if s["failed"]]
    if not (comparison and comparison.get("passed")):
        problems.append("comparison of layer-0 energy rows: " + ("failed" if comparison else "not run"))
    return {
        "ok": not problems, "problems": problems, "device": device, "preset": preset, "layers": layers,
        "elapsed_s": elapsed, "budget_s": budget, "within_budget": elapsed <= budget, "under_8_minutes": elapsed < 480,
        "versions": read_json(work / "versions.json"), "steps": steps, "comparison": comparison, "studies": studies,
        "load_end": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    """CLI entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    v = commands.add_parser("versions")
    v.add_argument("--out", type=Path, required=True)
    s = commands.add_parser("study")
    s.add_argument("--family", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--name", default="gpu-check")
    s.add_argument("--subspaces", default="top_k,random_k,random")
    s.add_argument("--fractions", default="0.25,0.75")
    s.add_argument("--executor", default="local", choices=["local", "ray"])
    s.add_argument("--no-energy", action="store_true")
    s.add_argument("--no-references", action="store_true")
    c = commands.add_parser("compare")
    c.add_argument("--device-run", type=Path, required=True)
    c.add_argument("--cpu-run", type=Path, required=True)
    c.add_argument("--tolerance", type=float, default=1e-5)
    c.add_argument("--out", type=Path, required=True)
    r = commands.add_parser("report")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--steps", required=True, help="step names in order, comma-separated")
    r.add_argument("--device", required=True)
    r.add_argument("--preset", required=True)
    r.add_argument("--layers", default="")
    r.add_argument("--budget", type=float, required=True)
    r.add_argument("--elapsed", type=float, required=True, help="seconds since the check started")
    args = parser.parse_args()
    if args.command == "versions":
        args.out.write_text(json.dumps(versions(), indent=2) + "\n")
    elif args.command == "study":
        paths = json.loads((args.family / "family.json").read_text())["paths"]
        prompts = write_prompts(args.out.with_name(args.out.stem + "-prompts.jsonl"))
        executor = "{kind: local}"
        if args.executor == "ray":
            executor = "{kind: ray, workers: 1" + (", gpus_per_worker: 1}" if args.device == "cuda" else ", gpus_per_worker: 0}")
        args.out.write_text(study_config(
            paths, prompts, args.threads, name=args.name, device=args.device, subspaces=tuple(args.subspaces.split(",")),
            fractions=tuple(float(f) for f in args.fractions.split(",")), energy=not args.no_energy,
            references=not args.no_references, executor=executor))
    elif args.command == "compare":
        result = compare_runs(args.device_run, args.cpu_run, args.tolerance)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0 if result["passed"] else 1
    else:
        result = report(args.work, args.steps.split(","), args.device, args.preset, args.layers or None, args.budget,
                        args.elapsed)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({key: result[key] for key in ("ok", "problems", "elapsed_s", "within_budget")}, indent=2))
        return 0 if result["ok"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
