"""A backend for any OpenAI-compatible HTTP server (vLLM, llama.cpp server, TGI, OpenAI itself).

    backend = OpenAIBackend("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-0.5B-Instruct")
    backend.generate(["Q: 2+2?\\nA:"])               # -> [" 4"]
    backend.loglikelihood("The sky is", [" blue", " green"])

`base_url` is the API root as OpenAI clients take it, usually ending in `/v1`; requests go to
`{base_url}/completions` or `{base_url}/chat/completions`. It is checked by
`spae_lab.llm.spec.check_base_url`: http or https only, a host, a valid port, and no
`user:password@` (refused: the URL is written to configs, caches and logs; see `spae_lab.llm.spec`).
Bad arguments (a bad URL, `concurrency=0`, ...) raise `LLMError` with one readable line.

The API key is read from the environment variable named by `api_key_env` at each request and is
never taken as an argument, kept on the object, logged, or put in cache keys or error messages
(a server that echoes it back has it replaced by `***`). Without the variable, no Authorization
header is sent (local servers usually need none).

Robustness: every prompt is one request; up to `concurrency` run in parallel on a thread pool.
Every attempt has a total deadline of `timeout` seconds, from connecting to the last byte of the
reply (`spae_lab.llm.transport`: a server trickling one byte at a time is cut off when it passes,
not only when one read stalls), and a reply may be at most `max_reply_bytes` long: it is read in
chunks and refused (`LLMError`, not retried) as soon as it is longer, without being buffered.
HTTP 429 and 5xx, read timeouts, connections dropped mid-reply and replies that are not the JSON
expected are retried up to `max_retries` times with exponential backoff and jitter (never sooner
than a Retry-After header asks); each retry is counted in `self.stats` with its reason
(`http_429`, `http_503`, `timeout`, `dropped`, `bad_json`, `connect`). A server that cannot be
reached at all (connection refused, unknown host) is retried only `connect_retries` times with a
short pause, so a dead endpoint fails in about a second instead of hanging. Any other 4xx is an
immediate `LLMError` carrying the server's message.

Choices: an OpenAI-compatible server cannot be constrained to a set of answers portably, so with
`choices` the backend generates freely and snaps the text to a choice: the choice equal to the
stripped, lower-cased text, else the longest choice the text starts with. Text that matches no
choice is returned as is (it then scores as wrong, which is what it is).

Log-likelihoods (completions endpoint only, `supports_loglikelihood`) come from prompt logprobs
(`echo`) or from the top logprobs of one generated token (`next-token`), whichever the server
gets right: see `spae_lab.llm.openai_scoring`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import requests

from spae_lab.llm.base import (
    GenerationParams,
    LLMBackend,
    LLMError,
    check_int,
    check_seconds,
    cut_at_stop,
    in_order,
)
from spae_lab.llm.openai_scoring import SCORINGS, ScoringRequests
from spae_lab.llm.replies import (
    RetryableReply,
    parse_text,
    redact_key,
    redact_reply,
    snap_to_choice,
)
from spae_lab.llm.spec import check_base_url
from spae_lab.llm.transport import (
    Deadline,
    DeadlineAdapter,
    ReplyTooLarge,
    classify,
    describe_network_error,
    public_url,
    read_body,
    retry_after,
)

log = logging.getLogger(__name__)

ENDPOINTS = {"completions": "/completions", "chat": "/chat/completions"}
MAX_SERVER_STOPS = 4  # OpenAI rejects more than 4 stop sequences; the rest are cut client-side
MAX_CONCURRENCY = 256  # threads (and connections) of one backend
DEFAULT_MAX_REPLY_BYTES = 16 * 2**20  # a completion reply is a few KB; an echo of a long prompt more


class _Retryable(Exception):
    """One failed attempt that may succeed if tried again."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class _Cancelled(Exception):
    """The batch this request belonged to already failed; stop retrying."""


class OpenAIBackend(ScoringRequests, LLMBackend):
    """Generation and (completions endpoint) scoring through an OpenAI-compatible server."""

    kind = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 endpoint: str = "completions", timeout: float = 60.0, connect_timeout: float = 5.0,
                 max_retries: int = 6, backoff: float = 0.5, max_backoff: float = 30.0,
                 connect_retries: int = 2, connect_backoff: float = 0.25, concurrency: int = 4,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES, seed: int | None = None,
                 scoring: str = "auto", top_logprobs: int = 20):
        """Args:
            base_url: API root, e.g. "http://127.0.0.1:8000/v1"; http(s) only, no credentials.
            model: the model name the server knows.
            api_key_env: name of the environment variable holding the key (read per request).
            endpoint: "completions" (plain prompts; can score) or "chat" (one user message).
            timeout: total seconds one attempt may take, connecting and reading the whole reply
                included; past it the attempt is cut off and retried (reason "timeout").
            connect_timeout: seconds to wait for a TCP connection (within `timeout`).
            max_retries: retries per request after the first attempt (429, 5xx, timeouts, ...).
            backoff, max_backoff: the n-th retry waits about backoff * 2**n seconds (jittered,
                at most max_backoff), or longer if the server's Retry-After says so.
            connect_retries, connect_backoff: retries (and pause) when the server cannot be
                reached at all; kept small so a dead endpoint fails fast.
            concurrency: requests in flight at once (a thread pool shared by all calls), 1 to 256.
            max_reply_bytes: longest reply accepted; a longer one is an LLMError.
            seed: seeds the backoff jitter (reproducible timings in tests).
            scoring: how continuations are scored (see the module doc): "echo" (prompt logprobs),
                "next-token" (the top `top_logprobs` next tokens, one request per token read),
                or "auto": echo, unless a probe finds the server's echoed logprobs one position
                late (llama-cpp-python's server), then next-token.
            top_logprobs: next-token scoring: how many of the likeliest next tokens to ask for.
        """
        super().__init__()
        if endpoint not in ENDPOINTS:
            raise LLMError(f"endpoint must be one of {sorted(ENDPOINTS)}, got {endpoint!r}")
        if not isinstance(model, str) or not model.strip():
            raise LLMError(f"the model name must be a non-empty string, got {model!r}")
        check_int("concurrency", concurrency, 1, MAX_CONCURRENCY)
        check_int("max_retries", max_retries, 0)
        check_int("connect_retries", connect_retries, 0)
        check_int("max_reply_bytes", max_reply_bytes, 1)
        check_int("top_logprobs", top_logprobs, 1)
        if scoring not in SCORINGS:
            raise LLMError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        self.scoring, self.top_logprobs = scoring, top_logprobs
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            check_seconds(name, value, positive=True)
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff),
                            ("connect_backoff", connect_backoff)):
            check_seconds(name, value, positive=False)
        self.model = model
        self.base_url = check_base_url(base_url, "base_url")
        self.api_key_env = api_key_env
        self.endpoint = endpoint
        self.url = self.base_url + ENDPOINTS[endpoint]
        self.public_url = public_url(self.url)
        self.supports_loglikelihood = endpoint == "completions"
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.connect_retries, self.connect_backoff = connect_retries, connect_backoff
        self.concurrency = concurrency
        self.max_reply_bytes = max_reply_bytes
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # guards stats and the pool's creation
        self._local = threading.local()  # one requests.Session per thread (Session is not thread-safe)
        self._pool: ThreadPoolExecutor | None = None

    # -- identity ---------------------------------------------------------------------------------

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model, "base_url": public_url(self.base_url),
                "endpoint": self.endpoint}

    def __repr__(self) -> str:
        return (f"OpenAIBackend(model={self.model!r}, base_url={public_url(self.base_url)!r}, "
                f"endpoint={self.endpoint!r})")

    def close(self) -> None:
        """Stop the worker threads (idle ones also stop by themselves at exit)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- the LLMBackend interface -----------------------------------------------------------------

    def generate(self, prompts: list[str], params: GenerationParams = GenerationParams(),
                 choices: list[str] | None = None) -> list[str]:
        out: list[str | None] = [None] * len(prompts)
        for i, text in self.generate_iter(prompts, params, choices):
            out[i] = text
        return out  # type: ignore[return-value]  # every index was filled

    def generate_iter(self, prompts: list[str], params: GenerationParams = GenerationParams(),
                      choices: list[str] | None = None) -> Iterator[tuple[int, str]]:
        """Yield (index, answer) as each request completes (in completion order)."""
        tasks = {i: (lambda cancel, p=p: self._generate_one(p, params, choices, cancel))
                 for i, p in enumerate(prompts)}
        yield from self._run(tasks)

    def loglikelihood(self, prompt: str, continuations: list[str]) -> list[float]:
        return self.score_shared_prefix(prompt, [""], continuations)[0]

    def score_shared_prefix(self, prefix: str, queries: list[str],
                            continuations: list[str]) -> list[list[float]]:
        return in_order(self.score_shared_prefix_iter(prefix, queries, continuations), len(queries))

    def score_shared_prefix_iter(self, prefix: str, queries: list[str],
                                 continuations: list[str]) -> Iterator[tuple[int, list[float]]]:
        """Yield (query index, scores) as soon as all of a query's continuations are scored.

        All (query, continuation) requests share the pool, so a long episode keeps every worker
        busy instead of waiting for one query at a time."""
        self._require_scoring()
        if not continuations:
            yield from ((i, []) for i in range(len(queries)))
            return
        if self._scoring_mode() == "next-token":  # one task per query: its requests shared
            for i, scores in self._run({i: (lambda cancel, q=q: self._score_next_tokens(
                    prefix + q, continuations, cancel)) for i, q in enumerate(queries)}):
                yield i, scores
            return
        tasks = {(i, j): (lambda cancel, q=q, c=c: self._score_one(prefix + q, c, cancel))
                 for i, q in enumerate(queries) for j, c in enumerate(continuations)}
        partial: dict[int, dict[int, float]] = {}
        for (i, j), value in self._run(tasks):
            partial.setdefault(i, {})[j] = value
            if len(partial[i]) == len(continuations):
                scores = partial.pop(i)
                yield i, [scores[j] for j in range(len(continuations))]

    # -- one request of each kind -----------------------------------------------------------------

    def _generate_one(self, prompt: str, params: GenerationParams, choices: list[str] | None,
                      cancel: threading.Event) -> str:
        body: dict = {"model": self.model, "max_tokens": params.max_new_tokens,
                      "temperature": params.temperature, "n": 1}
        if params.stop:
            body["stop"] = list(params.stop[:MAX_SERVER_STOPS])
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        text = self._post(body, parse_text(self.endpoint), cancel)
        text = cut_at_stop(text, params.stop)
        return snap_to_choice(text, choices) if choices else text

    def _require_scoring(self) -> None:
        if not self.supports_loglikelihood:
            raise LLMError(f"OpenAI-compatible backend {self.model!r} at {self.public_url} cannot "
                           "score continuations on the chat endpoint; use endpoint='completions' "
                           "(echo + logprobs) or generation")

    # -- the retry loop ---------------------------------------------------------------------------

    def _post(self, body: dict, parse: Callable[[dict], object], cancel: threading.Event,
              scoring: bool = False):
        """POST `body`, retrying what can be retried; return parse(reply JSON)."""
        retries = connect_failures = 0
        while True:
            if cancel.is_set():
                raise _Cancelled()
            try:
                return self._attempt(body, parse, scoring)
            except _Retryable as exc:
                detail = self._redact(exc.detail)  # the server may have echoed the key
                if exc.reason == "connect":
                    connect_failures += 1
                    if connect_failures > self.connect_retries:
                        raise LLMError(f"cannot reach the OpenAI-compatible server at "
                                       f"{self.public_url}: {detail} (is it running? check "
                                       "base_url)") from None
                    delay = self.connect_backoff
                else:
                    retries += 1
                    if retries > self.max_retries:
                        raise LLMError(f"{self.public_url}: giving up after {retries} attempts; "
                                       f"last error: {exc.reason}: {detail}") from None
                    delay = self._delay(retries, exc.retry_after)
                self._note_retry(exc.reason)
                log.info("retrying %s after %s (%s); waiting %.2f s", self.public_url, exc.reason,
                         detail, delay)
                if cancel.wait(delay):  # an interruptible sleep: stop early if the batch failed
                    raise _Cancelled() from None

    def _attempt(self, body: dict, parse: Callable[[dict], object], scoring: bool):
        """One HTTP request. Raises _Retryable for transient failures, LLMError for final ones."""
        with self._lock:
            self.stats.requests += 1
        raw, failure = None, None
        with Deadline(self.timeout) as deadline:
            try:
                # stream=True: the body is read below, in chunks, against the deadline and the cap
                resp = self._session().post(
                    self.url, json=body, headers=self._headers(), stream=True,
                    timeout=(min(self.connect_timeout, self.timeout), self.timeout))
                try:
                    resp.request.headers.pop("Authorization", None)  # keep no copy of the key
                    raw = read_body(resp, deadline, self.max_reply_bytes)  # None: too late
                finally:
                    resp.close()  # a connection left mid-reply is closed, not reused
            except requests.exceptions.RequestException as exc:
                failure = _Retryable(classify(exc), describe_network_error(exc))
            except ReplyTooLarge as exc:
                raise LLMError(f"the reply of {self.public_url} is larger than "
                               f"{self.max_reply_bytes:,} bytes (max_reply_bytes; {exc}); a "
                               "completion reply is a few KB: check base_url") from None
        if raw is None and (failure is None or deadline.expired and failure.reason != "connect"):
            # the deadline passed between two chunks, or its timer cut the request off
            failure = _Retryable("timeout", f"no complete reply within {self.timeout:g} s "
                                 "(the whole request, not one read)")
        if failure is not None:
            # Raised outside the except block: requests' exception (whose request object holds
            # the headers, key included) is not kept as this one's __context__.
            raise failure
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"http_{resp.status_code}", self._server_message(resp, raw),
                             retry_after(resp.headers.get("Retry-After")))
        if resp.status_code >= 400:
            raise LLMError(self._http_error(resp, raw, scoring))
        key = os.environ.get(self.api_key_env)
        try:
            reply = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested past Python's stack
            text = redact_key(raw.decode("utf-8", "replace"), key)  # redacted, then cut
            raise _Retryable("bad_json", f"reply is not JSON: {text[:80]!r}") from None
        try:
            return parse(redact_reply(reply, key))  # an echoed key never reaches the cache
        except RetryableReply as exc:
            raise _Retryable("bad_json", str(exc)) from None

    def _delay(self, retry: int, retry_after: float | None) -> float:
        """Exponential backoff with 'equal jitter'; at least what Retry-After asks, but never longer
        than one request's deadline (`timeout`, the user's bound on a wait)."""
        cap = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        with self._lock:
            delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.timeout)

    def _note_retry(self, reason: str) -> None:
        with self._lock:
            self.stats.note_retry(reason)

    # -- running many requests --------------------------------------------------------------------

    def _run(self, tasks: dict) -> Iterator[tuple[object, object]]:
        """Run task(cancel) for every task on the pool; yield (key, result) in completion order.

        On the first failure the remaining requests are cancelled (queued ones never start,
        retrying ones stop at their next pause) and the error is raised."""
        cancel = threading.Event()
        pool = self._get_pool()
        futures: dict[Future, object] = {pool.submit(fn, cancel): key for key, fn in tasks.items()}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    exc = fut.exception()
                    if exc is not None and not isinstance(exc, _Cancelled):
                        raise exc
                    if exc is None:
                        yield futures[fut], fut.result()
        finally:
            # Also runs if the caller stops iterating early (e.g. its cache write failed).
            cancel.set()
            for fut in pending:
                fut.cancel()

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai-http")
            return self._pool

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # DeadlineAdapter: connections a Deadline can cut off (see _attempt)
            adapter = DeadlineAdapter(pool_maxsize=self.concurrency, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    # -- secrets and error messages ---------------------------------------------------------------

    def _headers(self) -> dict:
        """Request headers, built per request so the key is never stored on the backend.
        Accept-Encoding identity: replies are small JSON, and an uncompressed reply's size is what
        max_reply_bytes bounds (no decompression bombs)."""
        key = os.environ.get(self.api_key_env)
        headers = {"Accept-Encoding": "identity"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        """Remove the key and its prefixes (servers may echo them back) from any text bound for a
        message or log (`replies.redact_key`)."""
        return redact_key(text, os.environ.get(self.api_key_env))

    def _server_message(self, resp: requests.Response, raw: bytes) -> str:
        """The server's own explanation: error.message of the JSON body, else the start of it."""
        try:
            err = json.loads(raw).get("error")
            msg = err.get("message") if isinstance(err, dict) else err
        except (ValueError, AttributeError, RecursionError):
            msg = None
        if not isinstance(msg, str) or not msg:
            msg = raw.decode("utf-8", "replace").strip() or resp.reason or ""
        # redacted whole, then cut: a cut may fall inside the key and leave a prefix of it
        return self._redact(f"HTTP {resp.status_code}: {msg}")[:400]

    def _http_error(self, resp: requests.Response, raw: bytes, scoring: bool) -> str:
        msg = f"{self.public_url} refused the request ({self._server_message(resp, raw)})"
        if resp.status_code in (401, 403):
            msg += f"; check the API key in ${self.api_key_env}"
        elif resp.status_code == 404:
            msg += f"; check base_url (usually ends in /v1) and model {self.model!r}"
        if scoring:
            msg += ("; scoring needs a completions server that returns logprobs (echo=True with "
                    "logprobs=1, or logprobs=N for a generated token); otherwise use generation")
        return msg
