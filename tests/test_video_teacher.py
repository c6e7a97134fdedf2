"""The clip teacher (tower, checkpoint, captions, zero-shot) and the guide's per-layer targets."""

import pytest
import torch

from spae_lab.teacher import TeacherError
from spae_lab.video.data import MovingScenes
from spae_lab.video.semantic import ClipGuide
from spae_lab.video.teacher import (
    ClipTeacher,
    ClipTeacherConfig,
    ClipTower,
    clip_texts,
    load_clip_teacher,
    train_clip_teacher,
    zero_shot,
)


def test_tower_embeds_clips_of_any_length_and_size():
    torch.manual_seed(0)
    tower = ClipTower(embed_dim=16, width=8, image_size=32, frames=8).eval()
    out = tower(torch.rand(2, 3, 8, 32, 32))
    assert out.shape == (2, 16) and torch.allclose(out.norm(dim=1), torch.ones(2))
    assert tower(torch.rand(1, 3, 4, 16, 16)).shape == (1, 16)  # resampled to 8 frames of 32 px
    still, moving = torch.rand(1, 3, 1, 32, 32).expand(1, 3, 8, 32, 32), torch.rand(1, 3, 8, 32, 32)
    assert not torch.allclose(tower(still), tower(moving))


def test_checkpoint_round_trip_and_damage(tmp_path):
    torch.manual_seed(0)
    teacher = ClipTeacher(ClipTower(embed_dim=16, width=8, image_size=16, frames=4))
    teacher.save(tmp_path / "t.safetensors", {"note": "test"})
    again = load_clip_teacher(f"lit-clip:{tmp_path / 't.safetensors'}")
    clips = torch.rand(2, 3, 4, 16, 16)
    assert torch.equal(teacher.embed_images(clips), again.embed_images(clips)) and again.info == {"note": "test"}
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherError, match="not a readable"):
        load_clip_teacher(f"lit-clip:{tmp_path / 'bad.safetensors'}")
    with pytest.raises(TeacherError, match="unknown clip teacher"):
        load_clip_teacher("lit:builtin")


def test_captions_say_what_moves_and_how():
    scene = MovingScenes(1)[0]
    texts = clip_texts(scene)
    assert scene["caption"] in texts and f"moving {scene['direction']}" in texts and scene["color"] in texts
    digit = {"digit": 7, "direction": "up", "caption": "the digit seven moving up"}
    assert clip_texts(digit) == ["the digit seven moving up", "the digit seven", "seven", "moving up", "up"]


def test_guided_layers_have_disjoint_targets():
    """Layer 2 ("moving {}") takes its top word first; layer 1 takes its top K among the others."""

    class Teacher:
        name = "fixed"

        def word_embeddings(self, codebook, template):
            return torch.eye(5)

        def embed_images(self, clips):
            return clips

    guide = ClipGuide(Teacher(), codebook=None, templates=("{}", "moving {}"), top_k=(2, 1))
    layer1, layer2 = guide.top_words(torch.tensor([[0.1, 0.9, 0.8, 0.2, 0.0]]))
    assert layer2.tolist() == [[1]] and layer1.tolist() == [[2, 3]]


@pytest.mark.slow  # MiniLM loads and embeds the captions: about 15 s
def test_a_tiny_teacher_trains_and_is_scored(tmp_path):
    cfg = ClipTeacherConfig(image_size=16, frames=4, width=8, steps=2, batch_size=8, scenes=32, digits=0,
                            eval_clips=8, codebook_negatives=0, checkpoint_every=1, num_threads=1)
    result = train_clip_teacher(cfg, tmp_path, progress=False)
    assert set(result["zero_shot"]) == {"moving-scenes"}
    assert set(result["zero_shot"]["moving-scenes"]) == {"direction", "colour", "shape"}
    assert result["chance"]["direction"] == 0.25
    teacher = load_clip_teacher(f"lit-clip:{tmp_path / 'teacher.safetensors'}")
    scores = zero_shot(teacher, MovingScenes(4, "heldout", 0, 16, 4))
    assert all(0 <= v <= 1 for v in scores.values())
