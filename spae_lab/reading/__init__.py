"""A frozen LLM reads images as words (SPAE section 3).

- `episodes`: Frozen's few-shot settings, episode sampling, saved episode files;
- `fewshot`: prompts, the three decodings, the no-LLM references, `run_experiment`;
- `scene_qa`: captioning and VQA of synthetic scenes, scored exactly.
"""
