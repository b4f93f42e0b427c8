"""ipgkit.saes.train: sae-lens training writes a loadable folder; saving replaces it whole."""

import json

import pytest
import torch

from ipgkit.errors import IpgkitError
from ipgkit.saes import (
    SAETrainingConfig,
    load_sae,
    reconstruction_metrics,
    save_sae,
    train_sae,
)
from tests.conftest import tiny_policy
from tests.saes.test_splice import random_sae


def test_train_sae_writes_a_loadable_sae_lens_folder(tmp_path):
    policy = tiny_policy(seed=3)
    traces = policy.encode(
        [f"Q: {i}+{2 * i}?\nA:\n{i}+{2 * i}={3 * i}\n#### {3 * i}" for i in range(40)]
    )
    config = SAETrainingConfig(
        layer=1,
        k=4,
        expansion=2,
        training_tokens=65536,
        lr=3e-3,
        train_batch_size_tokens=512,
        lr_warm_up_steps=5,
    )
    sae = train_sae(policy, config, traces=traces, out_dir=tmp_path / "tiny-L1", progress=False)
    assert sorted(p.name for p in (tmp_path / "tiny-L1").iterdir()) == [
        "cfg.json",
        "ipgkit_training.json",
        "sae_weights.safetensors",
    ]
    loaded = load_sae(tmp_path / "tiny-L1", policy)
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert (loaded.cfg.d_sae, loaded.cfg.k, loaded.cfg.rescale_acts_by_decoder_norm) == (
        64,
        4,
        False,
    )
    torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(64))
    torch.testing.assert_close(loaded.W_enc, sae.W_enc)
    saved = json.loads((tmp_path / "tiny-L1" / "ipgkit_training.json").read_text())
    assert saved["config"]["k"] == 4 and saved["n_traces"] == 40
    metrics = reconstruction_metrics(policy, loaded, traces)
    assert metrics["fvu"] < 0.5 and metrics["l0"] <= 4  # it learned to reconstruct
    with pytest.raises(IpgkitError, match="out of range"):
        train_sae(policy, SAETrainingConfig(layer=5), traces=traces)


def test_save_sae_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "x-L0"
    save_sae(random_sae(32, 0), target, {"run": 1})
    save_sae(random_sae(32, 0, seed=5), target, {"run": 2})
    assert json.loads((target / "ipgkit_training.json").read_text()) == {"run": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x-L0"]  # no staging folders left behind
