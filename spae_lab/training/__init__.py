"""Training a tokenizer: the loop, its run folder, held-out evaluation and ablations.

- `loop`: `train(cfg, run_dir)` (exact resume, DDP under torchrun) and `quick_run` (a cached tiny run
  for notebooks' defaults);
- `runs`: the run folder (metrics, lock, what a resume may change);
- `evaluate`: held-out figures (PSNR/SSIM per depth, word usage, relevance, class words);
- `ablation`: the semantic-guidance ablation (several short runs side by side).
"""

from spae_lab.training.loop import TrainResult, quick_run, train

__all__ = ["TrainResult", "quick_run", "train"]
