import pytest
import torch

import ipgkit
from ipgkit.components import ComponentSet, mlp_neurons, resid_neurons, scaling_hook
from ipgkit.errors import HookNameError, IpgkitError
from ipgkit.rollouts import score_completions


def tokens_for(policy, texts):
    ids = policy.encode(texts)
    width = max(map(len, ids))
    return torch.tensor([row + [policy.pad_token_id] * (width - len(row)) for row in ids])


def test_factor_one_leaves_logits_bitwise_unchanged(policy):
    tokens = tokens_for(policy, ["Q: Compute 12+3.\nA:\n"])
    base = policy.model(tokens)
    for components in (resid_neurons(1), resid_neurons(0, [1, 4, 9]), mlp_neurons(1, [0, 3])):
        hook = scaling_hook(components, 1.0)
        scaled = policy.model.run_with_hooks(tokens, fwd_hooks=[(components.hook_name, hook)])
        assert torch.equal(base, scaled)


def test_scaling_multiplies_only_selected_units(policy):
    tokens = tokens_for(policy, ["Q: abc"])
    seen = {}

    def grab(activation, hook):
        seen[hook.name] = activation.detach().clone()

    name = "blocks.0.hook_resid_post"
    _, cache = policy.model.run_with_cache(tokens, names_filter=name)
    hook = scaling_hook(ComponentSet(name, (2, 5)), 3.0)
    policy.model.run_with_hooks(tokens, fwd_hooks=[(name, hook), (name, grab)])
    expected = cache[name].clone()
    expected[..., [2, 5]] *= 3.0
    torch.testing.assert_close(seen[name], expected, rtol=0, atol=0)


@pytest.mark.parametrize("indices", [(3, 4, 5, 6), tuple(range(32)), (0, 1), (30, 31), (7, 2, 9)])
def test_slices_and_gathers_scale_the_same_units(policy, indices):
    """Consecutive indices take a slicing fast path; it must agree with a plain gather."""
    name = "blocks.0.hook_resid_post"
    _, cache = policy.model.run_with_cache(tokens_for(policy, ["Q: 7*8"]), names_filter=name)
    activation = cache[name]
    components = ComponentSet(name, indices)
    assert (components.span() is not None) == (indices != (7, 2, 9))
    factors, baseline = torch.tensor([0.25]), torch.linspace(-1, 1, len(indices))
    scaled = scaling_hook(components, factors, baseline=baseline)(activation, None)
    expected = activation.clone()
    expected[..., list(indices)] = baseline + 0.25 * (activation[..., list(indices)] - baseline)
    torch.testing.assert_close(scaled, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(components.coordinates(activation), activation[..., list(indices)])


def test_per_row_factors_and_baseline(policy):
    tokens = tokens_for(policy, ["Q: 1+1", "Q: 1+1"])
    name = "blocks.1.hook_resid_post"
    _, cache = policy.model.run_with_cache(tokens, names_filter=name)
    baseline = torch.full((3,), 0.5)
    hook = scaling_hook(ComponentSet(name, (0, 1, 2)), torch.tensor([0.0, 1.0]), baseline=baseline)
    seen = {}
    policy.model.run_with_hooks(
        tokens, fwd_hooks=[(name, hook), (name, lambda a, hook: seen.setdefault("a", a.detach()))]
    )
    assert torch.allclose(seen["a"][0, :, :3], torch.full_like(seen["a"][0, :, :3], 0.5))
    torch.testing.assert_close(seen["a"][1], cache[name][1])


def test_generated_positions_leave_prompt_logits_unchanged(policy):
    prompts = policy.encode(["Q: 5+5\nA:\n", "Q: 12\nA:\n"])
    completions = [[10, 11, 12, 13], [14, 15]]
    base = score_completions(policy, prompts, completions)
    # suppressing units on generated positions changes completion scores after the first token,
    # while the first completion token is predicted from the (untouched) last prompt position
    with ipgkit.steer(policy, resid_neurons(0), gamma=0.0, positions="generated"):
        steered = score_completions(policy, prompts, completions)
    torch.testing.assert_close(steered.logprobs[:, 0], base.logprobs[:, 0])
    assert not torch.allclose(steered.logprobs[0, 1:], base.logprobs[0, 1:])
    with ipgkit.steer(policy, resid_neurons(0), gamma=0.0, positions="prompt"):
        prompt_only = score_completions(policy, prompts, completions)
    assert not torch.allclose(prompt_only.logprobs[:, 0], base.logprobs[:, 0])


def test_positions_need_a_layout_outside_ipgkit_passes(policy):
    hook = scaling_hook(resid_neurons(0), 2.0, positions="generated")
    with pytest.raises(IpgkitError, match="sequence layout"):
        policy.model.run_with_hooks(
            tokens_for(policy, ["ab"]), fwd_hooks=[("blocks.0.hook_resid_post", hook)]
        )


def test_unknown_hook_name_lists_close_names(policy):
    with pytest.raises(HookNameError, match=r"blocks\.1\.hook_resid_post"):
        ComponentSet("blocks.1.hook_resid_pots").validate(policy.model)
    with pytest.raises(HookNameError, match="no hook point"):
        resid_neurons(7).validate(policy.model)


def test_indices_out_of_range_and_duplicates(policy):
    with pytest.raises(IpgkitError, match=r"out of range .*\(width 32\)"):
        resid_neurons(0, [0, 32]).validate(policy.model)
    with pytest.raises(IpgkitError, match="width 128"):
        mlp_neurons(0, [128]).validate(policy.model)
    with pytest.raises(IpgkitError, match="duplicate"):
        resid_neurons(0, [1, 1])
    with pytest.raises(IpgkitError, match="unknown component kind"):
        ComponentSet("blocks.0.hook_resid_post", kind="head")


def test_steer_removes_only_its_own_hooks(policy):
    tokens = tokens_for(policy, ["Q: 9"])
    base = policy.model(tokens)
    with ipgkit.steer(policy, resid_neurons(0, [0]), gamma=2.0):
        outer = policy.model(tokens)
        with ipgkit.steer(policy, resid_neurons(1, [1]), gamma=0.0):
            assert not torch.equal(policy.model(tokens), outer)
        torch.testing.assert_close(policy.model(tokens), outer, rtol=0, atol=0)
    torch.testing.assert_close(policy.model(tokens), base, rtol=0, atol=0)


@pytest.mark.parametrize("gamma", [-1.0, float("nan"), float("inf")])
def test_steer_rejects_bad_gamma(policy, gamma):
    with pytest.raises(IpgkitError, match="gamma"), ipgkit.steer(policy, resid_neurons(0), gamma):
        pass


def test_direction_components_scale_one_coordinate():
    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(6, 2))
    directions = basis.T  # two orthonormal rows in a 6-dimensional space
    components = ComponentSet("blocks.0.hook_resid_post", (1,), "direction", directions)
    activation = torch.randn(2, 3, 6)
    assert torch.equal(scaling_hook(components, 1.0)(activation, None), activation)
    doubled = scaling_hook(components, 2.0)(activation, None)
    torch.testing.assert_close(doubled @ directions[1], 2 * (activation @ directions[1]))
    torch.testing.assert_close(doubled @ directions[0], activation @ directions[0])
    removed = scaling_hook(components, 0.0)(activation, None)
    torch.testing.assert_close(removed @ directions[1], torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(components.coordinates(activation), activation @ directions[1:].T)


def test_direction_components_must_be_orthonormal():
    with pytest.raises(IpgkitError, match="orthonormal"):
        ComponentSet("blocks.0.hook_resid_post", None, "direction", torch.ones(2, 4))
    with pytest.raises(IpgkitError, match="go together"):
        ComponentSet("blocks.0.hook_resid_post", None, "direction")


def test_a_set_over_every_unit_has_a_length_once_it_meets_a_model():
    from tests.conftest import tiny_policy

    policy = tiny_policy()
    every = mlp_neurons(1)
    with pytest.raises(TypeError, match=r"call \.validate\(model\)"):
        len(every)
    assert len(every.validate(policy.model)) == policy.model.cfg.d_mlp
    assert every == mlp_neurons(1)  # the recorded width is not part of equality


@pytest.mark.parametrize("indices", [(7, 2, 9), (3, 4, 5), None])
def test_per_unit_gains_multiply_the_row_factor(policy, indices):
    name = "blocks.0.hook_resid_post"
    _, cache = policy.model.run_with_cache(
        tokens_for(policy, ["Q: 7*8", "Q: 9-1"]), names_filter=name
    )
    activation = cache[name]
    columns = list(indices) if indices is not None else list(range(activation.shape[-1]))
    gains = torch.linspace(0.0, 3.0, len(columns))
    factors, baseline = torch.tensor([0.5, 2.0]), torch.linspace(-1, 1, len(columns))
    hook = scaling_hook(ComponentSet(name, indices), factors, baseline=baseline, gains=gains)
    expected = activation.clone()
    for row, factor in enumerate(factors.tolist()):
        units = activation[row][..., columns]
        expected[row][..., columns] = baseline + factor * gains * (units - baseline)
    torch.testing.assert_close(hook(activation, None), expected, rtol=0, atol=1e-6)


def test_gains_on_directions_scale_each_coordinate():
    basis = torch.linalg.qr(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)))[0].T
    components = ComponentSet("blocks.0.hook_resid_post", kind="direction", directions=basis)
    activation = torch.randn(1, 3, 6, generator=torch.Generator().manual_seed(1))
    scaled = scaling_hook(components, 1.0, gains=torch.tensor([0.0, 2.0]))(activation, None)
    coordinates = activation @ basis.T
    expected = activation - coordinates[..., :1] * basis[0] + coordinates[..., 1:] * basis[1]
    torch.testing.assert_close(scaled, expected, rtol=0, atol=1e-6)


def test_gains_leave_other_positions_alone_and_carry_gradient():
    from ipgkit.positions import SequenceLayout, sequence_layout

    activation = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(2))
    gains = torch.tensor([0.5, 3.0], requires_grad=True)
    hook = scaling_hook(
        ComponentSet("blocks.0.hook_resid_post", (1, 3)), 2.0, "generated", None, gains
    )
    with sequence_layout(SequenceLayout(torch.tensor([2, 4]))):
        scaled = hook(activation, None)
    generated = torch.arange(5)[None, :] >= torch.tensor([[2], [4]])
    untouched = ~generated[..., None] | torch.tensor([True, False, True, False])
    assert torch.equal(scaled[untouched.expand_as(scaled)], activation[untouched.expand_as(scaled)])
    weights = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3))
    (scaled * weights).sum().backward()
    # d/dg_i sum_{b,t} w_bti * 2 g_i h_bti over generated positions
    terms = (weights * activation * 2.0)[..., [1, 3]] * generated[..., None]
    torch.testing.assert_close(gains.grad, terms.sum((0, 1)), rtol=1e-6, atol=1e-6)


def test_gains_must_match_the_units():
    hook = scaling_hook(ComponentSet("blocks.0.hook_resid_post", (1, 3)), 1.0, gains=torch.ones(3))
    with pytest.raises(IpgkitError, match="3 gains for 2 units"):
        hook(torch.zeros(1, 2, 4), None)
    with pytest.raises(IpgkitError, match="one finite value per unit"):
        scaling_hook(resid_neurons(0, [1]), 1.0, gains=torch.tensor([float("nan")]))


def test_steering_a_set_with_gains_moves_each_unit_by_gamma_times_its_gain(policy):
    from ipgkit.experiments.workspace import set_signature

    tokens = tokens_for(policy, ["Q: 12+30"])
    name = "blocks.1.hook_resid_post"

    def raw(activation, hook):  # written here: columns 2 and 5 times 2 x 0.5 and 2 x 3
        multiplier = torch.ones(activation.shape[-1])
        multiplier[[2, 5]] = torch.tensor([1.0, 6.0])
        return activation * multiplier

    expected = policy.model.run_with_hooks(tokens, fwd_hooks=[(name, raw)])
    gained = ComponentSet(name, (2, 5), gains=(0.5, 3.0))
    with ipgkit.steer(policy, gained, gamma=2.0):
        steered = policy.model(tokens)
    torch.testing.assert_close(steered, expected, rtol=0, atol=1e-5)
    with ipgkit.steer(policy, ComponentSet(name, (2, 5), gains=(1.0, 1.0)), gamma=1.0):
        assert torch.equal(policy.model(tokens), policy.model.run_with_hooks(tokens))
    plain = ComponentSet(name, (2, 5))
    assert gained != plain and set_signature(gained) != set_signature(plain)
    assert set_signature(plain) == set_signature(ComponentSet(name, (2, 5)))


def test_gains_are_checked_against_the_units(policy):
    with pytest.raises(IpgkitError, match="3 gains for 2 units"):
        ComponentSet("blocks.0.hook_resid_post", (1, 2), gains=(1.0, 1.0, 1.0))
    with pytest.raises(IpgkitError, match="finite and >= 0"):
        ComponentSet("blocks.0.hook_resid_post", (1,), gains=(-1.0,))
    with pytest.raises(IpgkitError, match="2 gains for 32 units"):
        resid_neurons(0).__class__("blocks.0.hook_resid_post", None, gains=(1.0, 2.0)).validate(
            policy.model
        )
