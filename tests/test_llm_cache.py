"""CachedBackend with an in-process backend: what is looked up, sent, stored, and when."""

from __future__ import annotations

import sqlite3

import pytest

from spae_lab.llm import CachedBackend, GenerationParams, LLMBackend, LLMError


class Echo(LLMBackend):
    """Answers prompt.upper(); records every batch it is asked; can die after some answers."""

    kind, model, supports_loglikelihood = "echo", "upper", True

    def __init__(self, die_after: int | None = None, tag: str = ""):
        super().__init__()
        self.batches: list[list[str]] = []
        self.die_after, self.tag, self.answered = die_after, tag, 0

    def describe(self) -> dict:
        return {**super().describe(), "tag": self.tag}

    def generate(self, prompts, params=GenerationParams(), choices=None):
        self.batches.append(list(prompts))
        if self.die_after is not None and self.answered + len(prompts) > self.die_after:
            raise RuntimeError("killed")
        self.answered += len(prompts)
        return [p.upper()[: params.max_new_tokens] for p in prompts]

    def loglikelihood(self, prompt, continuations):
        self.batches.append([prompt])
        return [-float(len(prompt + c)) for c in continuations]


class Streaming(Echo):
    """Answers one prompt at a time through generate_iter, like the HTTP backend."""

    def generate_iter(self, prompts, params=GenerationParams(), choices=None):
        self.batches.append(list(prompts))
        for i, p in enumerate(prompts):
            if self.die_after is not None and self.answered >= self.die_after:
                raise RuntimeError("killed")
            self.answered += 1
            yield i, p.upper()


def rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def test_only_missing_prompts_are_sent_and_hits_are_counted(tmp_path):
    inner = Echo()
    backend = CachedBackend(inner, tmp_path / "c.sqlite")
    assert backend.generate(["a", "b"]) == ["A", "B"]
    assert backend.generate(["b", "c", "a", "c"]) == ["B", "C", "A", "C"]
    assert inner.batches == [["a", "b"], ["c"]]  # "c" asked twice in one batch, sent once
    assert backend.stats.cache_hits == 2 and rows(tmp_path / "c.sqlite") == 3
    assert backend.stats is inner.stats  # one place for requests, retries and hits


def test_the_key_covers_backend_params_and_choices(tmp_path):
    path = tmp_path / "c.sqlite"
    inner = Echo()
    backend = CachedBackend(inner, path)
    backend.generate(["abc"])
    backend.generate(["abc"], GenerationParams(max_new_tokens=2))
    backend.generate(["abc"], choices=["ABC", "x"])
    CachedBackend(Echo(tag="other"), path).generate(["abc"])
    assert len(inner.batches) == 3 and rows(path) == 4
    assert backend.generate(["abc"], GenerationParams(max_new_tokens=2)) == ["AB"]


def test_answers_survive_reopening_and_equal_keys_are_stored_once(tmp_path):
    path = tmp_path / "c.sqlite"
    first, second = CachedBackend(Echo(), path), CachedBackend(Echo(), path)
    first.generate(["a", "b"])
    request = second.request("generate", prompt="a", choices=None,
                             params={"max_new_tokens": 16, "stop": ["\n"], "temperature": 0.0})
    second.cache.put(second.key(request), "generate", request, "A")  # a second writer: ignored
    first.close()
    second.close()
    reopened = CachedBackend(Echo(), path)
    assert reopened.generate(["a", "b"]) == ["A", "B"] and reopened.inner.batches == []
    assert rows(path) == 2


def test_streamed_answers_are_stored_as_they_arrive(tmp_path):
    path = tmp_path / "c.sqlite"
    with pytest.raises(RuntimeError):
        CachedBackend(Streaming(die_after=5), path).generate([f"p{i}" for i in range(10)])
    assert rows(path) == 5
    inner = Streaming()
    assert CachedBackend(inner, path).generate([f"p{i}" for i in range(10)]) == [
        f"P{i}" for i in range(10)]
    assert inner.batches == [[f"p{i}" for i in range(5, 10)]]


def test_batch_backends_are_sent_chunks(tmp_path):
    path = tmp_path / "c.sqlite"
    with pytest.raises(RuntimeError):
        CachedBackend(Echo(die_after=9), path, chunk_size=4).generate([f"p{i}" for i in range(10)])
    assert rows(path) == 8  # two whole chunks stored before the third died


def test_loglikelihood_and_shared_prefix_scores_are_cached(tmp_path):
    inner = Echo()
    backend = CachedBackend(inner, tmp_path / "c.sqlite")
    assert backend.loglikelihood("ab", ["c", "de"]) == [-3.0, -4.0]
    assert backend.loglikelihood("ab", ["c", "de"]) == [-3.0, -4.0]
    scores = backend.score_shared_prefix("p:", ["x", "yy"], ["c"])
    assert scores == [[-4.0], [-5.0]]
    assert backend.score_shared_prefix("p:", ["yy", "z"], ["c"]) == [[-5.0], [-4.0]]
    assert inner.batches == [["ab"], ["p:x"], ["p:yy"], ["p:z"]]
    assert backend.stats.cache_hits == 2


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "llm_cache.sqlite"
    path.write_bytes(b"this is not an SQLite database, it is a text file\n" * 200)
    before = path.read_bytes()
    with pytest.raises(LLMError, match=r"LLM cache .*llm_cache.sqlite.* is damaged") as info:
        CachedBackend(Echo(), path)
    assert "move it away or delete it" in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before  # never repaired or replaced behind the user's back


def test_a_truncated_cache_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    backend = CachedBackend(Echo(), path)
    backend.generate([f"prompt {i} " + "x" * 200 for i in range(400)])
    backend.close()
    with sqlite3.connect(path) as db:  # fold the WAL into the file, as a clean exit does
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(LLMError, match="is damaged.*move it away or delete it"):
        CachedBackend(Echo(), path).generate([f"prompt {i} " + "x" * 200 for i in range(400)])


def test_another_programs_database_is_not_taken_for_a_cache(tmp_path):
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE answers (id INTEGER, text TEXT)")
    with pytest.raises(LLMError, match=r"is damaged or not a cache \(its table 'answers'"):
        CachedBackend(Echo(), path)


def test_a_cache_path_that_cannot_be_used_is_a_clear_error(tmp_path):
    (tmp_path / "a_folder.sqlite").mkdir()
    with pytest.raises(LLMError, match="cannot use the LLM cache"):
        CachedBackend(Echo(), tmp_path / "a_folder.sqlite")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(LLMError, match="cannot create the folder of the LLM cache"):
        CachedBackend(Echo(), tmp_path / "a_file" / "c.sqlite")
