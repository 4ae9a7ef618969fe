"""Silence what libraries print on every model load that tells a user nothing they can act on; real warnings stay.

- bitsandbytes logs that its optional ``kernels`` package is missing (it falls back to its own CPU kernel);
- transformers warns (FutureWarning) each time PEFT reads the deprecated ``is_gradient_checkpointing``;
- bitsandbytes warns "Paged optimizers are not supported on CPU" once per optimizer: kept, but once per run;
- transformers draws a raw ``Loading weights`` tqdm bar (hub downloads keep their bars);
- GEPA logs the whole traceback of each reflection that failed, after a line saying why (and medjp warns once how
  many failed): the traceback goes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

_BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
_GEPA_LOGGER = "dspy.teleprompt.gepa.gepa"


def _not_kernels_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_KERNELS_NOTICE)


def _not_a_traceback(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Traceback (most recent call last)")


def silence_library_noise() -> None:
    """Install the filters (cheap, idempotent, imports nothing heavy): call it before a command loads a model."""
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("once", message=r"Paged optimizers are not supported on CPU")
    for name, keep in ((_BNB_CPU_LOGGER, _not_kernels_notice), (_GEPA_LOGGER, _not_a_traceback)):
        logger = logging.getLogger(name)
        if keep not in logger.filters:
            logger.addFilter(keep)


def _no_loading_bar(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return factory(*args, **({**kwargs, "disable": True} if kwargs.get("desc") == "Loading weights" else kwargs))


def silence_loading_bars() -> None:
    """No raw ``Loading weights`` bar from transformers; its other bars (and hub downloads') stay.

    Imports transformers: call it where a model loads.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_tqdm_hook(_no_loading_bar)
