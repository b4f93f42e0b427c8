"""ipgkit.saes.quality and shipped: exact metrics of a perfect SAE, the metrics table."""

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from ipgkit.saes import (
    metrics_markdown,
    reconstruction_metrics,
)
from tests.conftest import tiny_policy


def test_reconstruction_metrics_of_a_perfect_sae_are_exact():
    """W_enc = [I, -I], W_dec = [I; -I], k = d_in: decode(encode(x)) = relu(x) - relu(-x) = x."""
    policy = tiny_policy(seed=2)
    d = policy.model.cfg.d_model
    config = TopKSAEConfig(
        d_in=d,
        d_sae=2 * d,
        k=d,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"),
    )
    sae = TopKSAE(config)
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    traces = policy.encode(["Q: 1+2?\nA:\n3", "Q: 40*2?\nA:\n80\n#### 80"])
    metrics = reconstruction_metrics(policy, sae, traces)
    bos_free_tokens = sum(len(t) - 1 for t in traces)
    assert metrics["tokens"] == bos_free_tokens
    assert metrics["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["l0"] == pytest.approx(d)  # every coordinate is non-zero: one of +x, -x fires
    assert metrics["dead_fraction"] == pytest.approx(0.0, abs=0.1)


def test_metrics_markdown_formats_one_row_per_layer():
    import pandas as pd

    row = {
        "layer": 2,
        "d_sae": 2048,
        "k": 16,
        "fvu": 0.0312,
        "l0": 16.0,
        "dead_fraction": 0.05,
        "accuracy": 0.6,
        "accuracy_spliced": 0.5,
        "accuracy_change": -0.1,
        "change_ci": [-0.15, -0.05],
    }
    text = metrics_markdown(pd.DataFrame([row]))
    assert (
        "| 2 | 2048 | 16 | 0.031 | 16.0 | 5.0% | 0.600 -> 0.500 (-0.100, [-0.150, -0.050]) |"
        in text
    )
