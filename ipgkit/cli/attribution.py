"""``attribute`` and ``train-sae``: IPG scores for one layer's units, and the SAEs whose latents
are units too."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import MODEL_HELP, PATH_HELP, TASK_HELP, reward_from_name, write_table
from .flags import add_config_flags, config_from_args


def register(commands) -> None:
    from ipgkit.attribution import IPGConfig
    from ipgkit.saes import SAETrainingConfig

    attribute = commands.add_parser(
        "attribute",
        help="IPG scores for the neurons or SAE features of one layer (table, result, plot)",
    )
    attribute.add_argument("--model", default="arith", help=MODEL_HELP)
    attribute.add_argument("--task", default="arith-word", help=TASK_HELP)
    attribute.add_argument("--split", default="train", help="support-set split (default: train)")
    attribute.add_argument("--path", default=None, help=PATH_HELP)
    attribute.add_argument("--layer", type=int, default=2, help="block index")
    attribute.add_argument(
        "--site",
        choices=["resid", "mlp", "sae"],
        default="mlp",
        help="MLP neurons (default: the smallest completeness gap), residual-stream neurons (the "
        "paper's site; with the zero baseline on a LayerNorm'd stream completeness fails, try "
        "--baseline mean), or the latents of the SAE at --layer (error term kept)",
    )
    attribute.add_argument(
        "--sae",
        default=None,
        help="SAE directory for --site sae (default: the one shipped in saes/)",
    )
    attribute.add_argument(
        "--reward", default="correctness", help="correctness, length or keywords:word1,word2"
    )
    attribute.add_argument("--n-problems", type=int, default=50, help="support-set size (prompts)")
    attribute.add_argument("--top", type=int, default=20, help="components to print and highlight")
    attribute.add_argument(
        "--overwrite",
        action="store_true",
        help="discard a checkpoint left by a run with other settings",
    )
    attribute.add_argument(
        "--out",
        default="scores.parquet",
        help="table (.parquet or .csv); the result file and plot go next to it",
    )
    # the task knows how long its solutions run; IPGConfig's 256 is for a bare call
    add_config_flags(
        attribute,
        IPGConfig,
        defaults={"max_new_tokens": None},
        default_text={"max_new_tokens": "the task's budget"},
    )
    attribute.set_defaults(run=attribute_units)

    _register_report(commands)

    train_sae = commands.add_parser(
        "train-sae", help="train TopK SAEs on the model's own traces (what saes/ ships)"
    )
    train_sae.add_argument("--model", default="arith", help=MODEL_HELP)
    train_sae.add_argument("--layer", default="all", help="block index, or 'all' (default)")
    train_sae.add_argument("--out", default="saes", help="writes <out>/<model>-L<layer>/")
    train_sae.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain layers that already have an SAE (default: skip them)",
    )
    add_config_flags(train_sae, SAETrainingConfig, exclude=["layer"])
    train_sae.set_defaults(run=train_saes)


def _register_report(commands) -> None:
    report = commands.add_parser(
        "report",
        help="one self-contained HTML page for a result: scores, completeness, per-token heat "
        "maps of the top units on correct and wrong rollouts, feature pages",
    )
    report.add_argument("result", help="a .safetensors result (what `ipgkit attribute` writes)")
    report.add_argument("--out", default="report.html", help="the HTML file to write")
    report.add_argument(
        "--rollouts",
        default=None,
        help="the support set (default: <result>.rollouts.safetensors beside the result)",
    )
    report.add_argument(
        "--model", default=None, help=MODEL_HELP + " (default: the result's own policy)"
    )
    report.add_argument(
        "--sae", default=None, help="SAE directory for SAE latents (default: the shipped one)"
    )
    report.add_argument("--top", type=int, default=5, help="units with heat maps and pages")
    report.add_argument("--pairs", type=int, default=2, help="prompts shown per unit")
    report.set_defaults(run=report_result)


def _components(policy, args):
    import ipgkit
    from ipgkit.errors import IpgkitError

    layers = policy.model.cfg.n_layers
    if not 0 <= args.layer < layers:
        raise IpgkitError(
            f"--layer {args.layer} is out of range: {policy.name!r} has layers 0..{layers - 1}"
        )
    if args.site == "sae":
        from ipgkit.saes import attach_saes, sae_features

        policy = attach_saes(policy, [args.sae or args.layer])
        return policy, sae_features(policy, layer=args.layer)
    site = ipgkit.resid_neurons if args.site == "resid" else ipgkit.mlp_neurons
    return policy, site(args.layer)


def attribute_units(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import ipgkit
    from ipgkit import distributed
    from ipgkit.errors import IpgkitError

    out = Path(args.out)
    if out.suffix not in (".parquet", ".csv"):
        raise IpgkitError(f"--out must end in .parquet or .csv, got {out.name!r}")
    task = ipgkit.tasks.load(args.task, split=args.split, path=args.path, n=args.n_problems)
    policy, components = _components(ipgkit.load_model(args.model), args)
    config = config_from_args(
        ipgkit.IPGConfig, args, max_new_tokens=args.max_new_tokens or task.max_new_tokens
    )
    if distributed.init_from_environment() and config.seeding != "problem":
        raise IpgkitError("under torchrun pass --seeding problem (each rank samples its prompts)")
    # rollouts and scored rows are kept next to the output, so a rerun after a kill resumes
    checkpoint = out.with_name(f".{out.stem}.checkpoint.pt")
    if args.overwrite:  # a checkpoint of other settings would otherwise be refused
        checkpoint.unlink(missing_ok=True)
    reward = reward_from_name(args.reward, task)
    result = ipgkit.ipg(policy, task.problems, components, reward, config, checkpoint=checkpoint)
    if not distributed.is_main():  # every rank holds the same result; rank 0 writes it
        return 0
    _report(result, out, args.top)
    return 0


def _report(result, out: Path, top: int) -> None:
    from ipgkit.errors import no_signal_advice

    write_table(result.to_dataframe(), out)
    saved = result.save(out.with_suffix(".safetensors"))
    if result.rollouts is not None:  # the support set, for `ipgkit report`
        result.rollouts.save(rollouts_beside(saved))
    ax = result.plot(top=top)
    ax.figure.savefig(out.with_suffix(".png"), dpi=150, bbox_inches="tight")
    if result.ranks_anything:
        print(result.to_dataframe().sort_values("rank").head(top).to_string(index=False))
    else:
        print(
            f"No unit could be ranked (every score is {float(result.scores[0]):g}): "
            f"{no_signal_advice(result.frac_reward_zero_std)}."
        )
    info = result.info
    print(
        f"\ncompleteness delta {result.delta:+.4g} (vs {info['delta_of']}); "
        f"frac_reward_zero_std {result.frac_reward_zero_std:.2f}; "
        f"{info['rows_scored']} rows scored; {info['seconds']:.1f} s"
    )
    print(f"wrote {out}, {saved} and {out.with_suffix('.png')}")


def rollouts_beside(result_path: Path) -> Path:
    """Where ``ipgkit attribute`` keeps a result's support set: ``<stem>.rollouts.safetensors``."""
    return result_path.with_name(f"{result_path.stem}.rollouts.safetensors")


def report_result(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import ipgkit
    from ipgkit.attribution.report import ReportOptions, write_report
    from ipgkit.errors import IpgkitError

    result_path = Path(args.result)
    result = ipgkit.AttributionResult.load(result_path)
    rollouts_path = Path(args.rollouts) if args.rollouts else rollouts_beside(result_path)
    if not rollouts_path.exists():
        raise IpgkitError(
            f"no rollouts at {rollouts_path}: pass --rollouts (a file from Rollouts.save), or "
            "rerun `ipgkit attribute`, which writes them beside the result"
        )
    rollouts = ipgkit.Rollouts.load(rollouts_path)
    if [p.id for p in rollouts.problems] != result.info.get("problem_ids", []):
        raise IpgkitError(f"{rollouts_path} holds rollouts of other problems than {result_path}")
    name = args.model or result.info.get("policy")
    if not name:
        raise IpgkitError(f"{result_path} names no policy: pass --model")
    policy = ipgkit.load_model(name.split("+sae")[0])
    hook = result.components.hook_name
    if result.components.kind == "sae":
        from ipgkit.saes import attach_saes

        policy = attach_saes(policy, [args.sae or int(hook.split(".")[1])])
    options = ReportOptions(top=args.top, pairs=args.pairs, progress=True)
    out = write_report(result, args.out, policy, rollouts, options)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB); open it in a browser")
    return 0


def train_saes(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit.saes import SAETrainingConfig, metrics_markdown, train_saes

    policy = ipgkit.load_model(args.model)
    n_layers = policy.model.cfg.n_layers
    layers = range(n_layers) if args.layer == "all" else [int(args.layer)]
    # --layer is the command's own ("all" or one block); train_saes sets each config's layer
    config = config_from_args(SAETrainingConfig, args, layer=layers[0])
    table = train_saes(policy, layers, args.out, config, overwrite=args.overwrite)
    print(metrics_markdown(table))
    print(f"wrote {', '.join(f'{args.out}/{policy.name}-L{layer}' for layer in layers)}")
    return 0
