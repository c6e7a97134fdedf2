"""The packed scoring path of the HF backend (spae_lab/llm/hf_packing.py): the same scores as
reading every (query, candidate) from scratch, exact pruning, kept prefixes."""

from __future__ import annotations

import pytest
import torch
from tiny_llm import CHOICES

from spae_lab.llm.base import LLMBackend, best_index, cannot_win
from spae_lab.llm.hf import HFBackend
from spae_lab.llm.hf_packing import Packing, chunks_by_tokens

PREFIX = "input: cat dog bird\noutput: cat\ninput: red car truck\noutput: car\n"
QUERIES = ["input: small fish\noutput:", "input: blue sky water\noutput:", "", " the big",
           "input: house road tree\noutput:", "input: a photo of a\noutput:"]


@pytest.fixture(scope="module")
def backend(tiny_llama):
    return HFBackend(str(tiny_llama))


@pytest.mark.parametrize("pack_tokens", [1, 7, 1024])
def test_packed_scores_equal_scores_from_scratch(backend, pack_tokens):
    backend.pack_tokens = pack_tokens
    backend._prefixes.clear()
    packed = torch.tensor(backend.score_shared_prefix(PREFIX, QUERIES, CHOICES))
    naive = torch.tensor(backend.score_shared_prefix(PREFIX, QUERIES, CHOICES, use_prefix_cache=False))
    assert torch.allclose(packed, naive, atol=1e-4)
    backend.pack_tokens = 1024


def test_a_prefix_extending_a_kept_one_scores_the_same(backend):
    backend._prefixes.clear()
    backend.score_shared_prefix(PREFIX, QUERIES[:1], CHOICES)  # keeps PREFIX
    longer = PREFIX + "input: big boat\noutput: boat\n"
    extended = backend.score_shared_prefix(longer, QUERIES, CHOICES)
    assert len(backend._prefixes) == 2
    backend._prefixes.clear()
    fresh = backend.score_shared_prefix(longer, QUERIES, CHOICES)
    assert torch.allclose(torch.tensor(extended), torch.tensor(fresh), atol=1e-4)


@pytest.mark.parametrize("content_free", [None, "input: N/A\noutput:"])
def test_ranking_prunes_and_gives_the_answers_of_the_full_scores(backend, content_free, monkeypatch):
    read = []
    original = backend._forward_packed

    def counting(packing, first, cache, keep):
        read.append(len(packing.ids) - first)
        return original(packing, first, cache, keep)

    monkeypatch.setattr(backend, "_forward_packed", counting)
    # one-token answers beside the tiny tokenizer's longer ones: those can be left unread
    singles = [w for w in (" the", " is", " a", " of", " it", "a", "e", "t") if len(backend.encode(w)) == 1]
    assert len(singles) >= 2
    choices = singles[:3] + CHOICES
    backend._prefixes.clear()
    full = LLMBackend.rank_shared_prefix(backend, PREFIX, QUERIES, choices, content_free)
    tokens_full = sum(read)
    read.clear()
    backend._prefixes.clear()
    ranked = backend.rank_shared_prefix(PREFIX, QUERIES, choices, content_free)
    assert ranked == full
    assert sum(read) < tokens_full  # some candidates' later tokens were never read


def test_best_index_and_cannot_win_are_exact_on_ties():
    targets = [[1], [2, 3], [4]]
    assert best_index([-1.0, -1.0, -0.5]) == 2
    assert best_index([-1.0, -1.0, -1.0]) == 0  # the first of equal ones
    assert best_index([-1.0, None, -2.0], prior=[0.0, 0.0, -1.5]) == 2
    # candidate 1's first token equals the best complete score: it can still tie, and it wins a
    # tie against a later index only
    assert not cannot_win([-1.0, -0.5, -0.5], 1, targets, None)
    assert cannot_win([-0.5, -0.5, -1.0], 1, targets, None)
    assert cannot_win([-0.5, -0.7, -1.0], 1, targets, None)
    assert not cannot_win([-0.5, -0.7, -1.0], 1, [[1, 2], [2, 3]], None)  # nothing complete


def test_packing_mask_keeps_segments_apart():
    packing = Packing(prefix_length=2)
    q0 = packing.add([10, 11])
    q1 = packing.add([12])
    packing.add([13, 14], parent=q0)
    assert packing.positions == [2, 3, 2, 4, 5] and q1 == 1
    visible = packing.mask(0, torch.float32)[0, 0] == 0
    assert visible[:, :2].all()  # everyone sees the prefix
    assert visible[0].tolist() == [True, True, True, False, False, False, False]
    assert visible[2].tolist() == [True, True, False, False, True, False, False]  # q1 alone
    assert visible[4].tolist() == [True, True, True, True, False, True, True]  # answer of q0
    assert chunks_by_tokens([3, 3, 3, 9, 1], 6) == [[0, 1], [2], [3], [4]]
