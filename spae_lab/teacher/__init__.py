"""The CLIP-like teacher behind semantic guidance: how relevant is each codebook word to an image?

- `model`: the teachers (`LiTTeacher`, the offline default shipped as `lit:builtin`; `CLIPTeacher`
  for any Hugging Face CLIP) and `load_teacher(spec)`;
- `cache`: each training image's top-K words, computed once per (teacher, codebook, data) and kept
  on disk;
- `train`: trains a LiT teacher (a locked MiniLM text tower, a small image tower) on captions.
"""

from spae_lab.teacher.model import (
    BUILTIN_TEACHER,
    CLIPTeacher,
    ImageTower,
    LiTTeacher,
    MiniLMTextEncoder,
    Teacher,
    TeacherError,
    load_teacher,
)

__all__ = ["BUILTIN_TEACHER", "CLIPTeacher", "ImageTower", "LiTTeacher", "MiniLMTextEncoder", "Teacher",
           "TeacherError", "load_teacher"]
