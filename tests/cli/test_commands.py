import pytest

from ipgkit.cli import build_parser, main
from ipgkit.errors import ZeroSignalWarning


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train-model"],
        ["evaluate"],
        ["attribute"],
        ["train-sae"],
        ["demo"],
        ["experiments"],
        ["figures"],
        ["report"],
    ],
)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ipgkit" in capsys.readouterr().out


def test_training_options_mirror_the_config():
    args = build_parser().parse_args(["train-model", "--steps", "7", "--verifier-fraction", "0.5"])
    assert args.steps == 7 and args.verifier_fraction == 0.5


def test_bad_input_is_a_one_line_error(capsys):
    assert main(["evaluate", "--task", "gsm8k"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("ipgkit evaluate: error: gsm8k is read from disk") and err.count("\n") == 1
    )


def test_attribute_writes_a_table_a_result_and_a_plot(tmp_path, capsys):
    import pandas as pd

    from ipgkit.attribution import AttributionResult

    out = tmp_path / "scores.csv"
    code = main(
        [
            "attribute",
            "--n-problems",
            "3",
            "--n-rollouts",
            "2",
            "--n-steps",
            "2",
            "--layer",
            "1",
            "--site",
            "mlp",
            "--top",
            "5",
            "--reward",
            "length",
            "--temperature",
            "2.0",  # at 1.5 the embedded model writes chains of one length per problem
            "--top-p",
            "1.0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = pd.read_csv(out)
    assert len(table) == 512 and set(table["rank"]) == set(range(1, 513))
    result = AttributionResult.load(out.with_suffix(".safetensors"))
    assert result.components.hook_name == "blocks.1.mlp.hook_post"
    assert out.with_suffix(".png").stat().st_size > 0
    assert "completeness delta" in capsys.readouterr().out


def test_attribute_scores_sae_features(tmp_path, capsys):
    import pandas as pd

    from ipgkit.saes import save_sae
    from tests.saes.test_splice import random_sae

    sae_dir = save_sae(random_sae(128, 1, d_sae=96, k=8), tmp_path / "arith-L1")
    out = tmp_path / "features.csv"
    code = main(
        [
            "attribute",
            "--n-problems",
            "2",
            "--n-rollouts",
            "2",
            "--n-steps",
            "2",
            "--layer",
            "1",
            "--site",
            "sae",
            "--sae",
            str(sae_dir),
            "--reward",
            "length",
            "--temperature",
            "2.0",  # at 1.5 the embedded model writes chains of one length per problem
            "--top-p",
            "1.0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = pd.read_csv(out)
    assert len(table) == 96 and set(table.kind) == {"sae"}
    assert set(table.hook) == {"blocks.1.hook_resid_post.hook_sae_acts_post"}
    # the report reads the result and its support set, and splices the SAE in again
    page = tmp_path / "features.html"
    result = str(out.with_suffix(".safetensors"))
    assert main(["report", result, "--sae", str(sae_dir), "--top", "2", "--out", str(page)]) == 0
    html = page.read_text()
    assert "<h2>Feature pages</h2>" in html and html.count('<section class="feature"') == 2
    assert "where it fires" in html  # SAE latents' histograms count the tokens they fire on
    (tmp_path / "features.rollouts.safetensors").unlink()
    assert main(["report", result, "--out", str(page)]) == 2
    assert "no rollouts at" in capsys.readouterr().err


def test_attribute_rejects_a_missing_layer(capsys):
    assert main(["attribute", "--layer", "9", "--out", "x.csv"]) == 2
    assert "--layer 9 is out of range" in capsys.readouterr().err


def test_rewards_by_name():
    from ipgkit.cli.common import reward_from_name as _reward
    from ipgkit.errors import IpgkitError

    assert _reward("length", None)(["q"], ["abc"]) == [3.0]
    assert _reward("keywords:wait, check", None)(["q"], ["Wait, check it. wait"]) == [3.0]
    with pytest.raises(IpgkitError, match="unknown reward 'keywords:'"):
        _reward("keywords:", None)


def test_experiments_needs_a_choice_and_names_unknown_experiments(tmp_path, capsys):
    assert main(["experiments", "--out", str(tmp_path)]) == 2
    assert "say --all or --only" in capsys.readouterr().err
    assert main(["experiments", "--only", "tabel1", "--out", str(tmp_path)]) == 2
    assert "unknown experiments ['tabel1']" in capsys.readouterr().err


def test_figures_redraws_from_saved_tables_only(tmp_path, capsys):
    import pandas as pd

    assert main(["figures", "--out", str(tmp_path)]) == 0
    assert "no saved results" in capsys.readouterr().out
    data = tmp_path / "data" / "experiments"
    data.mkdir(parents=True)
    rows = [
        {
            "method": m,
            "level": "neuron",
            "condition": c,
            "family": "pooled",
            "accuracy": a,
            "ci_low": a - 0.05,
            "ci_high": a + 0.05,
            "base_accuracy": 0.6,
        }
        for m, a in (("IPG", 0.4), ("Random", 0.55))
        for c in ("enhance", "suppress")
    ]
    pd.DataFrame(rows).to_csv(data / "control.csv", index=False)
    assert main(["figures", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "control_table1.png").stat().st_size > 10_000
    assert "control_table1.png" in capsys.readouterr().out
    # the InT comparison's figure, from its saved steps and arms tables
    int_data = tmp_path / "data" / "int"
    int_data.mkdir()
    steps = [
        {"arm": arm, "seed": seed, "step": step, "frac_reward_zero_std": 0.5, "entropy": 0.1}
        for arm in ("grpo", "int-self+grpo")
        for seed in (0, 1)
        for step in (1, 2)
    ]
    pd.DataFrame(steps).to_csv(int_data / "steps.csv", index=False)
    arms = [
        {"arm": arm, "metric": metric, "value": 0.3, "ci_low": 0.2, "ci_high": 0.4}
        for arm in ("base", "grpo", "int-self+grpo")
        for metric in ("accuracy@1", "pass@8")
    ]
    pd.DataFrame(arms).to_csv(int_data / "arms.csv", index=False)
    assert main(["figures", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "int_grpo.png").stat().st_size > 10_000


def test_attribute_says_when_no_unit_can_be_ranked(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "scores.csv"
    # a keyword the model never writes: every rollout earns 0, so no advantage is nonzero
    with pytest.warns(ZeroSignalWarning):
        code = main(
            [
                "attribute",
                "--n-problems",
                "2",
                "--n-rollouts",
                "2",
                "--n-steps",
                "2",
                "--layer",
                "1",
                "--reward",
                "keywords:@@@",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("No unit could be ranked (every score is 0): every prompt's")
    assert "frac_reward_zero_std = 1" in printed
    assert "score" not in printed.splitlines()[1]  # no ranked table of zeros follows
    assert (pd.read_csv(out)["score"] == 0).all()  # the honest zeros are still written


@pytest.mark.parametrize(("layer", "expected"), [("all", [0, 1, 2, 3]), ("2", [2])])
def test_train_sae_takes_every_layer_or_one(layer, expected, monkeypatch, tmp_path, capsys):
    import pandas as pd

    import ipgkit.saes

    calls = []

    def record(policy, layers, out, config, overwrite):
        calls.append((list(layers), config))
        return pd.DataFrame()

    monkeypatch.setattr(ipgkit.saes, "train_saes", record)
    monkeypatch.setattr(ipgkit.saes, "metrics_markdown", lambda table: "")
    assert main(["train-sae", "--layer", layer, "--k", "16", "--out", str(tmp_path)]) == 0
    ((layers, config),) = calls
    assert layers == expected and config.k == 16
