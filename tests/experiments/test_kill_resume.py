"""A run killed by a signal midway resumes to the uninterrupted result without redoing finished
work (the real-model study on a tiny checkpoint: rollouts, an attribution and 12 evaluations)."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pandas as pd

import ipgkit.experiments.real_model as real_model
import ipgkit.experiments.workspace as workspace
from ipgkit.experiments.real_model import real_model_study, small_real_config
from tests.experiments.test_real_model import setting  # noqa: F401  (fixture)

CHILD = """
import json, sys
from ipgkit.experiments.real_model import RealModelConfig, real_model_study
settings = json.loads(sys.argv[1])
settings["gammas"] = tuple(settings["gammas"])
real_model_study(RealModelConfig(**settings), sys.argv[2], progress=False)
"""


def finished_evaluations(out) -> int:
    path = out / "evaluations.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_killed_run_resumes_to_the_uninterrupted_result(setting, tmp_path, monkeypatch):  # noqa: F811
    config = small_real_config(
        **{
            **asdict(setting),
            "gammas": (0.0, 0.5, 2.0),
            "random_seeds": 2,
            "held_out": 5,
            "steering_tokens": 48,
        }
    )
    total = 2 + 1 + len(config.gammas) * (1 + config.random_seeds)
    reference = real_model_study(config, tmp_path / "uninterrupted", progress=False)

    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(asdict(config)), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while finished_evaluations(out) < 5 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    done = finished_evaluations(out)
    assert 5 <= done < total, f"killed after {done} of {total} evaluations"
    assert (out / "attributions").is_dir()  # the attribution came before the steering runs

    calls = {"evaluations": 0, "sampling": 0, "ipg": 0}

    def counting(name, function):
        def counted(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return counted

    monkeypatch.setattr(
        workspace, "evaluation_rollouts", counting("evaluations", workspace.evaluation_rollouts)
    )
    monkeypatch.setattr(real_model, "sample", counting("sampling", real_model.sample))
    monkeypatch.setattr(real_model, "ipg", counting("ipg", real_model.ipg))
    resumed = real_model_study(config, out, progress=False)
    assert calls == {"evaluations": total - done, "sampling": 0, "ipg": 0}
    for name, table in reference.items():
        pd.testing.assert_frame_equal(resumed[name], table)
