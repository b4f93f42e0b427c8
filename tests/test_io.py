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


# --- the one checkpoint of every resumable command -----------------------------------------------


def test_a_checkpoint_resumes_its_own_run_and_refuses_another(tmp_path):
    from ipgkit.errors import IpgkitError
    from ipgkit.io import Checkpoint

    path = tmp_path / "run.pt"
    identity = {"config": {"lr": 0.1, "betas": (0.9, 0.98)}, "problems": ["p0", "p1"]}
    assert Checkpoint(path, identity, "demo checkpoint").load() is None
    Checkpoint(path, identity, "demo checkpoint").save({"step": 3, "weights": torch.arange(4)})
    state = Checkpoint(path, identity, "demo checkpoint").load()  # tuples compare as lists
    assert state["step"] == 3 and torch.equal(state["weights"], torch.arange(4))
    other = {**identity, "problems": ["p0"]}
    with pytest.raises(IpgkitError, match=r"run\.pt holds a demo checkpoint of another run "):
        Checkpoint(path, other, "demo checkpoint").load()
    with pytest.raises(IpgkitError, match=r"differs in \['problems'\]"):
        Checkpoint(path, other, "demo checkpoint").load()
    assert Checkpoint(path, identity).load()["step"] == 3  # the refusal changed nothing


def test_a_checkpoint_of_another_layout_is_refused_not_misread(tmp_path):
    from ipgkit.io import Checkpoint

    path = tmp_path / "old.pt"
    torch.save({"identity": "abc", "batches": []}, path)  # the layout before the format version
    with pytest.raises(DataFormatError, match=r"old\.pt is not a sampling checkpoint of this"):
        Checkpoint(path, {"identity": "abc"}, "sampling checkpoint").load()
    torch.save({"format": 1, "identity": {}, "state": {}}, path)
    assert Checkpoint(path, {}, "sampling checkpoint").load() == {}


def test_cached_computes_once_and_then_reads(tmp_path):
    from ipgkit.io import cached_state

    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.ones(2)}

    first = cached_state(tmp_path / "w.pt", compute, "weights")
    again = cached_state(tmp_path / "w.pt", compute, "weights")
    assert calls == [1] and torch.equal(first["w"], again["w"])
