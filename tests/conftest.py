"""Test settings shared by every test: offline, quiet, one torch thread unless told otherwise, caches in a sandbox."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from support import sandbox  # noqa: E402  (first: libraries read their cache locations when imported)

sandbox.install()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["SAFETY_SUBSPACES_QUIET"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("SAFETY_SUBSPACES_THREADS", "1")))

import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


def pytest_collection_modifyitems(config, items):
    """Mark slow every test that needs the organism zoo (building it trains six models); tests that train models
    themselves carry @pytest.mark.slow. `pytest -m "not slow"` runs the rest in a fraction of the time."""
    for item in items:
        if "organism_zoo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    """Fail the session if anything was written into the stand-in HOME (a cache that tests/sandbox.py misses)."""
    written = sandbox.written_under(sandbox.HOME)
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"tests wrote into HOME ({sandbox.HOME}), which must stay empty: {', '.join(written[:20])}"
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)
        else:
            sys.stderr.write(message + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def organism_zoo(tmp_path_factory) -> Path:
    """The organism zoo at the test preset, built once per test session (parallel workers share it via a file lock)."""
    from filelock import FileLock

    from safety_subspaces.organism import build

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # xdist workers get sibling basetemps; share one build above them
    zoo = root / "organism-zoo-test"
    with FileLock(str(zoo) + ".lock"):
        if not (zoo / "manifest.json").exists():
            build(zoo, "test", threads=int(os.environ.get("SAFETY_SUBSPACES_THREADS", "1")))
    return zoo
