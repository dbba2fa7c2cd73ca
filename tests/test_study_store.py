"""The results store: a job's rows and its completion commit together; a kill never leaves duplicates or partial rows."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time

from safety_subspaces.study.store import Store


def test_complete_is_atomic_and_idempotent(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    assert store.add_jobs([("a", "evaluate", {"x": 1}), ("b", "energy", {})]) == 2
    assert store.add_jobs([("a", "evaluate", {"x": 1})]) == 0
    assert store.complete("a", [("evaluation", {"v": 1}), ("evaluation", {"v": 2})], 0.5)
    assert not store.complete("a", [("evaluation", {"v": 3})], 0.5)  # already done: nothing added
    assert store.rows("evaluation") == [{"v": 1}, {"v": 2}]
    assert store.done_ids() == {"a"}
    store.fail("b", "boom")
    assert [j["status"] for j in store.jobs()] == ["done", "failed"]
    assert store.rows("energy") == []


def _writer(path: str, count: int) -> None:
    """Complete jobs with many rows each, as fast as possible."""
    store = Store(path)
    for i in range(count):
        store.complete(f"job{i}", [("t", {"job": i, "seq": s}) for s in range(200)], 0.0)


def test_sigkill_mid_write_loses_no_finished_job_and_leaves_no_partial_rows(tmp_path):
    path = tmp_path / "r.sqlite"
    store = Store(path)
    store.add_jobs([(f"job{i}", "t", {}) for i in range(60)])
    store.close()
    process = multiprocessing.get_context("spawn").Process(target=_writer, args=(str(path), 60))
    process.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        with sqlite3.connect(path, timeout=30) as probe:
            if probe.execute("SELECT COUNT(*) FROM jobs WHERE status = 'done'").fetchone()[0] >= 5:
                break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    store = Store(path)
    done = store.done_ids()
    rows = store.rows("t")
    assert done, "the writer finished no job before the kill"
    per_job: dict[int, list[int]] = {}
    for row in rows:
        per_job.setdefault(row["job"], []).append(row["seq"])
    assert {f"job{j}" for j in per_job} == done  # rows exist exactly for finished jobs
    assert all(seqs == list(range(200)) for seqs in per_job.values())  # complete, no duplicates
    # a rerun finishes the rest without duplicating anything
    for i in range(60):
        store.complete(f"job{i}", [("t", {"job": i, "seq": s}) for s in range(200)], 0.0)
    assert len(store.rows("t")) == 60 * 200
