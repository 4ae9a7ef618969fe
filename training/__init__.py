"""QLoRA instruction tuning on exam-style questions, rendered in the evaluation's own prompt format.

``TrainConfig`` (config), ``build_training_data`` (data), ``train`` (trainer), ``merge_adapter`` (merge),
``find_overlaps`` (contamination), the FSDP-QLoRA launcher config (fsdp), what a multi-process launch changes
(distributed), which checkpoints a resume may use (checkpoints), safetensors-only loading (weights) and the offline
demo adapter (demo).
Only the config is imported eagerly: torch, transformers and TRL load when training starts.
"""

from .config import TRAIN_SAMPLE, TrainConfig, TrainConfigError

__all__ = ["TRAIN_SAMPLE", "TrainConfig", "TrainConfigError"]
