"""`ipgkit evaluate` killed by SIGKILL mid-sampling resumes from the batches it saved: the finished
batches are not decoded again and the table equals an uninterrupted run's."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import ipgkit.io as io_module
import ipgkit.rollouts.sampling as sampling_module
from ipgkit.cli import main
from ipgkit.errors import IpgkitError
from ipgkit.rollouts import sample
from ipgkit.tasks.base import Problem

ARGS = [
    "evaluate",
    "--task",
    "arith-word",
    "--limit",
    "48",
    "--samples",
    "2",
    "--ks",
    "1",
    "2",
    "--batch-size",
    "8",
]


def saved_batches(progress: Path) -> int:
    total = 0
    for path in progress.glob("*.pt"):
        with contextlib.suppress(EOFError, RuntimeError):  # mid-rename
            total += len(torch.load(path, weights_only=True)["state"]["batches"])
    return total


def test_a_killed_evaluation_resumes_without_redecoding(tmp_path, monkeypatch):
    main([*ARGS, "--out", str(tmp_path / "whole.csv")])
    reference = pd.read_csv(tmp_path / "whole.csv")

    out = tmp_path / "killed.csv"
    progress = tmp_path / ".killed.progress"
    child = subprocess.Popen(
        [sys.executable, "-m", "ipgkit.cli", *ARGS, "--out", str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while saved_batches(progress) < 8 and child.poll() is None:  # 6 greedy + 2 sampled
        assert time.monotonic() < deadline, "no batches saved in time"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    done = saved_batches(progress)
    assert 8 <= done < 6 + 12 and not out.exists()

    decoded = []
    generate = sampling_module.generate

    def counting(policy, prompt_ids, *args, **kwargs):
        decoded.append(len(prompt_ids))
        return generate(policy, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(sampling_module, "generate", counting)
    main([*ARGS, "--out", str(out)])
    assert len(decoded) == 6 + 12 - done  # only the batches the kill lost
    pd.testing.assert_frame_equal(pd.read_csv(out), reference, check_exact=True)
    assert not progress.exists()  # removed once the table is written


@pytest.mark.parametrize("seeding", ["batch", "problem"])
def test_sampling_resumes_from_any_batch_to_the_same_rollouts(
    policy, tmp_path, seeding, monkeypatch
):
    problems = [Problem(f"p{i}", f"{i}+{i % 3}", "", "") for i in range(5)]
    settings = dict(n=3, temperature=1.0, max_new_tokens=10, seed=2, batch_size=4, seeding=seeding)
    whole = sample(policy, problems, **settings)
    snapshots = []  # the checkpoint as it stood after each batch: what a kill there leaves
    save = io_module.atomic_torch_save

    def recording(record, path):
        state = record["state"]
        snapshots.append({**record, "state": {**state, "batches": list(state["batches"])}})
        save(record, path)

    monkeypatch.setattr(io_module, "atomic_torch_save", recording)
    checkpoint = tmp_path / "progress.pt"
    sample(policy, problems, checkpoint=checkpoint, **settings)
    assert [len(s["state"]["batches"]) for s in snapshots] == [1, 2, 3, 4]  # 15 rows, batches of 4
    for snapshot in snapshots[:3]:
        torch.save(snapshot, checkpoint)
        resumed = sample(policy, problems, checkpoint=checkpoint, **settings)
        assert torch.equal(resumed.completion_ids, whole.completion_ids)
        assert torch.equal(resumed.sample_logprobs, whole.sample_logprobs)
    with pytest.raises(
        IpgkitError, match=r"holds a sampling checkpoint of another run \(differs in \['config'\]\)"
    ):
        sample(policy, problems, checkpoint=checkpoint, **{**settings, "seed": 3})
