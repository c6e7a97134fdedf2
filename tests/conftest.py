"""Shared test settings and fixtures: two torch threads at most (2-core machines), slow tests
opt-in, one tiny random Llama for the whole session."""

import os

import pytest
import torch

# Two test processes under pytest-xdist (pyproject's addopts) get one torch thread each; one
# process alone gets two: threads x processes <= 2, which 2-core machines need (more was seen to
# slow steps tenfold).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The processes a test starts (nbval's notebook kernels, the CLI run as a user would) would
    # otherwise take a thread per core each, beside the other worker's.
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Folder of a tiny random Llama and its byte-level BPE tokenizer, saved with save_pretrained
    (tests/tiny_llm.py): the real Hugging Face loading code in a second, offline. Built once."""
    from tiny_llm import save_tiny_llama

    folder = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer_run(tmp_path_factory, tiny_llama):
    """Run folder of an untrained tiny SPAE (digits data) whose codebook is the tiny Llama's own
    words (every word one token): generation end to end in seconds."""
    from spae_lab.checkpoint import CHECKPOINT_NAME, create_tokenizer, save_checkpoint
    from spae_lab.config import create_config

    cfg = create_config("tiny", {"data.dataset": "digits", "semantic.enabled": False,
                                 "codebook.source": str(tiny_llama), "codebook.max_size": None,
                                 "codebook.word_list": None})
    torch.manual_seed(0)
    model = create_tokenizer(cfg)
    run = tmp_path_factory.mktemp("tok")
    save_checkpoint(run / CHECKPOINT_NAME, model, None, 0, cfg)
    return run
