"""A minimal client for OpenAI-compatible /v1/chat/completions endpoints: timeouts, retries with backoff, no key leaks."""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import UserError

DEFAULT_ENDPOINT = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class EndpointUnavailable(UserError):
    """The judge endpoint did not answer usefully after every retry."""


class EndpointRejected(UserError):
    """The judge endpoint refused the request (bad key, unknown model, bad URL): retrying will not help."""


class _Transient(Exception):
    """A failure worth retrying."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def completions_url(endpoint: str) -> str:
    """The chat-completions URL for a base URL (…/v1), a server root, or the full URL."""
    parsed = urllib.parse.urlparse(endpoint.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"judge endpoint {endpoint!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    path = parsed.path.rstrip("/")
    if path.endswith("/chat/completions"):
        pass
    elif path.endswith("/v1"):
        path += "/chat/completions"
    else:
        path += "/v1/chat/completions"
    return urllib.parse.urlunparse(parsed._replace(path=path))


def api_key_from_env(variable: str = DEFAULT_KEY_ENV) -> str:
    """The API key held in an environment variable; a clear error when it is unset or empty."""
    if not variable:
        raise UserError("judge API key: name an environment variable with the key_env option (--judge-arg key_env=VAR)")
    key = os.environ.get(variable, "")
    if not key.strip():
        raise UserError(
            f"judge API key: environment variable {variable} is not set "
            "(for a local server that needs no key, set it to any value, e.g. EMPTY)"
        )
    return key.strip()


@dataclass
class ChatEndpoint:
    """POSTs chat requests to one endpoint; the key is held in memory only and never shown."""

    endpoint: str
    model: str
    api_key: str = field(repr=False)
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    max_tokens: int | None = 512
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        """Validate settings and resolve the URL."""
        self.url = completions_url(self.endpoint)
        if not self.model:
            raise UserError("judge model: give the endpoint's model name with the model option (--judge-arg model=NAME)")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise UserError("judge timeout must be positive and retries/backoff non-negative")

    def complete(self, messages: Sequence[dict[str, str]]) -> str:
        """The assistant text for messages at temperature 0, retrying transient failures with exponential backoff."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": 0}
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        payload = json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(self.retries + 1):
            try:
                return self._post(payload)
            except _Transient as exc:
                last = str(exc).replace(self.api_key, "***")
                if attempt == self.retries:
                    break
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (1 + 0.25 * random.random())
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                self.sleep(delay)
        raise EndpointUnavailable(
            f"judge endpoint {self.url} failed {self.retries + 1} times (last: {last})"
        )

    def _post(self, payload: bytes) -> str:
        """One request; returns the message content or raises _Transient / EndpointRejected."""
        request = urllib.request.Request(
            self.url,
            data=payload,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": f"Bearer {self.api_key}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc).replace(self.api_key, "***")
            if exc.code in RETRY_STATUSES:
                raise _Transient(f"HTTP {exc.code}{detail}", _retry_after(exc)) from None
            raise EndpointRejected(f"judge endpoint {self.url} rejected the request: HTTP {exc.code}{detail}") from None
        except (TimeoutError, socket.timeout):
            raise _Transient(f"no answer within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Transient(f"no answer within {self.timeout:g} s") from None
            raise _Transient(f"cannot connect ({reason})") from None
        except (ConnectionError, OSError) as exc:
            raise _Transient(f"connection failed ({type(exc).__name__})") from None
        return _message_content(raw)


def _message_content(raw: bytes) -> str:
    """choices[0].message.content of a chat-completions body; malformed bodies are transient failures."""
    try:
        document = json.loads(raw.decode("utf-8"))
        content = document["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise _Transient(f"malformed response body ({raw[:80]!r})") from None
    if not isinstance(content, str):
        raise _Transient("response has no text content")
    return content


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """A short server message from an error response (never request headers)."""
    try:
        text = exc.read().decode("utf-8", "replace").strip()
    except Exception:
        return ""
    try:
        message = json.loads(text).get("error", {})
        text = message.get("message", "") if isinstance(message, dict) else str(message)
    except (json.JSONDecodeError, AttributeError):
        pass
    text = " ".join(text.split())[:160]
    return f" ({text})" if text else ""


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """Seconds from a Retry-After header, if numeric."""
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
