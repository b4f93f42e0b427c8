"""Baselines: checked against direct computations on unpadded single rows (a different route)."""

import pytest
import torch

from ipgkit.attribution import baselines, ipg
from ipgkit.components import mlp_neurons, resid_neurons
from ipgkit.errors import IpgkitError
from ipgkit.rollouts import sample
from ipgkit.steering import steer
from ipgkit.tasks.base import Problem


def digit_count(prompts, completions, **_):
    return [float(sum(ch.isdigit() for ch in text)) for text in completions]


@pytest.fixture(scope="module")
def support(policy):
    problems = [
        Problem(f"p{i}", f"{i}+{i}", f"{i}+{i}={2 * i}\n#### {2 * i}", str(2 * i)) for i in range(4)
    ]
    return problems, sample(
        policy, problems, n=3, temperature=1.0, max_new_tokens=10, seed=1, reward=digit_count
    )


def generated_activations(policy, rollouts, hook_name):
    """Per row, the activations at the completion positions, one unpadded forward per row."""
    rows = []
    for prompt, completion in zip(
        rollouts.row_prompt_ids(), rollouts.row_completion_ids(), strict=True
    ):
        tokens = torch.tensor([[*prompt, *completion]])
        _, cache = policy.model.run_with_cache(tokens, names_filter=hook_name)
        rows.append((cache[hook_name][0, len(prompt) :], completion))
    return rows


def test_random_baselines_are_seeded(policy):
    components = resid_neurons(0)
    first, again, other = (baselines.random_baseline(policy, components, s) for s in (0, 0, 1))
    assert torch.equal(first.scores, again.scores)
    assert not torch.equal(first.scores, other.scores)
    assert len(baselines.random_baselines(policy, components, seeds=range(3))) == 3
    assert len(set(first.top(5).indices)) == 5


def test_activation_magnitude_matches_a_direct_computation(policy, support):
    _, rollouts = support
    result = baselines.activation_magnitude(policy, rollouts, mlp_neurons(1, [0, 3, 9]))
    per_prompt = torch.zeros(len(rollouts.problems), 3, dtype=torch.float64)
    counts = torch.zeros(len(rollouts.problems))
    for group, (activation, _) in zip(
        rollouts.group_ids.tolist(),
        generated_activations(policy, rollouts, "blocks.1.mlp.hook_post"),
        strict=True,
    ):
        per_prompt[group] += activation[:, [0, 3, 9]].abs().sum(0).double()
        counts[group] += len(activation)
    expected = (per_prompt / counts[:, None]).mean(0)
    torch.testing.assert_close(result.scores, expected, rtol=1e-5, atol=1e-6)
    assert result.stderr is not None and torch.isfinite(result.stderr).all()


def test_reasoning_neurons_match_a_direct_computation(policy, support):
    _, rollouts = support
    concepts = ("1", "2", "+", "=")
    result = baselines.reasoning_neurons(policy, rollouts, resid_neurons(0, [1, 2]), concepts)
    ids = set(baselines.concept_token_ids(policy, concepts))
    values = {True: [], False: []}
    for activation, completion in generated_activations(
        policy, rollouts, "blocks.0.hook_resid_post"
    ):
        for position, token in enumerate(completion):
            values[token in ids].append(activation[position, [1, 2]].double())
    on, off = torch.stack(values[True]), torch.stack(values[False])
    pooled = ((len(on) - 1) * on.var(0) + (len(off) - 1) * off.var(0)) / (len(on) + len(off) - 2)
    expected = (on.mean(0) - off.mean(0)) / pooled.sqrt()
    torch.testing.assert_close(result.scores, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(IpgkitError, match="no token"):
        baselines.reasoning_neurons(policy, rollouts, resid_neurons(0), ["zebra"])


def test_control_vector_is_a_steerable_direction(policy, support):
    problems, _ = support
    result = baselines.control_vector(policy, problems, resid_neurons(1))
    vector = result.top(1)
    direction = vector.directions[0]
    assert vector.kind == "direction" and float(direction.norm()) == pytest.approx(1.0, abs=1e-5)
    assert result.info["mean_projection_gap"] > 0  # oriented so reasoning projects higher
    tokens = torch.tensor([policy.encode(["Q: 3+4\nA:\n3+4=7"])[0]])
    plain = policy.model(tokens)
    captured = {}

    def capture(activation, hook):
        captured["h"] = activation.detach()

    for gamma in (1.0, 0.0):
        hooks = [("blocks.1.hook_resid_post", capture)]
        with steer(policy, vector, gamma=gamma), policy.model.hooks(fwd_hooks=hooks):
            logits = policy.model(tokens)
        if gamma == 1.0:
            assert torch.equal(logits, plain)
        else:
            assert captured["h"] @ direction == pytest.approx(0.0, abs=1e-5)
            assert not torch.allclose(logits, plain)


def test_policy_gradient_is_ipg_at_alpha_one(policy, support):
    _, rollouts = support
    pg = baselines.policy_gradient(
        policy, None, resid_neurons(1), rollouts=rollouts, progress=False
    )
    one_step = ipg(policy, None, resid_neurons(1), rollouts=rollouts, n_steps=1, progress=False)
    assert pg.method == "policy_gradient" and pg.info["config"]["n_steps"] == 1
    torch.testing.assert_close(pg.scores, one_step.scores)


def test_integrated_gradients_are_complete_for_a_smooth_path(policy, support):
    problems, _ = support
    result = baselines.integrated_gradients(
        policy, problems, mlp_neurons(0), n_steps=16, method="gausslegendre", progress=False
    )
    change = result.info["logprob(1)"] - result.info["logprob(0)"]
    assert abs(change) > 1e-3
    assert abs(result.delta) < 1e-4 * max(1.0, abs(change))


def test_reason_score_matches_a_direct_computation(policy, support):
    from ipgkit.saes import attach_saes, sae_features
    from tests.saes.test_splice import random_sae

    _, rollouts = support
    spliced = attach_saes(policy, [random_sae(32, 1, d_sae=48, k=6)])
    features = sae_features(spliced, layer=1)
    words, window, alpha = ("+", "\n", "A:"), (1, 2), 0.7
    result = baselines.reason_score(
        spliced, rollouts, features, words=words, window=window, alpha=alpha, positions="all"
    )
    # the same statistic by plain loops over unpadded rows
    word_ids = [policy.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    per_word = [[] for _ in words]
    around, away = [], []
    for prompt, completion in zip(
        rollouts.row_prompt_ids(), rollouts.row_completion_ids(), strict=True
    ):
        sequence = [*prompt, *completion]
        with torch.no_grad():
            _, cache = spliced.model.run_with_cache(
                torch.tensor([sequence]), names_filter=features.hook_name
            )
        acts = cache[features.hook_name][0].double()
        near = [set() for _ in words]
        for w, ids in enumerate(word_ids):
            for start in range(len(sequence) - len(ids) + 1):
                if sequence[start : start + len(ids)] == ids:
                    near[w].update(range(start - window[0], start + len(ids) + window[1]))
        for position in range(len(sequence)):
            hits = [position in near[w] for w in range(len(words))]
            for w, hit in enumerate(hits):
                if hit:
                    per_word[w].append(acts[position])
            (around if any(hits) else away).append(acts[position])
    mean_around, mean_away = torch.stack(around).mean(0), torch.stack(away).mean(0)
    contrast = mean_around / mean_around.sum() - mean_away / mean_away.sum()
    word_means = torch.stack([torch.stack(values).mean(0) for values in per_word])
    shares = word_means / word_means.sum(0)
    entropy = torch.nan_to_num(-(shares * shares.log())).sum(0) / torch.log(torch.tensor(3.0))
    expected = contrast * entropy.double() ** alpha
    assert all(per_word) and expected.abs().max() > 1e-4
    torch.testing.assert_close(result.scores, expected, rtol=1e-4, atol=1e-7)
    assert result.method == "reason_score" and result.info["words"] == list(words)
    with pytest.raises(IpgkitError, match="around and away"):
        baselines.reason_score(spliced, rollouts, features, words=("zzzz",), positions="all")
