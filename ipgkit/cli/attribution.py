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
        default="resid",
        help="residual-stream neurons (paper), MLP neurons, or the latents of "
        "the SAE at --layer (error term kept)",
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


def train_saes(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit.saes import SAETrainingConfig, metrics_markdown, train_saes

    policy = ipgkit.load_model(args.model)
    n_layers = policy.model.cfg.n_layers
    layers = range(n_layers) if args.layer == "all" else [int(args.layer)]
    config = config_from_args(SAETrainingConfig, args)
    table = train_saes(policy, layers, args.out, config, overwrite=args.overwrite)
    print(metrics_markdown(table))
    print(f"wrote {', '.join(f'{args.out}/{policy.name}-L{layer}' for layer in layers)}")
    return 0
