"""The fast decode steps against TransformerLens's own forward (``generate(reference=True)``) and
against the plain hooked forward without a cache: the same tokens and log-probabilities, on the
embedded architecture and on a Llama-shaped one (RMSNorm, gated MLP, grouped-query attention),
with hooks at every site a ComponentSet can name, with an SAE spliced in, and after the weights
change."""

import pytest
import torch
from transformer_lens import HookedTransformer

import ipgkit
from ipgkit.components import ComponentSet, mlp_neurons, resid_neurons
from ipgkit.models.arith import arith_config, build_policy
from ipgkit.rollouts import SamplingConfig, decode, generate
from ipgkit.saes import attach_saes, sae_features
from tests.saes.test_splice import random_sae

QUESTIONS = ["Compute 12+30*2.", "Ann has 4 pens. She finds 7 more. How many pens now?", "1+2?"]


def llama_shaped(seed: int = 0):
    """The embedded tokenizer on a Llama-shaped random model, in float64 (exact comparisons)."""
    config = arith_config(
        n_layers=3,
        d_model=48,
        n_heads=6,
        d_head=8,
        d_mlp=96,
        n_key_value_heads=2,
        act_fn="silu",
        normalization_type="RMS",
        gated_mlp=True,
        rotary_dim=8,
        n_ctx=128,
        dtype=torch.float64,
        seed=seed,
        original_architecture="LlamaForCausalLM",
    )
    model = HookedTransformer(config).eval()
    with torch.no_grad():  # random biases and norm weights, so every term is exercised
        generator = torch.Generator().manual_seed(seed)
        for name, parameter in model.named_parameters():
            if name.endswith(("b_in", "b_out", "b_O", "b_Q", "_b_K", "_b_V", ".w")):
                parameter.add_(
                    0.1 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                )
    return build_policy(model, name="llama-shaped")


def embedded_shaped(seed: int = 0):
    model = HookedTransformer(
        arith_config(
            n_layers=2,
            d_model=32,
            d_head=8,
            d_mlp=64,
            rotary_dim=8,
            n_ctx=128,
            seed=seed,
            dtype=torch.float64,
        )
    ).eval()
    return build_policy(model, name="embedded-shaped")


ARCHITECTURES = {"llama-shaped": llama_shaped, "embedded-shaped": embedded_shaped}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def policy(request):
    return ARCHITECTURES[request.param]()


def prompts_of(policy):
    return policy.encode([policy.prompt_format(q) for q in QUESTIONS])  # three lengths: padding


def both(policy, config=None, **kwargs):
    config = config or SamplingConfig(temperature=0.0, max_new_tokens=12)
    prompts = prompts_of(policy)
    return [
        generate(policy, prompts, config, torch.Generator().manual_seed(3), reference=reference)
        for reference in (True, False)
    ]


def assert_same(reference, fast):
    assert torch.equal(reference[0], fast[0]) and torch.equal(reference[1], fast[1])
    torch.testing.assert_close(fast[2], reference[2], atol=1e-10, rtol=1e-10)


def count_fast_steps(monkeypatch):
    calls = []
    original = decode._attention_step
    monkeypatch.setattr(decode, "_attention_step", lambda *a: calls.append(1) or original(*a))
    return calls


def test_every_hook_sees_the_same_prompt_pass_padding_included(policy, monkeypatch):
    """The prompt pass runs fast too (causal and padding mask): each hook point the block calls
    gets TransformerLens's tensor at every position, the left padding's included (where no key
    is visible and TransformerLens's attention gives zeros)."""
    calls = count_fast_steps(monkeypatch)
    model, seen = policy.model, {}
    points = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
    names = [f"blocks.{layer}.{point}" for layer in range(model.cfg.n_layers) for point in points]

    def keep(value, hook):
        if value.shape[1] > 1:  # the prompt pass
            seen.setdefault(hook.name, []).append(value.clone())

    with model.hooks(fwd_hooks=[(name, keep) for name in names]):
        both(policy)
    assert len(calls) >= model.cfg.n_layers  # the fast path ran the prompt pass
    for name in names:
        reference, fast = seen[name]
        torch.testing.assert_close(fast, reference, atol=1e-10, rtol=1e-10)


def test_fast_steps_equal_transformer_lens(policy, monkeypatch):
    calls = count_fast_steps(monkeypatch)
    reference, fast = both(policy)
    assert_same(reference, fast)
    assert calls  # the fast path ran (one call per layer and decode step)
    sampled = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=12)
    assert_same(*both(policy, sampled))


SITES = {
    "resid_post": lambda layer: resid_neurons(layer, [1, 5, 7]),
    "mlp_post": lambda layer: mlp_neurons(layer, [0, 3, 9, 20]),
    "attn_out": lambda layer: ComponentSet(f"blocks.{layer}.hook_attn_out", (2, 4), "resid"),
    "mlp_out": lambda layer: ComponentSet(f"blocks.{layer}.hook_mlp_out", (0, 6), "resid"),
    "resid_mid": lambda layer: ComponentSet(f"blocks.{layer}.hook_resid_mid", (1, 3), "resid"),
    "mlp_pre": lambda layer: ComponentSet(f"blocks.{layer}.mlp.hook_pre", (1, 2), "mlp"),
}


@pytest.mark.parametrize("site", sorted(SITES))
@pytest.mark.parametrize("gamma", [0.0, 2.5])
def test_steering_acts_on_the_fast_steps_as_on_transformer_lens(policy, site, gamma):
    plain = both(policy)[0]
    with ipgkit.steer(policy, SITES[site](1), gamma=gamma, positions="generated"):
        reference, fast = both(policy)
    assert_same(reference, fast)
    assert not torch.equal(reference[2], plain[2])  # the steering did something


def test_steered_samples_equal_the_plain_hooked_forward_without_a_cache(policy):
    """Greedy tokens are the argmax of a full, cache-free forward under the same hooks."""
    components = mlp_neurons(1, list(range(0, 40, 3)))
    config = SamplingConfig(temperature=0.0, max_new_tokens=10)
    (prompt,) = policy.encode([policy.prompt_format(QUESTIONS[1])])
    with ipgkit.steer(policy, components, gamma=3.0):
        ids, mask, logprobs = generate(policy, [prompt], config)
        sequence = torch.tensor([[*prompt, *ids[0][mask[0]].tolist()]])
        with torch.no_grad():
            logits = policy.model(sequence)[0, len(prompt) - 1 : -1]
    generated = ids[0][mask[0]]
    assert torch.equal(logits.argmax(-1), generated)
    expected = logits.log_softmax(-1).gather(-1, generated[:, None])[:, 0]
    torch.testing.assert_close(logprobs[0][mask[0]], expected.float(), atol=1e-6, rtol=1e-6)


def test_a_hook_inside_attention_sends_the_step_to_transformer_lens(policy, monkeypatch):
    calls = count_fast_steps(monkeypatch)
    doubled = lambda q, hook: 2 * q  # noqa: E731
    with policy.model.hooks(fwd_hooks=[("blocks.0.attn.hook_q", doubled)]):
        reference, fast = both(policy)
    assert_same(reference, fast)
    passes = fast[0].shape[1]  # the prompt pass, then a step for each token after the first
    assert len(calls) == (policy.model.cfg.n_layers - 1) * passes  # every block but 0


def test_a_spliced_sae_and_its_latents_act_on_the_fast_steps(policy):
    spliced = attach_saes(
        policy, [random_sae(policy.model.cfg.d_model, 1, d_sae=64, k=8, dtype="float64")]
    )
    assert_same(*both(spliced))
    with ipgkit.steer(spliced, sae_features(spliced, layer=1, indices=[3, 9, 30]), gamma=0.0):
        assert_same(*both(spliced))


def test_changed_weights_are_arranged_again(policy):
    model = policy.model
    before = both(policy)[1]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.blocks[1].mlp.W_out.mul_(3.0)  # in place: the tensor's version moves on
        model.unembed.W_U.add_(0.5)
    try:
        reference, fast = both(policy)
        assert_same(reference, fast)
        assert not torch.equal(fast[2], before[2])
    finally:
        model.load_state_dict(saved)
    assert_same(both(policy)[1], before)


def test_blocks_with_their_own_rotary_tables_rotate_with_them(policy):
    """The cos/sin rows are looked up once per pass for blocks with equal tables; a block with
    tables of its own (as Gemma's local layers have) uses its own."""
    attention = policy.model.blocks[1].attn
    cos, sin = attention.rotary_cos, attention.rotary_sin
    before = both(policy)[1]
    attention.rotary_cos, attention.rotary_sin = cos.roll(5, 0), sin.roll(5, 0)
    try:
        reference, fast = both(policy)
    finally:
        attention.rotary_cos, attention.rotary_sin = cos, sin
    assert_same(reference, fast)
    assert not torch.equal(fast[2], before[2])


def test_a_forward_of_the_users_own_keeps_transformer_lens_steps(policy, monkeypatch):
    calls = count_fast_steps(monkeypatch)
    mlp = policy.model.blocks[0].mlp
    mlp.forward = lambda x, original=mlp.forward: original(x) * 0.5  # the user's own MLP
    try:
        reference, fast = both(policy)
    finally:
        del mlp.forward
    assert_same(reference, fast)
    passes = fast[0].shape[1]
    assert len(calls) == (policy.model.cfg.n_layers - 1) * passes
