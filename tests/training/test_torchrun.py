"""GRPO and SFT data-parallel under torchrun (2 gloo processes): each rank samples and scores its
share of every step, the gradients are summed before the step, and the trained weights and the
logs equal one process's to float tolerance."""

import pytest
import torch

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.training import GRPOConfig, SFTConfig, grpo_train, train_sft
from ipgkit.training.sft import text_example
from tests.conftest import tiny_policy
from tests.torchrun import run_two_processes

GRPO = dict(
    num_generations=4,
    per_device_train_batch_size=12,  # 3 prompts a step: shares of 2 and 1
    max_steps=2,
    learning_rate=1e-3,
    beta=0.05,
    num_iterations=2,
    scale_rewards="batch",  # advantages need every rank's rewards
    max_completion_length=10,
    eval_every=2,
    eval_samples=0,
    seeding="problem",
)


def digits(completions, **_):
    return [float(sum(ch.isdigit() for ch in text)) for text in completions]


def problems():
    return ipgkit.tasks.load("arith-chain", split="train", n=5).problems


def sft_examples(policy):
    return [text_example(policy, f"{i}+{i}", f"{2 * i}\n#### {2 * i}", eos=True) for i in range(7)]


def train_both(policy):
    """What the worker and the single process both run: GRPO, then SFT (batches of 3: a last
    batch of 1 that only rank 0 scores)."""
    run = grpo_train(policy, problems(), digits, GRPOConfig(**GRPO), progress=False)
    sft = SFTConfig(num_train_epochs=1, per_device_train_batch_size=3, learning_rate=1e-3)
    log = train_sft(policy, sft_examples(policy), sft, progress=False)
    return run, log


WORKER = """
import sys
import torch
from ipgkit import distributed
from tests.conftest import tiny_policy
from tests.torchrun import run_two_processes
from tests.training.test_torchrun import train_both

assert distributed.init_from_environment()
torch.set_num_threads(1)
policy = tiny_policy(seed=6, n_ctx=256)
run, log = train_both(policy)
if distributed.is_main():
    torch.save(
        {
            "weights": policy.model.state_dict(),
            "grpo": run.log.drop(columns=["seconds"]).to_dict("list"),
            "sft": log.to_dict("list"),
        },
        sys.argv[1],
    )
"""


def test_two_processes_train_as_one(tmp_path):
    out = tmp_path / "trained.pt"
    run_two_processes(WORKER, tmp_path, out)
    sharded = torch.load(out, weights_only=True)

    policy = tiny_policy(seed=6, n_ctx=256)
    start = {k: v.clone() for k, v in policy.model.state_dict().items()}
    run, log = train_both(policy)
    single = run.log.drop(columns=["seconds"]).to_dict("list")
    for name, values in single.items():
        assert sharded["grpo"][name] == pytest.approx(values, rel=1e-5, abs=1e-7), name
    assert sharded["sft"]["loss"] == pytest.approx(log.loss.tolist(), rel=1e-5)
    moved = False
    for name, tensor in policy.model.state_dict().items():
        torch.testing.assert_close(sharded["weights"][name], tensor, atol=1e-5, rtol=1e-4)
        moved |= not torch.equal(tensor, start[name])
    assert moved and run.log.frac_reward_zero_std.lt(1).all()


def test_batch_seeding_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setattr("ipgkit.distributed.init_from_environment", lambda: True)
    config = GRPOConfig(**{**GRPO, "seeding": "batch"})
    with pytest.raises(IpgkitError, match="seeding='problem'"):
        grpo_train(tiny_policy(), problems(), digits, config, progress=False)


RESUMING_WORKER = """
import sys
from dataclasses import replace
import torch
from ipgkit import distributed
from ipgkit.training import GRPOConfig, grpo_train
from tests.conftest import tiny_policy
from tests.training.test_torchrun import GRPO, digits, problems

assert distributed.init_from_environment()
torch.set_num_threads(1)
calls = 0

def digits_then_fail(completions, **kwargs):  # every rank fails in step 2, after a checkpoint
    global calls
    calls += 1
    if sys.argv[2] == "fail" and calls > 1:
        raise RuntimeError("killed in step 2")
    return digits(completions, **kwargs)

digits_then_fail.__name__ = "digits"  # the same reward name as the uninterrupted run's
policy = tiny_policy(seed=6, n_ctx=256)
config = GRPOConfig(**{**GRPO, "save_steps": 1})
grpo_train(policy, problems(), digits_then_fail, config, output_dir=sys.argv[1], progress=False)
if distributed.is_main():
    state = {"weights": policy.model.state_dict(), "steps_sampled": calls}
    torch.save(state, f"{sys.argv[1]}/out.pt")
"""


def test_an_interrupted_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(AssertionError):  # the workers raised in step 2
        run_two_processes(RESUMING_WORKER, tmp_path, out, "fail")
    assert (out / "checkpoint.pt").exists()  # rank 0 saved step 1
    run_two_processes(RESUMING_WORKER, tmp_path, out, "finish")
    resumed = torch.load(out / "out.pt", weights_only=True)
    assert resumed["steps_sampled"] == 1  # the second launch ran step 2 only
    policy = tiny_policy(seed=6, n_ctx=256)
    grpo_train(policy, problems(), digits, GRPOConfig(**{**GRPO, "save_steps": 1}), progress=False)
    for name, tensor in policy.model.state_dict().items():
        torch.testing.assert_close(resumed["weights"][name], tensor, atol=1e-5, rtol=1e-4)
