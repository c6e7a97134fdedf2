"""Teachers: the locked MiniLM text tower, LiT training and checkpoints, Hugging Face CLIP.

Modules: spae_lab.teacher.model, spae_lab.teacher.train.
"""

import pytest
import torch

from spae_lab.codebook import random_codebook
from spae_lab.teacher import (
    CLIPTeacher,
    LiTTeacher,
    MiniLMTextEncoder,
    TeacherError,
    load_teacher,
)
from spae_lab.teacher.train import TeacherConfig, train_teacher


@pytest.fixture(scope="module")
def text_encoder():
    return MiniLMTextEncoder()


def test_minilm_similarities_are_sensible(text_encoder):
    emb = text_encoder(["cat", "kitten", "stock market", "cat"])
    assert emb.shape == (4, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
    assert torch.equal(emb[0], emb[3])


def test_lit_training_checkpoint_and_relevance(tmp_path, monkeypatch, text_encoder):
    monkeypatch.setenv("SPAE_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("spae_lab.teacher.train.MiniLMTextEncoder", lambda: text_encoder)
    cfg = TeacherConfig(steps=15, batch_size=32, scenes=200, mnist=False, eval_per_class=5,
                        warmup_steps=3)
    result = train_teacher(cfg, tmp_path / "teacher", progress=False)
    assert set(result["zero_shot"]) == {"scenes", "digits"}
    assert all(0 <= a <= 1 for a in result["zero_shot"].values())

    teacher = LiTTeacher.load(tmp_path / "teacher" / "teacher.safetensors", text_encoder)
    images = torch.rand(3, 3, 32, 32)
    emb = teacher.embed_images(images)
    assert emb.shape == (3, 384)
    codebook = random_codebook("random:40:8")
    words = teacher.word_embeddings(codebook)
    assert words.shape == (40, 384)
    assert list((tmp_path / "cache" / "teacher_words").glob("*.safetensors"))
    relevance = teacher.relevance(images, words)
    assert relevance.shape == (3, 40) and relevance.abs().max() <= 1.0001
    small = teacher.relevance(torch.rand(2, 3, 16, 16), words)  # other sizes are resized
    assert small.shape == (2, 40)


def test_builtin_teacher_ships_and_classifies_scenes(text_encoder):
    from spae_lab.data import SyntheticScenes, collate

    teacher = load_teacher("lit:builtin")
    scenes = SyntheticScenes(60, 32, split="heldout")
    batch = collate([scenes[i] for i in range(60)])
    pred = teacher.zero_shot(batch["image"], list(SyntheticScenes.classes), ("a {}",))
    assert (pred == batch["label"]).float().mean() > 0.5  # chance is 1/6


def test_bad_teacher_specs(tmp_path):
    with pytest.raises(TeacherError):
        load_teacher("nonsense")
    with pytest.raises(TeacherError, match="no LiT teacher checkpoint"):
        load_teacher(f"lit:{tmp_path / 'missing.safetensors'}")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(TeacherError, match="not a readable"):
        load_teacher(f"lit:{tmp_path / 'junk.safetensors'}")


@pytest.fixture()
def tiny_clip(tmp_path):
    """A tiny random CLIPModel with a small BPE tokenizer, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a photo of a red circle and a blue square"] * 10,
                            trainers.BpeTrainer(vocab_size=80, special_tokens=["<unk>", "<pad>", "<s>", "</s>"]))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                     bos_token="<s>", eos_token="</s>")
    config = CLIPConfig(
        text_config={"vocab_size": len(hf_tok), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
                     "projection_dim": 8, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 3},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "projection_dim": 8},
        projection_dim=8,
    )
    torch.manual_seed(0)
    folder = tmp_path / "tiny-clip"
    CLIPModel(config).save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder


def test_hugging_face_clip_teacher(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("SPAE_LAB_CACHE", str(tmp_path / "cache"))
    teacher = load_teacher(f"clip:{tiny_clip}")
    assert isinstance(teacher, CLIPTeacher)
    codebook = random_codebook("random:25:8")
    words = teacher.word_embeddings(codebook)
    assert words.shape == (25, 8)
    relevance = teacher.relevance(torch.rand(2, 3, 16, 16), words)
    assert relevance.shape == (2, 25)
    assert teacher.zero_shot(torch.rand(4, 3, 32, 32), ["red", "blue"]).shape == (4,)
    with pytest.raises(TeacherError):
        load_teacher(f"clip:{tmp_path / 'no-clip'}")
