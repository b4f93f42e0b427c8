"""ipgkit.saes.splice: splicing keeps the model, feature components, feature IPG, loading."""

import warnings

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

import ipgkit
from ipgkit.attribution import path_gradients
from ipgkit.components import mlp_neurons
from ipgkit.errors import HookNameError, IpgkitError
from ipgkit.rollouts import sample
from ipgkit.saes import (
    attach_saes,
    feature_hook,
    load_sae,
    sae_features,
    shipped_sae_dir,
    spliced_saes,
)
from ipgkit.steering import steer
from ipgkit.tasks.base import Problem
from tests.attribution.test_ipg import (
    PROMPT,
    RIGHT_RIEMANN_4,
    all_completions,
    engine_ipg,
    reference_ipg,
    reward_of,
    tiny_vocab_policy,
)
from tests.conftest import tiny_policy


def random_sae(
    d_in: int,
    layer: int,
    d_sae: int = 64,
    k: int = 8,
    seed: int = 0,
    dtype: str = "float32",
    model_name: str | None = None,
) -> TopKSAE:
    """A TopK SAE with random weights (and biases, so latents fire and b_dec matters)."""
    hook_name = f"blocks.{layer}.hook_resid_post"
    config = TopKSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        dtype=dtype,
        metadata=SAEMetadata(hook_name=hook_name, model_name=model_name),
    )
    sae = TopKSAE(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return sae


@pytest.fixture(scope="module")
def spliced():
    policy = tiny_policy(seed=1)
    return policy, attach_saes(policy, [random_sae(32, 0), random_sae(32, 1, seed=1)])


def tokens_of(policy, text="Q: 12+30*2?\nA:\n12+30=42"):
    return torch.tensor(policy.encode([text]))


def test_the_error_term_keeps_the_model_identical(spliced):
    plain, with_saes = spliced
    assert sorted(spliced_saes(with_saes)) == [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
    ]
    tokens = tokens_of(plain)
    with torch.no_grad():
        expected, actual = plain.model(tokens), with_saes.model(tokens)
        # without the error term the same SAEs change the model: the identity is not vacuous
        replaced = attach_saes(plain, [random_sae(32, 0)], use_error_term=False).model(tokens)
    # decode(f) + (x - decode(f)) is x up to one float rounding
    torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-5)
    assert (replaced - expected).abs().max() > 1e-2


def test_float64_identity_is_exact_to_rounding():
    plain = tiny_vocab_policy()
    with_sae = attach_saes(plain, [random_sae(16, 0, d_sae=32, k=4, dtype="float64")])
    tokens = torch.tensor([plain.encode([PROMPT])[0] + [3, 5, 2]])
    with torch.no_grad():
        torch.testing.assert_close(with_sae.model(tokens), plain.model(tokens), atol=1e-12, rtol=0)


def test_steering_with_gamma_one_changes_nothing(spliced):
    _, policy = spliced
    tokens = tokens_of(policy)
    with torch.no_grad():
        base = policy.model(tokens)
        with steer(policy, sae_features(policy, layer=1), gamma=1.0):
            steered = policy.model(tokens)
    assert torch.equal(base, steered)


def test_steering_a_feature_adds_its_scaled_decoder_row(spliced):
    _, policy = spliced
    tokens = tokens_of(policy)
    sae = spliced_saes(policy)["blocks.1.hook_resid_post"]
    names = ["blocks.1.hook_resid_post.hook_sae_output", feature_hook(1)]
    with torch.no_grad():
        _, base = policy.model.run_with_cache(tokens, names_filter=names)
        latents = base[feature_hook(1)][0]
        chosen = latents.sum(0).topk(2).indices.tolist()  # two latents that fire on this text
        features, gamma = sae_features(policy, layer=1, indices=chosen), 2.5
        with steer(policy, features, gamma):
            _, steered = policy.model.run_with_cache(tokens, names_filter=names)
    change = steered[names[0]][0] - base[names[0]][0]
    expected = (gamma - 1) * latents[:, chosen] @ sae.W_dec[chosen]
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(change, expected, atol=1e-5, rtol=1e-5)


def test_an_sae_for_another_model_or_hook_is_refused():
    policy = tiny_policy(seed=1)
    with pytest.raises(IpgkitError, match=r"d_in = 64.*width 32"):
        attach_saes(policy, [random_sae(64, 0)])
    with pytest.raises(HookNameError, match=r"blocks.7.hook_resid_post.*closest"):
        attach_saes(policy, [random_sae(32, 7)])
    with pytest.raises(IpgkitError, match="two SAEs for the same hook"):
        attach_saes(policy, [random_sae(32, 0), random_sae(32, 0, seed=2)])
    spliced = attach_saes(policy, [random_sae(32, 0)])
    with pytest.raises(IpgkitError, match=r"already spliced at \['blocks.0.hook_resid_post'\]"):
        attach_saes(spliced, [random_sae(32, 0, seed=3)])
    other = random_sae(32, 0, model_name="someone-else")
    with pytest.warns(UserWarning, match="trained on 'someone-else'"):
        attach_saes(policy, [other])


def test_feature_components_name_the_spliced_sae(spliced):
    plain, policy = spliced
    features = sae_features(policy, layer=0, indices=[3, 9])
    assert features.hook_name == "blocks.0.hook_resid_post.hook_sae_acts_post"
    assert features.kind == "sae" and features.hook_width(policy.model) == 64
    with pytest.raises(IpgkitError, match=r"no SAE is spliced at blocks.2.*spliced: \['blocks.0"):
        sae_features(policy, layer=2)
    with pytest.raises(IpgkitError, match="no SAE is spliced"):
        sae_features(plain, layer=0)
    with pytest.raises(IpgkitError, match="out of range"):
        sae_features(policy, layer=0, indices=[64])
    every = sae_features(policy, layer=0)  # every latent: the policy tells how many
    assert len(every) == 64 and every == sae_features(policy, layer=0)


def test_feature_ipg_matches_exact_enumeration():
    """The IPG issue's enumeration test, with the units being the latents of a spliced SAE."""
    plain = tiny_vocab_policy()
    policy = attach_saes(plain, [random_sae(16, 0, d_sae=32, k=6, dtype="float64")])
    prompt = policy.encode([PROMPT])[0]
    completions = all_completions()
    rewards = torch.tensor([reward_of(c) for c in completions], dtype=torch.float64)
    with torch.no_grad():
        _, cache = policy.model.run_with_cache(torch.tensor([prompt]), names_filter=feature_hook(0))
    live = cache[feature_hook(0)][0].amax(0).nonzero().flatten()[:6].tolist()
    features = sae_features(policy, layer=0, indices=live)
    # the reference scales the latents with a hook written in the test (raw TransformerLens)
    engine = engine_ipg(policy, features, completions, rewards, *RIGHT_RIEMANN_4)
    reference = reference_ipg(policy, features, completions, rewards, *RIGHT_RIEMANN_4)
    assert reference.abs().max() > 1e-4
    torch.testing.assert_close(engine, reference, rtol=1e-8, atol=1e-10)


def test_feature_ipg_runs_through_ipg_and_flags_gradients_through_error_terms(spliced):
    _, policy = spliced
    problems = [Problem(f"p{i}", f"{i}+{i}", "", "") for i in range(2)]

    def digits(prompts, completions, **_):
        return [float(sum(ch.isdigit() for ch in text)) for text in completions]

    with warnings.catch_warnings():
        # features of the last SAE: no spliced SAE sits downstream of them
        warnings.filterwarnings("error", message=".*error term carries no gradient")
        result = ipgkit.ipg(
            policy,
            problems,
            sae_features(policy, layer=1),
            digits,
            n_rollouts=3,
            n_steps=3,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=8,
            progress=False,
        )
    table = result.to_dataframe()
    assert set(table.kind) == {"sae"} and len(table) == 64
    rollouts = sample(policy, problems, n=2, temperature=1.0, max_new_tokens=6)
    rows = len(rollouts)
    for upstream in (mlp_neurons(1), sae_features(policy, layer=0)):
        with pytest.warns(UserWarning, match="error term carries no gradient"):
            path_gradients(
                policy,
                upstream,
                rollouts.row_prompt_ids(),
                rollouts.row_completion_ids(),
                torch.ones(rows),
                torch.ones(rows),
            )


def test_missing_shipped_sae_and_bad_paths_get_clear_errors(tmp_path):
    policy = tiny_policy()
    with pytest.raises(IpgkitError, match="no shipped SAE for model 'tiny' at layer 1"):
        load_sae(1, policy)
    with pytest.raises(IpgkitError, match="not an SAE directory"):
        load_sae(tmp_path, policy)
    with pytest.raises(IpgkitError, match="needs the policy"):
        load_sae(1)


@pytest.mark.skipif(
    not (shipped_sae_dir("arith", 2) / "cfg.json").exists(),
    reason="the shipped SAEs are not trained yet",
)
def test_load_model_splices_the_shipped_sae_without_changing_the_model():
    plain = ipgkit.load_model("arith")
    policy = ipgkit.load_model("arith", saes=[2])
    assert list(spliced_saes(policy)) == ["blocks.2.hook_resid_post"]
    tokens = tokens_of(plain, "Q: Compute (52*5)-42.\nA:\n52*5=260\n260-42=218\n#### 218")
    with torch.no_grad():
        torch.testing.assert_close(policy.model(tokens), plain.model(tokens), atol=1e-4, rtol=1e-5)
    assert sae_features(policy, layer=2).hook_width(policy.model) == 16 * 128


def test_a_pretrained_release_goes_through_sae_lens_and_fails_in_one_line_offline(monkeypatch):
    import sae_lens

    from ipgkit.saes import load_sae

    calls = []

    def from_pretrained(release, sae_id, device="cpu"):
        calls.append((release, sae_id, device))
        return random_sae(8, 0, d_sae=16)

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", from_pretrained)
    sae = load_sae("some-release", "blocks.0.hook_resid_post")
    assert calls == [("some-release", "blocks.0.hook_resid_post", "cpu")]
    assert sae.cfg.d_sae == 16
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IpgkitError, match=r"needs the Hugging Face hub") as caught:
        load_sae("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert "\n" not in str(caught.value)
    with pytest.raises(IpgkitError, match="sae-lens cannot load 'no-such-release'"):
        load_sae("no-such-release", "x")
