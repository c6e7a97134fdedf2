"""Finding and safely loading a Hugging Face causal LM for `spae_lab.llm.hf.HFBackend`.

Weights are read from safetensors only: a folder (or hub id) that has only pickle weights
(`pytorch_model.bin`, `.pt`, ...) is an `LLMError`, because unpickling runs whatever code the file
names. No pickle is opened, not even to look inside.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spae_lab.llm.base import LLMError

SMOLLM2 = "smollm2"
# Weight files in pickle formats: unpickling runs code the file chooses, so they are never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def resolve_model_path(model: str) -> str:
    """The folder or hub id to load. "smollm2" is the offline SmolLM2-135M-Instruct (a transformers
    folder converted once from the packaged GGUF); an existing folder is used as is; a name that is
    clearly a path (absolute, ./, ~) but no folder is an error; anything else is a hub id."""
    if model == SMOLLM2:
        from spae_lab.assets import AssetError, smollm2_model_dir

        try:
            return str(smollm2_model_dir())
        except (AssetError, OSError) as err:
            raise LLMError(f"cannot prepare the offline SmolLM2 model: {err}") from err
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        raise LLMError(f"no model folder at {model!r}")
    return model


def refuse_pickle_only(folder: Path) -> None:
    """LLMError if the model folder holds pickle weights (pytorch_model.bin, ...) and no
    safetensors: those are refused, not loaded (see `load_model`)."""
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError as err:
        raise LLMError(f"cannot read the model folder {str(folder)!r}: {err}") from err
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = sorted(n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise LLMError(f"the model folder {str(folder)!r} holds only pickle weights "
                       f"({', '.join(pickles[:3])}) and no .safetensors; pickle files can run "
                       "code when loaded, so they are refused: convert the model to safetensors "
                       "(save_pretrained writes them) where you trust the file")


def check_model_path(model: str) -> str:
    """The folder or hub id `load_model` would read, checked without loading anything: a missing
    folder or a pickle-only one is an LLMError here."""
    path = resolve_model_path(model)
    if Path(path).is_dir():
        refuse_pickle_only(Path(path))
    return path


def load_model(model: str, device: str | torch.device, dtype: torch.dtype):
    """(tokenizer, model) of a causal LM, in eval mode on `device`. Respects HF_HUB_OFFLINE: an id
    that is not cached locally then fails here, with an LLMError that says so.

    Weights are read from safetensors only (`use_safetensors=True`, for folders and hub ids
    alike): a model that only has pickle weights is an LLMError, and no pickle is ever opened."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_path(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        # missing files, unknown architecture, offline, no or damaged safetensors
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LLMError(f"cannot load the causal LM {model!r} ({path}): {first_line}") from err
    return tokenizer, lm.to(device=device, dtype=dtype).eval()
