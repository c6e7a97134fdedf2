"""spae_lab: an open implementation of SPAE (Semantic Pyramid AutoEncoder) and a workbench.

The calls most people need::

    from spae_lab import load_tokenizer
    tokenizer = load_tokenizer("cifar10")          # a shipped name, a checkpoint or a run folder
    pyramid = tokenizer.encode(images)             # images (B, 3, S, S) in [0, 1]
    print(pyramid.describe())
    images = tokenizer.decode(pyramid, num_layers=2)

The package, from the bottom up: the core modules at this level (config, codebook, pyramid,
quantizer, model, losses, metrics, checkpoint, ...), then `data`, `teacher`, `training`, `llm`,
`reading` (a frozen LLM reads the words), `generate` (it writes them), `views` (figures, reports)
and `cli`. A package imports only from the levels below it.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

# Public names -> the module that defines them. Imported on first use (PEP 562), so that
# `import spae_lab` and the command line start without loading torch.
_EXPORTS = {
    "Codebook": "spae_lab.codebook",
    "CodebookError": "spae_lab.codebook",
    "load_codebook": "spae_lab.codebook",
    "ConfigError": "spae_lab.config",
    "ExperimentConfig": "spae_lab.config",
    "create_config": "spae_lab.config",
    "list_presets": "spae_lab.config",
    "DataError": "spae_lab.data",
    "ImageFolderDataset": "spae_lab.data",
    "SyntheticScenes": "spae_lab.data",
    "load_image": "spae_lab.data",
    "make_dataset": "spae_lab.data",
    "SPAE": "spae_lab.model",
    "PyramidLayout": "spae_lab.pyramid",
    "TokenPyramid": "spae_lab.pyramid",
    "CheckpointError": "spae_lab.checkpoint",
    "create_tokenizer": "spae_lab.checkpoint",
    "load_tokenizer": "spae_lab.checkpoint",
    "SpaeError": "spae_lab.errors",
    "train": "spae_lab.training.loop",
    # clips: spae_lab.video
    "MovingScenes": "spae_lab.video.data",
    "MovingDigits": "spae_lab.video.data",
    "load_clip": "spae_lab.video.readers",
}


def lazy_exports(package: str, exports: dict[str, str]):
    """`__getattr__` and `__dir__` for a package whose public names (`exports`: name -> module)
    are imported on first use, so that importing the package loads no torch."""
    import sys

    namespace = sys.modules[package].__dict__

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


try:  # the version is written once, in pyproject.toml
    __version__ = version("spae-lab")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = sorted(_EXPORTS)
