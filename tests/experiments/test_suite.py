"""The control experiments end to end on the embedded model at a micro size: validation chooses,
the test split reports, every table has the statistics it promises, and a rerun computes nothing."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from ipgkit.attribution import AttributionResult
from ipgkit.components import mlp_neurons
from ipgkit.evaluation import evaluation_rollouts
from ipgkit.experiments import EXPERIMENTS, ExperimentConfig, Suite, run_experiments
from ipgkit.experiments import suite as suite_module
from ipgkit.experiments import workspace as workspace_module
from ipgkit.experiments.config import FEATURE_METHODS, NEURON_METHODS
from ipgkit.experiments.figures import FIGURES, draw_figures
from ipgkit.experiments.methods import SelectedSets
from ipgkit.experiments.validation import chosen
from ipgkit.training.distill import DistillConfig
from ipgkit.training.gains import GainConfig
from ipgkit.training.grpo_config import GRPOConfig
from ipgkit.training.sft import SFTConfig

MICRO = ExperimentConfig(
    support=5,
    # 6, not 4: the embedded model solves most standard prompts every time, and with 4 rollouts
    # arith-chain's 5 prompts have none whose rollouts disagree (no unit can be ranked)
    n_rollouts=6,
    n_steps=2,
    validation=4,
    test=6,
    p_grid=(2, 3),
    gamma_grid=(1.5, 3.0),
    suppress_p=3,
    random_seeds=(0, 1),
    validation_random_seeds=1,
    dose_problems=4,
    dose_gammas=(0.0, 1.0, 2.0),
    dose_ps=(2,),
    dose_p=2,
    support_sizes=(2, 6),
    datasets=("arith-word/train", "arith-chain/train"),
    dice_ps=(2, 4),
    distill_problems=8,
    distill=DistillConfig(
        samples=2,
        max_new_tokens=96,
        sft=SFTConfig(learning_rate=1e-4, num_train_epochs=1, per_device_train_batch_size=4),
    ),
    strength_gammas=(0.0, 1.0, 2.0),
    strength_p=2,
    sites=(("mlp", 0),),
    # learned gains in two steps at a large rate
    gains=GainConfig(
        grpo=GRPOConfig(
            num_generations=4, per_device_train_batch_size=8, max_steps=2, learning_rate=0.5
        ),
        eval_every=1,
        patience=0,
    ),
)


#: the default run: three methods, no SAE, no student (the slow tests run everything)
FAST = replace(MICRO, methods=("IPG", "Random", "Activation"))
FAST_EXPERIMENTS = (
    "validation_grid",
    "control",
    "head_to_head",
    "dose",
    "support",
    "consistency",
    "transfer",
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    suite = Suite(root, FAST, sae=False, progress=False)
    return suite, run_experiments(suite, FAST_EXPERIMENTS, progress=False)


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    root = tmp_path_factory.mktemp("all_experiments")
    suite = Suite(root, MICRO, progress=False)
    return suite, run_experiments(suite, progress=False)


def evaluation_keys(suite):
    return [json.loads(line)["key"] for line in suite.ws.evaluations_path.read_text().splitlines()]


def test_validation_chooses_p_and_gamma_and_never_sees_the_test_split(finished):
    suite, tables = finished
    grid, control = tables["validation_grid"], tables["control"]
    assert set(grid.method) == set(control.method) == set(suite.methods)
    for method, rows in grid.groupby("method"):
        best = rows.accuracy.max()
        p, gamma = chosen(suite, method)
        winners = rows[rows.accuracy == best].sort_values(["p", "gamma"])
        assert (p, gamma) == (winners.p.iloc[0], winners.gamma.iloc[0])
        enhance = control[(control.method == method) & (control.condition == "enhance")]
        assert set(enhance.gamma) == {gamma} and set(enhance.p) == {
            1 if method == "Control Vector" else p
        }
        suppress = control[(control.method == method) & (control.condition == "suppress")]
        assert set(suppress.gamma) == {0.0}
    # the grid's evaluations are all on validation problems; test problems appear only later
    splits = [key.split("|")[2] for key in evaluation_keys(suite)]
    first_test = splits.index("test")
    assert set(splits[:first_test]) <= {"validation"}
    assert {"validation", "test"} <= set(splits)


def test_table1_rows_carry_paired_statistics_and_pool_the_families(finished):
    _, tables = finished
    control = tables["control"]
    for _, rows in control.groupby(["method", "condition"]):
        families = rows[rows.family != "pooled"]
        pooled = rows[rows.family == "pooled"].iloc[0]
        assert pooled.n == families.n.sum() == 2 * MICRO.test
        weighted = (families.difference * families.n).sum() / families.n.sum()
        assert pooled.difference == pytest.approx(weighted)
        assert np.allclose(rows.difference, rows.accuracy - rows.base_accuracy)
        assert (rows.ci_low <= rows.accuracy + 1e-12).all() and (
            rows.accuracy <= rows.ci_high + 1e-12
        ).all()
        assert ((rows.p_value >= 0) & (rows.p_value <= 1)).all()
    random_rows = control[control.method == "Random"]
    assert set(random_rows.seeds) == {2}
    assert (random_rows.seed_min <= random_rows.accuracy + 1e-12).all()
    assert (random_rows.accuracy <= random_rows.seed_max + 1e-12).all()
    head = tables["head_to_head"]
    assert np.allclose(head.difference, head.accuracy - head.baseline_accuracy)


def test_dose_support_and_dataset_tables(finished):
    suite, tables = finished
    dose = tables["dose"]
    at_one = dose[(dose.axis == "gamma") & (dose.gamma == 1.0)]
    assert (at_one.difference == 0).all() and (at_one.accuracy == at_one.base_accuracy).all()
    support = tables["support"]
    assert set(support.M) == {2, 6} and set(support.baseline) == {"zero", "mean"}
    assert (support[support.M == 6].dice_with_largest == 1.0).all()
    consistency = tables["consistency"]
    units = suite.neurons().resolved(suite.policy.model).width(suite.policy.model)
    assert np.allclose(consistency.random_mean, consistency.p / units)
    # a support set whose rollouts all agree ranks nothing: its pairs have no Dice, not 0
    compared = consistency.dice.notna()
    assert compared.any() and consistency[compared].dice.between(0, 1).all()
    resampled = consistency[consistency.second.str.endswith("(resampled)")]
    assert sorted(resampled["first"].unique()) == sorted(MICRO.datasets)
    transfer = tables["transfer"]
    assert len(transfer) == 2 * 2 * 2  # sources x targets x conditions
    # on the shipped model arith-word's 5 micro prompts have no signal and arith-chain's do, so
    # both branches run: a silent source steers nothing, the other is evaluated
    silent = transfer.source_prompts_with_signal == 0
    assert silent.any() and (~silent).any()
    assert transfer[silent].accuracy.isna().all()
    assert transfer[~silent].accuracy.notna().all()


@pytest.mark.slow
def test_every_method_distilled_student_and_reasoning_strength(everything):
    suite, tables = everything
    assert set(tables["control"].method) == set(NEURON_METHODS + FEATURE_METHODS)
    distilled = tables["distilled"]
    assert {"base", "distilled"} == set(distilled.model)
    unsteered = distilled[distilled.condition == "unsteered"].set_index("model")
    assert unsteered.loc["distilled", "check_rate"] >= 0.0
    assert "IPG (student's own)" in set(distilled["set"])
    strength = tables["strength"]
    assert set(strength.model) == {"base", "distilled"}
    # a length IPG without signal (tied lengths) leaves its rows empty instead of steering 0..p-1
    assert strength[strength.length_change.isna()]["set"].eq("IPG (length)").all()
    identity = strength[(strength.gamma == 1.0) & strength.length_change.notna()]
    assert len(identity) >= 2
    assert (identity.length_change == 0).all() and (identity.difference == 0).all()
    assert suite.ws.notes()["student"]["kept"] > 0


def test_a_rerun_computes_nothing_and_rebuilds_a_lost_table_from_cached_evaluations(
    finished, monkeypatch
):
    suite, tables = finished

    def fail(*args, **kwargs):
        raise AssertionError("recomputed something that was cached")

    monkeypatch.setattr(workspace_module, "evaluation_rollouts", fail)
    monkeypatch.setattr(suite_module, "sample", fail)
    monkeypatch.setattr(suite_module, "ipg", fail)
    suite.ws.table_path("control").unlink()
    again = Suite(suite.ws.root, FAST, sae=False, progress=False)
    rerun = run_experiments(again, FAST_EXPERIMENTS, progress=False)
    assert again.ws.computed == 0
    for name in tables:
        pd.testing.assert_frame_equal(
            rerun[name], pd.read_csv(suite.ws.table_path(name)), check_dtype=False
        )
    pd.testing.assert_frame_equal(
        rerun["control"].reset_index(drop=True),
        tables["control"].reset_index(drop=True),
        check_dtype=False,
    )


def test_a_table_is_recomputed_when_a_method_changes_not_only_the_config(
    finished, tmp_path, monkeypatch
):
    suite, tables = finished
    root = tmp_path / "copy"
    shutil.copytree(suite.ws.root, root)
    real = suite_module.table1_methods

    def reversed_ipg(the_suite):  # as if IPG's code changed: the opposite ranking
        methods = real(the_suite)
        (result,) = methods["IPG"].results
        methods["IPG"] = replace(methods["IPG"], results=[replace(result, scores=-result.scores)])
        return methods

    monkeypatch.setattr(suite_module, "table1_methods", reversed_ipg)
    changed = Suite(root, FAST, sae=False, progress=False)
    rerun = run_experiments(changed, ("validation_grid", "control"), progress=False)
    assert changed.ws.computed > 0  # the reversed sets were evaluated, not read from the tables
    stamp = ".control.settings"  # the table's key moved with the method's results
    assert (root / stamp).read_text() != (suite.ws.root / stamp).read_text()
    untouched = rerun["control"].query("method == 'Random'").reset_index(drop=True)
    expected = tables["control"].query("method == 'Random'").reset_index(drop=True)
    pd.testing.assert_frame_equal(untouched, expected, check_dtype=False)


def test_figures_are_drawn_from_the_saved_tables_alone(finished, tmp_path):
    suite, tables = finished
    written = draw_figures(suite.ws.root, tmp_path)
    expected = [name for name, (needed, _) in FIGURES.items() if set(needed) <= set(tables)]
    assert sorted(p.name for p in written) == sorted(expected) and len(expected) >= 4
    assert all(p.stat().st_size > 10_000 for p in written)


@pytest.mark.slow
def test_every_figure_is_drawn(everything, tmp_path):
    suite, _ = everything
    # every figure of the suite's tables (planted.png comes from `ipgkit planted`, tested there)
    expected = [name for name, (needed, _) in FIGURES.items() if set(needed) <= set(EXPERIMENTS)]
    assert "planted.png" not in expected and len(expected) == len(FIGURES) - 1
    assert sorted(p.name for p in draw_figures(suite.ws.root, tmp_path)) == sorted(expected)


def test_results_of_another_sae_at_the_same_layer_never_share_a_cache_key(tmp_path):
    from tests.saes.test_splice import random_sae

    keys = []
    for seed in (0, 1, 0):
        sae = random_sae(128, layer=FAST.layer, seed=seed, model_name="arith")
        suite = Suite(tmp_path / f"s{seed}", FAST, sae=sae, progress=False)
        keys.append((suite.policy_key, suite.spliced_key))
    assert keys[0][0] == keys[1][0]  # the same model
    assert keys[0][1] != keys[1][1]  # another SAE: another key for every SAE result
    assert keys[0] == keys[2]


#: the methods built for enhancement (issue 19)
ENHANCEMENT = replace(
    MICRO, methods=("IPG", "Random", "IPG amplify", "IPG process", "Learned gains")
)


def test_the_enhancement_methods_join_table1_and_the_head_to_head(tmp_path):
    suite = Suite(tmp_path, ENHANCEMENT, sae=False, progress=False)
    tables = run_experiments(suite, ("control", "head_to_head"), progress=False)
    amplify = suite.methods["IPG amplify"].results[0]
    assert amplify.info["config"]["alpha_range"] == [1.0, 3.0]  # up to the largest gamma
    process = suite.methods["IPG process"].results[0].info
    assert (process["reward"], process["config"]["advantage"]) == ("step_progress", "mean")
    # learned gains enhance with every unit of the site at gamma = 1, each by its own gain
    learned = suite.methods["Learned gains"].results[0]
    width = suite.policy.model.cfg.d_mlp
    assert chosen(suite, "Learned gains") == (width, 1.0)
    (gained,) = suite.methods["Learned gains"].sets(width)
    by_unit = dict(zip(learned.indices, learned.scores.tolist(), strict=True))
    assert [by_unit[i] for i in gained.indices] == list(gained.gains)
    suppressed = tables["control"].query("method == 'Learned gains' and condition == 'suppress'")
    if not learned.ranks_anything:  # no step beat gain 1 on validation: nothing to suppress
        assert (
            suppressed.accuracy.isna().all()
            and "every Learned gains score" in suppressed.note.iloc[0]
        )
    row = tables["control"].query("method == 'Learned gains' and condition == 'enhance'")
    by_hand = []
    for task in suite.tasks("test", ENHANCEMENT.test):
        gains = torch.ones(width, dtype=torch.float64)
        gains[list(learned.indices)] = learned.scores

        def hook(activation, hook, gains=gains):  # written here: unit i times its gain
            return activation * gains.to(activation.dtype)

        with suite.policy.model.hooks(
            fwd_hooks=[(f"blocks.{ENHANCEMENT.layer}.mlp.hook_post", hook)]
        ):
            greedy, _ = evaluation_rollouts(suite.policy, task)
        by_hand.append(greedy.rewards.numpy())
    pooled = row.set_index("family").loc["pooled", "accuracy"]
    assert pooled == pytest.approx(np.concatenate(by_hand).astype(float).mean())
    pairs = set(zip(tables["head_to_head"].method, tables["head_to_head"].baseline, strict=True))
    for method in ("IPG amplify", "IPG process", "Learned gains"):
        assert {(method, "IPG"), (method, "Random")} <= pairs


def test_a_gains_result_steers_its_top_units_by_their_own_gains():
    units = mlp_neurons(0, [4, 9, 7])
    result = AttributionResult(units, torch.tensor([0.5, 2.0, 1.5]), method="learned-gains")
    gained = SelectedSets("Learned gains", "neuron", None, "k", [result], applies_gains=True)
    (top,) = gained.sets(2)
    assert (top.indices, top.gains) == ((9, 7), (2.0, 1.5))
    assert SelectedSets("IPG", "neuron", None, "k", [result]).sets(2)[0].gains is None
    tied = AttributionResult(units, torch.ones(3), method="learned-gains")
    unranked = SelectedSets("Learned gains", "neuron", None, "k", [tied], applies_gains=True)
    assert unranked.picks(3) and not unranked.picks(2)
