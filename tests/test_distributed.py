"""torchrun with 2 gloo processes: IPG and evaluation with prompts sharded by rank equal the
single-process results (same seeds; IPG to 1e-6, rollouts exactly), and per-problem seeding makes
rollouts independent of batching."""

import json

import pytest
import torch

import ipgkit
from ipgkit import distributed
from ipgkit.attribution.result import AttributionResult
from ipgkit.components import mlp_neurons
from ipgkit.errors import IpgkitError
from ipgkit.rollouts import Rollouts
from ipgkit.tasks import length_reward
from tests.conftest import tiny_policy
from tests.torchrun import run_two_processes

SETTINGS = dict(
    n_rollouts=3,
    n_steps=3,
    max_new_tokens=10,
    temperature=0.9,
    top_p=1.0,
    seeding="problem",
    internal_batch_size=8,
)

WORKER = """
import sys
import torch
import ipgkit
from ipgkit import distributed
from ipgkit.components import mlp_neurons
from ipgkit.tasks import length_reward
from tests.conftest import tiny_policy
from tests.torchrun import run_two_processes
from tests.test_distributed import SETTINGS, problems

assert distributed.init_from_environment()
torch.set_num_threads(1)
result = ipgkit.ipg(tiny_policy(seed=4, n_ctx=256), problems(), mlp_neurons(1), length_reward,
                    progress=False, **SETTINGS)
task = ipgkit.tasks.load("arith-word", split="test", n=5)
greedy, sampled = ipgkit.evaluation_rollouts(tiny_policy(seed=4, n_ctx=256), task, n_samples=2,
                                             max_new_tokens=10, seeding="problem")
if distributed.is_main():
    result.save(sys.argv[1])
    torch.save([greedy.state_dict(), sampled.state_dict()], sys.argv[1] + ".pt")
"""


def problems():
    return ipgkit.tasks.load("arith-word", split="train", n=5).problems


def test_per_problem_seeding_gives_each_problem_the_same_rollouts_in_any_batch():
    policy = tiny_policy(seed=4, n_ctx=256)
    settings = dict(n=3, temperature=0.9, max_new_tokens=10, seeding="problem")
    together = ipgkit.sample(policy, problems(), batch_size=4, **settings)
    alone = ipgkit.sample(policy, problems()[3:], batch_size=2, **settings)
    assert together.texts[9:] == alone.texts
    assert torch.equal(
        together.completion_ids[9:, : alone.completion_ids.shape[1]], alone.completion_ids
    )


def test_two_processes_under_torchrun_equal_one(tmp_path):
    out = tmp_path / "sharded.safetensors"
    run_two_processes(WORKER, tmp_path, out, timeout=180)
    sharded = AttributionResult.load(out)
    single = ipgkit.ipg(
        tiny_policy(seed=4, n_ctx=256),
        problems(),
        mlp_neurons(1),
        length_reward,
        progress=False,
        **SETTINGS,
    )
    assert sharded.info["processes"] == 2
    assert single.scores.abs().max() > 0
    torch.testing.assert_close(sharded.per_prompt, single.per_prompt, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sharded.scores, single.scores, atol=1e-6, rtol=1e-6)
    for key in ("frac_reward_zero_std", "mean_reward", "rows_scored"):
        assert sharded.info[key] == pytest.approx(single.info[key], abs=1e-9), key
    assert sharded.info["delta"] == pytest.approx(single.info["delta"], abs=1e-6)

    task = ipgkit.tasks.load("arith-word", split="test", n=5)
    alone = ipgkit.evaluation_rollouts(
        tiny_policy(seed=4, n_ctx=256), task, n_samples=2, max_new_tokens=10, seeding="problem"
    )
    states = torch.load(f"{out}.pt", weights_only=True)
    for state, expected in zip(states, alone, strict=True):
        gathered = Rollouts.from_state_dict(state)
        assert gathered.texts == expected.texts
        assert torch.equal(gathered.completion_ids, expected.completion_ids)
        assert torch.equal(gathered.group_ids, expected.group_ids)
        assert torch.equal(gathered.rewards, expected.rewards)


def test_shards_are_contiguous_blocks_that_cover_every_prompt(monkeypatch):
    blocks = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 3))
        blocks.append(list(distributed.shard(8)))
    assert blocks == [[0, 1, 2], [3, 4, 5], [6, 7]]
    with pytest.raises(IpgkitError, match="2 prompts cannot be shared among 3"):
        distributed.shard(2)


CACHE_RACE_WORKER = """
import json
import sys
import time
from pathlib import Path
from ipgkit import distributed
from ipgkit.io import atomic_write_text, cached

assert distributed.init_from_environment()
rank, folder = distributed.world()[0], Path(sys.argv[1])
computed = []
if rank == 1:
    time.sleep(3)  # by now rank 0 has computed the value and written the file


def compute():
    computed.append(rank)
    return "42"


value = cached(folder / "value.txt", compute, Path.read_text, lambda v, p: atomic_write_text(p, v))
everyone = distributed.gather([bool(computed), value])
if distributed.is_main():
    atomic_write_text(folder / "computed.json", json.dumps(everyone))
"""


def test_a_rank_that_looks_late_computes_what_rank_0_computed(tmp_path):
    """Whether a cached file exists is rank 0's answer: a rank that looks after rank 0 wrote the
    file still computes and meets rank 0 at the barrier (it used to read the file and skip the
    barrier, and the run deadlocked: seen in the experiment suite's 2-process test)."""
    run_two_processes(CACHE_RACE_WORKER, tmp_path, tmp_path, timeout=120)
    assert json.loads((tmp_path / "computed.json").read_text()) == [[True, "42"], [True, "42"]]
