"""IPG checked against exact enumeration on a tiny-vocabulary model, plus its invariants and errors.

The enumerable world: a random float64 model with a 6-token vocabulary, one fixed prompt, and
completions of at most 3 tokens (EOS = id 2 stops early). Every trajectory is listed, so
J(alpha) = sum_tau pi_alpha(tau) R(tau) is exact, and so is its gradient.

The reference shares no code with ipgkit: log pi comes from a raw TransformerLens forward
(``run_with_hooks`` with a scaling hook written here, ``log_softmax``, ``gather``), the alpha
points are written out, and dJ/dalpha_i is torch autograd through that forward. ipgkit's scorer,
scaling hook, quadrature and advantages are only ever on the checked side.
"""

import math

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

from ipgkit.attribution import (
    amplification_ipg,
    integration_points,
    ipg,
    path_gradients,
    path_points,
    policy_gradient,
)
from ipgkit.components import mlp_neurons, resid_neurons
from ipgkit.errors import HookNameError, IpgkitError, RewardError, ZeroSignalWarning
from ipgkit.models.arith import arith_config
from ipgkit.models.policy import Policy
from ipgkit.rollouts import sample, score_completions
from ipgkit.tasks.base import Problem

VOCAB, HORIZON, EOS = 6, 3, 2
PROMPT = "\n "  # token ids 4, 5 after BOS (1): inside the 6-token vocabulary
PROMPT_IDS = [1, 4, 5]
RIGHT_RIEMANN_5 = ([0.2, 0.4, 0.6, 0.8, 1.0], [0.2] * 5)  # the paper's rule, q = 5
RIGHT_RIEMANN_4 = ([0.25, 0.5, 0.75, 1.0], [0.25] * 4)
#: on-path Monte Carlo that samples from pi itself (T = 1, no top-p cut) over the whole horizon,
#: the distribution the exact reference sums over, at 4 right-Riemann points
ON_PATH_FROM_PI = dict(
    mode="on_path", n_steps=4, temperature=1.0, top_p=1.0, max_new_tokens=HORIZON, progress=False
)


def six_token_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer's first six ids (pad, bos, eos, unk, newline, space) alone, so the
    tokenizer fits the model's 6-token vocabulary."""
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, "\n": 4, " ": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def tiny_vocab_policy(seed: int = 0) -> Policy:
    config = arith_config(
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=32,
        n_ctx=16,
        rotary_dim=8,
        d_vocab=VOCAB,
        seed=seed,
        dtype=torch.float64,
    )
    model = HookedTransformer(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # larger weights than TL's init, so pi is far from uniform
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.4)
    model.eval()
    return Policy(model, six_token_tokenizer(), "tiny-vocab", prompt_format=lambda q: q)


def all_completions() -> list[list[int]]:
    completions = []

    def extend(prefix):
        for token in range(VOCAB):
            sequence = [*prefix, token]
            if token == EOS or len(sequence) == HORIZON:
                completions.append(sequence)
            else:
                extend(sequence)

    extend([])
    return completions


def reward_of(ids) -> float:
    """Counts token 5, plus a bonus for ending with EOS: a reward with some structure."""
    return float(ids.count(5)) + 0.5 * float(ids[-1] == EOS)


def token_reward(prompts, completions, completion_ids, **_):
    return [reward_of(ids) for ids in completion_ids]


@pytest.fixture(scope="module")
def world():
    policy = tiny_vocab_policy()
    assert policy.encode([PROMPT])[0] == PROMPT_IDS
    completions = all_completions()
    rewards = torch.tensor([reward_of(c) for c in completions], dtype=torch.float64)
    return policy, completions, rewards


# --- the reference: raw TransformerLens, nothing from ipgkit --------------------------------------


def reference_logprobs(model, hook_name, units, factors, completions, prompts=None, baseline=None):
    """log pi(completion | prompt) per row with unit i at ``b_i + factors_i (h_i - b_i)`` at every
    position (b = 0 unless ``baseline``), differentiable in ``factors``."""
    units = torch.as_tensor(units)
    prompts = prompts or [PROMPT_IDS] * len(completions)

    def scale(activation, hook):
        multiplier = torch.ones(activation.shape[-1], dtype=activation.dtype)
        multiplier = multiplier.scatter(0, units, factors.to(activation.dtype))
        if baseline is None:
            return activation * multiplier
        offset = torch.zeros(activation.shape[-1], dtype=activation.dtype)
        offset = offset.scatter(0, units, baseline.to(activation.dtype))
        return offset + multiplier * (activation - offset)

    # rows with equal prompt and completion lengths run as one batch: no padding anywhere
    by_shape: dict[tuple[int, int], list[int]] = {}
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        by_shape.setdefault((len(prompt), len(completion)), []).append(row)
    values, order = [], []
    for (prompt_length, _), rows in by_shape.items():
        tokens = torch.tensor([prompts[r] + completions[r] for r in rows])
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, scale)])
        logp = torch.log_softmax(logits[:, prompt_length - 1 : -1], dim=-1)
        chosen = logp.gather(-1, tokens[:, prompt_length:, None])[..., 0]
        values.append(chosen.sum(-1))
        order += rows
    return torch.cat(values)[torch.argsort(torch.tensor(order))]


def reference_value(policy, components, factors, completions, rewards):
    """J = sum_tau pi(tau) R(tau) with the units scaled by ``factors``."""
    logprobs = reference_logprobs(
        policy.model, components.hook_name, components.indices, factors, completions
    )
    return (logprobs.exp() * rewards).sum()


def reference_gradient(policy, components, alpha, completions, rewards):
    """dJ/dalpha_i at alpha_i = alpha for every unit, by autograd: sum_t h_ti dJ/dh~_ti."""
    factors = torch.full(
        (len(components.indices),), float(alpha), dtype=torch.float64, requires_grad=True
    )
    (gradient,) = torch.autograd.grad(
        reference_value(policy, components, factors, completions, rewards), factors
    )
    return gradient


def reference_ipg(policy, components, completions, rewards, alphas, weights):
    """IPG_i = sum_k w_k dJ/dalpha_i(alpha_k), exactly (for one prompt)."""
    return sum(
        w * reference_gradient(policy, components, a, completions, rewards)
        for a, w in zip(alphas, weights, strict=True)
    )


def reference_J(policy, components, alpha, completions, rewards) -> float:
    factors = torch.full((len(components.indices),), float(alpha), dtype=torch.float64)
    with torch.no_grad():
        return float(reference_value(policy, components, factors, completions, rewards))


def engine_ipg(policy, components, completions, rewards, alphas, weights):
    """ipgkit's engine on exact expectations: rows = every trajectory at every alpha, weighted
    by w_k pi_alpha(tau) R(tau) (pi from the reference), so their sum is sum_k w_k dJ/dalpha_i."""
    row_alphas, row_weights = [], []
    for alpha, weight in zip(alphas, weights, strict=True):
        factors = torch.full((len(components.indices),), alpha, dtype=torch.float64)
        with torch.no_grad():
            logprobs = reference_logprobs(
                policy.model, components.hook_name, components.indices, factors, completions
            )
        row_alphas += [alpha] * len(completions)
        row_weights += (weight * logprobs.exp() * rewards).tolist()
    grads = path_gradients(
        policy,
        components,
        [PROMPT_IDS] * len(row_alphas),
        completions * len(alphas),
        torch.tensor(row_alphas, dtype=torch.float64),
        torch.tensor(row_weights, dtype=torch.float64),
        internal_batch_size=200,
    )
    return grads.contributions.sum(0)


# --- the checks -----------------------------------------------------------------------------------


def test_trajectories_are_a_distribution_and_the_scorer_is_the_reference(world):
    policy, completions, rewards = world
    assert len(completions) == 1 + 5 + 5 * 5 * 6
    components = resid_neurons(0, range(8)).resolved(policy.model)
    assert reference_J(policy, components, 1.0, completions, torch.ones_like(rewards)) == (
        pytest.approx(1.0, abs=1e-12)
    )
    with torch.no_grad():
        reference = reference_logprobs(
            policy.model,
            components.hook_name,
            components.indices,
            torch.ones(8, dtype=torch.float64),
            completions,
        )
        scores = score_completions(policy, [PROMPT_IDS] * len(completions), completions)
    torch.testing.assert_close(scores.sequence_logprobs().double(), reference, rtol=0, atol=1e-10)


def test_the_reference_gradient_is_a_derivative(world):
    """The reference's autograd against a central finite difference of the reference's J."""
    policy, completions, rewards = world
    components = mlp_neurons(0, [1, 4]).resolved(policy.model)
    gradient = reference_gradient(policy, components, 0.6, completions, rewards)
    step = 1e-5
    for unit in range(2):
        values = []
        for sign in (1, -1):
            factors = torch.full((2,), 0.6, dtype=torch.float64)
            factors[unit] += sign * step
            with torch.no_grad():
                values.append(
                    float(reference_value(policy, components, factors, completions, rewards))
                )
        assert float(gradient[unit]) == pytest.approx(
            (values[0] - values[1]) / (2 * step), rel=1e-6, abs=1e-9
        )


@pytest.mark.parametrize(
    "components",
    [resid_neurons(0, range(8)), mlp_neurons(0, range(0, 32, 3))],
    ids=["resid-subset", "mlp"],
)
def test_the_engine_on_exact_expectations_equals_the_reference(world, components):
    policy, completions, rewards = world
    components = components.resolved(policy.model)
    engine = engine_ipg(policy, components, completions, rewards, *RIGHT_RIEMANN_5)
    reference = reference_ipg(policy, components, completions, rewards, *RIGHT_RIEMANN_5)
    assert reference.abs().max() > 1e-3  # the test is not vacuous
    torch.testing.assert_close(engine, reference, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("components", [resid_neurons(0, range(8)), mlp_neurons(0)])
def test_completeness_up_to_the_quadrature_error(world, components):
    policy, completions, rewards = world
    components = components.resolved(policy.model)
    change = reference_J(policy, components, 1.0, completions, rewards) - reference_J(
        policy, components, 0.0, completions, rewards
    )
    nodes, gauss_weights = np.polynomial.legendre.leggauss(24)
    gauss = engine_ipg(
        policy,
        components,
        completions,
        rewards,
        ((nodes + 1) / 2).tolist(),
        (gauss_weights / 2).tolist(),
    )
    assert float(gauss.sum()) == pytest.approx(change, abs=1e-7)
    # the right Riemann sum converges at rate 1/q: its error shrinks about fourfold from q=10 to 40
    errors = []
    for q in (10, 40):
        alphas = [(k + 1) / q for k in range(q)]
        riemann = engine_ipg(policy, components, completions, rewards, alphas, [1 / q] * q)
        errors.append(abs(float(riemann.sum()) - change))
    assert errors[1] < errors[0] / 3
    assert errors[0] < 0.2 * abs(change)


def test_monte_carlo_on_path_converges_to_the_reference(world):
    policy, completions, rewards = world
    components = resid_neurons(0, range(8)).resolved(policy.model)
    exact = reference_ipg(policy, components, completions, rewards, *RIGHT_RIEMANN_4)
    problems = [Problem(f"copy/{i}", PROMPT, "", "") for i in range(8)]

    def estimate(n):
        return ipg(
            policy,
            problems,
            components,
            token_reward,
            n_rollouts=n,
            internal_batch_size=512,
            sampling_batch_size=512,
            **ON_PATH_FROM_PI,
        )

    small, large = estimate(16), estimate(512)
    z = (large.scores - exact) / large.stderr
    assert z.abs().max() < 4.5, z
    assert float((z**2).mean()) < 3.0
    rms = [float((r.scores - exact).pow(2).mean().sqrt()) for r in (small, large)]
    assert rms[1] < rms[0] / 2.5, rms  # 32x the samples: about 5.7x smaller error expected
    # J at each alpha point, and at 0 and 1, are means of rewards sampled there: z-scores
    # against the exact J(alpha), with the exact standard error sqrt(Var_pi(R) / samples)
    samples = len(problems) * 512
    checked = dict(zip(["0.25", "0.5", "0.75", "1"], RIGHT_RIEMANN_4[0], strict=True))
    observed = {**large.info["J_by_alpha"], "J(0)": large.info["J(0)"], "J(1)": large.info["J(1)"]}
    for name, alpha in {**checked, "J(0)": 0.0, "J(1)": 1.0}.items():
        mean = reference_J(policy, components, alpha, completions, rewards)
        second = reference_J(policy, components, alpha, completions, rewards**2)
        stderr = math.sqrt((second - mean**2) / samples)
        assert abs(observed[name] - mean) / stderr < 4.5, (name, observed[name], mean)
    assert abs(large.info["J(1)"] - large.info["J(0)"]) > 10 * stderr  # J moves along the path


def test_policy_gradient_is_the_gradient_of_J_at_alpha_one(world):
    """The raw policy gradient (rloo advantages, unbiased) against dJ/dalpha_i at alpha = 1."""
    policy, completions, rewards = world
    components = mlp_neurons(0, range(0, 32, 4)).resolved(policy.model)
    exact = reference_gradient(policy, components, 1.0, completions, rewards)
    problems = [Problem(f"copy/{i}", PROMPT, "", "") for i in range(8)]
    estimate = policy_gradient(
        policy,
        problems,
        components,
        token_reward,
        advantage="rloo",
        n_rollouts=256,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=HORIZON,
        internal_batch_size=512,
        sampling_batch_size=512,
        progress=False,
    )
    assert exact.abs().max() > 1e-2
    z = (estimate.scores - exact) / estimate.stderr
    assert z.abs().max() < 4.5, z
    assert float((z**2).mean()) < 3.0


def group_mean_std_advantages(rewards, n):
    """GRPO's (r - mean) / (std + 1e-4) per group of n, zero where a group is constant."""
    advantages = []
    for start in range(0, len(rewards), n):
        group = rewards[start : start + n]
        mean = sum(group) / n
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (n - 1))
        advantages += [0.0 if std == 0 else (r - mean) / (std + 1e-4) for r in group]
    return advantages


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_paper_mode_equals_the_hand_computed_estimator(world, baseline):
    """Paper-mode IPG of given rollouts against the estimator written out by hand: h' = the
    token mean of the unit over every support rollout (prompt and completion positions), A = GRPO
    advantages, rows weighted w_k A / N, averaged over prompts."""
    policy, *_ = world
    components = mlp_neurons(0, [0, 3, 7, 12]).resolved(policy.model)
    problems = [Problem(f"copy/{i}", PROMPT, "", "") for i in range(3)]
    n = 4
    rollouts = sample(
        policy,
        problems,
        n=n,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=HORIZON,
        seed=5,
        reward=token_reward,
    )
    completions = rollouts.row_completion_ids()
    rewards = [reward_of(c) for c in completions]
    assert len(set(rewards)) > 0
    h_prime = None
    if baseline == "mean":
        values = []
        for completion in completions:
            _, cache = policy.model.run_with_cache(torch.tensor([PROMPT_IDS + completion]))
            values.append(cache[components.hook_name][0][:, list(components.indices)])
        h_prime = torch.cat(values).mean(0)
        assert h_prime.abs().min() > 1e-3
    advantages = group_mean_std_advantages(rewards, n)
    expected = torch.zeros(len(components.indices), dtype=torch.float64)
    for alpha, weight in zip(*RIGHT_RIEMANN_5, strict=True):
        factors = torch.full(
            (len(components.indices),), alpha, dtype=torch.float64, requires_grad=True
        )
        logprobs = reference_logprobs(
            policy.model,
            components.hook_name,
            components.indices,
            factors,
            completions,
            baseline=h_prime,
        )
        objective = (torch.tensor(advantages, dtype=torch.float64) * logprobs).sum() / n
        (gradient,) = torch.autograd.grad(objective, factors)
        expected += weight * gradient / len(problems)
    result = ipg(
        policy, None, components, rollouts=rollouts, n_steps=5, baseline=baseline, progress=False
    )
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(result.scores, expected, rtol=1e-7, atol=1e-10)


def test_on_path_completeness_delta_is_reported(world):
    policy, *_ = world
    problems = [Problem(f"copy/{i}", PROMPT, "", "") for i in range(4)]
    result = ipg(
        policy,
        problems,
        mlp_neurons(0),
        token_reward,
        n_rollouts=64,
        sampling_batch_size=256,
        **ON_PATH_FROM_PI,
    )
    info = result.info
    assert info["delta"] == pytest.approx(
        float(result.scores.sum()) - (info["J(1)"] - info["J(0)"])
    )
    assert set(info["J_by_alpha"]) == {"0.25", "0.5", "0.75", "1"}
    assert info["config"]["advantage"] == "rloo"


# --- the same answers by different routes ---------------------------------------------------------


def digit_count(prompts, completions, **_):
    return [float(sum(ch.isdigit() for ch in text)) for text in completions]


def test_packed_and_one_row_per_pass_agree(policy):
    problems = [Problem(f"p{i}", f"{i}+{i}", "", "") for i in range(3)]
    rollouts = sample(
        policy, problems, n=4, temperature=1.0, max_new_tokens=12, seed=3, reward=digit_count
    )
    rows = len(rollouts)
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    assert len({len(c) for c in completions}) > 1  # ragged, so padding differs between paths
    alphas = torch.linspace(0.1, 1.0, rows)
    weights = torch.randn(rows, generator=torch.Generator().manual_seed(0))
    components = resid_neurons(1)
    packed = path_gradients(
        policy, components, prompts, completions, alphas, weights, internal_batch_size=5
    )
    single = path_gradients(
        policy, components, prompts, completions, alphas, weights, chunks=[[r] for r in range(rows)]
    )
    assert packed.contributions.abs().max() > 1e-4
    torch.testing.assert_close(packed.contributions, single.contributions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        packed.sequence_logprobs, single.sequence_logprobs, atol=1e-5, rtol=1e-6
    )


@pytest.mark.parametrize("components", [resid_neurons(0), mlp_neurons(1, [2, 5])])
def test_sharing_the_prefix_changes_nothing(policy, components):
    from ipgkit.attribution.engine import path_site

    problems = [Problem(f"p{i}", f"{i}+{i}", "", "") for i in range(2)]
    rollouts = sample(policy, problems, n=3, temperature=1.0, max_new_tokens=9, seed=4)
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    rows = [r for r in range(len(rollouts)) for _ in range(3)]  # each rollout at 3 alphas
    alphas = torch.tensor([0.2, 0.6, 1.0] * len(rollouts))
    weights = torch.linspace(-1, 1, len(rows))
    results = []
    row_prompts, row_completions = [prompts[r] for r in rows], [completions[r] for r in rows]
    for share in (True, False):
        results.append(
            path_gradients(
                policy,
                components,
                row_prompts,
                row_completions,
                alphas,
                weights,
                internal_batch_size=8,
                share_prefix=share,
            )
        )
    torch.testing.assert_close(
        results[0].contributions, results[1].contributions, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(results[0].sequence_logprobs, results[1].sequence_logprobs)
    site = path_site(policy.model, components.hook_name)
    assert site == (
        ("blocks.1.hook_resid_pre", 1)
        if components.kind == "resid"
        else ("blocks.1.mlp.hook_post", 1)
    )


def test_ipg_packed_equals_sequential(policy):
    problems = [Problem(f"p{i}", f"{i}*{i}", "", "") for i in range(3)]
    settings = dict(
        n_rollouts=3,
        n_steps=4,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=10,
        internal_batch_size=7,
        progress=False,
    )
    packed = ipg(policy, problems, mlp_neurons(0), digit_count, **settings)
    sequential = ipg(policy, problems, mlp_neurons(0), digit_count, pack=False, **settings)
    assert packed.info["rows_scored"] > 0
    torch.testing.assert_close(packed.per_prompt, sequential.per_prompt, atol=1e-5, rtol=1e-5)


def test_paper_mode_completeness_of_the_surrogate(policy):
    problems = [Problem(f"p{i}", f"{i}-{i}", "", "") for i in range(3)]
    result = ipg(
        policy,
        problems,
        mlp_neurons(1),
        digit_count,
        n_rollouts=4,
        n_steps=24,
        method="gausslegendre",
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=10,
        progress=False,
    )
    surrogate = result.info["surrogate"]
    change = surrogate["S(1)"] - surrogate["S(0)"]
    assert abs(change) > 1e-3
    assert abs(result.delta) < 1e-4 * max(1.0, abs(change))
    # with both end points on the grid, S(0) and S(1) come from the scoring pass itself
    trapezoid = ipg(
        policy,
        problems,
        mlp_neurons(1),
        digit_count,
        n_rollouts=4,
        n_steps=48,
        method="riemann_trapezoid",
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=10,
        progress=False,
    )
    assert trapezoid.info["surrogate"] == pytest.approx(surrogate, rel=1e-5)
    assert abs(trapezoid.delta) < 1e-3 * max(1.0, abs(change))


# --- invariants -----------------------------------------------------------------------------------


def test_constant_reward_gives_zero_scores_and_says_so_loudly(policy):
    problems = [Problem(f"p{i}", str(i), "", "") for i in range(3)]
    with pytest.warns(ZeroSignalWarning, match=r"zero for every unit.*frac_reward_zero_std = 1"):
        result = ipg(
            policy,
            problems,
            resid_neurons(0),
            lambda p, c, **_: [1.0] * len(c),
            n_rollouts=3,
            n_steps=2,
            max_new_tokens=6,
            progress=False,
        )
    assert torch.equal(result.scores, torch.zeros(policy.model.cfg.d_model, dtype=torch.float64))
    assert result.frac_reward_zero_std == 1.0
    assert result.info["rows_scored"] == 0 and result.delta == 0.0
    assert not result.ranks_anything
    with pytest.raises(IpgkitError, match=r"top 5 of 32 units.*all 32 ipg scores equal 0.*reward"):
        result.top(5)
    assert len(result.top(32)) == 32  # every unit is still a valid (unranked) choice


def test_a_reward_with_signal_does_not_warn(policy):
    import warnings

    problems = [Problem(f"p{i}", f"{i}+{i}", "", "") for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroSignalWarning)
        result = ipg(
            policy,
            problems,
            resid_neurons(0),
            digit_count,
            n_rollouts=3,
            n_steps=2,
            temperature=1.0,
            max_new_tokens=10,
            progress=False,
        )
    assert result.info["rows_scored"] > 0 and result.ranks_anything


def constant_unit_policy(unit: int, value: float) -> Policy:
    """A tiny policy whose residual unit ``unit`` after block 0 equals ``value`` everywhere."""
    from tests.conftest import tiny_policy

    policy = tiny_policy(seed=1)
    model = policy.model
    with torch.no_grad():
        model.embed.W_E[:, unit] = value
        block = model.blocks[0]
        block.attn.W_O[:, :, unit] = 0.0
        block.attn.b_O[unit] = 0.0
        block.mlp.W_out[:, unit] = 0.0
        block.mlp.b_out[unit] = 0.0
    return policy


def test_baseline_equal_to_the_activation_gives_zero(policy):
    unit, other, value = 3, 7, 0.8
    constant = constant_unit_policy(unit, value)
    problems = [Problem(f"p{i}", f"{i}+1", "", "") for i in range(3)]
    components = resid_neurons(0, [unit, other])
    settings = dict(n_rollouts=3, n_steps=3, temperature=1.0, max_new_tokens=8, progress=False)
    zero = ipg(constant, problems, components, digit_count, **settings)
    matched = ipg(
        constant, problems, components, digit_count, baseline=torch.tensor([value, 0.0]), **settings
    )
    assert zero.info["rows_scored"] > 0
    assert zero.scores[0] != 0.0  # with h' = 0 the constant unit does get attribution
    assert matched.scores[0] == 0.0  # h' = h: the path is constant, nothing to attribute
    assert matched.scores[1] != 0.0


def test_integration_rules_integrate_polynomials():
    for method, degree in [("riemann_middle", 1), ("riemann_trapezoid", 1), ("gausslegendre", 7)]:
        alphas, weights = integration_points(method, 4)
        assert float(weights.sum()) == pytest.approx(1.0)
        for power in range(degree + 1):
            assert float((weights * alphas**power).sum()) == pytest.approx(1 / (power + 1))
    alphas, weights = integration_points("riemann_right", 10)
    assert alphas[-1] == 1.0 and alphas[0] == pytest.approx(0.1) and math.isclose(weights[0], 0.1)
    assert integration_points("riemann_left", 2)[0].tolist() == [0.0, 0.5]


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_error(policy):
    problems = [Problem("p0", "1+1", "", "")]
    with pytest.raises(HookNameError, match=r"blocks\.7\.hook_resid_post"):
        ipg(policy, problems, resid_neurons(7), digit_count, progress=False)
    with pytest.raises(IpgkitError, match="n_rollouts >= 2"):
        ipg(policy, problems, resid_neurons(0), digit_count, n_rollouts=1, progress=False)
    with pytest.raises(RewardError, match="non-finite"):
        ipg(
            policy,
            problems,
            resid_neurons(0),
            lambda p, c, **_: [math.nan] * len(c),
            n_rollouts=2,
            max_new_tokens=4,
            progress=False,
        )
    with pytest.raises(IpgkitError, match="empty"):
        ipg(policy, [], resid_neurons(0), digit_count, progress=False)
    with pytest.raises(IpgkitError, match="needs a reward function"):
        ipg(policy, problems, resid_neurons(0), None, checkpoint="unused.ckpt", progress=False)
    with pytest.raises(IpgkitError, match="unknown integration method"):
        ipg(policy, problems, resid_neurons(0), digit_count, method="simpson", progress=False)
    with pytest.raises(IpgkitError, match="one value per unit"):
        ipg(
            policy,
            problems,
            resid_neurons(0, [1, 2]),
            digit_count,
            baseline=torch.zeros(3),
            max_new_tokens=4,
            progress=False,
        )
    with pytest.raises(IpgkitError, match="out of range"):
        ipg(policy, problems, resid_neurons(0, [999]), digit_count, progress=False)


# --- interruption and resume ----------------------------------------------------------------------


def test_an_interrupted_run_resumes_without_resampling(policy, tmp_path, monkeypatch):
    from ipgkit.attribution import checkpoint as checkpoint_module
    from ipgkit.attribution import estimators

    problems = [Problem(f"p{i}", f"{i}+{i}", "", "") for i in range(4)]
    settings = dict(
        n_rollouts=3,
        n_steps=3,
        temperature=1.0,
        max_new_tokens=10,
        internal_batch_size=4,
        progress=False,
    )
    reference = ipg(policy, problems, resid_neurons(1), digit_count, **settings)
    checkpoint = tmp_path / "ipg.ckpt"
    monkeypatch.setattr(checkpoint_module, "CHECKPOINT_EVERY_SECONDS", 0.0)
    original_save = checkpoint_module.IPGCheckpoint.save_scoring
    saves = []

    def save_then_crash(self, partial):
        original_save(self, partial)
        saves.append(int(partial.done.sum()))
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.IPGCheckpoint, "save_scoring", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        ipg(policy, problems, resid_neurons(1), digit_count, checkpoint=checkpoint, **settings)
    assert 0 < saves[-1] < reference.info["rows_scored"]
    monkeypatch.setattr(checkpoint_module.IPGCheckpoint, "save_scoring", original_save)

    def no_sampling(*args, **kwargs):
        raise AssertionError("resumed run sampled again")

    monkeypatch.setattr(estimators, "sample", no_sampling)
    resumed = ipg(
        policy, problems, resid_neurons(1), digit_count, checkpoint=checkpoint, **settings
    )
    torch.testing.assert_close(resumed.per_prompt, reference.per_prompt, atol=1e-6, rtol=1e-6)
    with pytest.raises(
        IpgkitError, match=r"IPG checkpoint of another run \(differs in \['config'\]\)"
    ):
        ipg(
            policy,
            problems,
            resid_neurons(1),
            digit_count,
            checkpoint=checkpoint,
            **{**settings, "n_steps": 4},
        )


def test_a_large_completeness_gap_is_flagged(policy):
    import warnings

    problems = [Problem(f"p{i}", f"{i}+{i}", "", "") for i in range(4)]
    settings = dict(n_rollouts=3, n_steps=2, temperature=1.0, max_new_tokens=10, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ipg(policy, problems, resid_neurons(1), digit_count, **settings)
    surrogate = result.info["surrogate"]
    assert abs(result.delta) > 0.1 * abs(surrogate["S(1)"] - surrogate["S(0)"])
    assert any("completeness gap" in str(w.message) for w in caught)


# --- amplification: the path from the real activations upwards (issue 19) -------------------------


def test_path_points_move_the_rule_onto_the_interval():
    alphas, weights = path_points("riemann_right", 4, (1.0, 3.0))
    assert alphas.tolist() == [1.5, 2.0, 2.5, 3.0]
    assert weights.tolist() == [0.5] * 4
    alphas, weights = path_points("gausslegendre", 5, (1.0, 2.5))
    assert float((weights * alphas**3).sum()) == pytest.approx((2.5**4 - 1) / 4, rel=1e-12)


@pytest.mark.parametrize("components", [resid_neurons(0, range(8)), mlp_neurons(0)])
def test_amplification_scores_add_up_to_J_gamma_minus_J_one(world, components):
    """On the amplification path the exact integrand (24 Gauss-Legendre points on [1, 2]) adds
    up to J(2) - J(1), and the engine at the points ipgkit picks equals the reference."""
    policy, completions, rewards = world
    components = components.resolved(policy.model)
    change = reference_J(policy, components, 2.0, completions, rewards) - reference_J(
        policy, components, 1.0, completions, rewards
    )
    assert abs(change) > 1e-2  # amplifying moves J: the check is not vacuous
    nodes, gauss_weights = np.polynomial.legendre.leggauss(24)
    alphas, weights = (1.5 + nodes / 2).tolist(), (gauss_weights / 2).tolist()
    reference = reference_ipg(policy, components, completions, rewards, alphas, weights)
    assert float(reference.sum()) == pytest.approx(change, abs=1e-7)
    points = [a.tolist() for a in path_points("riemann_right", 5, (1.0, 2.5))]
    engine = engine_ipg(policy, components, completions, rewards, *points)
    written = ([1.3, 1.6, 1.9, 2.2, 2.5], [0.3] * 5)
    exact = reference_ipg(policy, components, completions, rewards, *written)
    torch.testing.assert_close(engine, exact, rtol=1e-8, atol=1e-10)


def test_on_path_amplification_converges_to_the_exact_integral(world):
    policy, completions, rewards = world
    components = resid_neurons(0, range(8)).resolved(policy.model)
    written = ([1.5, 2.0, 2.5, 3.0], [0.5] * 4)
    exact = reference_ipg(policy, components, completions, rewards, *written)
    problems = [Problem(f"copy/{i}", PROMPT, "", "") for i in range(8)]
    result = amplification_ipg(
        policy,
        problems,
        components,
        token_reward,
        gamma_max=3.0,
        n_rollouts=512,
        internal_batch_size=512,
        sampling_batch_size=512,
        **ON_PATH_FROM_PI,
    )
    assert result.method == "ipg-amplify"
    assert result.info["config"]["alpha_range"] == [1.0, 3.0]
    z = (result.scores - exact) / result.stderr
    assert z.abs().max() < 4.5, z
    assert set(result.info["J_by_alpha"]) == {"1.5", "2", "2.5", "3"}
    info = result.info
    assert info["delta"] == pytest.approx(
        float(result.scores.sum()) - (info["J(3)"] - info["J(1)"])
    )
    samples = len(problems) * 512
    for name, alpha in (("J(1)", 1.0), ("J(3)", 3.0)):
        mean = reference_J(policy, components, alpha, completions, rewards)
        second = reference_J(policy, components, alpha, completions, rewards**2)
        assert abs(info[name] - mean) / math.sqrt((second - mean**2) / samples) < 4.5, name


def test_paper_mode_amplification_checks_its_surrogate_on_the_path(policy):
    task_problems = [Problem(f"copy/{i}", "Q: 12+7", "", "") for i in range(3)]
    result = amplification_ipg(
        policy,
        task_problems,
        mlp_neurons(1),
        digit_count,
        gamma_max=1.5,
        n_rollouts=4,
        n_steps=3,
        max_new_tokens=6,
        progress=False,
    )
    assert set(result.info["surrogate"]) == {"S(1)", "S(1.5)"}
    change = result.info["surrogate"]["S(1.5)"] - result.info["surrogate"]["S(1)"]
    assert result.delta == pytest.approx(float(result.scores.sum()) - change)
    assert "S(1.5) - S(1)" in result.info["delta_of"]
    with pytest.raises(IpgkitError, match="gamma_max must be a number > 1"):
        amplification_ipg(policy, task_problems, mlp_neurons(1), digit_count, gamma_max=1.0)
    with pytest.raises(IpgkitError, match="0 <= start < end"):
        ipg(policy, task_problems, mlp_neurons(1), digit_count, alpha_range=(2.0, 1.0))
