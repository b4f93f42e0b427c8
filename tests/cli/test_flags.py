"""CLI flags come from the config dataclasses: every field is reachable from its command, every
default is the dataclass's, and a parsed command line rebuilds the config it describes."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ipgkit.attribution import IPGConfig
from ipgkit.cli import build_parser
from ipgkit.cli.flags import add_config_flags, config_from_args, field_help
from ipgkit.experiments import ExperimentConfig
from ipgkit.experiments.int_grpo import InTExperimentConfig
from ipgkit.experiments.real_model import RealModelConfig
from ipgkit.models.training import TrainingConfig
from ipgkit.saes import SAETrainingConfig
from ipgkit.training import GRPOConfig

#: (command, config, fields the command sets itself, flag defaults the command chose on purpose)
COMMANDS = [
    ("attribute", IPGConfig, {"max_new_tokens"}),
    ("grpo", GRPOConfig, set()),
    ("train-model", TrainingConfig, set()),
    ("train-sae", SAETrainingConfig, {"layer"}),
]


def subparser(name: str) -> argparse.ArgumentParser:
    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    return commands.choices[name]


def flat_fields(cls, prefix=""):
    for item in dataclasses.fields(cls):
        default = item.default
        if default is dataclasses.MISSING:
            default = item.default_factory()
        if dataclasses.is_dataclass(default):
            yield from flat_fields(type(default), f"{prefix}{item.name}_")
        else:
            yield f"{prefix}{item.name}", default


@pytest.mark.parametrize(("command", "config", "own"), COMMANDS)
def test_every_field_is_a_flag_whose_default_is_the_configs(command, config, own):
    parser = subparser(command)
    defaults = {action.dest: action.default for action in parser._actions}
    for name, default in flat_fields(config):
        if name in own:
            continue
        assert name in defaults, f"{command} has no flag for {config.__name__}.{name}"
        value = defaults[name]
        assert (tuple(value) if isinstance(value, list) else value) == default, name
    parsed = parser.parse_args([])
    rebuilt = config_from_args(config, parsed, **{name: getattr(config(), name) for name in own})
    assert rebuilt == config()


@pytest.mark.parametrize(
    ("command", "config"),
    [
        ("int", InTExperimentConfig),
        ("experiments", ExperimentConfig),
        ("real-model", RealModelConfig),
    ],
)
def test_commands_with_a_base_config_reach_every_field_and_keep_the_base(command, config):
    parser = subparser(command)
    dests = {action.dest for action in parser._actions}
    missing = [name for name, _ in flat_fields(config) if name not in dests]
    assert missing == []
    assert config_from_args(config, parser.parse_args([])) == config()


def test_flags_parse_every_kind_of_field():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, InTExperimentConfig, keep_base=True)
    args = parser.parse_args(
        ["--k", "3", "--grpo-eval-ks", "1", "4", "--grpo-loss-type", "dapo", "--sft-seed", "5"]
    )
    config = config_from_args(InTExperimentConfig, args)
    assert config.k == 3 and config.grpo.eval_ks == (1, 4) and config.grpo.loss_type == "dapo"
    assert (
        config.sft.seed == 5 and config.sft.learning_rate == InTExperimentConfig().sft.learning_rate
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--grpo-loss-type", "ppo"])
    sites = argparse.ArgumentParser()
    add_config_flags(sites, ExperimentConfig, keep_base=True)
    parsed = config_from_args(ExperimentConfig, sites.parse_args(["--sites", "mlp:1", "resid:2"]))
    assert parsed.sites == (("mlp", 1), ("resid", 2))
    pack = argparse.ArgumentParser()
    add_config_flags(pack, IPGConfig)
    assert config_from_args(IPGConfig, pack.parse_args(["--no-pack"])).pack is False
    amplify = config_from_args(IPGConfig, pack.parse_args(["--alpha-range", "1:2.5"]))
    assert amplify.alpha_range == (1.0, 2.5)  # a fixed-length tuple is one word, a:b
    with pytest.raises(SystemExit):
        pack.parse_args(["--alpha-range", "1"])


def test_help_text_is_the_docstring_of_each_field():
    helps = field_help(IPGConfig)
    assert helps["n_steps"].startswith("q, the number of alpha points")
    assert helps["temperature"] == helps["top_p"]  # "temperature, top_p: ..." documents both
    for config in (IPGConfig, GRPOConfig, InTExperimentConfig, ExperimentConfig, RealModelConfig):
        documented = field_help(config)
        assert [f.name for f in dataclasses.fields(config) if not documented.get(f.name)] == []


def test_the_renamed_grpo_flags_still_work():
    args = subparser("grpo").parse_args(["--steps", "7", "--batch-size", "16"])
    config = config_from_args(GRPOConfig, args)
    assert config.max_steps == 7 and config.per_device_train_batch_size == 16


def test_every_command_line_in_the_readme_parses():
    """The README's "Command line" block, as written, against the real parser (flags drift)."""
    import re
    import shlex
    from pathlib import Path

    from ipgkit.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## Command line", 1)[1].split("```", 2)[1]
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("ipgkit ")]
    assert len(commands) >= 10
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert callable(args.run), command
    gsm8k = [c for c in commands if "--task gsm8k" in c]
    assert gsm8k and all("--model smollm2" in c for c in gsm8k)  # the char model's n_ctx is 512
