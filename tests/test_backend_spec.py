"""The backend-spec parser (`spae_lab.llm.spec`): what parses, what is refused, and a fuzz test.

Parsing opens no connection: the fuzz test runs with the socket layer switched off, and every
input either parses into a checked description or is an `LLMError` of one line that never quotes
a password.
"""

from __future__ import annotations

import socket
import string
from contextlib import ExitStack
from unittest import mock
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spae_lab.llm import LLMError
from spae_lab.llm.spec import (
    DEFAULT_OPENAI_BASE_URL,
    BackendSpec,
    check_base_url,
    parse_backend_spec,
    redact_url,
)

SECRET = "pw-S3CRET-42"  # put where a password goes; must never come out


@pytest.mark.parametrize("spec, expected", [
    ("hf:smollm2", BackendSpec("hf", "smollm2")),
    ("hf:/models/My Model", BackendSpec("hf", "/models/My Model")),
    ("  hf:smollm2\n", BackendSpec("hf", "smollm2")),
    ("openai:m@http://127.0.0.1:8000/v1", BackendSpec("openai", "m", "http://127.0.0.1:8000/v1")),
    ("openai:m@HTTPS://Host.example/v1/", BackendSpec("openai", "m", "https://Host.example/v1")),
    ("openai:org/model@v2@http://[::1]:9/v1",
     BackendSpec("openai", "org/model@v2", "http://[::1]:9/v1")),
    ("openai:m@http://h:65535", BackendSpec("openai", "m", "http://h:65535")),
    ("openai:gpt-x", BackendSpec("openai", "gpt-x", DEFAULT_OPENAI_BASE_URL)),
])
def test_good_specs(spec, expected):
    assert parse_backend_spec(spec, environ={}) == expected


def test_the_environment_url_is_checked_like_any_other():
    env = {"OPENAI_BASE_URL": "HTTP://127.0.0.1:7/v1/"}
    assert parse_backend_spec("openai:m", environ=env).base_url == "http://127.0.0.1:7/v1"
    assert parse_backend_spec("openai:m@http://h/v1", environ=env).base_url == "http://h/v1"
    for bad, message in [("ftp://h/v1", "scheme 'ftp'"), ("127.0.0.1:8000/v1", "not a URL"),
                         (f"http://u:{SECRET}@h/v1", "credentials")]:
        with pytest.raises(LLMError, match=rf"\$OPENAI_BASE_URL .*{message}") as info:
            parse_backend_spec("openai:m", environ={"OPENAI_BASE_URL": bad})
        assert SECRET not in str(info.value)


@pytest.mark.parametrize("spec", [
    f"openai:m@HTTPS://user:{SECRET}@host/v1",
    f"openai:m@http://{SECRET}@host/v1",
    f"openai:user:{SECRET}@host/v1",  # the scheme forgotten
    f"user:{SECRET}@host",  # kind and scheme forgotten
    f"openai:m@htp://user:{SECRET}@host/v1",
    f"openai:m@http://host/v1?api_key={SECRET}",
    f"openai:m@http://user:{SECRET}@host:99999/v1",
])
def test_errors_never_quote_a_password(spec):
    with pytest.raises(LLMError) as info:
        parse_backend_spec(spec, environ={})
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_redact_url():
    assert redact_url(f"see http://u:{SECRET}@h:1/v1?k={SECRET}#x now") == (
        "see http://***@h:1/v1?***#x now")
    assert redact_url("http://h/v1") == "http://h/v1" and redact_url("no url") == "no url"


# -- fuzz -----------------------------------------------------------------------------------------

def _no_network() -> ExitStack:
    """Every way to open a connection raises (parsing must not try)."""
    stack = ExitStack()
    refuse = mock.Mock(side_effect=AssertionError("the spec parser touched the network"))
    for name in ("getaddrinfo", "create_connection", "gethostbyname"):
        stack.enter_context(mock.patch.object(socket, name, refuse))
    stack.enter_context(mock.patch.object(socket.socket, "connect", refuse))
    return stack


_scheme = st.sampled_from(["http", "https", "HTTP", "hTtPs", "ftp", "file", "htp", "ws", "",
                           "http:", "1http", "h+t.t-p"])
_sep = st.sampled_from(["://", ":/", "//", ":", ":///", "://:", ""])
_userinfo = st.sampled_from(["", f"user:{SECRET}@", f"{SECRET}@", f":{SECRET}@", f"u:{SECRET}@@"])
_good_host = st.sampled_from(["127.0.0.1", "localhost", "Host.Example", "[::1]"])
_host = st.one_of(_good_host, st.sampled_from(["[::1", "", "h h", "ex%41mple", "\u00e9xample",
                                               "a:b"]))
_good_port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
_port = st.one_of(_good_port, st.integers(-5, 100_000).map(lambda p: f":{p}"),
                  st.sampled_from([":", ":x", ":8O", ": 80"]))
_good_path = st.sampled_from(["", "/", "/v1", "/v1/", "/v1/@x", "/a/b/v1//"])
_path = st.one_of(_good_path, st.sampled_from(["/v1?k=1", "/v1#f", "?", "#", "/ v1"]))
_good_url = st.builds(lambda *p: "".join(p), st.sampled_from(["http", "https", "HTTP", "hTtPs"]),
                      st.just("://"), _good_host, _good_port, _good_path)
_url = st.one_of(_good_url, st.builds(lambda *p: "".join(p), _scheme, _sep, _userinfo, _host,
                                      _port, _path))
_model = st.one_of(st.sampled_from(["m", "org/model@v2", "", " ", "a b", "m@", "@", "http://x"]),
                   st.text(max_size=12))
_structured = st.builds(lambda kind, model, at, url: f"{kind}{model}{at}{url}",
                        st.sampled_from(["openai:", "openai:", "hf:", "OPENAI:", "gguf:", "", ":"]),
                        _model, st.sampled_from(["@", "@", "@@", "", " @"]), _url)
_punctuation = st.text(alphabet=string.ascii_letters[:6] + "HTPS:/@?#[]%.0123456789 \n\x00",
                       max_size=60)
SPECS = st.one_of(st.text(max_size=200), _structured, _punctuation.map("openai:".__add__),
                  _punctuation.map("hf:".__add__))
ENVIRONS = st.one_of(st.just({}), _url.map(lambda u: {"OPENAI_BASE_URL": u}),
                     st.text(max_size=40).map(lambda u: {"OPENAI_BASE_URL": u}))


def _as_password(text: str) -> bool:
    """True if SECRET stands where a password goes (right before an '@'); hypothesis also puts
    the module's string constants into random text, where SECRET is just text."""
    return f"{SECRET}@" in text


def _check_description(parsed: BackendSpec) -> None:
    assert parsed.kind in ("hf", "openai")
    assert parsed.model and parsed.model == parsed.model.strip() and parsed.model.isprintable()
    assert "://" not in parsed.model
    if parsed.kind == "hf":
        assert parsed.base_url is None
        return
    assert check_base_url(parsed.base_url) == parsed.base_url  # checked and normalised
    parts = urlsplit(parsed.base_url)
    assert parts.scheme in ("http", "https") and parts.hostname
    assert "@" not in parts.netloc and not parts.query and not parts.fragment
    assert parts.port is None or 1 <= parts.port <= 65535


@settings(max_examples=200, deadline=None)
@given(spec=SPECS, environ=ENVIRONS)
@example(spec=f"openai:m@HTTPS://user:{SECRET}@host/v1", environ={})
@example(spec="openai:m@http://127.0.0.1:65536/v1", environ={})
@example(spec="openai:m", environ={"OPENAI_BASE_URL": f"file://u:{SECRET}@/etc"})
def test_fuzz_the_spec_parser(spec, environ):
    with _no_network():
        try:
            parsed = parse_backend_spec(spec, environ=environ)
        except LLMError as err:  # any other exception fails the test
            message = str(err)
            assert message and "\n" not in message
            if _as_password(spec) or _as_password(environ.get("OPENAI_BASE_URL", "")):
                assert SECRET not in message
            return
    _check_description(parsed)
    if _as_password(spec) and parsed.kind == "openai":  # (an hf: folder name may hold an '@')
        assert SECRET not in repr(parsed)


@settings(max_examples=200, deadline=None)
@given(url=st.one_of(_url, st.text(max_size=80)))
def test_fuzz_check_base_url(url):
    try:
        checked = check_base_url(url)
    except LLMError as err:
        assert "\n" not in str(err)
        assert not _as_password(url) or SECRET not in str(err)
        return
    _check_description(BackendSpec("openai", "m", checked))


# -- through the command line ---------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--backend", f"openai:m@HTTPS://user:{SECRET}@host/v1"], "credentials"),
    (["--backend", "openai:m@ftp://127.0.0.1/v1"], "scheme 'ftp'"),
    (["--backend", "openai:m@file:///etc/passwd"], "scheme 'file'"),
    (["--backend", "openai:m@htp://127.0.0.1/v1"], "scheme 'htp'"),
    (["--backend", "openai:m@http://127.0.0.1:99999/v1"], "bad port"),
    (["--backend", "openai:m@http://127.0.0.1:9/v1", "--llm-concurrency", "0"],
     "argument --llm-concurrency: must be in 1..256, got 0"),
])
def test_the_cli_says_one_line_and_writes_nothing(argv, message, tmp_path, capsys, monkeypatch):
    from spae_lab.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent")
    with _no_network():
        status = main(["fewshot", str(tmp_path / "no_run"), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "error:" in err and message in err
    assert SECRET not in err
    assert list(tmp_path.iterdir()) == []  # no output folder, no cache, no config
