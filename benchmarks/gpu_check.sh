#!/usr/bin/env bash
# The prepared GPU check (issue 15): one run on one GPU, under 8 minutes, that exercises the GPU paths end to end.
#
#   benchmarks/gpu_check.sh                      # qwen2-1.5b family (28 layers, hidden 1536), everything on cuda
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_PRESET=qwen2.5-0.5b GPU_CHECK_BUDGET_S=3600 benchmarks/gpu_check.sh --layers 2
#                                                # the same plumbing on a CPU-only machine
#
# Steps (each measured by benchmarks/measure.py: wall, CPU s, peak RSS, peak GPU memory by nvidia-smi polling, and
# each process's torch.cuda.max_memory_allocated through benchmarks/gpu_site/sitecustomize.py):
#   versions            python, torch, CUDA, device name, transformers, ray, ...
#   build               the Qwen2-shaped family (benchmarks/qwen_family.py): base, aligned, useful, harmful, contaminated
#   project_device      the full `project` grid (top_k, random_k, random x 5 fractions x parallel + orthogonal x 3
#                       fine-tunes) with --device $GPU_CHECK_DEVICE; if it fails, project_device_layer0 reruns layer 0
#                       alone on the device with top_k,random_k, so that the comparison can still run
#   project_cpu_layer0  `project --layers 0 --device cpu` with its own SVD cache (decomposed on the CPU)
#   compare             layer- and tensor-scope rows of layer 0: energy_kept, cos_task_proj, cos_task_align and k_total
#                       of the CPU run against the device run (max abs difference <= GPU_CHECK_TOLERANCE, default 1e-5)
#   overlap_device      `overlap weights` of useful, harmful and base against aligned on the layers at the 70th and
#                       85th depth percentiles, --device $GPU_CHECK_DEVICE
#   study               a small study on the device: dtype bfloat16, in-memory swaps (LiveModel), bf16 generation with
#                       the refusal judge on 8 prompts (8 new tokens), references + 6 projected variants of the harmful
#                       fine-tune (top_k, random_k, random x 0.25, 0.75), energy on (its SVD cache is project's)
#   study_ray           the same study with the ray executor (one worker, one GPU), 1 variant, references and energy off;
#                       only where ray is importable (the GPU image has none: carry its wheels to run it)
# A step that would start with under 20 s of GPU_CHECK_BUDGET_S (default 470 s) left is skipped and says so.
#
# Writes gpu_check.json (and gpu_check-logs.tar.gz: every step's log, measurement and the layer-0 energy rows) to
# $OUT when set, else to the work directory (GPU_CHECK_WORKDIR, default a new /tmp/gpu-check.* directory, which holds
# the family and every run). Exit code 0 when every required step ran and the comparison passed, 1 otherwise, 2 on a
# usage error.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
PRESET="${GPU_CHECK_PRESET:-qwen2-1.5b}"
LAYERS="${GPU_CHECK_LAYERS:-}"
THREADS="${GPU_CHECK_THREADS:-$(nproc)}"
BUDGET="${GPU_CHECK_BUDGET_S:-470}"
TOLERANCE="${GPU_CHECK_TOLERANCE:-1e-5}"

while [ $# -gt 0 ]; do
  case "$1" in
    --layers) [ $# -ge 2 ] || { echo "error: --layers needs a number" >&2; exit 2; }; LAYERS="$2"; shift 2 ;;
    --layers=*) LAYERS="${1#--layers=}"; shift ;;
    -h|--help) sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$LAYERS" ] && ! [[ "$LAYERS" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --layers must be a positive integer, got '$LAYERS'" >&2; exit 2
fi

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY="$GPU_CHECK_PYTHON"
elif [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"
else PY="python"; command -v python >/dev/null 2>&1 || PY="python3"; fi

WORK="${GPU_CHECK_WORKDIR:-$(mktemp -d /tmp/gpu-check.XXXXXX)}"
mkdir -p "$WORK/steps" "$WORK/logs" "$WORK/runs" "$WORK/cuda-stats" "$WORK/home"
RESULTS="${OUT:-$WORK}"
mkdir -p "$RESULTS"

export PYTHONPATH="$REPO/benchmarks/gpu_site:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export SAFETY_SUBSPACES_HOME="$WORK/home" SAFETY_SUBSPACES_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
CLI=("$PY" -m safety_subspaces)
FAMILY="$WORK/family"
SVD="$WORK/home/svd"   # the default cache of the study too, so its energy job reuses project's decompositions
STEPS=()
GPU_FLAG=()
if command -v nvidia-smi >/dev/null 2>&1; then GPU_FLAG=(--gpu); fi

say() { echo "[gpu_check $(printf '%4d' "$SECONDS")s] $*" >&2; }

# step NAME CAP_SECONDS CMD...: run CMD measured, at most CAP seconds and never past the budget; returns its status.
step() {
  local name="$1" cap="$2"; shift 2
  STEPS+=("$name")
  local left=$(( BUDGET - SECONDS ))
  if [ "$left" -lt 20 ]; then
    echo "budget: ${left}s of ${BUDGET}s left at its start" > "$WORK/steps/$name.skipped"
    say "$name: skipped (budget)"; return 1
  fi
  [ "$cap" -gt "$left" ] && cap="$left"
  say "$name (at most ${cap}s) ..."
  local rc=0
  GPU_CHECK_CUDA_STATS="$WORK/cuda-stats/$name" "$PY" "$REPO/benchmarks/measure.py" --label "$name" \
    --json-out "$WORK/steps/$name.json" --log "$WORK/logs/$name.log" --timeout "$cap" "${GPU_FLAG[@]}" -- "$@" || rc=$?
  say "$name: exit $rc"
  return "$rc"
}

skip() { STEPS+=("$1"); echo "$2" > "$WORK/steps/$1.skipped"; say "$1: skipped ($2)"; }

say "python $PY, device $DEVICE, preset $PRESET, layers ${LAYERS:-preset}, threads $THREADS, work $WORK"
"$PY" "$REPO/benchmarks/gpu_check_lib.py" versions --out "$WORK/versions.json"
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "error: torch sees no CUDA device here; set GPU_CHECK_DEVICE=cpu to check the plumbing on a CPU" >&2; exit 2
fi

FAMILY_ARGS=(--preset "$PRESET" --workers "$THREADS" --threads 1)
[ -n "$LAYERS" ] && FAMILY_ARGS+=(--layers "$LAYERS")
step build 240 "$PY" "$REPO/benchmarks/qwen_family.py" "$FAMILY" "${FAMILY_ARGS[@]}" || true

GRID=(--base "$FAMILY/base" --aligned "$FAMILY/aligned" --finetuned "useful=$FAMILY/useful"
      --finetuned "harmful=$FAMILY/harmful" --finetuned "contaminated=$FAMILY/contaminated"
      --fractions 0.01,0.25,0.5,0.75,0.99 --schemes parallel,orthogonal --threads "$THREADS" --quiet)
DEVICE_RUN="$WORK/runs/project-device"
if step project_device 240 "${CLI[@]}" project "${GRID[@]}" --subspaces top_k,random_k,random --device "$DEVICE" \
     --cache-dir "$SVD" --out "$DEVICE_RUN" --profile; then
  :
else
  DEVICE_RUN="$WORK/runs/project-device-layer0"
  step project_device_layer0 90 "${CLI[@]}" project "${GRID[@]}" --subspaces top_k,random_k --layers 0 \
    --device "$DEVICE" --cache-dir "$WORK/svd-device-layer0" --out "$DEVICE_RUN" || true
fi

CPU_RUN="$WORK/runs/project-cpu-layer0"
CPU_KINDS=top_k,random_k,random
[ "$DEVICE_RUN" = "$WORK/runs/project-device-layer0" ] && CPU_KINDS=top_k,random_k
step project_cpu_layer0 120 "${CLI[@]}" project "${GRID[@]}" --subspaces "$CPU_KINDS" --layers 0 --device cpu \
  --cache-dir "$WORK/svd-cpu" --out "$CPU_RUN" || true
if [ -f "$DEVICE_RUN/energy.csv" ] && [ -f "$CPU_RUN/energy.csv" ]; then
  "$PY" "$REPO/benchmarks/gpu_check_lib.py" compare --device-run "$DEVICE_RUN" --cpu-run "$CPU_RUN" \
    --tolerance "$TOLERANCE" --out "$WORK/compare.json" > "$WORK/logs/compare.log" || true
  say "compare: $(grep -o '"passed": [a-z]*' "$WORK/compare.json" || echo 'no result')"
fi

DEPTH="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["description"]["shape"]["layers"])' \
  "$FAMILY/family.json" 2>/dev/null || echo 0)"
if [ "$DEPTH" -gt 0 ]; then
  OVERLAP_LAYERS="$(( 70 * DEPTH / 100 ))"
  [ "$(( 85 * DEPTH / 100 ))" != "$OVERLAP_LAYERS" ] && OVERLAP_LAYERS+=",$(( 85 * DEPTH / 100 ))"
  step overlap_device 120 "${CLI[@]}" overlap weights --reference "$FAMILY/aligned" --update "useful=$FAMILY/useful" \
    --update "harmful=$FAMILY/harmful" --update "base=$FAMILY/base" --layers "$OVERLAP_LAYERS" \
    --device "$DEVICE" --cache-dir "$WORK/svd-overlap" --threads "$THREADS" --quiet --out "$WORK/runs/overlap-device" || true
else
  skip overlap_device "no family"
fi

if [ -f "$FAMILY/family.json" ]; then
  "$PY" "$REPO/benchmarks/gpu_check_lib.py" study --family "$FAMILY" --out "$WORK/study.yaml" --device "$DEVICE" \
    --threads "$THREADS" --name gpu-check
  step study 200 "${CLI[@]}" run "$WORK/study.yaml" --out "$WORK/runs/study" --threads "$THREADS" --quiet --no-report || true
  if "$PY" -c 'import ray' >/dev/null 2>&1; then
    "$PY" "$REPO/benchmarks/gpu_check_lib.py" study --family "$FAMILY" --out "$WORK/study-ray.yaml" --device "$DEVICE" \
      --threads "$THREADS" --name gpu-check-ray --executor ray --subspaces top_k --fractions 0.25 --no-energy --no-references
    step study_ray 120 "${CLI[@]}" run "$WORK/study-ray.yaml" --out "$WORK/runs/study_ray" --threads "$THREADS" \
      --quiet --no-report || true
  else
    skip study_ray "ray is not importable by $PY"
  fi
else
  skip study "no family"
fi

if [ "$DEVICE" = cuda ]; then  # the CUDA-vs-CPU tests (skipped, saying so, on machines without CUDA)
  step cuda_tests 120 "$PY" -m pytest "$REPO/tests/test_scale.py" -q -x -rs -k cuda || true
else
  skip cuda_tests "device $DEVICE"
fi

IFS=, ; ORDER="${STEPS[*]}"; unset IFS
rc=0
"$PY" "$REPO/benchmarks/gpu_check_lib.py" report --work "$WORK" --out "$RESULTS/gpu_check.json" --steps "$ORDER" \
  --device "$DEVICE" --preset "$PRESET" --layers "$LAYERS" --budget "$BUDGET" --elapsed "$SECONDS" || rc=$?
for run in project-device project-device-layer0 project-cpu-layer0; do
  [ -f "$WORK/runs/$run/energy.csv" ] && awk -F, 'NR == 1 || ($9 == "layer" && $10 == "0") || ($9 == "tensor" && $10 ~ /layers\.0\./)' \
    "$WORK/runs/$run/energy.csv" > "$WORK/logs/$run-layer0.csv"
done
tar -czf "$RESULTS/gpu_check-logs.tar.gz" -C "$WORK" logs steps versions.json $( [ -f "$WORK/compare.json" ] && echo compare.json ) \
  $( [ -f "$WORK/study.yaml" ] && echo study.yaml ) 2>/dev/null || true
say "wrote $RESULTS/gpu_check.json (exit $rc); the family and runs are in $WORK"
exit "$rc"
