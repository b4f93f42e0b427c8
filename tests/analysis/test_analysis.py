"""Feature pages and process-level analysis, against direct computations on single rows."""

import matplotlib
import pytest
import torch

from ipgkit.analysis import (
    activation_by_progress,
    dice,
    feature_pages,
    output_tokens,
    plot_activation_by_progress,
    step_of_tokens,
    top_activations,
)
from ipgkit.components import mlp_neurons, resid_neurons
from ipgkit.errors import IpgkitError
from ipgkit.rollouts import sample
from ipgkit.saes import attach_saes, sae_features
from ipgkit.tasks.base import Problem, split_lines
from tests.saes.test_splice import random_sae

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def support(policy):
    problems = [Problem(f"p{i}", f"{i}*{i}+1", "", "") for i in range(3)]
    return sample(policy, problems, n=2, temperature=1.0, max_new_tokens=14, seed=2)


def all_activations(policy, rollouts, components):
    """(value, row, position) for every token and unit, one unpadded forward per row."""
    values = []
    for row, (prompt, completion) in enumerate(
        zip(rollouts.row_prompt_ids(), rollouts.row_completion_ids(), strict=True)
    ):
        with torch.no_grad():
            _, cache = policy.model.run_with_cache(
                torch.tensor([[*prompt, *completion]]), names_filter=components.hook_name
            )
        values.append((row, cache[components.hook_name][0][:, list(components.indices)]))
    return values


def test_top_activations_are_the_largest_distinct_contexts(policy, support):
    components = mlp_neurons(1, [4, 11])
    table = top_activations(policy, components, support, n=3, context=5)
    sequences = [
        [*p, *c]
        for p, c in zip(support.row_prompt_ids(), support.row_completion_ids(), strict=True)
    ]
    for u, index in enumerate(components.indices):
        everything = sorted(
            (
                (float(acts[p, u]), row, p)
                for row, acts in all_activations(policy, support, components)
                for p in range(len(acts))
            ),
            reverse=True,
        )
        distinct, seen = [], set()
        for value, row, p in everything:  # rows of a group repeat their prompt: count it once
            if tuple(sequences[row][: p + 1]) not in seen:
                seen.add(tuple(sequences[row][: p + 1]))
                distinct.append((value, row, p))
        mine = table[table["index"] == index].sort_values("rank")
        assert list(mine["rank"]) == [0, 1, 2]
        assert mine.activation.tolist() == pytest.approx([v for v, _, _ in distinct[:3]], rel=1e-5)
        prefixes = {
            tuple(sequences[r][: p + 1]) for r, p in zip(mine.row, mine.position, strict=True)
        }
        assert prefixes == {tuple(sequences[r][: p + 1]) for _, r, p in distinct[:3]}
    first = table.iloc[0]
    sequence = [*support.row_prompt_ids()[first.row], *support.row_completion_ids()[first.row]]
    assert first.token == policy.tokenizer.decode([sequence[first.position]])
    assert first.before == policy.tokenizer.decode(
        sequence[max(0, first.position - 5) : first.position]
    )


def test_output_tokens_read_the_unembedding(policy):
    table = output_tokens(policy, resid_neurons(1, [7]), n=4)
    promoted = table[table.effect == "promotes"].sort_values("rank")
    values, ids = policy.model.W_U[7].detach().double().topk(4)
    assert promoted.logit.tolist() == pytest.approx(values.tolist())
    assert promoted.token.tolist() == [policy.tokenizer.decode([i]) for i in ids.tolist()]
    suppressed = table[table.effect == "suppresses"].sort_values("rank")
    assert suppressed.logit.iloc[0] == pytest.approx(float(policy.model.W_U[7].detach().min()))


def test_feature_pages_of_sae_latents_use_the_decoder_rows(policy, support):
    spliced = attach_saes(policy, [random_sae(32, 1)])
    features = sae_features(spliced, layer=1, indices=[2, 5])
    pages = feature_pages(spliced, features, support, n_contexts=3, n_tokens=3)
    sae = spliced.model.acts_to_saes["blocks.1.hook_resid_post"]
    expected = (sae.W_dec[5] @ spliced.model.W_U).detach().double().max()
    five = pages.logits[(pages.logits["index"] == 5) & (pages.logits.effect == "promotes")]
    assert five.logit.max() == pytest.approx(float(expected), rel=1e-5)
    text = pages.page(5)
    assert text.startswith("sae 5 at blocks.1.hook_resid_post.hook_sae_acts_post")
    assert "[[" in text and "promotes:" in text
    assert pages.plot(2) is not None
    with pytest.raises(IpgkitError, match="unit 3 has no page"):
        pages.page(3)


def test_step_of_tokens_follows_the_task_segmentation(policy):
    completion = policy.encode_completions(["1+2=3\n3*4=12\n#### 12"])[0]
    steps, n_steps = step_of_tokens(policy, completion, split_lines)
    assert n_steps == 3
    text = [policy.tokenizer.decode([t]) for t in completion]
    # "1+2=3\n" is step 0 (its newline included), "3*4=12\n" step 1, "#### 12" and EOS step 2
    assert steps == [0] * 6 + [1] * 7 + [2] * 8 and len(text) == 21
    assert step_of_tokens(policy, policy.encode_completions([""])[0], split_lines) == ([0], 1)


def test_activation_by_progress_counts_every_generated_token(policy, support):
    sets = {"all fire": mlp_neurons(0, [1, 2]), "none fire": mlp_neurons(0, [3])}
    frame = activation_by_progress(policy, sets, support, n_bins=4, threshold=-1e9)
    fire = frame[frame.set == "all fire"]
    assert fire.tokens.sum() == sum(len(c) for c in support.row_completion_ids())
    assert fire.frequency.dropna().tolist() == pytest.approx([1.0] * fire.frequency.notna().sum())
    strict = activation_by_progress(
        policy, {"x": mlp_neurons(0, [3])}, support, n_bins=4, threshold=1e9
    )
    assert strict.frequency.dropna().eq(0).all()
    assert plot_activation_by_progress(frame) is not None
    with pytest.raises(IpgkitError, match="n_bins"):
        activation_by_progress(policy, sets, support, n_bins=0)


def test_activation_by_progress_matches_a_direct_count(policy, support):
    components = mlp_neurons(1, [0, 6, 9])
    frame = activation_by_progress(policy, {"s": components}, support, n_bins=3)
    active, tokens = torch.zeros(3), torch.zeros(3)
    for row, acts in all_activations(policy, support, components):
        prompt_length = len(support.row_prompt_ids()[row])
        completion = support.row_completion_ids()[row]
        steps, n_steps = step_of_tokens(policy, completion, split_lines)
        for offset, step in enumerate(steps):
            b = min(int((step + 0.5) / n_steps * 3), 2)
            active[b] += (acts[prompt_length + offset] > 0).float().mean()
            tokens[b] += 1
    expected = (active / tokens).tolist()
    assert frame.frequency.tolist() == pytest.approx(expected, nan_ok=True)


def test_dice_of_index_sets_and_component_sets():
    assert dice({1, 2, 3, 4}, {3, 4, 5, 6}) == 0.5
    assert dice(mlp_neurons(1, [0, 1]), mlp_neurons(1, [1, 2, 3, 4])) == pytest.approx(2 / 6)
    with pytest.raises(IpgkitError, match="different hooks"):
        dice(mlp_neurons(1, [0]), mlp_neurons(0, [0]))
    with pytest.raises(IpgkitError, match="explicit unit indices"):
        dice(mlp_neurons(1), mlp_neurons(1, [0]))


def test_histograms_bin_every_selected_token_and_sae_latents_where_they_fire(policy, support):
    neurons = feature_pages(policy, mlp_neurons(1, [4, 11]), support, progress=False)
    tokens = sum(len(p) + len(c) for p, c in zip(*_ids(support), strict=True))
    counts = neurons.histograms.groupby("index")["count"].sum()
    assert counts.to_dict() == {4: tokens, 11: tokens}
    spliced = attach_saes(policy, [random_sae(32, 1)])
    latents = feature_pages(
        spliced, sae_features(spliced, layer=1, indices=[2, 5]), support, progress=False
    )
    for unit, column in ((2, 0), (5, 1)):
        values = torch.cat([t[:, column] for t in latents.traces.activations])
        rows = latents.histograms[latents.histograms["index"] == unit]
        assert rows["count"].sum() == int((values > 0).sum())
        assert rows["active"].iloc[0] == pytest.approx(float((values > 0).double().mean()))
        assert rows["low"].min() == pytest.approx(float(values[values > 0].min()))


def _ids(rollouts):
    return rollouts.row_prompt_ids(), rollouts.row_completion_ids()


def test_feature_page_html_colours_each_context_by_the_units_activation(policy, support):
    pages = feature_pages(policy, mlp_neurons(1, [4]), support, n_contexts=2, progress=False)
    page = pages.to_html(4)
    assert page.count('<tr><td class="num">') == len(pages.contexts)
    best = pages.contexts.iloc[0]
    assert f'title="position {best.position}: {best.activation:+.4g}"' in page
    assert "outline:2px" in page  # the activating token is marked
    assert "<svg" in page and "<script" not in page
    assert pages.to_html().count("<section") == 1


def test_feature_page_figure_saves_without_clipping(policy, support):
    from tests.figures_fit import drawn_inside_figure

    pages = feature_pages(policy, mlp_neurons(1, [4]), support, progress=False)
    assert drawn_inside_figure(pages.plot(4).figure)
