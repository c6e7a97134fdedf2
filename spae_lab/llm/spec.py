"""Backend specs and base URLs: parsed and checked before anything is loaded or sent.

    parse_backend_spec("openai:Qwen/Qwen2.5-0.5B-Instruct@http://127.0.0.1:8000/v1")
    # -> BackendSpec(kind="openai", model="Qwen/Qwen2.5-0.5B-Instruct",
    #                base_url="http://127.0.0.1:8000/v1")

Grammar (anything else is an `LLMError` with one readable line):

- `hf:<model>`: a short name (`smollm2`), a hub id or a folder; not a URL.
- `openai:<model>@<url>`: the URL starts at the first `@` followed by `<scheme>://`, so a model
  name may itself hold an `@` (`openai:org/model@v2@http://host/v1`).
- `openai:<model>`: no URL; the base URL is $OPENAI_BASE_URL, else https://api.openai.com/v1.
  An `@` in the model name then is an error (`openai:m@127.0.0.1:8000/v1` misses its `http://`:
  without this rule the prompts would silently go to the default server).

Base URLs (from a spec, $OPENAI_BASE_URL or `OpenAIBackend(base_url=...)`) are split with
`urllib.parse.urlsplit` and must be `http` or `https` (any case; stored in lower case), with a host,
a port (if any) from 1 to 65535, no query, no fragment, and no spaces or control characters.

Credentials in a URL (`https://user:password@host/v1`) are refused, not stripped: the base URL is
part of the backend's identity, which goes into config.json, cache keys, logs and error messages,
so the only safe place for a secret is the environment ($OPENAI_API_KEY, read per request by
`OpenAIBackend`). Error messages show such URLs with `***` in place of `user:password` and of any query.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from spae_lab.llm.base import LLMError

KINDS = ("hf", "openai")
SCHEMES = ("http", "https")
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
MAX_SPEC_CHARS = 4096  # a spec is a name and a URL; anything longer is not one
_SHOWN_CHARS = 120  # how much of a bad spec an error message quotes
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+-.")  # RFC 3986 scheme
USAGE = "use 'hf:<model>' or 'openai:<model>[@http(s)://host[:port]/v1]'"


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend spec: what `load_backend` builds, with nothing secret in it."""

    kind: str  # "hf" or "openai"
    model: str  # hf: short name, hub id or folder; openai: the name the server knows
    base_url: str | None = None  # openai: the checked API root (no credentials); hf: None

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model, "base_url": self.base_url}


def redact_url(text: str) -> str:
    """`text` with the `user:password@` of every `scheme://user:password@host` replaced by `***@`
    and every URL's query by `?***` (for error messages and logs; such URLs are never stored)."""
    out, pos = [], 0
    while (start := text.find("://", pos)) >= 0:
        start += 3
        end = start
        while end < len(text) and not text[end].isspace():
            end += 1
        url = text[start:end]  # authority, path, query, fragment of one URL
        cut = min((i for i in (url.find(c) for c in "/?#") if i >= 0), default=len(url))
        authority, rest = url[:cut], url[cut:]
        if "@" in authority:
            authority = "***@" + authority.rpartition("@")[2]
        if "?" in rest:
            path, _, query = rest.partition("?")
            rest = path + "?***" + ("#" + query.partition("#")[2] if "#" in query else "")
        out += [text[pos:start], authority, rest]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _shown(text: str) -> str:
    """A bad spec or URL as quoted in an error message: redacted (URLs by `redact_url`, and any
    other `something@` as `***@`: it may be a `user:password@` without its scheme), shortened,
    repr-escaped (so a newline in it cannot break the message's one line)."""
    text = redact_url(text)
    parts = text.split("@")
    for i in range(len(parts) - 1):  # the text before each '@', back to a '/' or a space
        head = parts[i]
        if not head.endswith("***"):
            cut = max(head.rfind("/"), head.rfind(" "))
            parts[i] = head[:cut + 1] + "***"
    text = "@".join(parts)
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "..."
    return repr(text)


def _has_scheme_prefix(text: str) -> bool:
    """True if `text` starts with `<scheme>://` (letters first, then letters, digits, + - .)."""
    head, sep, _ = text.partition("://")
    return bool(sep and head and head[0].isascii() and head[0].isalpha()
                and all(c in _SCHEME_CHARS for c in head))


def check_base_url(url: object, origin: str = "base URL") -> str:
    """The base URL, checked and normalised (scheme in lower case, no trailing '/').

    `origin` names where the URL came from in error messages ("$OPENAI_BASE_URL", ...)."""
    if not isinstance(url, str):
        raise LLMError(f"the {origin} must be a string, got {type(url).__name__}")
    if not url:
        raise LLMError(f"the {origin} is empty; give one like http://127.0.0.1:8000/v1")
    if len(url) > MAX_SPEC_CHARS:
        raise LLMError(f"the {origin} is {len(url)} characters long; that is not a URL")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise LLMError(f"the {origin} {_shown(url)} contains spaces or control characters")
    if not _has_scheme_prefix(url):
        raise LLMError(f"the {origin} {_shown(url)} is not a URL: it should start with "
                       "http:// or https://")
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise LLMError(f"the {origin} {_shown(url)} does not parse as a URL: {err}") from None
    try:
        port = parts.port  # a ValueError for a port out of range or not a number
    except ValueError as err:
        raise LLMError(f"the {origin} {_shown(url)} has a bad port ({err}); a port is a number "
                       "from 1 to 65535") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise LLMError(f"the {origin} {_shown(url)} uses the scheme {parts.scheme!r}; only "
                       "http:// and https:// are supported")
    if "@" in parts.netloc:
        raise LLMError(f"the {origin} {_shown(url)} holds credentials (user:password@); they "
                       "are not accepted in a URL, which is written to configs, caches and logs: "
                       "give the URL without them and the key in $OPENAI_API_KEY")
    if not parts.hostname:
        raise LLMError(f"the {origin} {_shown(url)} has no host")
    if port == 0:
        raise LLMError(f"the {origin} {_shown(url)} has the port 0; a port is a number from 1 "
                       "to 65535")
    if "?" in url or "#" in url:  # even an empty query or fragment: not part of an API root
        raise LLMError(f"the {origin} {_shown(url)} has a query or fragment ('?' or '#'); a base "
                       "URL is the API root only, like http://127.0.0.1:8000/v1")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _check_model(model: str, kind: str, spec: str) -> str:
    model = model.strip()
    if not model:
        raise LLMError(f"backend spec {_shown(spec)} names no model; {USAGE}")
    if "://" in model:
        if kind == "openai":
            raise LLMError(f"backend spec {_shown(spec)}: cannot tell the model from the URL; "
                           f"the URL must follow the model after an '@' and start with http:// "
                           f"or https:// ({USAGE})")
        raise LLMError(f"backend spec {_shown(spec)}: hf: takes a model name, hub id or folder, "
                       "not a URL")
    return model


def parse_backend_spec(spec: object, environ: Mapping[str, str] | None = None) -> BackendSpec:
    """Parse `hf:<model>` / `openai:<model>[@<url>]` (see the module docstring).

    Only parses and checks: loads nothing and opens no connection. `environ` (default
    `os.environ`) supplies $OPENAI_BASE_URL for openai specs without a URL."""
    if not isinstance(spec, str):
        raise LLMError(f"a backend spec is a string, got {type(spec).__name__}")
    if len(spec) > MAX_SPEC_CHARS:
        raise LLMError(f"backend spec of {len(spec)} characters is too long; {USAGE}")
    spec = spec.strip()
    if not spec.isprintable():
        raise LLMError(f"backend spec {_shown(spec)} contains control characters")
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise LLMError(f"backend spec {_shown(spec)} has no kind; {USAGE}")
    if kind not in KINDS:
        raise LLMError(f"unknown backend kind {_shown(kind)} in {_shown(spec)}; {USAGE}")
    if kind == "hf":
        return BackendSpec("hf", _check_model(rest, kind, spec))

    # openai: the URL starts at the first '@' that is followed by '<scheme>://'.
    at = next((i for i, c in enumerate(rest) if c == "@" and _has_scheme_prefix(rest[i + 1:])),
              None)
    if at is not None:
        model = _check_model(rest[:at], kind, spec)
        return BackendSpec("openai", model, check_base_url(rest[at + 1:], "URL in the backend spec"))
    model = _check_model(rest, kind, spec)
    if "@" in model:
        raise LLMError(f"backend spec {_shown(spec)}: the text after '@' is not a URL starting "
                       f"with http:// or https://; {USAGE}")
    environ = os.environ if environ is None else environ
    env_url = environ.get("OPENAI_BASE_URL")
    if env_url:
        return BackendSpec("openai", model, check_base_url(env_url, "$OPENAI_BASE_URL"))
    return BackendSpec("openai", model, DEFAULT_OPENAI_BASE_URL)
