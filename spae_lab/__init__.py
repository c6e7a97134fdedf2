"""spae_lab: an open implementation of SPAE (Semantic Pyramid AutoEncoder) and a workbench.

The calls most people need::

    from spae_lab import load_tokenizer
    tokenizer = load_tokenizer("runs/demo")
    pyramid = tokenizer.encode(images)          # images (B, 3, S, S) in [0, 1]
    print(pyramid.describe())
    images = tokenizer.decode(pyramid, num_layers=2)
"""

from spae_lab.codebook import Codebook, CodebookError, load_codebook
from spae_lab.config import (
    ConfigError,
    ExperimentConfig,
    create_config,
    list_presets,
)
from spae_lab.data import (
    DataError,
    ImageFolderDataset,
    SyntheticScenes,
    load_image,
    make_dataset,
)
from spae_lab.model import SPAE
from spae_lab.pyramid import PyramidLayout, TokenPyramid
from spae_lab.train import CheckpointError, load_tokenizer, train

__version__ = "0.1.0"

__all__ = [
    "SPAE",
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
]
