"""Tests never write into the user's home: every cache points into the session's sandbox (tests/sandbox.py), and a
whole study, run in a subprocess with a fresh HOME and fresh caches, leaves that HOME empty and fills the caches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from support import sandbox


def test_every_cache_points_into_the_sandbox():
    import huggingface_hub.constants
    import matplotlib

    from safety_subspaces import paths

    def inside(path) -> bool:
        return Path(path).resolve().is_relative_to(sandbox.ROOT.resolve())

    assert Path.home() == sandbox.HOME and Path("~").expanduser() == sandbox.HOME
    assert inside(paths.home()) and inside(paths.svd_cache_dir()) and inside(paths.zoo_dir())
    assert inside(huggingface_hub.constants.HF_HOME) and inside(huggingface_hub.constants.HF_HUB_CACHE)
    assert inside(matplotlib.get_configdir()) and inside(matplotlib.get_cachedir())
    for name, path in sandbox.CACHE_ENV.items():
        assert os.environ[name] == str(path) and inside(path), name
    assert "SAFETY_SUBSPACES_ZOO" not in os.environ


STUDY = {
    "name": "home-check",
    "seed": 0,
    "models": {"base": "organism:base", "aligned": "organism:aligned"},
    "finetunes": {"useful": "organism:useful", "harmful": "organism:harmful", "contaminated": "organism:contaminated"},
    "projection": {"subspaces": ["top_k"], "fractions": [0.25]},
    "evaluation": {
        "utility": {"task": "organism_arithmetic", "batch_size": 32, "limit": 8},
        "harm": {"prompts": "organism:harmful_eval", "judge": "organism", "max_new_tokens": 16, "batch_size": 32,
                 "limit": 8},
    },
    "overlap": {
        "weights": {"updates": ["useful", "harmful", "base"], "eta": [0.5]},
        "activations": {"models": ["aligned"], "n": 8, "eta": [0.5],
                        "prompts": {"useful": "organism:arithmetic_eval", "harmful": "organism:harmful_eval"}},
    },
    "executor": {"kind": "ray", "workers": 1},
}


def test_a_whole_study_on_ray_writes_nothing_into_a_fresh_home(organism_zoo, tmp_path):
    """Every writer at once: energy (SVD cache, file-hash memo), lm-eval (parsed local data), judged generation,
    both overlaps, the report's figures (matplotlib), Ray (temp dir, auth token), progress lines and library bars."""
    root = Path(tempfile.mkdtemp(prefix="ss-home-"))  # short, for Ray's socket paths
    try:
        env = {**os.environ, **sandbox.prepare(root), "SAFETY_SUBSPACES_ZOO": str(organism_zoo),
               "SAFETY_SUBSPACES_THREADS": "1"}
        env.pop("SAFETY_SUBSPACES_QUIET")
        study = tmp_path / "study.yaml"
        study.write_text(yaml.safe_dump(STUDY, sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "safety_subspaces", "run", str(study), "--out", "run"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (tmp_path / "run" / "report.html").exists()
        assert sandbox.written_under(root / "home") == []
        caches = sandbox.cache_env(root)
        toolkit = caches["SAFETY_SUBSPACES_HOME"]
        assert (toolkit / "file-hashes.json").exists() and any((toolkit / "svd").glob("*/meta.json"))
        assert any((toolkit / "datasets").iterdir()), "lm-eval's parsed organism data is not in the toolkit's home"
        assert any(caches["RAY_TMPDIR"].glob("*/session_*")), "Ray's session directory is not under RAY_TMPDIR"
        assert any(caches["MPLCONFIGDIR"].iterdir()), "matplotlib's font cache is not under MPLCONFIGDIR"
        assert "fatal:" not in done.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
