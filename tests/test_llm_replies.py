"""Server replies are not taken on trust, and the API key never leaks, in whole or in part
(issue 23, items 2 and 7): the reply parsers fuzzed with hypothesis, and hostile replies from a
real HTTP server on loopback (tests/fake_openai_server.py --reply-file)."""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spae_lab.llm import CachedBackend, LLMError, OpenAIBackend
from spae_lab.llm.replies import (
    MIN_SECRET_PREFIX,
    RetryableReply,
    parse_continuation_logprob,
    parse_echo_top_logprobs,
    parse_text,
    parse_top_logprobs,
    redact_key,
    redact_reply,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_openai import FAST, FakeServer  # noqa: E402

KEY = "sk-test-secret-0123456789abcdef"
ALLOWED = (LLMError, RetryableReply)

# JSON-like values: every shape a server could send, NaN and infinities included (Python's json
# module reads NaN, Infinity and -Infinity).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
logprob_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                           st.text(max_size=5), st.none(), st.booleans(),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _echo_reply(tokens, logprobs, offsets, tops=None) -> dict:
    return {"choices": [{"text": "".join(t for t in tokens if isinstance(t, str)), "logprobs": {
        "tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets,
        "top_logprobs": tops if tops is not None else [None] * len(tokens)}}]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=json_values, start=st.integers(0, 30), end=st.integers(0, 60))
def test_any_reply_shape_parses_or_fails_cleanly(reply, start, end):
    """Random JSON of any shape: a parser returns what it promises or raises one of the two
    expected errors; never a TypeError, KeyError or a NaN score."""
    for parse in (parse_text("completions"), parse_text("chat"),
                  parse_continuation_logprob(start, end), parse_top_logprobs,
                  parse_echo_top_logprobs(end)):
        for candidate in (reply, {"choices": [reply]}, {"choices": [{"logprobs": reply}]},
                          {"choices": [{"text": "x", "logprobs": {"top_logprobs": [reply]}}]}):
            try:
                out = parse(candidate)
            except ALLOWED:
                continue
            if isinstance(out, float):
                assert math.isfinite(out) and out <= 1e-4
            elif isinstance(out, dict):
                assert all(isinstance(k, str) and math.isfinite(v) for k, v in out.items())
            else:
                assert isinstance(out, str)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(logprob_values, min_size=1, max_size=6))
def test_echo_logprobs_of_any_type_or_value(values):
    tokens = [f" w{i}" for i in range(len(values))]
    offsets = [3 * i for i in range(len(values))]
    parse = parse_continuation_logprob(0, 3 * len(values))
    try:
        score = parse(_echo_reply(tokens, values, offsets))
    except ALLOWED:
        return
    assert math.isfinite(score) and score <= 1e-4 * len(values)


def test_finite_logprobs_whose_sum_overflows_are_a_clear_llm_error():
    """Found by the test above: each value finite, their sum -inf."""
    reply = _echo_reply([" w0", " w1"], [-1e308, -1e308], [0, 3])
    with pytest.raises(LLMError, match="sum to -inf"):
        parse_continuation_logprob(0, 6)(reply)


@pytest.mark.parametrize("bad", ["-1.5", {"v": -1.0}, float("nan"), float("-inf"), float("inf"),
                                 True, 3.0])
def test_bad_logprobs_are_one_clear_llm_error(bad):
    reply = _echo_reply(["a", " cat"], [None, bad], [0, 1])
    with pytest.raises(LLMError, match="token_logprobs\\[1\\]"):
        parse_continuation_logprob(1, 5)(reply)


@settings(max_examples=300, deadline=None)
@given(key=st.text(min_size=MIN_SECRET_PREFIX, max_size=40).filter(lambda k: "*" not in k),
       before=st.text(max_size=20), after=st.text(max_size=20), cut=st.integers(0, 40))
def test_no_prefix_of_the_key_of_six_or_more_characters_survives(key, before, after, cut):
    text = before + key[:max(cut, MIN_SECRET_PREFIX)] + after + key
    redacted = redact_key(text, key)
    for n in range(MIN_SECRET_PREFIX, len(key) + 1):
        assert key[:n] not in redacted.replace("***", "\x00")
    assert redact_reply({"a": [text], text: 1.0}, key) == {"a": [redacted], redacted: 1.0}


# -- hostile replies from a real server on loopback ------------------------------------------------

def serve(tmp_path: Path, body: bytes, *flags: str) -> FakeServer:
    reply = tmp_path / "reply.bin"
    reply.write_bytes(body)
    return FakeServer(tmp_path / "requests.jsonl", "--reply-file", str(reply), *flags)


@pytest.mark.parametrize("logprob", ['"-0.5"', "NaN", "-Infinity", '{"x": 1}'])
def test_a_server_sending_bad_logprobs_gets_an_llm_error_not_a_score(tmp_path, logprob):
    body = ('{"choices": [{"text": "a cat", "logprobs": {"tokens": ["a", " cat"], '
            f'"token_logprobs": [null, {logprob}], "text_offset": [0, 1], '
            '"top_logprobs": [null, {" cat": -1.0}]}}]}').encode()
    server = serve(tmp_path, body)
    try:
        backend = OpenAIBackend(server.url, "m", scoring="echo", **FAST)
        with pytest.raises(LLMError, match="token_logprobs"):
            backend.loglikelihood("a", [" cat"])
        assert len(server.requests()) == 1  # refused at once: asking again gets the same reply
    finally:
        server.stop()


def test_a_reply_that_is_not_utf8_is_retried_then_refused(tmp_path):
    server = serve(tmp_path, b"\xff\xfe{\x80not json" + bytes(range(128, 256)))
    try:
        backend = OpenAIBackend(server.url, "m", max_retries=2, **FAST)
        with pytest.raises(LLMError, match="giving up after 3 attempts.*bad_json"):
            backend.generate(["hello"])
    finally:
        server.stop()


def test_a_key_echoed_in_an_answer_is_not_stored_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    body = json.dumps({"choices": [{"text": f" your key is {KEY[:9]}... or {KEY}"}]}).encode()
    server = serve(tmp_path, body)
    try:
        backend = CachedBackend(OpenAIBackend(server.url, "m", **FAST), tmp_path / "c.sqlite")
        (answer,) = backend.generate(["hello"])
        backend.close()
    finally:
        server.stop()
    assert KEY[:MIN_SECRET_PREFIX] not in answer and "***" in answer
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        stored = " ".join(str(v) for row in db.execute("SELECT * FROM answers") for v in row)
    assert KEY[:MIN_SECRET_PREFIX] not in stored


def test_an_error_text_cut_inside_the_key_shows_no_part_of_it(tmp_path, monkeypatch):
    """A 401 whose message is long enough that a cut falls inside the key."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = FakeServer(tmp_path / "requests.jsonl", "--expect-key-sha256", "0" * 64)
    try:
        with pytest.raises(LLMError) as err:
            OpenAIBackend(server.url, "m", **FAST).generate(["hello"])
    finally:
        server.stop()
    assert KEY[:MIN_SECRET_PREFIX] not in str(err.value) and "***" in str(err.value)


def test_retry_after_is_held_to_the_request_deadline(tmp_path):
    """Retry-After: 100000 with a 1-second deadline: the retry waits at most that second (else
    this test would wait a day: pytest's timeout fails it)."""
    server = FakeServer(tmp_path / "requests.jsonl", "--p-429", "1", "--retry-after", "100000",
                        "--max-faults-per-prompt", "1")
    try:
        backend = OpenAIBackend(server.url, "m", timeout=1.0, **FAST)
        assert backend._delay(1, 100000.0) <= 1.0
        assert backend.generate(["hello"]) == [" olleh"]
        assert backend.stats.retry_reasons == {"http_429": 1}
    finally:
        server.stop()
