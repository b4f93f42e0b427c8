"""Per-token IPG: positions sum to each unit's score, and one position's term equals the product
of the activation and the gradient computed with raw TransformerLens hooks."""

import pytest
import torch

import ipgkit
from ipgkit.attribution import IPGConfig, token_attribution
from ipgkit.components import mlp_neurons
from tests.conftest import tiny_policy


@pytest.fixture(scope="module")
def attributed():
    policy = tiny_policy(seed=4)
    policy.model.to(torch.float64)  # exact sums: no float32 reordering error
    task = ipgkit.tasks.load("arith-chain", split="train", n=3)
    config = IPGConfig(n_rollouts=3, n_steps=4, max_new_tokens=10, temperature=1.0)

    def reward(completions, **_):  # a reward with spread on a random model
        return [float(len(c) % 3) for c in completions]

    rollouts = ipgkit.sample(
        policy, task.problems, n=3, max_new_tokens=10, temperature=1.0, seed=2, reward=reward
    )
    components = mlp_neurons(1)
    result = ipgkit.ipg(
        policy, task.problems, components, config=config, rollouts=rollouts, progress=False
    )
    return policy, rollouts, components, config, result


def test_positions_and_rollouts_sum_to_each_units_score(attributed):
    policy, rollouts, components, config, result = attributed
    view = token_attribution(policy, rollouts, components, config)
    # the same rows and weights as ipg's: equal to float64 rounding
    assert torch.allclose(view.totals().sum(0), result.scores, rtol=0, atol=1e-14)
    frame = view.to_dataframe()
    assert len(frame) == sum(len(t) for t in view.tokens) * policy.model.cfg.d_mlp
    by_unit = frame.groupby("unit").contribution.sum()
    assert torch.allclose(
        torch.tensor(by_unit.to_numpy()), view.totals().sum(0), rtol=0, atol=1e-14
    )
    assert set(frame.part) == {"prompt", "completion"}


def test_chosen_units_and_rows_are_columns_of_the_full_view(attributed):
    policy, rollouts, components, config, _ = attributed
    full = token_attribution(policy, rollouts, components, config, rows=[4])
    some = token_attribution(policy, rollouts, components, config, rows=[4], units=[7, 2])
    assert some.components.indices == (7, 2)
    assert torch.equal(some.contributions[0], full.contributions[0][:, [7, 2]])
    assert torch.equal(some.activations[0], full.activations[0][:, [7, 2]])
    with pytest.raises(ipgkit.IpgkitError, match="not in the set at"):
        token_attribution(policy, rollouts, components.resolved(policy.model), config, units=[999])


def test_one_position_equals_raw_autograd_through_transformerlens_hooks(attributed):
    policy, rollouts, components, config, _ = attributed
    row = int(rollouts.advantages(config.advantages).abs().argmax())
    view = token_attribution(policy, rollouts, components, config, rows=[row])
    model = policy.model
    ids = [*rollouts.row_prompt_ids()[row], *rollouts.row_completion_ids()[row]]
    prompt_length = len(rollouts.row_prompt_ids()[row])
    tokens = torch.tensor([ids])
    advantage = float(rollouts.advantages(config.advantages)[row])
    weight_scale = advantage / (config.n_rollouts * len(rollouts.problems))
    expected = torch.zeros(len(ids), model.cfg.d_mlp, dtype=torch.float64)
    for k in range(1, config.n_steps + 1):  # right Riemann: alpha = k/q, weight 1/q
        alpha, captured = k / config.n_steps, {}

        def scale(activation, hook, alpha=alpha, captured=captured):
            leaf = (alpha * activation.detach()).requires_grad_(True)
            captured["h"], captured["leaf"] = activation.detach(), leaf
            return leaf

        logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.hook_post", scale)])
        logprobs = logits.log_softmax(-1)[0, prompt_length - 1 : -1]
        total = logprobs.gather(-1, tokens[0, prompt_length:, None]).sum()
        (gradient,) = torch.autograd.grad(total, captured["leaf"])
        expected += captured["h"][0] * gradient[0] * weight_scale / config.n_steps
    assert torch.allclose(view.contributions[0], expected, rtol=0, atol=1e-12)
    assert torch.allclose(
        view.activations[0], model.run_with_cache(tokens)[1]["blocks.1.mlp.hook_post"][0].double()
    )


def test_coloured_token_views(attributed, monkeypatch):
    from ipgkit.rollouts import token_views

    policy, rollouts, components, config, result = attributed
    unit = result.top(1).indices[0]
    view = token_attribution(policy, rollouts, components, config, rows=[0, 1], units=[unit])
    page = view.to_html(1, unit)
    completion = view.tokens[1][view.prompt_lengths[1] :]
    assert page.count("<span") == len(completion)
    values = view.values(1, unit)[view.prompt_lengths[1] :]
    strongest = max(range(len(values)), key=lambda i: abs(values[i]))
    full = "rgb(255,0,0)" if values[strongest] > 0 else "rgb(0,0,255)"
    assert full in page  # the largest value gets full colour
    activation = view.to_html(1, unit, "activation")
    assert activation != page
    if token_views.has_circuitsvis():  # installed with the dev extra
        from circuitsvis.utils.render import RenderedHTML

        assert isinstance(view.show(0, unit), RenderedHTML)
    monkeypatch.setattr(token_views, "has_circuitsvis", lambda: False)
    assert "<span" in view.show(0, unit).data  # the plain-HTML fallback


def test_the_tidy_table_names_every_quantity(attributed):
    policy, rollouts, components, config, _ = attributed
    frame = token_attribution(
        policy, rollouts, components, config, rows=[0], units=[3]
    ).to_dataframe()
    assert list(frame.columns) == [
        "rollout",
        "position",
        "token",
        "part",
        "unit",
        "contribution",
        "activation",
        "reward",
        "advantage",
    ]
