"""Fine-tuning methods on peft and the transformers Trainer.

* :mod:`~lmopt.finetune.paft` — PAFT (arXiv 2502.12859): a pool of synthetic task prompts, training
  examples rendered with a prompt sampled per example and epoch, evaluation across unseen prompts;
* :mod:`~lmopt.finetune.flexora` — Flexora (arXiv 2408.10774): per-layer gates on LoRA, their weights
  ``α`` searched on validation batches, LoRA retrained on the layers with ``α > 0``.
"""

from .flexora import FlexoraGates, FlexoraResult, flexora_search, hyper_step, lora_modules, retrain_config
from .paft import PAFTCollator, PromptPool, PromptSampler, build_prompt_pool, default_quality_check, render, spread

__all__ = ["FlexoraGates", "FlexoraResult", "PAFTCollator", "PromptPool", "PromptSampler", "build_prompt_pool",
           "default_quality_check", "flexora_search", "hyper_step", "lora_modules", "render", "retrain_config",
           "spread"]
