"""Frozen LLMs that read (and write) SPAE's words: one interface, local and HTTP backends, a cache.

    from spae_lab.llm import load_backend, CachedBackend
    llm = CachedBackend(load_backend("openai:my-model@http://127.0.0.1:8000/v1"), "runs/llm.sqlite")
    llm.generate(["Q: ...\\nA:"])

Backend specs for `load_backend(spec, **kwargs)` (kwargs go to the backend's constructor):

- `hf:<model>`: a local Hugging Face causal LM (`spae_lab.llm.hf.HFBackend(model=<model>)`);
  `<model>` is a short name such as `smollm2`, a hub id or a folder.
- `openai:<model>@<base_url>`: an OpenAI-compatible server (`OpenAIBackend`), e.g.
  `openai:Qwen/Qwen2.5-0.5B-Instruct@http://127.0.0.1:8000/v1`. Without `@<base_url>`, the URL is
  $OPENAI_BASE_URL, else https://api.openai.com/v1. The key is read from $OPENAI_API_KEY (or the
  variable named by `api_key_env=`), never written in the spec.
"""

from __future__ import annotations

import os
import re

from spae_lab.llm.base import CallStats, GenerationParams, LLMBackend, LLMError
from spae_lab.llm.cache import CachedBackend
from spae_lab.llm.hf import HFBackend  # cheap: transformers is imported on first load
from spae_lab.llm.openai_compat import OpenAIBackend

__all__ = ["CachedBackend", "CallStats", "GenerationParams", "HFBackend", "LLMBackend", "LLMError",
           "OpenAIBackend", "load_backend"]

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


def load_backend(spec: str, **kwargs) -> LLMBackend:
    """A backend from a spec string (see the module docstring); kwargs pass through."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"backend spec {spec!r} should look like 'hf:<model>' or "
                         "'openai:<model>@<base_url>'")
    if kind == "hf":
        from spae_lab.llm.hf import HFBackend  # lazy: pulls in torch and transformers

        return HFBackend(model=rest, **kwargs)
    if kind == "openai":
        # The model name may itself contain '@'; the URL starts at the '@' followed by a scheme.
        match = re.fullmatch(r"(.+?)@(https?://.+)", rest)
        model, base_url = (match.groups() if match
                           else (rest, os.environ.get("OPENAI_BASE_URL", DEFAULT_OPENAI_BASE_URL)))
        return OpenAIBackend(base_url, model, **kwargs)
    raise ValueError(f"unknown backend kind {kind!r} in {spec!r}; use 'hf:' or 'openai:'")
