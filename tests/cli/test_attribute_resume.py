"""`ipgkit attribute` killed by SIGKILL while scoring resumes from its checkpoint: the result equals
an uninterrupted run's and the rows scored before the kill are not scored again."""

import os
import signal
import subprocess
import sys
import time

import torch

from ipgkit.attribution.result import AttributionResult
from ipgkit.cli import main

ARGS = [
    "attribute",
    "--task",
    "arith-word",
    "--layer",
    "2",
    "--n-problems",
    "30",
    "--n-steps",
    "6",
    "--internal-batch-size",
    "4",
]


def test_a_killed_attribution_resumes_without_rescoring(tmp_path, monkeypatch):
    main([*ARGS, "--out", str(tmp_path / "whole" / "scores.parquet")])
    reference = AttributionResult.load(tmp_path / "whole" / "scores.safetensors")

    out = tmp_path / "killed" / "scores.parquet"
    checkpoint = out.with_name(".scores.checkpoint.pt")
    env = {**os.environ, "IPGKIT_CHECKPOINT_SECONDS": "0", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "ipgkit.cli", *ARGS, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def rows_done() -> int:
        try:
            saved = torch.load(checkpoint, weights_only=True)["state"].get("scoring")
        except (FileNotFoundError, EOFError, RuntimeError):  # not written yet, or mid-rename
            return 0
        return 0 if saved is None else int(saved["done"].sum())

    deadline = time.monotonic() + 120
    while rows_done() < 40 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    saved = torch.load(checkpoint, weights_only=True)["state"]["scoring"]
    done, total = int(saved["done"].sum()), saved["done"].numel()
    assert 40 <= done < total and not out.exists()

    from ipgkit.attribution import path_rows as engine_module

    scored = []
    engine = engine_module.path_gradients

    def counting(*args, resume_from=None, **kwargs):
        scored.append(int((~resume_from.done).sum()) if resume_from is not None else None)
        return engine(*args, resume_from=resume_from, **kwargs)

    monkeypatch.setattr(engine_module, "path_gradients", counting)
    main([*ARGS, "--out", str(out)])
    assert scored[0] is not None and scored[0] <= total - done
    resumed = AttributionResult.load(out.with_suffix(".safetensors"))
    torch.testing.assert_close(resumed.scores, reference.scores, atol=1e-9, rtol=0)
