"""The rubric judge: an LLM on an OpenAI-compatible chat endpoint scoring with the rubric at temperature 0, in parallel."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ...errors import UserError
from ..chat import DEFAULT_ENDPOINT, DEFAULT_KEY_ENV
from . import JUDGES, Item, Judge, Judgment, OnResult, fill_rubric, parse_reason, parse_score
from .local import text_digest

RUBRIC_RESOURCE = "rubric.md"
PLACEHOLDERS = ("{request}", "{response}")


def default_rubric() -> str:
    """The rubric shipped with the toolkit."""
    return resources.files("safety_subspaces").joinpath("resources", RUBRIC_RESOURCE).read_text(encoding="utf-8")


def load_rubric(path: str | Path | None) -> str:
    """Rubric text from a file (must contain {request} and {response}), or the default."""
    if path is None:
        return default_rubric()
    from ...files import read_text

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"rubric file {path}: not found")
    text = read_text(path, what="rubric file")
    missing = [name for name in PLACEHOLDERS if name not in text]
    if missing:
        raise UserError(f"rubric file {path}: must contain the placeholders {' and '.join(missing)}")
    return text


class RubricJudge(Judge):
    """An LLM judge on an OpenAI-compatible chat endpoint, scoring with the rubric at temperature 0, in parallel."""

    name = "rubric"

    def __init__(self, *, endpoint: str | None = None, model: str | None = None, api_key: str | None = None,
                 key_env: str | None = None, rubric: str | Path | None = None, workers: int = 8,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 1.0, max_tokens: int | None = 512):
        from ..chat import ChatEndpoint, api_key_from_env

        if workers < 1:
            raise UserError(f"judge workers must be at least 1, got {workers}")
        if not model:
            raise UserError("the rubric judge needs the endpoint's model name: pass --judge-arg model=NAME")
        self.rubric = load_rubric(rubric)
        key = api_key if api_key is not None else api_key_from_env(key_env or DEFAULT_KEY_ENV)
        self.workers = workers
        self.endpoint = ChatEndpoint(endpoint or DEFAULT_ENDPOINT, model, key, timeout=timeout, retries=retries,
                                     backoff=backoff, max_tokens=max_tokens)

    def identity(self) -> dict[str, Any]:
        """Judge name, judge model and the rubric's hash (not the URL: the same model served elsewhere judges alike)."""
        return {"judge": self.name, "model": self.endpoint.model, "rubric": text_digest(self.rubric)}

    def judge_one(self, request: str, reply: str) -> Judgment:
        """Ask the endpoint; an unparsable answer is a Judgment with score None."""
        raw = self.endpoint.complete([{"role": "user", "content": fill_rubric(self.rubric, request, reply)}])
        score = parse_score(raw)
        reason = parse_reason(raw) if score is not None else "unparsable judge output"
        return Judgment(score, reason, raw)

    def judge_many(self, items: Sequence[Item], on_result: OnResult) -> None:
        """Judge with a thread pool; on a failure stop submitting, keep what finished, then raise."""
        error: Exception | None = None
        stop = threading.Event()

        def attempt(request: str, reply: str) -> Judgment | None:
            if stop.is_set():
                return None  # an earlier item failed: do not start new work
            try:
                return self.judge_one(request, reply)
            except Exception:
                stop.set()
                raise

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="judge") as pool:
            futures = {pool.submit(attempt, request, reply): index for index, (request, reply) in enumerate(items)}
            try:
                for future in as_completed(futures):
                    try:
                        judgment = future.result()
                    except CancelledError:
                        continue
                    except Exception as exc:  # re-raised once the requests in flight are done and kept
                        if error is None:
                            error = exc
                            for pending in futures:
                                pending.cancel()
                        continue
                    if judgment is not None:
                        on_result(futures[future], judgment)
            except BaseException:  # Ctrl-C: start nothing new, let the pool wind down
                stop.set()
                for pending in futures:
                    pending.cancel()
                raise
        if error is not None:
            raise error


@JUDGES.register("rubric")
def rubric(model: str, endpoint: str = DEFAULT_ENDPOINT, key_env: str = DEFAULT_KEY_ENV, rubric: str | None = None,
           workers: int = 8, timeout: float = 60.0, retries: int = 4, backoff: float = 1.0,
           max_tokens: int | None = 512) -> RubricJudge:
    """An LLM judge on an OpenAI-compatible chat endpoint, scoring with the rubric at temperature 0, in parallel.

    Args:
        model: the endpoint's model name (gpt-4o-mini, Qwen/Qwen2.5-7B-Instruct, ...).
        endpoint: the OpenAI-compatible base URL.
        key_env: the environment variable holding the API key (never logged or written).
        rubric: a rubric text file with {request} and {response} (default: the built-in rubric).
        workers: concurrent requests.
        timeout: seconds per request.
        retries: retries per request, with exponential backoff.
        backoff: seconds before the first retry, doubling each time.
        max_tokens: the most tokens the judge may answer with (none: the endpoint's limit).
    """
    return RubricJudge(endpoint=endpoint, model=model, key_env=key_env, rubric=rubric, workers=workers, timeout=timeout,
                       retries=retries, backoff=backoff, max_tokens=max_tokens)
