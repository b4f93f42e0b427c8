"""``experiments``, ``real-model`` and ``figures``: the studies, resumable from their workspaces,
and the figures drawn from their saved tables."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .common import MODEL_HELP, OVERWRITE_HELP
from .flags import add_config_flags, config_from_args


def register(commands) -> None:
    from ipgkit.experiments import EXPERIMENTS, ExperimentConfig
    from ipgkit.experiments.real_model import RealModelConfig

    experiments = commands.add_parser(
        "experiments", help="the IPG paper's control experiments (resumable; tables and figures)"
    )
    experiments.add_argument("--all", action="store_true", help="run every experiment, in order")
    experiments.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"run these: {' '.join(EXPERIMENTS)}",
    )
    experiments.add_argument("--model", default="arith", help=MODEL_HELP)
    experiments.add_argument(
        "--out", default="runs/experiments", help="workspace folder (a rerun resumes from it)"
    )
    experiments.add_argument(
        "--small", action="store_true", help="a minutes-long version (the base configuration)"
    )
    experiments.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    experiments.add_argument(
        "--figures",
        default=None,
        help="also copy the tables to <dir>/data/experiments and draw the "
        "figures into <dir> (e.g. figures)",
    )
    add_config_flags(experiments, ExperimentConfig, keep_base=True)
    experiments.set_defaults(run=run_experiments)

    real = commands.add_parser(
        "real-model",
        help="a real LLM on GSM8K/MATH500, and IPG length attribution with steering (resumable)",
    )
    real.add_argument("--out", default="runs/smollm2", help="workspace folder (a rerun resumes)")
    real.add_argument(
        "--small", action="store_true", help="a minutes-long version (the base configuration)"
    )
    real.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    add_config_flags(real, RealModelConfig, keep_base=True)
    real.set_defaults(run=run_real_model)

    from ipgkit.experiments.planted import PlantedConfig

    planted = commands.add_parser(
        "planted",
        help="planted headroom: which method finds weakened units and restores the lost accuracy",
    )
    planted.add_argument("--model", default="arith", help=MODEL_HELP)
    planted.add_argument("--out", default="runs/planted", help="workspace (a rerun resumes)")
    planted.add_argument(
        "--small", action="store_true", help="a minutes-long version (the base configuration)"
    )
    planted.add_argument(
        "--figures", default=None, help="also copy planted.csv to <dir>/data/experiments and draw"
    )
    add_config_flags(planted, PlantedConfig, keep_base=True)
    planted.set_defaults(run=run_planted)

    figures = commands.add_parser(
        "figures", help="redraw every figure from the saved results under <out>/data"
    )
    figures.add_argument("--out", default="figures", help="figures folder (default: figures)")
    figures.set_defaults(run=draw_all_figures)


def run_experiments(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit import distributed
    from ipgkit.errors import IpgkitError
    from ipgkit.experiments import EXPERIMENTS, ExperimentConfig, Suite, small_config
    from ipgkit.experiments import run_experiments as run
    from ipgkit.experiments.figures import draw_figures

    if not args.all and not args.only:
        raise IpgkitError(f"say --all or --only NAME ...; experiments: {', '.join(EXPERIMENTS)}")
    base = small_config() if args.small else ExperimentConfig()
    config = config_from_args(ExperimentConfig, args, base)
    # under torchrun evaluations and attributions are sharded by rank, and rank 0 writes
    distributed.init_from_environment()
    suite = Suite(
        args.out,
        config,
        policy=ipgkit.load_model(args.model),
        overwrite=args.overwrite,
        progress=distributed.is_main(),
    )
    tables = run(suite, None if args.all else args.only)
    if not distributed.is_main():
        return 0
    for name, table in tables.items():
        print(f"\n== {name} ({len(table)} rows): {args.out}/{name}.csv")
    if args.figures:
        data = Path(args.figures) / "data" / "experiments"
        data.mkdir(parents=True, exist_ok=True)
        for name in [*tables, "timings"]:
            if suite.ws.table_path(name).exists():
                shutil.copyfile(suite.ws.table_path(name), data / f"{name}.csv")
        for path in draw_figures(data, args.figures):
            print(f"wrote {path}")
    return 0


def run_planted(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit.experiments.figures import draw_figures
    from ipgkit.experiments.planted import PlantedConfig, planted_headroom, small_planted_config

    base = small_planted_config() if args.small else PlantedConfig()
    config = config_from_args(PlantedConfig, args, base)
    table = planted_headroom(ipgkit.load_model(args.model), config, args.out)
    shown = [
        "site",
        "rule",
        "size",
        "drop",
        "method",
        "precision_at_size",
        "mean_rank",
        "k",
        "gamma",
    ]
    shown += ["accuracy", "fraction_of_oracle", "fraction_ci_low", "fraction_ci_high"]
    print(
        table[[c for c in shown if c in table]].to_string(index=False, float_format="{:.3f}".format)
    )
    print(f"wrote {args.out}/planted.csv")
    if args.figures:
        data = Path(args.figures) / "data" / "experiments"
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(args.out) / "planted.csv", data / "planted.csv")
        for path in draw_figures(data, args.figures):
            print(f"wrote {path}")
    return 0


def run_real_model(args: argparse.Namespace) -> int:
    from ipgkit import distributed
    from ipgkit.experiments.real_model import RealModelConfig, real_model_study, small_real_config

    base = small_real_config() if args.small else RealModelConfig()
    config = config_from_args(RealModelConfig, args, base)
    distributed.init_from_environment()
    tables = real_model_study(
        config, args.out, progress=distributed.is_main(), overwrite=args.overwrite
    )
    if not distributed.is_main():
        return 0
    for name, table in tables.items():
        print(f"\n== {name}: {args.out}/{name}.csv")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def draw_all_figures(args: argparse.Namespace) -> int:
    import json

    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from ipgkit.analysis import plot_activation_by_progress
    from ipgkit.experiments.figures import draw_figures
    from ipgkit.experiments.int_grpo import plot_int_experiment

    out = Path(args.out)
    experiment_tables = out / "data" / "experiments"
    written = draw_figures(experiment_tables, out) if experiment_tables.is_dir() else []
    int_dir = out / "data" / "int"
    if (int_dir / "steps.csv").exists() and (int_dir / "arms.csv").exists():
        int_tables = {name: pd.read_csv(int_dir / f"{name}.csv") for name in ("steps", "arms")}
        plot_int_experiment(int_tables, out / "int_grpo.png")
        written.append(out / "int_grpo.png")
    for path in sorted((out / "data").glob("sae_features_L*.json")):
        report = json.loads(path.read_text())
        ax = plot_activation_by_progress(pd.DataFrame(report["progress"]))
        ax.set_title(
            f"SAE latents at layer {report['layer']}: activation frequency along the chain"
        )
        target = out / f"sae_progress_L{report['layer']}.png"
        ax.figure.savefig(target, dpi=130, bbox_inches="tight")
        written.append(target)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"no saved results under {out}/data; run `ipgkit experiments --all` first")
    return 0
