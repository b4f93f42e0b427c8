"""The real-model study's code path on a tiny random Qwen2 checkpoint and tiny data files (the
SmolLM2 run itself is `ipgkit real-model`; its numbers are in the README)."""

import json

import pandas as pd
import pytest

import ipgkit.experiments.real_model as real_model
import ipgkit.experiments.workspace as workspace
from ipgkit.errors import IpgkitError
from ipgkit.experiments.real_model import RealModelConfig, real_model_study, small_real_config
from tests.hf_checkpoints import save_tiny_checkpoint


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def setting(tmp_path):
    model = save_tiny_checkpoint(tmp_path / "tiny-qwen2", "qwen2")
    data = tmp_path / "data"
    gsm = [{"question": f"how many apples now? {i}", "answer": f"#### {i}"} for i in range(5)]
    write_jsonl(data / "gsm8k" / "test.jsonl", gsm)
    write_jsonl(data / "gsm8k" / "train.jsonl", gsm)
    write_jsonl(
        data / "math500" / "test.jsonl",
        [{"problem": "1+1?", "solution": "\\boxed{2}", "answer": "2"}] * 4,
    )
    return small_real_config(model=str(model), data=str(data), layer=1, gammas=(0.0, 2.0))


def test_the_study_writes_its_tables_and_resumes_without_recomputing(
    setting, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    tables = real_model_study(setting, out, progress=False)
    bench, steering = tables["benchmarks"], tables["length_steering"]
    assert list(bench.task) == ["gsm8k", "math500"] and (bench.n == 4).all()
    assert ((bench.ci_low <= bench.accuracy) & (bench.accuracy <= bench.ci_high)).all()
    assert list(steering.method) == ["unsteered", "IPG", "Random", "IPG", "Random"]
    assert list(steering.gamma) == [1.0, 0.0, 0.0, 2.0, 2.0]
    unsteered = steering.iloc[0]
    assert unsteered.length_change == 0 and unsteered.p_value == 1
    assert len(tables["top_neurons"]) == setting.top
    for name in tables:
        pd.testing.assert_frame_equal(
            pd.read_csv(out / f"{name}.csv"), tables[name], check_dtype=False
        )

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(real_model, "sample", fail)
    monkeypatch.setattr(real_model, "ipg", fail)
    monkeypatch.setattr(workspace, "evaluation_rollouts", fail)
    again = real_model_study(setting, out, progress=False)
    for name in tables:
        pd.testing.assert_frame_equal(again[name], tables[name])


def test_bad_settings_and_a_missing_data_folder_are_named(tmp_path):
    with pytest.raises(IpgkitError, match="held_out"):
        RealModelConfig(held_out=0)
    with pytest.raises(IpgkitError, match="gammas"):
        RealModelConfig(gammas=(float("nan"),))
    with pytest.raises(IpgkitError, match="gsm8k"):
        real_model_study(RealModelConfig(data=str(tmp_path)), tmp_path / "run")
