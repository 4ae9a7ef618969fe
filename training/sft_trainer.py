"""TRL's ``SFTTrainer``, with a resumed QLoRA adapter kept in the precision it was trained in.

TRL stores a QLoRA adapter in bf16 (and :func:`~medjp_agent.training.trainer.build_trainer` in the compute dtype),
but when a run resumes the Trainer reloads the checkpoint's adapter through PEFT's ``load_adapter``, which up-casts
bf16/fp16 adapter weights to float32: the resumed steps would run in another precision (and memory) than the
interrupted ones, and drift from them. The dtypes are put back right after the load, before DDP wraps the model
and the optimizer state is restored. Imported lazily: it imports TRL.
"""

from __future__ import annotations

from typing import Any

from trl import SFTTrainer as _TRLSFTTrainer


class SFTTrainer(_TRLSFTTrainer):
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if model is not None:  # FSDP/DeepSpeed load into the wrapped model after it is prepared: left as they are
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtypes = {name: p.dtype for name, p in self.model.named_parameters() if p.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint)
        for name, param in self.model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])
        return None
