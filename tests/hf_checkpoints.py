"""Tiny random Hugging Face checkpoints saved by the tests themselves (nothing is downloaded)."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_tokenizer(folder, bos: bool, chat_template: str = CHAT) -> int:
    """A byte-level BPE tokenizer with a ChatML template; with ``bos`` it adds ``<s>`` itself."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["Q: 12+30=42\nA: 42", "how many apples now?"] * 10, trainer)
    if bos:
        from tokenizers import processors

        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<s>" if bos else None,
    )
    fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return len(fast)


def save_tiny_checkpoint(
    folder: Path,
    architecture: str,
    bos: bool | None = None,
    chat_template: str = CHAT,
    n_ctx: int = 256,
) -> Path:
    """A 2-layer random ``qwen2`` or ``llama`` checkpoint with its tokenizer, in ``folder``."""
    vocab = save_tiny_tokenizer(
        folder, bos=architecture == "llama" if bos is None else bos, chat_template=chat_template
    )
    shape = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=n_ctx,
    )
    torch.manual_seed(0)
    if architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    model.save_pretrained(folder)
    return folder
