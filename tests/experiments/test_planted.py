"""Planted headroom: the weakened model is the raw scaling of S, the oracle restores it, and the
benchmark scores an oracle-level ranking as recovering S and all of the oracle's gain."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import ipgkit
from ipgkit.attribution import AttributionResult
from ipgkit.components import mlp_neurons, resid_neurons
from ipgkit.errors import IpgkitError
from ipgkit.experiments import planted as planted_module
from ipgkit.experiments import planted_methods
from ipgkit.experiments.figures import plot_planted
from ipgkit.experiments.planted import (
    PlantedConfig,
    planted_headroom,
    recovery,
    small_planted_config,
    weakened,
)
from ipgkit.experiments.planted_methods import unit_sweep
from ipgkit.stats import fraction_of_oracle_gain
from ipgkit.training.gains import GainRun
from tests.conftest import tiny_policy


def test_the_weakened_model_scales_S_at_every_position_and_the_oracle_restores_it():
    policy = tiny_policy()
    tokens = torch.tensor([policy.encode(["Q: 12+30"])[0]])
    S = mlp_neurons(1, [3, 7, 40])

    def raw(activation, hook):  # written here: the three neurons times 0.25
        activation = activation.clone()
        activation[..., [3, 7, 40]] *= 0.25
        return activation

    expected = policy.model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.hook_post", raw)])
    weak = weakened(policy, S, 0.25)
    torch.testing.assert_close(weak.model(tokens), expected, rtol=0, atol=1e-6)
    assert torch.equal(policy.model(tokens), policy.model.run_with_hooks(tokens))  # untouched
    assert weak.name != policy.name
    with ipgkit.steer(weak, S, gamma=4.0):  # the oracle
        torch.testing.assert_close(weak.model(tokens), policy.model(tokens), rtol=0, atol=1e-5)
    with ipgkit.steer(weak, S, gamma=4.0):
        pass
    torch.testing.assert_close(weak.model(tokens), expected, rtol=0, atol=1e-6)  # hook stays


def test_recovery_counts_S_in_the_top_and_ranks_it():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.7, 0.2]])  # ranking: 0, 2, 4, 3, 5, 1
    result = AttributionResult.from_per_prompt(mlp_neurons(0, range(6)), scores, "test")
    found = recovery(result, mlp_neurons(0, [2, 5]))
    assert found == {"precision_at_size": 0.5, "mean_rank": 3.5, "units": 6}


def test_fraction_of_oracle_gain_on_written_cases():
    weak = np.array([0, 0, 0, 0, 1, 1, 0, 0])
    oracle = np.array([1, 1, 1, 1, 1, 1, 0, 0])  # gain 4/8
    method = np.array([1, 0, 1, 0, 1, 1, 0, 0])  # gain 2/8
    value, low, high = fraction_of_oracle_gain(weak, method, oracle)
    assert value == pytest.approx(0.5) and low <= 0.5 <= high
    assert fraction_of_oracle_gain(weak, oracle, oracle)[0] == pytest.approx(1.0)
    assert fraction_of_oracle_gain(weak, weak, oracle)[0] == pytest.approx(0.0)


def test_an_oracle_level_ranking_is_scored_as_finding_S_and_restoring_everything(
    tmp_path, monkeypatch
):
    config = small_planted_config(methods=("Random",), min_drop=0.0, test=16, validation=8)
    real_rankings = planted_module.planted_rankings

    def with_an_oracle(bench, weak, planted, kind, layer):
        rankings = real_rankings(bench, weak, planted, kind, layer)
        units = planted_module.site_units(kind, layer).resolved(weak.model)
        scores = torch.zeros(1, len(units), dtype=torch.float64)
        scores[0, list(planted.indices)] = torch.arange(len(planted.indices), 0, -1).double()
        rankings["Oracle"] = AttributionResult.from_per_prompt(units, scores, "oracle")
        # a method that returns a set with its gains (as learned gains do): S at 1 / factor
        restoring = replace(planted, gains=tuple(4.0 for _ in planted.indices))
        rankings["Gains on S"] = (restoring, recovery(list(planted.indices), planted))
        return rankings

    monkeypatch.setattr(planted_module, "planted_rankings", with_an_oracle)
    policy = ipgkit.load_model("arith")
    table = planted_headroom(policy, config, tmp_path, progress=False).set_index("method")
    oracle = table.loc["Oracle"]
    (size,) = config.sizes
    assert oracle.precision_at_size == 1.0 and oracle.mean_rank == (size + 1) / 2
    assert (oracle.k, oracle.gamma) == (size, 4.0)  # 1 / factor, chosen on validation
    assert oracle.accuracy == oracle.oracle_accuracy
    assert oracle.oracle_accuracy == oracle.base_accuracy  # restoring S restores the model
    gain = oracle.oracle_accuracy - oracle.weakened_accuracy
    if gain > 0:
        assert oracle.fraction_of_oracle == pytest.approx(1.0)
    gains = table.loc["Gains on S"]  # applied as they are: every unit of the set, gamma = 1
    assert (gains.k, gains.gamma, gains.precision_at_size) == (size, 1.0, 1.0)
    assert gains.accuracy == oracle.oracle_accuracy
    random = table.loc["Random"]
    assert random.precision_at_size < 1.0
    expected = (random.accuracy - random.weakened_accuracy) / gain if gain else np.nan
    assert random.fraction_of_oracle == pytest.approx(expected, nan_ok=True)
    assert "vs_random" in table.columns and np.isnan(table.loc["Random", "vs_random"])
    rerun = planted_headroom(policy, config, tmp_path, progress=False)  # from the workspace
    assert rerun.set_index("method").loc["Oracle"].accuracy == oracle.accuracy
    figure = plot_planted(rerun)  # one panel per scored planted set, titled with its drop
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == [
        f"mlp 0, |S| = {size} by top-activation: drop {oracle['drop']:.2f}"
    ]


def test_bad_settings_are_refused():
    with pytest.raises(IpgkitError, match=r"factor must be in \(0, 1\)"):
        PlantedConfig(factor=1.0)
    with pytest.raises(IpgkitError, match="sizes and k_grid"):
        PlantedConfig(sizes=())
    with pytest.raises(IpgkitError, match="unknown methods"):
        PlantedConfig(methods=("IPG", "Magic"))


def test_the_unit_sweep_scores_each_unit_by_the_accuracy_its_amplification_adds(tmp_path):
    policy = ipgkit.load_model("arith")  # a model that solves some prompts, so scores move
    config = small_planted_config(support=3, amplify_to=10.0)
    bench = planted_module.PlantedBenchmark(policy, config, tmp_path, progress=False)
    units = resid_neurons(1, [5, 13, 90])
    result = unit_sweep(bench, policy, units)

    def accuracy(hooks):  # written here: greedy correctness on the support prompts
        with policy.model.hooks(fwd_hooks=hooks):
            greedy, _ = ipgkit.evaluation.evaluation_rollouts(policy, bench.support)
        return greedy.rewards.double().mean().item()

    base = accuracy([])
    for unit, score in zip(result.indices, result.scores.tolist(), strict=True):

        def amplify(activation, hook, unit=unit):
            activation = activation.clone()
            activation[..., unit] *= 10.0
            return activation

        assert score == pytest.approx(accuracy([("blocks.1.hook_resid_post", amplify)]) - base)
    assert result.info["gamma"] == 10.0
    assert result.scores.abs().max() > 0  # the check above compared something


def test_gains_over_a_subset_rank_units_by_their_ids_then_the_rest(tmp_path, monkeypatch):
    policy = tiny_policy(seed=2, n_ctx=320)
    bench = planted_module.PlantedBenchmark(
        policy, small_planted_config(support=2, validation=2, test=2), tmp_path, progress=False
    )
    subset = mlp_neurons(0, [40, 7, 19])

    def learned(policy, problems, units, reward, config, validation, path, progress):
        best = replace(units, gains=(1.5, 3.0, 0.5))  # unit 7 first, then 40, then 19
        return GainRun(best, best, pd.DataFrame())

    monkeypatch.setattr(planted_methods, "learn_gains", learned)
    best, found = planted_methods.learned_gains_ranking(
        bench, policy, subset, mlp_neurons(0, [7, 19]), rest=[19, 3, 7, 40, 5]
    )
    assert best.gains == (1.5, 3.0, 0.5)
    # order 7, 40, 19, 3, 5: S = {7, 19} has ranks 1 and 3, and one of the top two
    assert found == {"precision_at_size": 0.5, "mean_rank": 2.0, "units": 5}
