"""Bounded memory: fused attention equals TransformerLens's, checkpointed blocks give the same
gradients, budgeted passes give the same attributions, and the budget's chunking is exact."""

import math

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ipgkit.attribution import IPGConfig, ipg, path_gradients
from ipgkit.components import mlp_neurons, resid_neurons, scaling_hook
from ipgkit.errors import IpgkitError
from ipgkit.memory import (
    MemoryBudget,
    checkpointed_blocks,
    fused_attention,
    fused_attention_supported,
    gradient_block,
)
from ipgkit.rollouts import iter_scores, sample
from ipgkit.tasks.base import Problem
from tests.conftest import tiny_policy


def attention_model(n_key_value_heads=None, **overrides) -> HookedTransformer:
    settings = dict(
        n_layers=3,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        n_ctx=48,
        d_vocab=40,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        gated_mlp=True,
        n_key_value_heads=n_key_value_heads,
        seed=0,
        dtype=torch.float64,
    )
    settings.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**settings)).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def right_padded_batch():
    tokens = torch.randint(0, 40, (3, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(tokens)
    mask[1, 17:] = 0
    mask[2, 9:] = 0
    return tokens, mask


@pytest.fixture(scope="module")
def deep_policy():
    return tiny_policy(n_layers=3)


@pytest.mark.parametrize("kv_heads", [None, 2], ids=["multi-head", "grouped-query"])
def test_fused_attention_equals_transformer_lens_at_real_positions(kv_heads):
    model = attention_model(kv_heads)
    tokens, mask = right_padded_batch()
    real = mask.bool()
    embedded = model.embed(tokens)

    def loss_and_gradient():
        start = embedded.clone().requires_grad_(True)
        out = model(start, start_at_layer=0, attention_mask=mask)
        loss = (out[real] * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum()
        return out.detach(), torch.autograd.grad(loss, start)[0]

    eager_out, eager_gradient = loss_and_gradient()
    with fused_attention(model):
        assert all("forward" in vars(block.attn) for block in model.blocks)
        fused_out, fused_gradient = loss_and_gradient()
    assert not any("forward" in vars(block.attn) for block in model.blocks)  # restored
    # float64: the two are the same function, so they agree to rounding
    torch.testing.assert_close(fused_out[real], eager_out[real], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fused_gradient[real], eager_gradient[real], atol=1e-12, rtol=1e-10)
    assert eager_gradient[real].abs().max() > 1e-2


def test_hooks_on_the_pattern_and_left_padding_keep_transformer_lens_attention():
    model = attention_model()
    tokens, _ = right_padded_batch()
    left_padded = torch.ones_like(tokens)
    left_padded[1, :5] = 0
    seen = []
    eager = model(tokens, attention_mask=left_padded)
    with fused_attention(model):
        # left padding: a plain causal mask would let real queries see padding, so TL's runs
        torch.testing.assert_close(model(tokens, attention_mask=left_padded), eager, rtol=0, atol=0)
        # a hook on block 0's pattern: block 0 runs TL's attention (same output bit for bit)
        _, fused_cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_attn_out")
        hook = ("blocks.0.attn.hook_pattern", lambda pattern, hook: seen.append(pattern.shape))
        with model.hooks(fwd_hooks=[hook]):
            _, observed_cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_attn_out")
    _, eager_cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_attn_out")
    assert seen == [torch.Size([3, 4, 24, 24])]  # the hook saw TL's pattern
    observed, eager_out = (
        observed_cache["blocks.0.hook_attn_out"],
        eager_cache["blocks.0.hook_attn_out"],
    )
    torch.testing.assert_close(observed, eager_out, rtol=0, atol=0)
    assert not torch.equal(fused_cache["blocks.0.hook_attn_out"], eager_out)  # fused otherwise
    torch.testing.assert_close(
        fused_cache["blocks.0.hook_attn_out"], eager_out, atol=1e-12, rtol=1e-10
    )


def test_attention_the_fused_path_cannot_reproduce_is_left_alone():
    capped = attention_model(attn_scores_soft_cap=20.0)
    assert not fused_attention_supported(capped.blocks[0].attn)
    tokens, _ = right_padded_batch()
    eager = capped(tokens)
    with fused_attention(capped):
        assert not any("forward" in vars(block.attn) for block in capped.blocks)
        torch.testing.assert_close(capped(tokens), eager, rtol=0, atol=0)


def saved_bytes(run) -> int:
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(sizes)


def test_checkpointed_blocks_keep_only_their_inputs_and_give_the_same_gradient():
    model = attention_model(n_layers=4)
    tokens, mask = right_padded_batch()
    start = model.embed(tokens).requires_grad_(True)

    def loss():
        return model(start, start_at_layer=0, attention_mask=mask)[mask.bool()].pow(2).sum()

    plain_bytes = saved_bytes(loss)
    (plain,) = torch.autograd.grad(loss(), start)
    with checkpointed_blocks(model, above=0):
        checkpointed_bytes = saved_bytes(loss)
        (checkpointed,) = torch.autograd.grad(loss(), start)
    assert not any("forward" in vars(block) for block in model.blocks)
    # blocks 1..3 keep one [batch, pos, d_model] input each instead of their activations
    assert checkpointed_bytes < 0.5 * plain_bytes
    torch.testing.assert_close(checkpointed, plain, atol=1e-12, rtol=1e-10)


def test_gradient_block_names_where_the_leaf_is_made():
    assert gradient_block("blocks.2.mlp.hook_post", 4) == 2
    assert gradient_block("blocks.3.hook_resid_pre", 4) == 3
    assert gradient_block("blocks.1.hook_resid_post.hook_sae_acts_post", 4) == 1
    assert gradient_block("hook_embed", 4) == -1
    assert gradient_block("ln_final.hook_normalized", 4) == 4


# --- the budget ---------------------------------------------------------------------------------


def test_split_keeps_order_and_fits_each_chunk(deep_policy):
    cfg = deep_policy.model.cfg
    one_row = MemoryBudget(1e6).row_bytes(cfg, 100)
    budget = MemoryBudget(2.5 * one_row / 2**20)  # two rows of 100 tokens per pass
    assert budget.split([[0, 1, 2, 3, 4]], [100] * 5, cfg) == [[0, 1], [2, 3], [4]]
    # ragged widths: every chunk fits at its widest row, and is cut only where the next row
    # would not fit (greedy, order kept)
    widths = [100, 100, 400, 400, 100, 30, 30, 30]
    chunks = budget.split([[0, 1, 2, 3], [4, 5, 6, 7]], widths, cfg)
    assert [row for chunk in chunks for row in chunk] == list(range(8))
    assert len(chunks) > 2
    for chunk, following in zip(chunks, [*chunks[1:], None], strict=True):
        assert len(chunk) * budget.row_bytes(cfg, max(widths[r] for r in chunk)) <= budget.bytes
        if following and chunk[-1] != 3:  # row 3 ends its input chunk
            grown = [*chunk, following[0]]
            assert len(grown) * budget.row_bytes(cfg, max(widths[r] for r in grown)) > budget.bytes


def test_a_row_larger_than_the_budget_is_refused_with_its_size(deep_policy):
    budget = MemoryBudget(1.0)
    with pytest.raises(
        IpgkitError,
        match=r"memory budget of 1 MiB is below the \d+ MiB one row "
        r"of 5000 tokens needs",
    ):
        budget.split([[0]], [5000], deep_policy.model.cfg)


@pytest.mark.parametrize("bad", [0, -5, math.nan, math.inf, "1GB", True])
def test_a_budget_must_be_a_positive_size(bad):
    with pytest.raises(IpgkitError, match="memory budget must be a positive number of MiB"):
        MemoryBudget(bad)
    with pytest.raises(IpgkitError, match="memory budget"):
        IPGConfig(memory_budget_mib=bad)


def test_position_chunks_follow_the_budget(deep_policy):
    cfg = deep_policy.model.cfg
    assert MemoryBudget(1024).position_chunk_size(cfg) == 256
    small = MemoryBudget(0.05)
    assert 1 <= small.position_chunk_size(cfg) < 256
    assert small.position_chunk_size(cfg) * cfg.d_vocab * 4 * 12 <= small.bytes // 4


# --- budgeted passes give the same numbers ------------------------------------------------------


def rollout_rows(policy, n_problems=3, n=3):
    problems = [Problem(f"p{i}", f"{i}+{2 * i}", "", "") for i in range(n_problems)]
    rollouts = sample(policy, problems, n=n, temperature=1.0, max_new_tokens=14, seed=5)
    prompts, completions = rollouts.row_prompt_ids(), rollouts.row_completion_ids()
    assert len({len(c) for c in completions}) > 1  # ragged
    return prompts, completions


@pytest.mark.parametrize(
    "components", [resid_neurons(0), mlp_neurons(1, [1, 7, 30])], ids=["resid-0", "mlp-1"]
)
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_budgeted_path_gradients_equal_unbudgeted(deep_policy, components, positions):
    prompts, completions = rollout_rows(deep_policy)
    rows = len(prompts)
    alphas = torch.linspace(0.2, 1.0, rows)
    weights = torch.randn(rows, generator=torch.Generator().manual_seed(2))
    model = deep_policy.model
    widest = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    units = components.hook_width(model)
    budget = MemoryBudget(3.5 * MemoryBudget(1e6).row_bytes(model.cfg, widest, units) / 2**20)
    # a steering hook above the attributed block, on generated positions only: the checkpointed
    # blocks must replay it under the layout of their forward
    steering = scaling_hook(mlp_neurons(2).resolved(model), 1.7, "generated")
    with model.hooks(fwd_hooks=[("blocks.2.mlp.hook_post", steering)]):
        plain = path_gradients(
            deep_policy,
            components,
            prompts,
            completions,
            alphas,
            weights,
            positions=positions,
            internal_batch_size=8,
        )
        budgeted = path_gradients(
            deep_policy,
            components,
            prompts,
            completions,
            alphas,
            weights,
            positions=positions,
            internal_batch_size=8,
            memory_budget=budget,
        )
    assert len(budget.split([list(range(rows))], [widest] * rows, model.cfg, units)) >= 3
    assert plain.contributions.abs().max() > 1e-4
    torch.testing.assert_close(budgeted.contributions, plain.contributions, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        budgeted.sequence_logprobs, plain.sequence_logprobs, atol=1e-5, rtol=1e-6
    )


def test_budgeted_scores_equal_unbudgeted(deep_policy):
    prompts, completions = rollout_rows(deep_policy)
    budget = MemoryBudget(2 * MemoryBudget(1e6).row_bytes(deep_policy.model.cfg, 30) / 2**20)
    plain = list(iter_scores(deep_policy, prompts, completions))
    budgeted = list(iter_scores(deep_policy, prompts, completions, memory_budget=budget))
    assert len(plain) == 1 and len(budgeted) > 1
    assert [r.start for r, _ in budgeted] == sorted({r.start for r, _ in budgeted})
    for rows, scores in budgeted:
        width = scores.logprobs.shape[1]
        expected = plain[0][1]
        torch.testing.assert_close(
            scores.logprobs, expected.logprobs[rows, :width], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            scores.entropy, expected.entropy[rows, :width], atol=1e-5, rtol=1e-5
        )


def test_ipg_with_a_memory_budget_equals_ipg_without(deep_policy):
    problems = [Problem(f"p{i}", f"{i}*{i}", "", "") for i in range(3)]

    def digits(prompts, completions, **_):
        return [float(sum(ch.isdigit() for ch in text)) for text in completions]

    settings = dict(
        n_rollouts=3,
        n_steps=3,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=12,
        internal_batch_size=6,
        progress=False,
    )
    plain = ipg(deep_policy, problems, mlp_neurons(1), digits, **settings)
    budgeted = ipg(deep_policy, problems, mlp_neurons(1), digits, memory_budget_mib=2.0, **settings)
    assert plain.info["rows_scored"] > 0
    torch.testing.assert_close(budgeted.per_prompt, plain.per_prompt, atol=1e-5, rtol=1e-4)
    assert "memory_budget_mib" not in IPGConfig().describe()  # earlier cache keys stay valid
    assert IPGConfig(memory_budget_mib=512).describe()["memory_budget_mib"] == 512


def test_the_mean_baseline_under_a_budget_equals_the_unbudgeted_one(deep_policy):
    from ipgkit.rollouts import mean_activations

    prompts, completions = rollout_rows(deep_policy)
    groups = torch.arange(len(prompts)) // 3
    budget = MemoryBudget(2 * MemoryBudget(1e6).row_bytes(deep_policy.model.cfg, 30) / 2**20)
    plain = mean_activations(deep_policy, "blocks.1.mlp.hook_post", prompts, completions, groups)
    budgeted = mean_activations(
        deep_policy, "blocks.1.mlp.hook_post", prompts, completions, groups, memory_budget=budget
    )
    torch.testing.assert_close(budgeted, plain, atol=1e-6, rtol=1e-5)


def test_grpo_and_sft_steps_under_a_budget_equal_the_unbudgeted_ones(deep_policy):
    from dataclasses import replace

    from ipgkit.training.grpo import GRPOConfig, grpo_step
    from ipgkit.training.sft import sft_backward, sft_loss, text_example

    problems = [Problem(f"p{i}", f"{i}*{i}", "", "") for i in range(3)]

    def digits(prompts, completions, **_):
        return [float(sum(ch.isdigit() for ch in text)) for text in completions]

    rollouts = sample(
        deep_policy, problems, n=4, temperature=1.0, max_new_tokens=12, reward=digits, seed=1
    )
    budget = 2 * MemoryBudget(1e6).row_bytes(deep_policy.model.cfg, 30) / 2**20
    config = GRPOConfig(num_generations=4, per_device_train_batch_size=12, num_iterations=2)
    examples = [
        text_example(deep_policy, f"{i}*{i}", f"{i * i}\n#### {i * i}", eos=True) for i in range(6)
    ]
    after = []
    for memory_budget_mib in (None, budget):
        policy = deep_policy.clone()
        parameters = list(policy.model.parameters())
        for parameter in parameters:
            parameter.requires_grad_(True)
        # plain SGD: the update is linear in the gradient (Adam's first step is about
        # lr * sign(g), which turns float rounding of a near-zero gradient into a full step)
        optimizer = torch.optim.SGD(parameters, lr=1e-2)
        metrics = grpo_step(
            policy, optimizer, rollouts, replace(config, memory_budget_mib=memory_budget_mib)
        )
        with torch.no_grad():
            expected = float(sft_loss(policy, examples))  # one unbudgeted pass
        optimizer.zero_grad(set_to_none=True)
        loss = sft_backward(policy, examples, memory_budget_mib)
        assert loss == pytest.approx(expected, rel=1e-5)
        gradients = [parameter.grad.clone() for parameter in parameters]
        after.append((metrics, loss, policy.model.state_dict(), gradients))
    (plain_metrics, plain_loss, plain, plain_gradients) = after[0]
    (metrics, loss, budgeted, gradients) = after[1]
    assert metrics["loss"] == pytest.approx(plain_metrics["loss"], abs=1e-6)
    for name, tensor in plain.items():
        torch.testing.assert_close(budgeted[name], tensor, atol=1e-6, rtol=1e-5)
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    for budgeted_gradient, gradient in zip(gradients, plain_gradients, strict=True):
        torch.testing.assert_close(budgeted_gradient, gradient, atol=1e-6, rtol=1e-4)
