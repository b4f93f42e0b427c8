"""Local Hugging Face checkpoints as policies: tiny random Qwen2 and Llama models saved by the test
itself, so nothing is downloaded."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.models.hf import is_hf_directory

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_tokenizer(folder, bos: bool) -> int:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(["Q: 12+30=42\nA: 42", "how many apples now?"] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<s>" if bos else None)  # fmt: skip
    fast.chat_template = CHAT
    fast.save_pretrained(folder)
    return len(fast)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def checkpoint(request, tmp_path_factory):
    # a folder named like the architecture: TransformerLens misreads paths containing "llama"
    folder = tmp_path_factory.mktemp("ckpt") / f"tiny-{request.param}"
    vocab = save_tiny_tokenizer(folder, bos=request.param == "llama")
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(0)
    if request.param == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    model.save_pretrained(folder)
    return folder


def test_a_local_checkpoint_loads_with_the_models_own_logits(checkpoint):
    assert is_hf_directory(checkpoint)
    policy = ipgkit.load_model(str(checkpoint))
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    prompt = policy.prompt_format("how many apples now?")
    assert prompt.startswith(
        "<|im_start|>user\nhow many apples now?<|im_end|>\n<|im_start|>assistant"
    )
    ids = torch.tensor(policy.encode([prompt]))
    with torch.no_grad():
        expected = reference(ids).logits
        actual = policy.model(ids)
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()
    # prompts are encoded as the tokenizer encodes them by default (BOS only if it adds one)
    assert ids[0].tolist() == policy.tokenizer(prompt)["input_ids"]


def test_sampling_and_steering_run_on_a_local_checkpoint(checkpoint):
    policy = ipgkit.load_model(str(checkpoint))
    rollouts = ipgkit.sample(policy, ["how many apples now?"], n=2, temperature=0.0,
                             max_new_tokens=5)  # fmt: skip
    with ipgkit.steer(policy, ipgkit.mlp_neurons(1, [0, 3]), gamma=1.0):
        again = ipgkit.sample(policy, ["how many apples now?"], n=2, temperature=0.0,
                              max_new_tokens=5)  # fmt: skip
    assert rollouts.texts == again.texts
    assert torch.equal(rollouts.completion_ids, again.completion_ids)


def test_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert not is_hf_directory(tmp_path)
    with pytest.raises(IpgkitError, match="unknown model"):
        ipgkit.load_model(str(tmp_path))
