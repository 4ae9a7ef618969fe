"""Safetensors only: `medjp train` and `train merge` never unpickle model or adapter weights.

Unpickling a ``pytorch_model.bin`` (or ``adapter_model.bin``) can run any code its author put in it. Every load in
training passes ``use_safetensors=True``; a local folder that holds only pickle weights is refused before
loading, with a message saying what to do, rather than with the library's "no file named model.safetensors".
"""

from __future__ import annotations

from pathlib import Path

#: File names transformers and PEFT write pickle weights under.
PICKLE_PATTERNS = ("pytorch_model*.bin", "adapter_model.bin", "*.pt", "*.pth", "*.ckpt")


class PickleWeightsError(ValueError):
    """A model or adapter folder holds pickle weights and no safetensors."""


def refuse_pickle_weights(source: str | Path, what: str = "model") -> None:
    """Raise :class:`PickleWeightsError` when the local folder ``source`` has pickle weights but no safetensors.

    Hub ids (not local folders) are left to ``use_safetensors=True``, which never downloads pickle weights.
    """
    folder = Path(source)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted({p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)})
    if pickles:
        raise PickleWeightsError(
            f"{folder}: the {what} weights are pickle files ({', '.join(pickles)}), and loading a pickle can run "
            "arbitrary code; medjp loads safetensors only. Convert them once, where you trust the file (load the "
            "folder with transformers/PEFT and save_pretrained it: that writes safetensors), or use a safetensors "
            "release")
