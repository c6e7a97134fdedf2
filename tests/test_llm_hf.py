"""HFBackend on the tiny random Llama of tests/tiny_llm.py (fast), and one sanity check of the
real SmolLM2 ranking.

Modules: spae_lab.llm.hf, spae_lab.llm.hf_load.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from tiny_llm import CHOICES

from spae_lab.llm.base import GenerationParams, LLMError, cut_at_stop
from spae_lab.llm.hf import HFBackend, build_trie


@pytest.fixture(scope="module")
def tiny_folder(tiny_llama):
    return tiny_llama  # the session's tiny Llama (conftest.py)


@pytest.fixture(scope="module")
def backend(tiny_folder):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return HFBackend(str(tiny_folder), batch_size=3)


def _manual_loglikelihood(backend: HFBackend, pieces: list[str], continuation: str) -> float:
    """Reference: one unbatched, unpadded forward of BOS + pieces + continuation."""
    tok = backend.tokenizer
    context = [tok.bos_token_id]
    for piece in pieces:
        context += tok(piece, add_special_tokens=False)["input_ids"]
    target = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = backend.lm(input_ids=torch.tensor([context + target])).logits[0]
    logprobs = logits.float().log_softmax(-1)
    return sum(logprobs[len(context) - 1 + j, t].item() for j, t in enumerate(target))


def test_identity_and_bos(backend, tiny_folder):
    assert backend.kind == "hf" and backend.supports_loglikelihood
    assert backend.describe() == {"kind": "hf", "model": str(tiny_folder), "dtype": "float32"}
    bos = backend.tokenizer.bos_token_id
    assert backend.context_ids("a cat") == [bos] + backend.encode("a cat")
    assert backend.context_ids("a", " cat") == [bos] + backend.encode("a") + backend.encode(" cat")


def test_loglikelihood_matches_manual(backend):
    prompt = "a photo of a small"
    continuations = [" cat", " dog house red", " big blue truck", ""]
    scores = backend.loglikelihood(prompt, continuations)
    expected = [_manual_loglikelihood(backend, [prompt], c) for c in continuations[:-1]]
    assert scores[:-1] == pytest.approx(expected, abs=1e-4)
    assert scores[-1] == 0.0  # the empty continuation has probability 1
    assert all(s < 0 for s in scores[:-1])


def test_cached_equals_naive(backend):
    prefix = "input: cat dog bird\noutput: cat\ninput: red car truck\noutput: car\n"
    queries = ["input: small fish\noutput:", "input: blue sky water\noutput:", ""]
    continuations = [" cat", " car", " fish water", " red green blue sky", " is"]
    before = backend.stats.requests
    cached = backend.score_shared_prefix(prefix, queries, continuations)
    naive = backend.score_shared_prefix(prefix, queries, continuations, use_prefix_cache=False)
    assert backend.stats.requests > before
    assert torch.allclose(torch.tensor(cached), torch.tensor(naive), atol=1e-4)
    assert torch.tensor(cached).argmax(1).tolist() == torch.tensor(naive).argmax(1).tolist()
    expected = [[_manual_loglikelihood(backend, [prefix, q], c) for c in continuations]
                for q in queries]
    assert torch.allclose(torch.tensor(cached), torch.tensor(expected), atol=1e-4)


def test_cached_path_leaves_prefix_cache_intact(backend):
    """Scoring the same query twice in one call gives the same numbers: no cache leaks between
    queries (forward calls mutate caches in place). Equal up to rounding: packed at different
    places of one row, the two copies sum their attention over different lengths."""
    rows = backend.score_shared_prefix("a photo of", [" the", " the", " a big"], [" cat", " dog"])
    assert rows[0] == pytest.approx(rows[1], abs=1e-5)
    again = backend.score_shared_prefix("a photo of", [" the"], [" cat", " dog"])  # kept prefix
    assert again[0] == pytest.approx(rows[0], abs=1e-5)


def test_batched_generation_equals_single(backend):
    prompts = ["a photo of a", "the red car is big and the", "sky"]
    params = GenerationParams(max_new_tokens=6, stop=())
    together = backend.generate(prompts, params)
    alone = [backend.generate([p], params)[0] for p in prompts]
    assert together == alone


def test_stop_strings_cut(backend):
    params = GenerationParams(max_new_tokens=12, stop=())
    texts = backend.generate(["a photo of a", "input", "the red car", "blue"], params)
    prompt, text = next((p, t) for p, t in zip(
        ["a photo of a", "input", "the red car", "blue"], texts, strict=True) if len(t) >= 6)
    stop = text[3:5]
    cut = backend.generate([prompt], GenerationParams(max_new_tokens=12, stop=("zzz", stop)))[0]
    assert cut == text[: text.index(stop)]
    assert cut_at_stop("ab\ncd.ef", (".", "\n")) == "ab"
    assert cut_at_stop("abc", ("\n",)) == "abc"
    assert backend.generate(["a"], GenerationParams(max_new_tokens=0)) == [""]


def _reference_constrained(backend: HFBackend, prompt: str, choices: list[str]) -> str:
    """The documented rule, step by step with full forwards from scratch."""
    context = backend.context_ids(prompt)
    node = build_trie([backend.encode(c) for c in choices])
    while True:
        with torch.no_grad():
            logits = backend.lm(input_ids=torch.tensor([context])).logits[0, -1]
        if node.choice is not None and (not node.children or int(logits.argmax()) not in node.children):
            return choices[node.choice]
        allowed = list(node.children)
        best = allowed[int(logits[allowed].argmax())]
        context.append(best)
        node = node.children[best]


def test_constrained_generation_returns_a_choice(backend):
    prompts = ["a photo of a", "the", "input: cat dog\noutput:", "big red", "water sky blue", "x"]
    answers = backend.generate(prompts, choices=CHOICES)
    assert all(a in CHOICES for a in answers)
    assert answers == [_reference_constrained(backend, p, CHOICES) for p in prompts]
    # One choice only, and a choice that is the prefix of another one.
    assert backend.generate(["a"], choices=[" cat"]) == [" cat"]
    assert backend.generate(["a", "b"], choices=["", " dog"])[0] in ("", " dog")


def test_build_trie_marks_complete_choices_first_duplicate_wins():
    trie = build_trie([[1], [1, 2], [3], [1]])
    assert trie.children[1].choice == 0 and trie.children[1].children[2].choice == 1
    assert trie.children[3].choice == 2 and trie.choice is None


def test_errors(backend, tmp_path):
    with pytest.raises(LLMError, match="no model folder"):
        HFBackend(str(tmp_path / "missing"))
    with pytest.raises(LLMError, match="cannot load"):
        HFBackend(str(tmp_path))  # a folder without a model
    with pytest.raises(LLMError, match="greedily"):
        backend.generate(["a"], GenerationParams(temperature=0.7))
    with pytest.raises(LLMError, match="at least one choice"):
        backend.generate(["a"], choices=[])


def test_smollm2_ranks_the_obvious_answer():
    try:
        smollm2 = HFBackend()
    except LLMError as err:
        pytest.skip(f"SmolLM2 is not installed: {err}")
    prompt = "A photo of a small kitten. It is a"
    scores = smollm2.loglikelihood(prompt, [" cat", " stock market"])
    assert scores[0] > scores[1] + 3
    rows = smollm2.score_shared_prefix("A photo of a small kitten.", [" It is a"],
                                       [" cat", " stock market"])
    assert rows[0] == pytest.approx(scores, abs=1e-3)
    assert smollm2.generate([prompt], choices=[" stock market", " cat"]) == [" cat"]


def test_generate_shared_prefix_matches_generate(backend):
    prefix = "the cat is red\nthe dog is blue\n"
    queries = ["input dog output", "input cat output", "a photo of a"]
    params = GenerationParams(max_new_tokens=5, stop=("\n",))
    assert backend.generate_shared_prefix(prefix, queries, params) == backend.generate(
        [prefix + q for q in queries], params)
    assert backend.generate_shared_prefix(prefix, queries, choices=CHOICES) == backend.generate(
        [prefix + q for q in queries], choices=CHOICES)


class _Booby:
    """Unpickling this creates the marker file: proof that a pickle was (or was not) opened."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_only_model_folder_is_refused_unopened(tiny_folder, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_folder, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Booby(marker)))
    with pytest.raises(LLMError, match=r"only pickle weights \(pytorch_model.bin\).*refused"):
        HFBackend(str(folder))
    assert not marker.exists()
    # With safetensors next to it, the safetensors are read and the pickle is left alone.
    shutil.copy(tiny_folder / "model.safetensors", folder / "model.safetensors")
    assert HFBackend(str(folder)).describe()["model"] == str(folder)
    assert not marker.exists()


def test_bad_batch_size_is_an_llm_error(tiny_folder):
    with pytest.raises(LLMError, match="batch_size must be >= 1"):
        HFBackend(str(tiny_folder), batch_size=0)
