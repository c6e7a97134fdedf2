"""A small, deterministic OpenAI-compatible server for the backend tests (stdlib only).

    python tests/fake_openai_server.py --log requests.jsonl [--p-429 0.1 ...]

It binds 127.0.0.1 on a free port and prints `PORT <n>` as its first line of stdout.

Answers are a function of the prompt, so tests can check them: the completion of a prompt is
" <last word of the prompt, reversed>\\ntail <same>", cut by max_tokens (tokens are runs of
whitespace followed by non-whitespace, see `tokenize`) and by the stop sequences. The chat endpoint
answers the last user message the same way. With echo=True and logprobs, the prompt comes back with
token_logprobs from `fake_logprob(text before the token, token)` and character text_offsets.

Every request is appended to the --log file as one JSON line (path, body, the fault injected, the
attempt number for that prompt, and the sha256 of the Authorization header: never the header
itself). Faults: each attempt at a prompt draws one fault (429 with Retry-After, 500, 503, sleeping
past the client's timeout, dropping the connection mid-reply, malformed JSON) with the given rates,
from an RNG seeded by (seed, prompt, attempt), so the faults each prompt meets do not depend on the
order requests arrive in; --max-faults-per-prompt bounds them, so a client with enough retries
always succeeds. A JSON --control file, re-read per request if it exists, overrides the flags (its
keys are the flag names with underscores: {"p_500": 0.5}).

Hostile replies (to every good request while set): --trickle S sends the reply one byte every S
seconds (the body after the headers, or everything with --trickle-headers), so no single read
waits long but the reply takes minutes; --huge-body MB sends a reply of MB megabytes (spaces, then
the real JSON: valid if read whole), announced in Content-Length unless --huge-no-length. Both log
a second line when the reply ends or the client hangs up: {"event": "sent", "bytes": n,
"complete": bool}. --reply-file PATH answers every good request with that file's bytes, verbatim
(replies of the wrong shape, NaN logprobs, bytes that are not UTF-8).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULTS = ("429", "500", "503", "timeout", "drop", "bad_json")


def tokenize(text: str) -> list[str]:
    """Whitespace + word pieces; they concatenate back to the text."""
    return re.findall(r"\s*\S+|\s+", text)


def fake_logprob(context: str, token: str) -> float:
    """A deterministic 'log-probability' of token after context, in [-10.97, -1]."""
    return -1.0 - (zlib.crc32((context + "\x00" + token).encode()) % 998) / 100


def completion_for(prompt: str) -> str:
    """The full (uncut) completion the server gives a prompt."""
    words = prompt.split()
    word = words[-1][::-1] if words else "empty"
    return f" {word}\ntail {word}"


def generate(prompt: str, max_tokens: int | None, stop, ignore_stop: bool) -> tuple[str, str]:
    """(text, finish_reason) as a server would return it."""
    text, reason = completion_for(prompt), "stop"
    if max_tokens is not None:
        tokens = tokenize(text)
        if len(tokens) > max_tokens:
            text, reason = "".join(tokens[:max_tokens]), "length"
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if not ignore_stop:
        cuts = [i for s in stops if s and (i := text.find(s)) >= 0]
        if cuts:
            text, reason = text[:min(cuts)], "stop"
    return text, reason


def echo_logprobs(text: str) -> dict:
    """The legacy completions `logprobs` object for an echoed text."""
    tokens = tokenize(text)
    offsets, logprobs, pos = [], [], 0
    for i, tok in enumerate(tokens):
        offsets.append(pos)
        logprobs.append(None if i == 0 else fake_logprob(text[:pos], tok))
        pos += len(tok)
    return {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets,
            "top_logprobs": [None] + [{t: lp} for t, lp in zip(tokens[1:], logprobs[1:], strict=True)]}


class FakeState:
    """Configuration, the per-prompt attempt counters and the request log."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.log_file = open(args.log, "a", encoding="utf-8")  # noqa: SIM115 (lives with server)
        self.counter = 0

    def option(self, name: str):
        """A flag's value, overridden by the control file if it has the key."""
        control = self.args.control
        if control and Path(control).exists():
            try:
                values = json.loads(Path(control).read_text())
                if name in values:
                    return values[name]
            except ValueError:
                pass  # a half-written control file: use the flags this time
        return getattr(self.args, name)

    def next_attempt(self, request_key: str) -> int:
        with self.lock:
            self.attempts[request_key] = self.attempts.get(request_key, 0) + 1
            self.counter += 1
            return self.attempts[request_key]

    def draw_fault(self, request_key: str, attempt: int) -> str | None:
        """The fault for this attempt at this request (None: answer normally)."""
        if attempt > self.option("max_faults_per_prompt"):
            return None
        rng = random.Random(f"{self.option('seed')}|{request_key}|{attempt}")
        r, edge = rng.random(), 0.0
        for fault in FAULTS:
            edge += float(self.option(f"p_{fault}") or 0.0)
            if r < edge:
                return fault
        return None

    def log(self, record: dict) -> None:
        with self.lock:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()


class Handler(BaseHTTPRequestHandler):
    """Answers POST /v1/completions and /v1/chat/completions; GET /v1/models."""

    state: FakeState  # set on the class by main()

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # quiet: the JSON log is the record

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": self.state.args.model or "fake",
                                                          "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            return self._json(400, {"error": {"message": "request body is not JSON"}})
        chat = self.path.rstrip("/").endswith("/chat/completions")
        if not chat and not self.path.rstrip("/").endswith("/completions"):
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        prompt = self._prompt(body, chat)
        request_key = json.dumps([self.path, body], sort_keys=True)
        attempt = self.state.next_attempt(request_key)
        fault = self.state.draw_fault(request_key, attempt)
        auth = self.headers.get("Authorization")
        self.state.log({"t": time.time(), "path": self.path, "body": body, "prompt": prompt,
                        "attempt": attempt, "fault": fault,
                        "auth_sha256": hashlib.sha256(auth.encode()).hexdigest() if auth else None,
                        "header_names": sorted(self.headers.keys())})
        if error := self._refusal(body, auth, chat):
            return self._json(*error)
        if fault:
            return self._inject(fault)
        delay = float(self.state.option("delay") or 0.0)
        if delay:
            time.sleep(delay)
        if reply_file := self.state.option("reply_file"):  # a hostile body, sent verbatim
            return self._raw(200, Path(reply_file).read_bytes())
        reply = self._chat_reply(body, prompt) if chat else self._completion_reply(body)
        if huge := float(self.state.option("huge_body") or 0.0):
            return self._huge(json.dumps(reply).encode(), int(huge * 2**20),
                              declare=not self.state.option("huge_no_length"))
        if trickle := float(self.state.option("trickle") or 0.0):
            return self._trickle(json.dumps(reply).encode(), trickle,
                                 headers_too=bool(self.state.option("trickle_headers")))
        self._json(200, reply)

    # -- pieces -----------------------------------------------------------------------------------

    @staticmethod
    def _prompt(body: dict, chat: bool):
        if chat:
            users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
            return users[-1] if users else ""
        return body.get("prompt", "")

    def _refusal(self, body: dict, auth: str | None, chat: bool) -> tuple[int, dict] | None:
        """A 4xx the server gives instead of an answer, like a real one would."""
        expected = self.state.args.expect_key_sha256
        token = auth[len("Bearer "):] if auth and auth.startswith("Bearer ") else ""
        if expected and hashlib.sha256(token.encode()).hexdigest() != expected:
            # Real servers echo (part of) the key; this one echoes all of it, to test redaction.
            return 401, {"error": {"message": f"Incorrect API key provided: {token}.",
                                   "type": "invalid_request_error", "code": "invalid_api_key"}}
        model = self.state.args.model
        if model and body.get("model") != model:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        if not chat and body.get("echo") and self.state.args.no_echo:
            return 400, {"error": {"message": "echo is not supported by this server"}}
        return None

    def _inject(self, fault: str) -> None:
        if fault in ("429", "500", "503"):
            headers = {"Retry-After": str(self.state.option("retry_after"))} if fault == "429" else {}
            return self._json(int(fault), {"error": {"message": f"injected {fault}"}}, headers)
        if fault == "timeout":
            time.sleep(float(self.state.option("sleep")))
            return self._json(200, {"error": {"message": "too late"}})
        payload = json.dumps({"id": "cmpl-broken", "choices": [{"index": 0, "text": "partial"}]})
        if fault == "bad_json":
            return self._raw(200, payload[: len(payload) // 2].encode())
        # drop: promise the whole body, send half of it, and close the connection
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2].encode())
        self.wfile.flush()
        self.close_connection = True

    def _trickle(self, data: bytes, seconds: float, headers_too: bool) -> None:
        """A good reply, one byte every `seconds` (the body only, or all of it)."""
        head = (f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        slow = head + data if headers_too else data
        self.close_connection = True
        sent = 0
        try:
            if not headers_too:
                self.wfile.write(head)
            for i in range(len(slow)):
                self.wfile.write(slow[i:i + 1])
                sent += 1
                time.sleep(seconds)
        except OSError:  # the client hung up
            pass
        self.state.log({"event": "sent", "t": time.time(), "bytes": sent,
                        "complete": sent == len(slow)})

    def _huge(self, data: bytes, size: int, declare: bool) -> None:
        """A reply of `size` bytes: spaces, then `data` (JSON allows leading whitespace)."""
        padding = max(0, size - len(data))
        self.close_connection = True
        sent = 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if declare:
                self.send_header("Content-Length", str(padding + len(data)))
            self.end_headers()
            block = b" " * 2**20
            while sent < padding:
                chunk = block[: padding - sent]
                self.wfile.write(chunk)
                sent += len(chunk)
            self.wfile.write(data)
            sent += len(data)
        except OSError:  # the client hung up
            pass
        self.state.log({"event": "sent", "t": time.time(), "bytes": sent,
                        "complete": sent == padding + len(data)})

    def _completion_reply(self, body: dict) -> dict:
        prompts = body.get("prompt", "")
        prompts = prompts if isinstance(prompts, list) else [prompts]
        choices = []
        for index, prompt in enumerate(prompts):
            max_tokens = body.get("max_tokens", 16)
            text, reason = generate(prompt, max_tokens, body.get("stop"), self.state.args.ignore_stop)
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
            if body.get("echo"):
                choice["text"] = prompt + text
                if body.get("logprobs") is not None:
                    choice["logprobs"] = echo_logprobs(prompt + text)
            choices.append(choice)
        return {"id": f"cmpl-{self.state.counter}", "object": "text_completion",
                "created": int(time.time()), "model": body.get("model"), "choices": choices}

    def _chat_reply(self, body: dict, prompt: str) -> dict:
        text, reason = generate(prompt, body.get("max_tokens"), body.get("stop"),
                                self.state.args.ignore_stop)
        return {"id": f"chatcmpl-{self.state.counter}", "object": "chat.completion",
                "created": int(time.time()), "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": reason}]}

    def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        self._raw(status, json.dumps(obj).encode(), headers)

    def _raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test): nothing to answer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of parallel clients must not be refused


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", required=True, help="append one JSON line per request here")
    p.add_argument("--port", type=int, default=0, help="0 = a free port (printed as 'PORT n')")
    p.add_argument("--model", default=None, help="answer 404 for any other model name")
    p.add_argument("--expect-key-sha256", default=None,
                   help="answer 401 unless sha256(bearer token) is this")
    p.add_argument("--no-echo", action="store_true", help="refuse echo=True (400)")
    p.add_argument("--ignore-stop", action="store_true", help="do not apply stop sequences")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each good reply")
    p.add_argument("--seed", type=int, default=0)
    for fault in FAULTS:
        p.add_argument(f"--p-{fault.replace('_', '-')}", type=float, default=0.0,
                       dest=f"p_{fault}", help=f"rate of the {fault} fault")
    p.add_argument("--max-faults-per-prompt", type=int, default=10**9)
    p.add_argument("--retry-after", default="0", help="Retry-After value sent with 429")
    p.add_argument("--sleep", type=float, default=2.0, help="seconds the timeout fault sleeps")
    p.add_argument("--trickle", type=float, default=0.0,
                   help="send good replies one byte every this many seconds")
    p.add_argument("--trickle-headers", action="store_true",
                   help="with --trickle: trickle the status line and headers too")
    p.add_argument("--huge-body", type=float, default=0.0,
                   help="send good replies this many megabytes long")
    p.add_argument("--huge-no-length", action="store_true",
                   help="with --huge-body: no Content-Length (the body ends when the server closes)")
    p.add_argument("--reply-file", default=None,
                   help="answer every good request with this file's bytes (status 200), verbatim")
    p.add_argument("--control", default=None, help="JSON file overriding these flags")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    Handler.state = FakeState(args)
    server = Server(("127.0.0.1", args.port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass



if __name__ == "__main__":
    main()
