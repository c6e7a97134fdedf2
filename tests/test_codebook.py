"""The frozen LLM codebook: lexical filtering, Hugging Face loading, cache, the packaged SmolLM2."""

import pytest
import torch

from spae_lab import assets
from spae_lab import codebook as codebook_module
from spae_lab.assets import AssetError
from spae_lab.codebook import CodebookError, load_codebook, random_codebook
from spae_lab.config import CodebookConfig

TEXT = (
    "the cat sat on the mat and the dog ran in the park with a red ball. "
    "A small green frog jumped over 42 logs! Blue birds sing; yellow suns shine, "
    "the quick brown fox jumps over the lazy dog. naïve café über résumé. "
) * 20


@pytest.fixture()
def tiny_llm(tmp_path):
    """A tiny random Llama with a byte-level BPE tokenizer trained here, saved with
    save_pretrained: exercises the real Hugging Face loading code, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                     pad_token="<pad>")
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path / "tiny-llm"
    model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder, hf_tok, model


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAE_LAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_codebook_from_a_tiny_hugging_face_model(tiny_llm, cache):
    folder, tokenizer, model = tiny_llm
    cb = load_codebook(CodebookConfig(source=str(folder), max_size=None))
    assert len(cb) > 5
    assert cb.stats["vocab_size"] == len(tokenizer) and cb.stats["kept"] == len(cb)
    table = model.get_input_embeddings().weight.detach()
    for row, (token_id, word) in enumerate(zip(cb.token_ids.tolist(), cb.words, strict=True)):
        assert word.isalpha() and word.isascii() and len(word) >= 2
        assert tokenizer.decode([token_id]) == " " + word  # a whole word: leading space, letters
        assert token_id not in tokenizer.all_special_ids
        torch.testing.assert_close(cb.embeddings[row], table[token_id])
    assert "cat" in cb.words and "the" in cb.words
    assert len(set(cb.words)) == len(cb.words)
    # the filter dropped punctuation, digits and word pieces the vocabulary holds
    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert any(not t.startswith("Ġ") for t in raw)


def test_cap_keeps_the_first_ids_and_cache_is_reused(tiny_llm, cache, monkeypatch):
    folder, _, _ = tiny_llm
    full = load_codebook(CodebookConfig(source=str(folder), max_size=None))
    capped = load_codebook(CodebookConfig(source=str(folder), max_size=5))
    assert capped.words == full.words[:5] and capped.stats["lexical"] == full.stats["lexical"]

    def no_build(config):
        raise AssertionError("should come from the cache")

    monkeypatch.setattr(codebook_module, "_build", no_build)
    again = load_codebook(CodebookConfig(source=str(folder), max_size=5))
    assert again.words == capped.words and torch.equal(again.embeddings, capped.embeddings)
    assert again.fingerprint() == capped.fingerprint() != full.fingerprint()


def test_unknown_source_is_a_clear_error(cache, tmp_path):
    with pytest.raises(CodebookError, match="cannot load the language model"):
        load_codebook(CodebookConfig(source=str(tmp_path / "no-such-model")))


def test_random_codebook_is_deterministic():
    a, b = random_codebook("random:100:8:3"), random_codebook("random:100:8:3")
    assert a.words == b.words and torch.equal(a.embeddings, b.embeddings)
    assert a.embeddings.shape == (100, 8) and len(set(a.words)) == 100
    assert a.index_of(a.words[7]) == 7
    with pytest.raises(CodebookError):
        random_codebook("random:abc")
    with pytest.raises(KeyError, match="not a word"):
        a.index_of("zzzzzz")


def test_smollm2_codebook_for_real():
    """The packaged SmolLM2-135M-Instruct: converted once from GGUF, then cached."""
    cb = load_codebook(CodebookConfig())
    assert cb.embeddings.shape == (8192, 576)
    assert cb.stats["vocab_size"] == 49152
    # 31,534 are space + letters; vowel-less ones, word starts missing from the word list and
    # capitalised forms go (21,238 words with them)
    assert 12000 < cb.stats["lexical"] < 20000
    for word in ("the", "cat", "red", "blue", "circle", "house"):
        assert word in cb.words
    # every CIFAR-10 class name is a word of the 8,192 (airplane, automobile and frog were not
    # while capitalised duplicates took a third of the places)
    for word in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"):
        assert word in cb.words
    assert all(w.islower() for w in cb.words)
    legacy = load_codebook(CodebookConfig(lowercase_only=False))
    assert "Yellow" in legacy.words and "frog" not in legacy.words
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_model_dir())
    for token_id, word in list(zip(cb.token_ids.tolist(), cb.words, strict=True))[:200]:
        assert tokenizer.decode([token_id]) == " " + word
    norms = cb.embeddings.norm(dim=1)
    assert 2.0 < norms.mean() < 4.0  # real LLM rows, not random ones


def test_smollm2_checksum_mismatch_is_refused(cache, monkeypatch):
    monkeypatch.setattr(assets, "_verified", set())
    monkeypatch.setattr(assets, "SMOLLM2_SHA256", "0" * 64)
    with pytest.raises(AssetError, match="SHA-256"):
        assets.smollm2_model_dir()


def test_word_list_keeps_real_words_only(tiny_llm, cache, tmp_path):
    folder, _, _ = tiny_llm
    unfiltered = load_codebook(CodebookConfig(source=str(folder), max_size=None, word_list=None))
    words_file = tmp_path / "words.txt"
    words_file.write_text("cat\nDog\nthe\nnot-a-word\n")
    listed = load_codebook(CodebookConfig(source=str(folder), max_size=None, word_list=str(words_file)))
    assert set(listed.words) == {w for w in unfiltered.words if w.lower() in {"cat", "dog", "the"}}
    assert "cat" in listed.words
    with pytest.raises(CodebookError, match="no such file"):
        load_codebook(CodebookConfig(source=str(folder), word_list=str(tmp_path / "none.txt")))


def test_smollm2_word_starts_are_not_words():
    cb = load_codebook(CodebookConfig(max_size=None))
    for fragment in ("indust", "ingred", "experim", "strugg", "enterpr"):
        assert fragment not in cb.words


def test_packaged_minilm_is_verified(monkeypatch):
    assert (assets.minilm_model_dir() / "vocab.txt").exists()
    monkeypatch.setattr(assets, "_verified", set())
    monkeypatch.setitem(assets.MINILM_SHA256, "vocab.txt", "f" * 64)
    with pytest.raises(AssetError, match="SHA-256"):
        assets.minilm_model_dir()
