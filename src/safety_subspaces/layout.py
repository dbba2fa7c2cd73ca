"""The names of what a run directory (an analysis, an evaluation, a study, a fine-tune, a zoo) holds, declared once."""

from __future__ import annotations

CONFIG = "config.yaml"  # what defines the run, and a digest of it (the identity a rerun must match)
MANIFEST = "manifest.json"  # versions, seeds, input fingerprints, timings
STORE = "results.sqlite"  # a study's jobs and rows
REPORT = "report.html"  # a study's report
FIGURES = "figures"  # PNG figures
SAMPLES = "samples"  # a study's per-job evaluation records (samples/JOB/METRIC/...)
MODELS = "models"  # a study's fine-tuned models (models/ROLE)
RESULTS = "results.csv"  # an evaluation's rows
SAMPLE_RECORDS = "samples.jsonl"  # an evaluation's per-sample records
GENERATIONS = "generations.jsonl"  # a harm evaluation's journal of replies
JUDGMENTS = "judgments.jsonl"  # a harm evaluation's journal of judgments
ACTIVATIONS = "activations.safetensors"  # pooled activation vectors, when asked for
EDIT_NOTE = "edit.json"  # an edited checkpoint's note: which fine-tune, edit and options made it
DEFENCE_RECORD = "defence.json"  # a defended checkpoint's record: the defence, its options, its modules' gate and energy
