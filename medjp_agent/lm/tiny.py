"""The embedded default model: a tiny random Llama with a tokenizer trained here, so everything runs offline.

It is saved like any hub model (safetensors + tokenizer.json + config), then loaded through the very same
``from_pretrained`` path as a 70B model, so tests and the offline demo exercise the real loading code.
Its answers are chance-level until `medjp train` teaches it the answer format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..paths import medjp_home

#: A minimal chat template, so chat formats work on the tiny model as on instruct models.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny Llama (the backend benchmark's model). ``initializer_range`` 0.1, not Llama's 0.02:
    with the default, LoRA on a random base barely moves the loss; with 0.1 it memorises a few rows quickly.
    Every linear layer's width is a multiple of 64, so bitsandbytes' fused 4-bit CPU kernel takes each of them
    (see :mod:`.bnb_cpu`)."""

    layers: int = 4
    hidden: int = 256
    intermediate: int = 704
    heads: int = 4
    vocab: int = 8000
    max_positions: int = 2048
    initializer_range: float = 0.1
    seed: int = 0

    @property
    def tag(self) -> str:
        """The cache folder's name: readable sizes, then a digest of every field, so a model built with other
        settings (an older default) is never taken for this one."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"tiny-llama-l{self.layers}-h{self.hidden}-i{self.intermediate}-v{self.vocab}-s{self.seed}-{digest}"


def _corpus() -> list[str]:
    from medjp_agent.data import SAMPLE_DIR, load_exemplars, load_igakuqa, load_medqa

    texts = []
    for q in [*load_igakuqa(SAMPLE_DIR), *load_exemplars(), *load_medqa(SAMPLE_DIR / "usmle_jp.jsonl")]:
        texts += [q.text, *q.choices, q.explanation]
    # Prompt scaffolding in both languages, so markers and labels become single tokens.
    texts += ["### 指示：", "### 入力：", "### 応答：", "答え：", "解説：", "要約：", "問題：", "選択肢：",
              "Question:", "Answer:", "Choices:", "Instruction:", "Response:", "a. b. c. d. e.", "(a) (b) (c) (d) (e)",
              "A B C D E", "ア イ ウ エ オ", "1 2 3 4 5", "ａ ｂ ｃ ｄ ｅ"]
    return texts


def build_tokenizer(vocab: int):
    """A byte-level BPE tokenizer trained on the bundled text, padded with unused special tokens to ``vocab``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=SPECIAL[4:])
    # A random model emits every id in its vocabulary: each must decode (to nothing, as a special token).
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[4:] + [f"<unused{i}>" for i in range(vocab - len(fast))]})
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(path: str | Path, config: TinyConfig = TinyConfig()) -> Path:
    """Build and save a tiny random Llama + tokenizer at ``path`` (safetensors). Returns ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer(config.vocab)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=config.max_positions, initializer_range=config.initializer_range,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "medjp_tiny.json").write_text(json.dumps(asdict(config), sort_keys=True), encoding="utf-8")
    return path


def ensure_tiny_model(config: TinyConfig = TinyConfig(), root: Path | None = None) -> Path:
    """The cached tiny model's folder, built on first use (safe when several processes race to build it)."""
    from filelock import FileLock

    path = (root or medjp_home()) / config.tag
    if (path / "medjp_tiny.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "medjp_tiny.json").exists():
            tmp = path.with_name(path.name + ".tmp")
            build_tiny_model(tmp, config)
            tmp.rename(path)
    return path
