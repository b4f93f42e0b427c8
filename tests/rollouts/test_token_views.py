"""Activations along rollouts: each position equals the value read with raw TransformerLens /
SAELens calls, and the tidy table and coloured views show exactly those values."""

import pytest
import torch

import ipgkit
from ipgkit.components import mlp_neurons
from ipgkit.rollouts import token_activations
from ipgkit.saes import attach_saes, sae_features
from tests.conftest import tiny_policy
from tests.saes.test_splice import random_sae


@pytest.fixture(scope="module")
def sampled():
    policy = tiny_policy(seed=5)
    task = ipgkit.tasks.load("arith-chain", split="train", n=2)
    rollouts = ipgkit.sample(
        policy, task.problems, n=2, max_new_tokens=8, temperature=1.0, seed=1, progress=False
    )
    return policy, rollouts


def sequence_of(rollouts, row):
    return torch.tensor([[*rollouts.row_prompt_ids()[row], *rollouts.row_completion_ids()[row]]])


def test_neuron_activations_equal_the_cached_hook(sampled):
    policy, rollouts = sampled
    view = token_activations(policy, rollouts, mlp_neurons(1), rows=[3, 1], units=[5, 0])
    for slot, row in enumerate([3, 1]):
        _, cache = policy.model.run_with_cache(sequence_of(rollouts, row))
        expected = cache["blocks.1.mlp.hook_post"][0][:, [5, 0]].double()
        assert torch.allclose(view.activations[slot], expected, atol=1e-6)
    frame = view.to_dataframe()
    columns = ["rollout", "position", "token", "part", "unit", "activation", "reward"]
    assert list(frame.columns) == columns
    assert len(frame) == 2 * sum(len(t) for t in view.tokens)
    shown = frame[(frame.rollout == 1) & (frame.unit == 0)].activation.tolist()
    assert shown == view.values(1, 0)
    with pytest.raises(ipgkit.IpgkitError, match="not shown"):
        view.values(2, 0)
    with pytest.raises(ipgkit.IpgkitError, match="quantity"):
        view.values(1, 0, "contribution")


def test_sae_latent_activations_equal_the_sae_encoding(sampled):
    policy, rollouts = sampled
    sae = random_sae(32, 1, seed=3)
    spliced = attach_saes(policy, [sae])
    latents = sae_features(spliced, layer=1)
    view = token_activations(spliced, rollouts, latents, rows=[0], units=[3, 40])
    _, cache = policy.model.run_with_cache(sequence_of(rollouts, 0))
    with torch.no_grad():
        expected = sae.encode(cache["blocks.1.hook_resid_post"][0])[:, [3, 40]].double()
    assert torch.allclose(view.activations[0], expected, atol=1e-5)
    assert view.to_html(0, 40).count("<span") == len(view.tokens[0]) - view.prompt_lengths[0]
