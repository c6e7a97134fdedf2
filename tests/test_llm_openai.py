"""The OpenAI-compatible backend and the response cache against a real HTTP server on loopback.

tests/fake_openai_server.py runs as a subprocess (stdlib http.server): deterministic answers
(see `completion_for`), deterministic echo logprobs, a JSON line per request it receives, and
injected faults (429/500/503, sleeping past the timeout, dropped connections, broken JSON), and
hostile replies (trickled one byte at a time, hundreds of megabytes long).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import traceback
import tracemalloc
import uuid
from pathlib import Path

import pytest

from spae_lab.llm import (
    CachedBackend,
    GenerationParams,
    LLMError,
    OpenAIBackend,
    load_backend,
)
from spae_lab.llm.openai_compat import snap_to_choice
from spae_lab.llm.openai_scoring import PROBE_TEXT
from spae_lab.llm.transport import retry_after

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import completion_for, fake_logprob  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("fake_openai_server.py")
FAST = {"backoff": 0.01, "max_backoff": 0.05, "connect_backoff": 0.05, "seed": 0}


class FakeServer:
    """A running fake_openai_server.py subprocess and its request log."""

    def __init__(self, log: Path, *flags: str):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(SERVER), "--log", str(log), *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"fake server did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def records(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def requests(self, since: float = 0.0) -> list[dict]:
        """Every request the server received (after time `since`), in arrival order."""
        return [r for r in self.records() if "path" in r and r["t"] >= since]

    def sent(self) -> list[dict]:
        """What the server managed to send of each hostile reply (--trickle, --huge-body)."""
        return [r for r in self.records() if r.get("event") == "sent"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_server(tmp_path_factory):
    """start_server(*flags) -> a FakeServer, stopped at the end of the test."""
    servers: list[FakeServer] = []

    def start(*flags: str, log_dir: Path | None = None) -> FakeServer:
        log_dir = log_dir or tmp_path_factory.mktemp("server")
        log_dir.mkdir(parents=True, exist_ok=True)
        server = FakeServer(log_dir / f"requests{len(servers)}.jsonl", *flags)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server):
    return start_server()


def expected(prompt: str, params: GenerationParams = GenerationParams()) -> str:
    """What the backend must return for a prompt (server answer cut at the stop sequences)."""
    text = completion_for(prompt)
    cuts = [i for s in params.stop if (i := text.find(s)) >= 0]
    return text[:min(cuts)] if cuts else text


def prompts(n: int, tag: str = "q") -> list[str]:
    return [f"Reverse the word: {tag}{i:03d}xy" for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- plain generation, stop sequences, choices ----------------------------------------------------

def test_completions_generate_sends_the_openai_fields(server):
    backend = OpenAIBackend(server.url, "fake-model", **FAST)
    params = GenerationParams(max_new_tokens=7, stop=("\n", "zz"), temperature=0.0)
    assert backend.generate(["Reverse: hello", "Reverse: abc"], params) == [" olleh", " cba"]
    bodies = {r["body"]["prompt"]: r["body"] for r in server.requests()}
    assert bodies["Reverse: hello"] == {"model": "fake-model", "prompt": "Reverse: hello",
                                        "max_tokens": 7, "temperature": 0.0, "stop": ["\n", "zz"],
                                        "n": 1}
    assert backend.stats.requests == 2 and backend.stats.retries == 0


def test_chat_generate_sends_one_user_message(server):
    backend = OpenAIBackend(server.url, "fake-model", endpoint="chat", **FAST)
    assert backend.generate(["Reverse: hello"]) == [" olleh"]
    assert backend.generate(["Reverse: hello"], GenerationParams(stop=())) == [" olleh\ntail olleh"]
    (first, _) = server.requests()
    assert first["path"] == "/v1/chat/completions"
    assert first["body"]["messages"] == [{"role": "user", "content": "Reverse: hello"}]
    assert not backend.supports_loglikelihood
    with pytest.raises(LLMError, match="chat endpoint"):
        backend.loglikelihood("a", ["b"])


def test_stop_sequences_and_max_tokens(start_server):
    # A server that ignores `stop` (or gets only the first four): the client still cuts.
    server = start_server("--ignore-stop")
    backend = OpenAIBackend(server.url, "m", **FAST)
    many_stops = GenerationParams(max_new_tokens=16, stop=("a", "b", "c", "d", "\n"))
    assert backend.generate(["Reverse: hello"], many_stops) == [" olleh"]
    assert server.requests()[0]["body"]["stop"] == ["a", "b", "c", "d"]  # OpenAI's limit
    assert backend.generate(["Reverse: hello"], GenerationParams(stop=("l",))) == [" o"]
    assert backend.generate(["Reverse: hello"], GenerationParams(max_new_tokens=2, stop=())) == [
        " olleh\ntail"]
    assert backend.generate(["Reverse: hello"], GenerationParams(stop=())) == [
        " olleh\ntail olleh"]


def test_choices_snap_to_the_named_choice_or_keep_the_raw_text(server):
    backend = OpenAIBackend(server.url, "m", **FAST)
    free = GenerationParams(stop=())  # the text goes on after the answer: " olleh\ntail olleh"
    assert backend.generate(["Reverse: hello"], choices=["cat", "OLLEH"]) == ["OLLEH"]
    assert backend.generate(["Reverse: hello"], free, choices=["OLLEH", "x"]) == ["OLLEH"]
    assert backend.generate(["Reverse: hello"], free, choices=["ol", "olleh"]) == ["olleh"]
    assert backend.generate(["Reverse: hello"], choices=["cat", "dog"]) == [" olleh"]
    assert snap_to_choice(" Cats are", ["cat", "category"]) == "cat"
    assert snap_to_choice("category", ["cat", "category"]) == "category"


# -- log-likelihoods through echo + logprobs ------------------------------------------------------

def test_loglikelihood_sums_the_continuation_tokens(server):
    backend = OpenAIBackend(server.url, "m", **FAST)
    assert backend.supports_loglikelihood
    got = backend.loglikelihood("The animal is a", [" cat", " dog house", ""])
    assert got == pytest.approx([
        fake_logprob("The animal is a", " cat"),
        fake_logprob("The animal is a", " dog") + fake_logprob("The animal is a dog", " house"),
        0.0])
    # A token straddling the boundary (" cat" after a prompt ending in a space) is counted.
    assert backend.loglikelihood("The animal is a ", ["cat"]) == pytest.approx(
        [fake_logprob("The animal is a", " cat")])
    probe, _, body = (r["body"] for r in server.requests()[:3])
    assert probe["prompt"] == PROBE_TEXT  # scoring="auto" asks once how the server echoes
    # max_tokens=1: llama-cpp-python's server takes 0 as "no limit"
    assert body["echo"] is True and body["max_tokens"] == 1 and body["logprobs"] == 1


def test_score_shared_prefix_matches_loglikelihood(server):
    backend = OpenAIBackend(server.url, "m", concurrency=3, **FAST)
    prefix, queries, conts = "cat -> tac\ndog -> god\n", ["bird ->", "fish ->"], [" drib", " hsif"]
    got = backend.score_shared_prefix(prefix, queries, conts)
    assert got == [pytest.approx(backend.loglikelihood(prefix + q, conts)) for q in queries]


def test_a_server_that_refuses_echo_gives_a_clear_error(start_server):
    server = start_server("--no-echo")
    backend = OpenAIBackend(server.url, "m", **FAST)
    with pytest.raises(LLMError, match="echo is not supported.*use generation"):
        backend.loglikelihood("The animal is a", [" cat"])
    assert backend.stats.retries == 0


# -- errors and retries ---------------------------------------------------------------------------

def test_other_4xx_fail_at_once_with_the_servers_message(start_server):
    server = start_server("--model", "real-model")
    backend = OpenAIBackend(server.url, "no-such-model", **FAST)
    with pytest.raises(LLMError, match="HTTP 404: The model `no-such-model` does not exist"):
        backend.generate(["Reverse: hello"])
    assert len(server.requests()) == 1 and backend.stats.retries == 0


def test_retry_after_is_honoured(start_server):
    server = start_server("--p-429", "1", "--max-faults-per-prompt", "1", "--retry-after", "1")
    backend = OpenAIBackend(server.url, "m", **FAST)
    start = time.monotonic()
    assert backend.generate(["Reverse: hello"]) == [" olleh"]
    assert time.monotonic() - start >= 1.0
    assert backend.stats.retry_reasons == {"http_429": 1}
    assert retry_after("2.5") == 2.5 and retry_after(None) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_gives_up_after_max_retries(start_server):
    server = start_server("--p-503", "1")
    backend = OpenAIBackend(server.url, "m", max_retries=3, **FAST)
    with pytest.raises(LLMError, match="giving up after 4 attempts; last error: http_503"):
        backend.generate(["Reverse: hello"])
    assert backend.stats.retry_reasons == {"http_503": 3} and len(server.requests()) == 4


def test_dead_endpoint_fails_fast_and_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    backend = OpenAIBackend(url, "m", concurrency=4)  # the default backoff and retries
    for call in (lambda: backend.generate(prompts(10)),
                 lambda: backend.loglikelihood("a", [" b", " c"])):
        start = time.monotonic()
        with pytest.raises(LLMError) as info:
            call()
        assert time.monotonic() - start < 5
        assert f"{url}/completions" in str(info.value) and "Connection refused" in str(info.value)


def test_requests_run_in_parallel(start_server):
    server = start_server("--delay", "0.4")
    backend = OpenAIBackend(server.url, "m", concurrency=8, **FAST)
    start = time.monotonic()
    assert backend.generate(prompts(8)) == [expected(p) for p in prompts(8)]
    assert time.monotonic() - start < 1.6  # one at a time would take 3.2 s


# -- a whole experiment through the cache ---------------------------------------------------------

FAULT_FLAGS = ("--seed", "3", "--p-429", "0.08", "--p-500", "0.06", "--p-503", "0.06",
               "--p-timeout", "0.04", "--p-drop", "0.06", "--p-bad-json", "0.06",
               "--max-faults-per-prompt", "3", "--sleep", "2.0")
REASON = {"429": "http_429", "500": "http_500", "503": "http_503", "timeout": "timeout",
          "drop": "dropped", "bad_json": "bad_json"}


def cache_rows(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT key, request, answer FROM answers").fetchall()


@pytest.mark.slow  # a 100-query server run with faults
def test_100_queries_through_a_faulty_server_are_all_answered_once(start_server, tmp_path):
    server = start_server(*FAULT_FLAGS)
    inner = OpenAIBackend(server.url, "m", concurrency=8, timeout=1.5, max_retries=4, **FAST)
    backend = CachedBackend(inner, tmp_path / "cache.sqlite")
    queries = prompts(100)
    answers = backend.generate(queries)
    assert answers == [expected(q) for q in queries]

    rows = cache_rows(tmp_path / "cache.sqlite")
    assert len(rows) == 100 and len({key for key, _, _ in rows}) == 100
    stored = {json.loads(req)["prompt"]: json.loads(ans) for _, req, ans in rows}
    assert stored == {q: expected(q) for q in queries}

    # Every fault the server injected was retried once, under its own reason.
    faults: dict[str, int] = {}
    for record in server.requests():
        if record["fault"]:
            faults[REASON[record["fault"]]] = faults.get(REASON[record["fault"]], 0) + 1
    assert set(faults) == set(REASON.values())  # this seed injects every kind
    reasons = dict(backend.stats.retry_reasons)
    assert reasons.pop("timeout") >= faults.pop("timeout")  # a slow machine may add timeouts
    assert reasons == faults

    # Running it again asks the server nothing.
    before = len(server.requests())
    again = CachedBackend(OpenAIBackend(server.url, "m", **FAST), tmp_path / "cache.sqlite")
    assert again.generate(queries) == answers
    assert again.stats.cache_hits == 100 and len(server.requests()) == before


KILLED_RUN = textwrap.dedent("""
    import sys, types
    # Load spae_lab.llm without spae_lab/__init__.py (which imports torch: seconds of startup).
    package = types.ModuleType("spae_lab")
    package.__path__ = [sys.argv[1] + "/spae_lab"]
    sys.modules["spae_lab"] = package
    from spae_lab.llm import CachedBackend, OpenAIBackend
    backend = CachedBackend(OpenAIBackend(sys.argv[2], "m", concurrency=2), sys.argv[3])
    backend.generate([f"Reverse the word: q{i:03d}xy" for i in range(100)])
    print("finished")
""")


def test_a_killed_run_resumes_asking_only_the_missing_prompts(start_server, tmp_path):
    server = start_server("--delay", "0.03")
    db = tmp_path / "cache.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(ROOT), server.url, str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _count_rows(db) < 30 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (out, err)

    done = {json.loads(req)["prompt"] for _, req, _ in cache_rows(db)}
    assert 30 <= len(done) < 100
    _wait_until_quiet(server)  # requests the killed process had sent are logged before `restart`
    restart = time.time()
    backend = CachedBackend(OpenAIBackend(server.url, "m", concurrency=4, **FAST), db)
    queries = prompts(100)
    assert backend.generate(queries) == [expected(q) for q in queries]
    asked = [r["prompt"] for r in server.requests(since=restart)]
    assert sorted(asked) == sorted(set(queries) - done)
    assert backend.stats.cache_hits == len(done)
    assert len(cache_rows(db)) == 100


def _wait_until_quiet(server: FakeServer, quiet_s: float = 0.3) -> None:
    """Wait until the server has logged no new request for quiet_s seconds."""
    count, since = len(server.requests()), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.05)
        if (now := len(server.requests())) != count:
            count, since = now, time.monotonic()


def _count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet


def test_an_interrupted_episode_keeps_the_queries_already_scored(server, tmp_path):
    class DiesAfterThree(OpenAIBackend):
        def score_shared_prefix_iter(self, prefix, queries, continuations):
            for n, item in enumerate(super().score_shared_prefix_iter(prefix, queries,
                                                                      continuations)):
                if n == 3:
                    raise KeyboardInterrupt  # as if the user pressed Ctrl-C
                yield item

    prefix, queries, conts = "cat -> tac\n", [f"w{i} ->" for i in range(8)], [" a", " b"]
    reference = OpenAIBackend(server.url, "m", **FAST).score_shared_prefix(prefix, queries, conts)
    db = tmp_path / "cache.sqlite"
    dying = CachedBackend(DiesAfterThree(server.url, "m", **FAST), db)
    with pytest.raises(KeyboardInterrupt):
        dying.score_shared_prefix(prefix, queries, conts)
    dying.close()  # waits for the requests it had in flight
    assert len(cache_rows(db)) == 3

    restart = time.time()
    backend = CachedBackend(OpenAIBackend(server.url, "m", **FAST), db)
    assert backend.score_shared_prefix(prefix, queries, conts) == reference
    scoring = [r for r in server.requests(since=restart) if r["prompt"] != PROBE_TEXT]
    assert len(scoring) == 5 * len(conts)  # only the 5 missing queries
    assert backend.stats.cache_hits == 3


# -- the key never leaks --------------------------------------------------------------------------

def test_the_api_key_is_sent_but_never_written_anywhere(start_server, tmp_path, monkeypatch,
                                                        caplog, capfd):
    key = f"sk-spae-{uuid.uuid4().hex}"
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("SPAE_TEST_LLM_KEY", key)
    server = start_server("--expect-key-sha256", hashlib.sha256(key.encode()).hexdigest(),
                          "--p-500", "0.3", "--p-429", "0.2", "--max-faults-per-prompt", "2",
                          log_dir=tmp_path / "server")
    handler = logging.FileHandler(tmp_path / "run.log")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        inner = OpenAIBackend(server.url, "m", api_key_env="SPAE_TEST_LLM_KEY", **FAST)
        backend = CachedBackend(inner, tmp_path / "cache.sqlite")
        assert backend.generate(prompts(10)) == [expected(p) for p in prompts(10)]
        backend.loglikelihood("The animal is a", [" cat"])
        assert backend.stats.retries > 0  # retries were logged
        texts = [repr(backend), repr(inner), json.dumps(backend.describe()), repr(vars(inner))]

        monkeypatch.setenv("SPAE_TEST_LLM_KEY", wrong)
        with pytest.raises(LLMError, match="Incorrect API key provided: \\*\\*\\*") as info:
            OpenAIBackend(server.url, "m", api_key_env="SPAE_TEST_LLM_KEY", **FAST).generate(["x"])
        texts += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
        logging.getLogger("spae_lab").error("the failure", exc_info=info.value)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
    backend.close()

    # The server got the key, in the Authorization header.
    auth = {r["auth_sha256"] for r in server.requests()}
    assert hashlib.sha256(f"Bearer {key}".encode()).hexdigest() in auth
    assert hashlib.sha256(f"Bearer {wrong}".encode()).hexdigest() in auth

    captured = capfd.readouterr()
    texts += [caplog.text, captured.out, captured.err]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"cache.sqlite", "run.log"} <= {p.name for p in files}
    assert "retrying" in (tmp_path / "run.log").read_text()
    for secret in (key, wrong):
        for text in texts:
            assert secret not in text
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def test_the_key_is_not_an_argument():
    with pytest.raises(TypeError):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", api_key="sk-literal")  # type: ignore[call-arg]


def test_credentials_in_a_url_are_refused_and_never_shown(monkeypatch, capfd):
    secret = f"pw{uuid.uuid4().hex}"
    for url in (f"http://user:{secret}@127.0.0.1:8000/v1", f"HTTPS://user:{secret}@host/v1",
                f"http://{secret}@127.0.0.1:8000/v1"):
        with pytest.raises(LLMError, match="credentials") as info:
            OpenAIBackend(url, "m")
        assert secret not in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(LLMError, match="credentials") as info:
            load_backend(f"openai:m@{url}")
        assert secret not in str(info.value)
    monkeypatch.setenv("OPENAI_BASE_URL", f"https://user:{secret}@host/v1")
    with pytest.raises(LLMError, match=r"\$OPENAI_BASE_URL .*credentials") as info:
        load_backend("openai:m")
    assert secret not in str(info.value)
    # A query may hold a token just as well: refused, and not quoted either.
    with pytest.raises(LLMError, match="query") as info:
        OpenAIBackend(f"http://127.0.0.1:8000/v1?token={secret}", "m")
    assert secret not in str(info.value)
    assert secret not in "".join(capfd.readouterr())


# -- the factory ----------------------------------------------------------------------------------

def test_load_backend_specs(monkeypatch):
    backend = load_backend("openai:org/model@v2@http://127.0.0.1:9/v1", endpoint="chat",
                           concurrency=2)
    assert isinstance(backend, OpenAIBackend)
    assert (backend.model, backend.base_url, backend.endpoint, backend.concurrency) == (
        "org/model@v2", "http://127.0.0.1:9/v1", "chat", 2)
    # Scheme in any case (stored in lower case); a trailing slash is dropped.
    assert load_backend("openai:m@HTTP://127.0.0.1:9/v1/").base_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:7/v1")
    assert load_backend("openai:gpt-x").base_url == "http://127.0.0.1:7/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert load_backend("openai:gpt-x").base_url == "https://api.openai.com/v1"

    class FakeHF:
        def __init__(self, model, **kwargs):
            self.model, self.kwargs = model, kwargs

    fake_module = type(sys)("spae_lab.llm.hf")
    fake_module.HFBackend = FakeHF
    monkeypatch.setitem(sys.modules, "spae_lab.llm.hf", fake_module)
    hf = load_backend("hf:smollm2", device="cpu")
    assert (hf.model, hf.kwargs) == ("smollm2", {"device": "cpu"})


@pytest.mark.parametrize("spec, message", [
    ("smollm2", "has no kind"),
    ("gguf:x", "unknown backend kind 'gguf'"),
    ("OPENAI:m@http://127.0.0.1:9/v1", "unknown backend kind 'OPENAI'"),
    ("openai:", "names no model"),
    ("hf:", "names no model"),
    ("hf:https://huggingface.co/x", "not a URL"),
    ("openai:m@ftp://127.0.0.1/v1", "scheme 'ftp'"),
    ("openai:m@file:///etc/passwd", "scheme 'file'"),
    ("openai:m@htp://127.0.0.1:9/v1", "scheme 'htp'"),
    ("openai:m@127.0.0.1:9/v1", "not a URL starting with http:// or https://"),
    ("openai:m@", "not a URL starting with http:// or https://"),
    ("openai:http://127.0.0.1:9/v1", "cannot tell the model from the URL"),
    ("openai:m@http://127.0.0.1:70000/v1", "bad port.*1 to 65535"),
    ("openai:m@http://127.0.0.1:0/v1", "port 0"),
    ("openai:m@http://127.0.0.1:x/v1", "bad port"),
    ("openai:m@http:///v1", "no host"),
    ("openai:m@http://[::1/v1", "does not parse"),
    ("openai:m@http://127.0.0.1:9/v1#frag", "query or fragment"),
    ("openai:m@http://127.0.0.1:9/v 1", "spaces or control"),
    ("openai:m\x00@http://127.0.0.1:9/v1", "control characters"),
])
def test_bad_specs_are_one_line_llm_errors(spec, message, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")  # a fallback must not be used
    with pytest.raises(LLMError, match=message) as info:
        load_backend(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"concurrency": 0}, "concurrency must be >= 1"),
    ({"concurrency": -3}, "concurrency must be >= 1"),
    ({"concurrency": 10**6}, "concurrency must be >= 1 and at most 256"),
    ({"concurrency": 2.5}, "concurrency must be >= 1"),
    ({"max_retries": -1}, "max_retries must be >= 0"),
    ({"timeout": 0}, "timeout must be a finite number of seconds > 0"),
    ({"timeout": float("nan")}, "timeout must be"),
    ({"connect_timeout": float("inf")}, "connect_timeout must be"),
    ({"backoff": -1}, "backoff must be"),
    ({"max_reply_bytes": 0}, "max_reply_bytes must be >= 1"),
    ({"endpoint": "embeddings"}, "endpoint must be one of"),
])
def test_bad_arguments_are_llm_errors(kwargs, message):
    with pytest.raises(LLMError, match=message):
        load_backend("openai:m@http://127.0.0.1:9/v1", **kwargs)


def test_an_empty_model_name_is_an_llm_error():
    with pytest.raises(LLMError, match="model name"):
        OpenAIBackend("http://127.0.0.1:9/v1", " ")


# -- hostile servers: a total deadline per request, a cap on the reply ----------------------------

@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_trickling_server_fails_within_the_deadline(start_server, part):
    # One byte every 0.2 s: no single read waits anywhere near the timeout (a per-read timeout
    # never fires), but the ~200-byte reply would take ~40 s.
    flags = ("--trickle", "0.2") + (("--trickle-headers",) if part == "headers" else ())
    server = start_server(*flags)
    backend = OpenAIBackend(server.url, "m", timeout=1.0, max_retries=0, **FAST)
    start = time.monotonic()
    with pytest.raises(LLMError, match="last error: timeout: no complete reply within 1 s"):
        backend.generate(["Reverse: hello"])
    assert time.monotonic() - start < 1.0 + 1.0
    assert backend.stats.retry_reasons == {}

    # Retried like any timeout: each attempt has its own deadline.
    backend = OpenAIBackend(server.url, "m", timeout=0.5, max_retries=2, **FAST)
    start = time.monotonic()
    with pytest.raises(LLMError, match="giving up after 3 attempts; last error: timeout"):
        backend.generate(["Reverse: hello"])
    assert time.monotonic() - start < 3 * 0.5 + 1.0
    assert backend.stats.retry_reasons == {"timeout": 2}
    backend.close()


def test_after_a_deadline_the_backend_still_works(start_server, tmp_path):
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"trickle": 0.2}))
    server = start_server("--control", str(control))
    backend = OpenAIBackend(server.url, "m", timeout=0.6, max_retries=0, concurrency=2, **FAST)
    with pytest.raises(LLMError, match="timeout"):
        backend.generate(prompts(2))
    control.write_text(json.dumps({"trickle": 0}))
    assert backend.generate(prompts(4)) == [expected(p) for p in prompts(4)]
    backend.close()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_a_huge_reply_is_refused_without_buffering_it(start_server, declared):
    flags = ("--huge-body", "400") + (() if declared else ("--huge-no-length",))
    server = start_server(*flags)
    backend = OpenAIBackend(server.url, "m", max_retries=3, **FAST)  # the default 16 MB cap
    tracemalloc.start()
    try:
        with pytest.raises(LLMError, match=r"larger than 16,777,216 bytes \(max_reply_bytes"):
            backend.generate(["Reverse: hello"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    backend.close()
    assert peak < 48 * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert len(server.requests()) == 1 and backend.stats.retries == 0  # final, not retried
    deadline = time.monotonic() + 10
    while not server.sent() and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the hang-up at its next write
    (sent,) = server.sent()
    assert not sent["complete"] and sent["bytes"] < 100 * 2**20


def test_a_reply_just_under_the_cap_is_read(start_server):
    server = start_server("--huge-body", "1", "--huge-no-length")
    assert OpenAIBackend(server.url, "m", max_reply_bytes=2**20 + 200, **FAST).generate(
        ["Reverse: hello"]) == [" olleh"]
    with pytest.raises(LLMError, match="larger than"):
        OpenAIBackend(server.url, "m", max_reply_bytes=2**20 - 1, **FAST).generate(["Reverse: x"])
