"""An on-disk cache of LLM answers, so an experiment re-run (or resumed after a kill) only asks
the backend what it has not answered yet.

    backend = CachedBackend(OpenAIBackend(url, model), "runs/llm_cache.sqlite")
    answers = backend.generate(prompts)      # misses go to the server, each stored on arrival
    backend.stats.cache_hits                 # how many came from the file

One SQLite row per answer, keyed by the sha256 of the canonical JSON of (backend.describe(),
method, prompt / prefix + query, choices or continuations, GenerationParams). Every row is committed
the moment its answer arrives (WAL journal), so killing the process loses only requests in flight.
Rows are written with INSERT OR IGNORE: two processes answering the same question store it once.
The request itself is kept next to the answer (as JSON) for inspection; it never holds a secret,
because `describe()` never does.

A file that is not a readable cache (damaged, truncated, another program's database) is an
`LLMError` naming the file and what to do: move it away or delete it, and the answers are asked
again. The file is never repaired or replaced silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from spae_lab.io import remove_links
from spae_lab.llm.base import GenerationParams, LLMBackend, LLMError, in_order

SCHEMA_VERSION = 1  # part of every key: bump it if the meaning of a stored answer changes
_LOOKUP_BATCH = 500  # keys per SELECT (SQLite limits the number of bound variables)
COLUMNS = ("key", "method", "request", "answer", "created")


def canonical_json(obj) -> str:
    """JSON with sorted keys and no spaces: equal requests give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ResponseCache:
    """The SQLite file: get many answers by key, put one answer (committed at once)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LLMError(f"cannot create the folder of the LLM cache {str(self.path)!r}: "
                           f"{err.strerror or err}") from None
        # SQLite opens these itself and would write through a link planted there
        remove_links(*(self.path.with_name(self.path.name + end) for end in ("", "-wal", "-shm", "-journal")))
        try:
            # isolation_level=None: autocommit, every INSERT is its own committed transaction.
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as err:
            raise self._error(err) from None
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a committed row survives a killed process (not a power cut).
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, "
                                 "method TEXT NOT NULL, request TEXT NOT NULL, "
                                 "answer TEXT NOT NULL, created REAL NOT NULL)")
                columns = tuple(row[1] for row in self._db.execute("PRAGMA table_info(answers)"))
        except sqlite3.Error as err:  # damage found later (truncated pages) fails in get/put
            self._db.close()
            raise self._error(err) from None
        if columns != COLUMNS:
            self._db.close()
            raise self._damaged(f"its table 'answers' has the columns {list(columns)}")

    def _damaged(self, detail: str) -> LLMError:
        return LLMError(f"the LLM cache {str(self.path)!r} is damaged or not a cache ({detail}); "
                        "move it away or delete it to start a fresh cache (its answers are then "
                        "asked again)")

    def _error(self, err: sqlite3.Error) -> LLMError:
        """The LLMError for an SQLite error: a damaged file, or one that cannot be used (locked,
        read-only, a folder, a full disk)."""
        if isinstance(err, sqlite3.OperationalError):
            return LLMError(f"cannot use the LLM cache {str(self.path)!r}: {err}; check that it "
                            "is a writable file on a disk with space, not used by another program")
        return self._damaged(str(err))  # DatabaseError: "file is not a database", "malformed"

    def get_many(self, keys: Iterable[str]) -> dict[str, object]:
        """The stored answers of those keys that have one."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, object] = {}
        try:
            with self._lock:
                for start in range(0, len(keys), _LOOKUP_BATCH):
                    batch = keys[start:start + _LOOKUP_BATCH]
                    marks = ",".join("?" * len(batch))
                    rows = self._db.execute(
                        f"SELECT key, answer FROM answers WHERE key IN ({marks})", batch)
                    found.update((key, json.loads(answer)) for key, answer in rows)
        except sqlite3.Error as err:
            raise self._error(err) from None
        except ValueError as err:  # a stored answer that is not JSON
            raise self._damaged(f"a stored answer is not JSON: {err}") from None
        return found

    def put(self, key: str, method: str, request: dict, answer) -> None:
        """Store one answer; a key already there is left as it is."""
        try:
            with self._lock:
                self._db.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?)",
                                 (key, method, canonical_json(request), json.dumps(answer),
                                  time.time()))
        except sqlite3.Error as err:
            raise self._error(err) from None

    def __len__(self) -> int:
        try:
            with self._lock:
                return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.Error as err:
            raise self._error(err) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend(LLMBackend):
    """Wraps a backend; answers from the cache file where it can, stores every new answer.

    `stats` is the inner backend's own CallStats object, so requests, retries and cache hits are
    read in one place. Misses are sent to the inner backend in chunks of `chunk_size` through its
    streaming methods (`generate_iter`, `score_shared_prefix_iter`): a backend that answers item by
    item (HTTP) has each answer stored as it arrives; one that computes a whole batch (a local
    model) loses at most one chunk when killed.
    """

    def __init__(self, inner: LLMBackend, path: str | Path, chunk_size: int = 64):
        super().__init__()
        self.inner = inner
        self.kind, self.model = inner.kind, inner.model
        self.supports_loglikelihood = inner.supports_loglikelihood
        self.stats = inner.stats
        self.cache = ResponseCache(path)
        self.chunk_size = max(1, chunk_size)

    def describe(self) -> dict:
        return self.inner.describe()

    def __repr__(self) -> str:
        return f"CachedBackend({self.inner!r}, {str(self.cache.path)!r})"

    def close(self) -> None:
        self.inner.close()
        self.cache.close()

    # -- keys -------------------------------------------------------------------------------------

    def request(self, method: str, **fields) -> dict:
        """The request a key is derived from (also stored next to the answer)."""
        return {"v": SCHEMA_VERSION, "backend": self.inner.describe(), "method": method, **fields}

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(canonical_json(request).encode()).hexdigest()

    # -- the LLMBackend interface -----------------------------------------------------------------

    def generate(self, prompts: list[str], params: GenerationParams = GenerationParams(),
                 choices: list[str] | None = None) -> list[str]:
        out: list[str | None] = [None] * len(prompts)
        for i, text in self.generate_iter(prompts, params, choices):
            out[i] = text
        return out  # type: ignore[return-value]

    def generate_iter(self, prompts: list[str], params: GenerationParams = GenerationParams(),
                      choices: list[str] | None = None) -> Iterator[tuple[int, str]]:
        requests = [self.request("generate", prompt=p, choices=choices,
                                 params=dataclasses.asdict(params)) for p in prompts]

        def compute(indices: list[int]) -> Iterator[tuple[int, str]]:
            yield from self.inner.generate_iter([prompts[i] for i in indices], params, choices)

        yield from self._cached("generate", requests, compute)

    def generate_shared_prefix_iter(self, prefix: str, queries: list[str],
                                    params: GenerationParams = GenerationParams(),
                                    choices: list[str] | None = None
                                    ) -> Iterator[tuple[int, str]]:
        # Keyed like `generate` of prefix + query: either path answers the other's questions.
        requests = [self.request("generate", prompt=prefix + q, choices=choices,
                                 params=dataclasses.asdict(params)) for q in queries]

        def compute(indices: list[int]) -> Iterator[tuple[int, str]]:
            yield from self.inner.generate_shared_prefix_iter(
                prefix, [queries[i] for i in indices], params, choices)

        yield from self._cached("generate", requests, compute)

    def loglikelihood(self, prompt: str, continuations: list[str]) -> list[float]:
        request = self.request("loglikelihood", prompt=prompt, continuations=list(continuations))

        def compute(indices: list[int]) -> Iterator[tuple[int, list[float]]]:
            yield 0, self.inner.loglikelihood(prompt, continuations)

        return next(v for _, v in self._cached("loglikelihood", [request], compute))

    def score_shared_prefix(self, prefix: str, queries: list[str],
                            continuations: list[str]) -> list[list[float]]:
        return in_order(self.score_shared_prefix_iter(prefix, queries, continuations), len(queries))

    def score_shared_prefix_iter(self, prefix: str, queries: list[str],
                                 continuations: list[str]) -> Iterator[tuple[int, list[float]]]:
        requests = [self.request("score_shared_prefix", prefix=prefix, query=q,
                                 continuations=list(continuations)) for q in queries]

        def compute(indices: list[int]) -> Iterator[tuple[int, list[float]]]:
            yield from self.inner.score_shared_prefix_iter(prefix, [queries[i] for i in indices],
                                                           continuations)

        yield from self._cached("score_shared_prefix", requests, compute)

    def rank_shared_prefix(self, prefix: str, queries: list[str], continuations: list[str],
                           content_free: str | None = None) -> list[int]:
        return in_order(self.rank_shared_prefix_iter(prefix, queries, continuations, content_free),
                        len(queries))

    def rank_shared_prefix_iter(self, prefix: str, queries: list[str], continuations: list[str],
                                content_free: str | None = None) -> Iterator[tuple[int, int]]:
        requests = [self.request("rank_shared_prefix", prefix=prefix, query=q,
                                 continuations=list(continuations), content_free=content_free)
                    for q in queries]

        def compute(indices: list[int]) -> Iterator[tuple[int, int]]:
            yield from self.inner.rank_shared_prefix_iter(
                prefix, [queries[i] for i in indices], continuations, content_free)

        yield from self._cached("rank_shared_prefix", requests, compute)

    # -- the one lookup / compute / store loop ----------------------------------------------------

    def _cached(self, method: str, requests: list[dict], compute) -> Iterator[tuple[int, object]]:
        """Yield (index, answer) for every request: cached ones first, then computed ones.

        compute(indices) yields (position in indices, answer) for the missing requests. Equal
        requests in one batch are computed once."""
        keys = [self.key(r) for r in requests]
        found = self.cache.get_many(keys)
        by_key: dict[str, list[int]] = {}  # missing key -> every index asking it
        for i, key in enumerate(keys):
            if key in found:
                self.stats.cache_hits += 1
                yield i, found[key]
            else:
                by_key.setdefault(key, []).append(i)
        missing = list(by_key)  # unique missing keys, in first-asked order
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start:start + self.chunk_size]
            first = [by_key[key][0] for key in chunk]  # one representative index per key
            for pos, answer in compute(first):
                key = chunk[pos]
                self.cache.put(key, method, requests[first[pos]], answer)
                for i in by_key[key]:
                    yield i, answer
