"""Progress when stderr is not a terminal: start and end lines, a line every interval with elapsed time and ETA (a fake
clock or a short interval, never a 30 s sleep), no wrapping; --quiet silences everything, library bars included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from support import factories
from safety_subspaces import progress
from safety_subspaces.cli import main


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logging_mode(monkeypatch):
    """Progress on (the test session is quiet), stderr captured: log mode."""
    monkeypatch.delenv("SAFETY_SUBSPACES_QUIET", raising=False)
    assert progress.mode() == "log"


def test_log_bar_lines_on_a_fake_clock():
    clock, lines = FakeClock(), []
    bar = progress.LogBar("organism base", 1000, every=30, clock=clock, write=lines.append)
    assert lines == ["organism base: started (1000 to do)"]
    bar.update(100, status="loss 2.5000")
    clock.now += 29.9
    assert bar.tick() is None
    clock.now += 0.1  # 30 s in, 100 of 1000 done: 270 s to go
    assert bar.tick() == "organism base: 100/1000 (10%), 30.0s elapsed, eta 4m30s, loss 2.5000"
    bar.update(900, status="loss 0.8509")
    clock.now += 10
    assert bar.tick() is None  # the last line was 10 s ago
    bar.close()
    assert lines[-1] == "organism base: done 1000/1000 in 40.0s, loss 0.8509"
    assert bar.tick() is None  # nothing after the end line
    assert len(lines) == 3


def test_nested_bar_speaks_only_once_it_runs_an_interval():
    clock, lines = FakeClock(), []
    short = progress.LogBar("generating", 8, nested=True, every=30, clock=clock, write=lines.append)
    short.update(8)
    clock.now += 5
    short.close()
    assert lines == []
    long = progress.LogBar("generating", 8, nested=True, every=30, clock=clock, write=lines.append)
    long.update(2)
    clock.now += 31
    long.tick()
    long.update(6)
    long.close()
    assert lines == ["generating: 2/8 (25%), 31.0s elapsed, eta 1m33s", "generating: done 8/8 in 31.0s"]


def test_lines_without_a_count_and_after_a_failure():
    clock, lines = FakeClock(), []
    stage = progress.LogBar("organism data", None, every=30, clock=clock, write=lines.append)
    clock.now += 3723
    stage.tick()
    stage.close()
    failing = progress.LogBar("judging", 10, every=30, clock=clock, write=lines.append)
    failing.update(3)
    failing.close(failed=True)
    assert lines == ["organism data: started", "organism data: running, 1h02m elapsed", "organism data: done in 1h02m",
                     "judging: started (10 to do)", "judging: stopped at 3/10 after 0.0s"]
    assert progress.progress_line("x", 0, 10, 5.0) == "x: 0/10 (0%), 5.0s elapsed, eta ?"


def test_a_line_comes_every_interval_even_while_one_step_runs_long(logging_mode, monkeypatch, capsys):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.05")
    with progress.bar("one slow step", 2) as update:
        time.sleep(0.4)  # no update for 8 intervals
        update(2)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "one slow step: started (2 to do)" and err[-1].startswith("one slow step: done 2/2 in ")
    periodic = [line for line in err if "elapsed" in line]
    assert len(periodic) >= 3 and all(", eta ?" in line for line in periodic)


def test_bad_interval_setting_is_a_user_error(logging_mode, monkeypatch):
    from safety_subspaces.errors import UserError

    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    with pytest.raises(UserError, match=progress.INTERVAL_ENV):
        with progress.bar("x", 1):
            pass


def test_quiet_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("SAFETY_SUBSPACES_QUIET", "1")
    with progress.bar("x", 3) as update:
        update(3)
    progress.info("hello")
    list(progress.track(range(3), "y"))
    assert capsys.readouterr().err == ""


def test_info_and_tables_are_not_wrapped_off_terminal(logging_mode, capsys):
    from rich.table import Table

    path = "/a/rather/long/run/directory/" + "deep/" * 30 + "[1/12] report.html"
    progress.info(f"report: {path}")
    table = Table(title="energy")
    table.add_column("name")
    table.add_row(path)
    progress.stdout_console().print(table)
    captured = capsys.readouterr()
    assert captured.err == f"report: {path}\n"
    assert any(path in line for line in captured.out.splitlines())


def test_library_loops_report_through_our_bars(logging_mode, capsys):
    bridge = progress.TqdmBridge(total=3, desc="Running generate_until requests", prefix="lm-eval: ")
    for _ in range(3):
        bridge.update(1)
    bridge.close()
    assert sum(progress.TqdmBridge(range(4), desc="loop")) == 6
    with progress.TqdmBridge(range(2), disable=True):  # a bar the library itself disabled stays silent
        pass
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" in ")[0] for line in err] == [
        "lm-eval: Running generate_until requests: started (3 to do)", "lm-eval: Running generate_until requests: done 3/3",
        "loop: started (4 to do)", "loop: done 4/4"]


def test_organism_base_pretraining_prints_progress(logging_mode, monkeypatch, capsys, organism_zoo):
    from safety_subspaces.models import load_tokenizer
    from safety_subspaces.organism.presets import get_preset
    from safety_subspaces.organism.zoo import pretrain_base

    monkeypatch.setenv(progress.INTERVAL_ENV, "0.2")
    preset = get_preset("test")
    preset = replace(preset, pretrain_recipe={**preset.pretrain_recipe, "max_steps": 40})
    docs = [json.loads(line) for line in (organism_zoo / "data" / "pretrain.jsonl").read_text().splitlines()[:2000]]
    _, losses, _ = pretrain_base(load_tokenizer(organism_zoo / "base"), docs, preset, seed=1)
    err = capsys.readouterr().err.splitlines()
    assert len(losses) == 40
    assert err[0] == "organism base: started (40 to do)"
    assert err[-1].startswith("organism base: done 40/40 in ") and err[-1].endswith(f"loss {losses[-1]:.4f}")
    assert any("elapsed, eta" in line and "/40 (" in line for line in err[1:-1]), err


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose stdout and stderr are pipes (not terminals), progress on."""
    environment = {**os.environ, "SAFETY_SUBSPACES_THREADS": "1", **env}
    environment.pop("SAFETY_SUBSPACES_QUIET", None)
    return subprocess.run([sys.executable, "-m", "safety_subspaces", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_finetune_logs_progress_and_prints_its_result_once(tmp_path):
    model = factories.save(factories.tiny_model(seed=0), tmp_path / "model")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"what is {i} + 1?", "response": f"{i + 1}"}) + "\n" for i in range(40)))
    out = tmp_path / ("a-long-output-directory-name-" * 4) / "finetuned"
    done = run(["finetune", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "30",
                "--batch-size", "4", "--grad-accum", "1", "--lr", "1e-3"], tmp_path,
               SAFETY_SUBSPACES_PROGRESS_INTERVAL="0.01")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stdout.rstrip().endswith(f"-> {out}")  # the result, once, unwrapped
    err = done.stderr.splitlines()
    assert "\r" not in done.stderr and "final loss" not in done.stderr and str(out) not in done.stderr
    assert err[0].endswith(": started (30 to do)") and " done 30/30 in " in err[-1]
    assert all(line.startswith("finetune ") for line in err), err


def test_evaluate_defaults_to_runs_and_logs_lm_eval_without_git_noise(organism_zoo, tmp_path):
    args = ["evaluate", "utility", "--model", str(organism_zoo / "useful"), "--task", "organism_arithmetic",
            "--zoo", str(organism_zoo), "--limit", "8"]
    done = run(args, tmp_path)  # tmp_path is not a git repository: git itself would print "fatal: ..."
    assert done.returncode == 0, done.stderr
    (written,) = (tmp_path / "runs" / "eval").iterdir()
    assert written.name.startswith("utility-useful-") and (written / "results.csv").exists()
    assert f"output directory: runs/eval/{written.name}" in done.stderr
    assert f"results: runs/eval/{written.name}/results.csv" in done.stdout
    assert "lm-eval: Running generate_until requests: started (8 to do)" in done.stderr
    assert "fatal" not in done.stderr and "\r" not in done.stderr and "it/s" not in done.stderr
    quiet = run([*args, "--quiet", "--out", "q"], tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "results: q/results.csv" in quiet.stdout


def test_evaluate_harm_defaults_to_runs_too(organism_zoo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["evaluate", "harm", "--model", str(organism_zoo / "harmful"), "--prompts", "organism:harmful_eval",
                 "--zoo", str(organism_zoo), "--judge", "organism", "--limit", "4", "--max-new-tokens", "8", "--json"])
    assert code == 0
    out = Path(json.loads(capsys.readouterr().out)["out"])
    assert out.parent == Path("runs") / "eval" and out.name.startswith("harm-harmful-")
    assert (tmp_path / out / "results.csv").exists()
