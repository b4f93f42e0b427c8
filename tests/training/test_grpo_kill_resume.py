"""`ipgkit grpo` killed by SIGKILL between checkpoints resumes from the last one: the steps it had
saved are not trained again, and the final weights and log equal an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import torch

from ipgkit.cli import main

STEPS = 6
ARGS = [
    "grpo",
    "--task",
    "arith-word",
    "--n-problems",
    "8",
    "--eval-problems",
    "0",
    "--num-generations",
    "4",
    "--batch-size",
    "8",
    "--steps",
    str(STEPS),
    "--max-completion-length",
    "48",
    "--beta",
    "0.1",
    "--save-steps",
    "1",
]


def saved_step(checkpoint) -> int:
    try:
        return int(torch.load(checkpoint, weights_only=True)["state"]["step"])
    except (FileNotFoundError, EOFError, RuntimeError):  # not written yet, or mid-rename
        return 0


def test_a_killed_grpo_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    main([*ARGS, "--out", str(tmp_path / "whole")])
    reference = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["state"]

    out = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-m", "ipgkit.cli", *ARGS, "--out", str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while saved_step(out / "checkpoint.pt") < 2 and child.poll() is None:
        assert time.monotonic() < deadline, "the run saved no checkpoint in time"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    done = saved_step(out / "checkpoint.pt")
    assert 2 <= done < STEPS and not (out / "model").exists()
    assert len(pd.read_csv(out / "log.csv")) == done  # the log is whole, never truncated

    import ipgkit.training.grpo as grpo_module

    trained = []
    step = grpo_module.grpo_step

    def counting(*args, **kwargs):
        trained.append(1)
        return step(*args, **kwargs)

    monkeypatch.setattr(grpo_module, "grpo_step", counting)
    main([*ARGS, "--out", str(out)])
    assert len(trained) == STEPS - done  # saved steps are not trained again
    resumed = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert resumed["step"] == reference["step"] == STEPS
    for name, weight in reference["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, rtol=0, atol=0, msg=name)
    columns = ["step", "reward", "frac_reward_zero_std", "loss"]
    pd.testing.assert_frame_equal(
        pd.DataFrame(resumed["log"])[columns], pd.DataFrame(reference["log"])[columns]
    )
