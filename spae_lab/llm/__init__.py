"""Frozen LLMs that read (and write) SPAE's words: one interface, local and HTTP backends, a cache.

    from spae_lab.llm import load_backend, CachedBackend
    llm = CachedBackend(load_backend("openai:my-model@http://127.0.0.1:8000/v1"), "runs/llm.sqlite")
    llm.generate(["Q: ...\\nA:"])

Backend specs for `load_backend(spec, **kwargs)` (kwargs go to the backend's constructor), parsed
by `spae_lab.llm.spec.parse_backend_spec` (see there for the grammar and URL rules):

- `hf:<model>`: a local Hugging Face causal LM (`spae_lab.llm.hf.HFBackend(model=<model>)`);
  `<model>` is a short name such as `smollm2`, a hub id or a folder.
- `openai:<model>@<base_url>`: an OpenAI-compatible server (`OpenAIBackend`), e.g.
  `openai:Qwen/Qwen2.5-0.5B-Instruct@http://127.0.0.1:8000/v1`. Without `@<base_url>`, the URL is
  $OPENAI_BASE_URL, else https://api.openai.com/v1. The key is read from $OPENAI_API_KEY (or the
  variable named by `api_key_env=`), never written in the spec: a URL with `user:password@` is
  refused, because the URL is recorded in configs and cache keys.

A spec that does not parse, a URL that is not http(s) or has a bad port, and bad constructor
arguments (`concurrency=0`, ...) raise `LLMError` with one readable line; nothing is loaded or sent.
"""

from __future__ import annotations

import importlib

from spae_lab.llm.base import CallStats, GenerationParams, LLMBackend, LLMError
from spae_lab.llm.cache import CachedBackend
from spae_lab.llm.spec import DEFAULT_OPENAI_BASE_URL, BackendSpec, parse_backend_spec

__all__ = ["DEFAULT_OPENAI_BASE_URL", "BackendSpec", "CachedBackend", "CallStats",
           "GenerationParams", "HFBackend", "LLMBackend", "LLMError", "OpenAIBackend",
           "load_backend", "load_lazily", "parse_backend_spec"]

# The backends pull in torch and transformers, or requests: imported on first use, so that checking
# a spec (`parse_backend_spec`, which the command line can run first) loads neither.
_BACKENDS = {"HFBackend": "spae_lab.llm.hf", "OpenAIBackend": "spae_lab.llm.openai_compat"}


def __getattr__(name: str):
    if name in _BACKENDS:
        return getattr(importlib.import_module(_BACKENDS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_lazily(backend: str | LLMBackend) -> LLMBackend:
    """A backend object as is; a spec loaded, a local model's weights only on first use (behind
    a `CachedBackend`, a rerun answered from its file never loads them)."""
    if not isinstance(backend, str):
        return backend
    return load_backend(backend, **({"lazy": True} if parse_backend_spec(backend).kind == "hf" else {}))


def load_backend(spec: str, **kwargs) -> LLMBackend:
    """A backend from a spec string (see the module docstring); kwargs pass through. The spec is
    checked before anything is imported, loaded or sent."""
    parsed = parse_backend_spec(spec)
    if parsed.kind == "hf":
        from spae_lab.llm.hf import HFBackend

        return HFBackend(model=parsed.model, **kwargs)
    from spae_lab.llm.openai_compat import OpenAIBackend

    return OpenAIBackend(parsed.base_url, parsed.model, **kwargs)
