"""The paper's scale on one GPU (issue 21): IPG seconds per sample, the sampler against Hugging
Face ``generate``, and sequential / packed scoring, on a Qwen2.5-1.5B-shaped model.

Nothing is downloaded. The weights are random: ``Qwen2Config`` with Qwen2.5-1.5B's shapes (28
layers, d_model 1536, 12 query and 2 key/value heads of 128, d_mlp 8960, vocabulary 151,936, tied
embeddings, rope base 1e6). The tokenizer is the tests' small byte-level BPE, padded with added
tokens to that vocabulary. The checkpoint is saved once and loaded by ipgkit (hooked) and by
transformers, so both sides hold the same weights. A random model never stops early, so every
completion runs to its full length.

1. IPG in paper mode, as the paper times it: ``--prompts`` prompts x N = 5 rollouts of 512 new
   tokens at T = 1, then q = 10 right-Riemann steps at every MLP neuron of the middle layer. The
   reward is a continuous text statistic (how many "7"s), so every group has signal. Seconds per
   sample = (sampling + scoring) / (prompts x N); the paper reports 11.6 s.
2. Sampling: ipgkit's sampler against HF ``generate``, greedy, batches of 8 and 32, 128 new
   tokens, the same left-padded prompts, runs alternating, medians of ``--repeats``; completions
   identical to HF's are counted (in bfloat16 the two sides' kernels may round differently).
3. Scoring: the same attribution with one forward/backward per (prompt, alpha) / packed.

    python benchmarks/gpu_paper_scale.py [--prompts 4] [--dtype bfloat16] [--small]

``--small`` swaps in a 2-layer model of the same kind, to check the script on a CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smollm2_pair import hf_greedy, questions

import ipgkit
from ipgkit.rollouts import SamplingConfig, generate
from ipgkit.tasks.base import Problem
from tests.hf_checkpoints import save_tiny_tokenizer

QWEN25_15B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
SMALL = {**QWEN25_15B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
SMALL.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=2048)


def sevens(completions, **_):
    """A continuous reward on random text: the number of "7"s."""
    return [float(text.count("7")) for text in completions]


def save_checkpoint(folder: Path, shape: dict) -> None:
    """Random Qwen2 weights and a tokenizer padded to the vocabulary, saved in ``folder``."""
    size = save_tiny_tokenizer(folder, bos=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(shape["vocab_size"] - size)])
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**shape)).save_pretrained(folder)


def timed(function):
    synchronize()
    started = time.perf_counter()
    value = function()
    synchronize()
    return time.perf_counter() - started, value


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ipg_per_sample(policy, args) -> None:
    problems = [Problem(f"q/{i}", q, "", "") for i, q in enumerate(questions(args.prompts))]
    layer = policy.model.cfg.n_layers // 2
    components = ipgkit.mlp_neurons(layer)
    settings = dict(n_steps=10, internal_batch_size=args.internal_batch_size, progress=False)
    sampling, rollouts = timed(
        lambda: ipgkit.sample(
            policy,
            problems,
            n=5,
            temperature=1.0,
            max_new_tokens=args.ipg_tokens,
            reward=sevens,
            progress=False,
        )
    )
    tokens = rollouts.completion_mask.sum().item()
    packed, result = timed(
        lambda: ipgkit.ipg(policy, None, components, rollouts=rollouts, **settings)
    )
    sequential, _ = timed(
        lambda: ipgkit.ipg(policy, None, components, rollouts=rollouts, pack=False, **settings)
    )
    packed_again, _ = timed(
        lambda: ipgkit.ipg(policy, None, components, rollouts=rollouts, **settings)
    )
    packed = min(packed, packed_again)  # the first packed run also warms the kernels up
    samples = len(problems) * 5
    print(
        f"IPG: {len(problems)} prompts x 5 rollouts x {args.ipg_tokens} new tokens "
        f"({tokens} tokens), "
        f"q = 10, all {policy.model.cfg.d_mlp} MLP neurons of block {layer}, "
        f"frac_reward_zero_std {rollouts.frac_reward_zero_std:.2f}"
    )
    print(
        f"  sampling {sampling:.1f} s, scoring {packed:.1f} s packed, {sequential:.1f} s sequential"
    )
    print(f"  seconds per sample: {(sampling + packed) / samples:.2f} (paper: 11.6)")
    print(f"  sequential / packed scoring: {sequential / packed:.2f}")
    print(f"  completeness delta {result.delta:.3g}")


def sampler_against_hf(policy, hf_model, args, batch: int) -> None:
    prompt_ids = policy.encode([policy.prompt_format(q) for q in questions(batch)])
    pad, eos = policy.pad_token_id, policy.stop_token_ids[0]
    config = SamplingConfig(temperature=0.0, max_new_tokens=args.new_tokens)
    outputs = {}

    def ours():
        ids, mask, _ = generate(policy, prompt_ids, config)
        outputs["ipgkit"] = [row[m].tolist() for row, m in zip(ids, mask, strict=True)]
        return int(mask.sum())

    def theirs():
        outputs["hf"] = hf_greedy(hf_model, prompt_ids, pad, eos, args.new_tokens)
        return sum(map(len, outputs["hf"]))

    timings = {"ipgkit": [], "hf": []}
    counts = {"ipgkit": ours(), "hf": theirs()}  # warm-up
    for _ in range(args.repeats):
        for name, run in (("ipgkit", ours), ("hf", theirs)):
            seconds, counts[name] = timed(run)
            timings[name].append(seconds)
    rates = {name: counts[name] / statistics.median(t) for name, t in timings.items()}
    same = sum(a == b for a, b in zip(outputs["ipgkit"], outputs["hf"], strict=True))
    print(
        f"sampling, batch {batch} x {args.new_tokens} new tokens, greedy: ipgkit "
        f"{rates['ipgkit']:.0f} tokens/s, HF generate {rates['hf']:.0f} tokens/s, ratio "
        f"{rates['ipgkit'] / rates['hf']:.2f}x; identical completions {same}/{batch}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--ipg-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--internal-batch-size", type=int, default=32)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, else float32")
    parser.add_argument("--small", action="store_true", help="a 2-layer model (a CPU check)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    shape = SMALL if args.small else QWEN25_15B
    with tempfile.TemporaryDirectory() as folder:
        seconds, _ = timed(lambda: save_checkpoint(Path(folder), shape))
        print(
            f"random checkpoint saved in {seconds:.0f} s; {device} ({dtype}), "
            f"{torch.cuda.get_device_name() if device == 'cuda' else 'no GPU'}"
        )
        policy = ipgkit.load_model(folder, device=device, dtype=dtype)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    ipg_per_sample(policy, args)
    for batch in (8, 32):
        sampler_against_hf(policy, hf_model, args, batch)


if __name__ == "__main__":
    main()
