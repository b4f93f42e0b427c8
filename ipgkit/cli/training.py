"""``grpo`` and ``int``: the training loops, resumable from their output folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import MODEL_HELP, PATH_HELP, TASK_HELP, print_table
from .flags import add_config_flags, config_from_args


def register(commands) -> None:
    from ipgkit.experiments.int_grpo import InTExperimentConfig
    from ipgkit.training import GRPOConfig

    grpo = commands.add_parser("grpo", help="GRPO on a task (TRL option names; resumable)")
    grpo.add_argument("--model", default="arith", help=MODEL_HELP)
    grpo.add_argument("--task", default="arith-word", help=TASK_HELP)
    grpo.add_argument("--split", default="train", help="training split")
    grpo.add_argument("--path", default=None, help=PATH_HELP)
    grpo.add_argument("--n-problems", type=int, default=200, help="training problems")
    grpo.add_argument("--eval-split", default="test", help="held-out split")
    grpo.add_argument("--eval-problems", type=int, default=100, help="0: no held-out evaluation")
    grpo.add_argument("--out", default="runs/grpo", help="checkpoint folder (a rerun resumes)")
    add_config_flags(
        grpo,
        GRPOConfig,
        aliases={"max_steps": ["--steps"], "per_device_train_batch_size": ["--batch-size"]},
    )
    grpo.set_defaults(run=train_grpo)

    int_parser = commands.add_parser(
        "int", help="InT experiment: hard pool, interventions, SFT, GRPO arms (resumable)"
    )
    int_parser.add_argument("--model", default="arith", help=MODEL_HELP)
    int_parser.add_argument("--out", default="runs/int", help="output folder (a rerun resumes)")
    int_parser.add_argument(
        "--small", action="store_true", help="a minutes-long version (the base configuration)"
    )
    add_config_flags(
        int_parser,
        InTExperimentConfig,
        keep_base=True,
        aliases={"pool_candidates": ["--pool"]},
    )
    int_parser.add_argument("--steps", dest="grpo_max_steps", type=int, help="GRPO steps per arm")
    int_parser.set_defaults(run=run_int)


def train_grpo(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit import distributed
    from ipgkit.models.export import save_policy
    from ipgkit.training import GRPOConfig, grpo_train

    task = ipgkit.tasks.load(args.task, split=args.split, path=args.path, n=args.n_problems)
    held_out = None
    if args.eval_problems:
        held_out = ipgkit.tasks.load(
            args.task, split=args.eval_split, path=args.path, n=args.eval_problems
        )
    policy = ipgkit.load_model(args.model)
    config = config_from_args(GRPOConfig, args)
    run = grpo_train(policy, task.problems, task.correctness, config, held_out, args.out)
    if not distributed.is_main():  # under torchrun every rank holds the same model
        return 0
    print_table(run.log)
    if len(run.evals):
        print(run.evals.pivot_table(index="step", columns="metric", values="value").round(3))
    save_policy(policy, Path(args.out) / "model", {"trained_by": "ipgkit grpo"})
    print(
        f"wrote {args.out}/checkpoint.pt, log.csv and model/ (load_model({args.out + '/model'!r}))"
    )
    return 0


def run_int(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import ipgkit
    from ipgkit.experiments.int_grpo import (
        InTExperimentConfig,
        plot_int_experiment,
        run_int_experiment,
        small_config,
    )

    base = small_config() if args.small else InTExperimentConfig()
    config = config_from_args(InTExperimentConfig, args, base)
    policy = ipgkit.load_model(args.model)
    tables = run_int_experiment(policy, config, args.out)
    for name in ("yields", "verifier", "interventions", "misplaced", "ablations", "on_policy"):
        print(f"\n{name}:\n{tables[name].round(3).to_string(index=False)}")
    print(f"\nheld-out after GRPO (mean over seeds {list(config.seeds)}):")
    arms = tables["arms"]
    print(arms.pivot_table(index="arm", columns="metric", values="value", sort=False).round(3))
    paired = tables["paired"]
    print("\npaired differences whose 95% interval excludes 0:")
    outside = paired[paired.interval_excludes_0]
    columns = ["metric", "arm", "versus", "difference", "ci_low", "ci_high", "p_value"]
    print(outside[columns].round(3).to_string(index=False) if len(outside) else "  none")
    plot_int_experiment(tables, Path(args.out) / "int_grpo.png")
    print(f"\nwrote tables and int_grpo.png to {args.out}")
    return 0
