"""ipgkit.io: written files get normal permissions; records and checkpoints read back safely."""

import os
import stat

import pandas as pd
import pytest
import torch

from ipgkit.attribution import AttributionResult
from ipgkit.components import resid_neurons
from ipgkit.errors import DataFormatError
from ipgkit.io import (
    atomic_torch_save,
    atomic_write_text,
    load_json_record,
    load_torch_state,
    save_json_record,
)
from ipgkit.tasks.base import Problem
from ipgkit.training.interventions import FailedAttempt, HardPool


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_writer_gives_a_new_files_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "table.csv", "a\n")
        atomic_torch_save({"x": torch.ones(2)}, tmp_path / "state.pt")
        # safetensors' own writer creates 0600 files; the atomic writer must not keep that
        AttributionResult(resid_neurons(0, [0]), torch.ones(1)).save(
            tmp_path / "scores.safetensors"
        )
        assert {mode(p) for p in tmp_path.iterdir()} == {0o644}
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "secret")
        assert mode(tmp_path / "private.txt") == 0o600  # the user's umask still rules
    finally:
        os.umask(previous)


def test_a_json_record_round_trips_dataclasses_tuples_and_frames(tmp_path):
    problem = Problem("p/1", "1+1?", "1+1=2", "2", metadata={"steps": 1})
    pool = HardPool([problem], [FailedAttempt(problem, "1+1=3", ("1+1=3",))], k=8, candidates=5)
    save_json_record(
        {"pool": pool, "table": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})},
        tmp_path / "record.json",
    )
    back = load_json_record(tmp_path / "record.json", [HardPool, FailedAttempt, Problem])
    assert back["pool"] == pool and isinstance(back["pool"].attempts[0].steps, tuple)
    pd.testing.assert_frame_equal(back["table"], pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    with pytest.raises(DataFormatError, match="class 'HardPool', which is not one of"):
        load_json_record(tmp_path / "record.json", [FailedAttempt, Problem])
    (tmp_path / "cut.json").write_text((tmp_path / "record.json").read_text()[:50])
    with pytest.raises(DataFormatError, match=r"cut\.json is a truncated or corrupt record"):
        load_json_record(tmp_path / "cut.json", [HardPool])
    (tmp_path / "other.json").write_text('{"some": "json"}')
    with pytest.raises(DataFormatError, match="not an ipgkit record"):
        load_json_record(tmp_path / "other.json", [HardPool])


def test_load_torch_state_reads_plain_state_and_refuses_objects(tmp_path):
    state = {"step": 3, "weights": {"w": torch.arange(3.0)}, "betas": (0.9, 0.98), "log": [{}]}
    atomic_torch_save(state, tmp_path / "ok.pt")
    back = load_torch_state(tmp_path / "ok.pt")
    assert back["step"] == 3 and back["betas"] == (0.9, 0.98)
    torch.save({"frame": pd.DataFrame({"a": [1]})}, tmp_path / "object.pt")
    with pytest.raises(DataFormatError, match=r"object\.pt is not a checkpoint ipgkit can read"):
        load_torch_state(tmp_path / "object.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"empty\.pt is a truncated or corrupt checkpoint"):
        load_torch_state(tmp_path / "empty.pt")
