import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from ipgkit.models.arith import arith_config, build_policy

torch.set_num_threads(2)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_policy(seed: int = 0, n_layers: int = 2, d_model: int = 32, n_ctx: int = 128):
    """A random rotary model with the embedded model's tokenizer and prompt format."""
    config = arith_config(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=2,
        d_head=d_model // 2,
        d_mlp=4 * d_model,
        n_ctx=n_ctx,
        rotary_dim=d_model // 2,
        seed=seed,
    )
    model = HookedTransformer(config)
    model.eval()
    return build_policy(model, name="tiny")


@pytest.fixture(scope="session")
def policy():
    return tiny_policy()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
