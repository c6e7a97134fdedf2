"""spae_lab: an open implementation of SPAE (Semantic Pyramid AutoEncoder) and a workbench.

The calls most people need::

    from spae_lab import load_tokenizer
    tokenizer = load_tokenizer("runs/demo")
    pyramid = tokenizer.encode(images)          # images (B, 3, S, S) in [0, 1]
    print(pyramid.describe())
    images = tokenizer.decode(pyramid, num_layers=2)
"""

import importlib
import sys
import types

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
    "train": "spae_lab.train",
    # clips (issue 25): spae_lab.video
    "MovingScenes": "spae_lab.video.data",
    "MovingDigits": "spae_lab.video.data",
    "load_clip": "spae_lab.video.readers",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'spae_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _Package(types.ModuleType):
    """`spae_lab.train` is both a module and the function it defines. Importing the submodule makes
    Python bind the module as the package attribute; keep the attribute for the function that
    `from spae_lab import train` promises (the module stays in sys.modules["spae_lab.train"])."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS and value.__name__ == _EXPORTS[name]:
            if name in self.__dict__:
                return  # the function is bound already
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "SPAE",
    "SpaeError",
    "create_tokenizer",
    "CheckpointError",
    "Codebook",
    "CodebookError",
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "ImageFolderDataset",
    "PyramidLayout",
    "SyntheticScenes",
    "TokenPyramid",
    "create_config",
    "list_presets",
    "load_codebook",
    "load_image",
    "load_tokenizer",
    "make_dataset",
    "train",
    "MovingScenes",
    "MovingDigits",
    "load_clip",
]
