"""``train-model``, ``evaluate`` and ``model-card``: the model itself."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .common import MODEL_HELP, PATH_HELP, TASK_HELP, print_table
from .flags import add_config_flags, config_from_args


def register(commands) -> None:
    from ipgkit.models.training import TrainingConfig

    train = commands.add_parser(
        "train-model", help="train the embedded reasoning model from scratch"
    )
    train.add_argument(
        "--out", default="runs/arith", help="output directory (resumes if it holds a checkpoint)"
    )
    add_config_flags(train, TrainingConfig)
    train.set_defaults(run=train_model)

    evaluate = commands.add_parser("evaluate", help="accuracy@1, pass@k and length with 95%% CIs")
    evaluate.add_argument("--model", default="arith", help=MODEL_HELP)
    evaluate.add_argument("--task", default="arith-word", help=TASK_HELP)
    evaluate.add_argument("--splits", nargs="+", default=["test"], help="splits to evaluate")
    evaluate.add_argument("--path", default=None, help=PATH_HELP)
    evaluate.add_argument("--limit", type=int, default=200, help="problems per split")
    evaluate.add_argument("--samples", type=int, default=0, help="samples per problem for pass@k")
    evaluate.add_argument("--ks", type=int, nargs="+", default=[1], help="k values for pass@k")
    evaluate.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    evaluate.add_argument(
        "--max-new-tokens", type=int, default=None, help="token budget (default: the task's)"
    )
    evaluate.add_argument("--batch-size", type=int, default=64, help="completions per batch")
    evaluate.add_argument(
        "--out",
        default=None,
        help="write the table as CSV here (a killed run resumes from beside it)",
    )
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="discard progress left by a run with other settings",
    )
    evaluate.set_defaults(run=evaluate_model)

    card = commands.add_parser(
        "model-card", help="measure accuracy, sample diversity and verifier skill"
    )
    card.add_argument("--model", default="arith", help=MODEL_HELP)
    card.add_argument("--limit", type=int, default=200, help="problems per family and split")
    card.add_argument("--samples", type=int, default=8, help="samples per problem at T=0.7")
    card.add_argument("--out", default="model_card.json", help="where to write the JSON card")
    card.set_defaults(run=model_card)


def train_model(args: argparse.Namespace) -> int:
    from ipgkit.models.training import TrainingConfig, train_model

    out = train_model(config_from_args(TrainingConfig, args), args.out)
    print(f"wrote {out / 'model.safetensors'}; load it with ipgkit.load_model({str(out)!r})")
    return 0


def evaluate_model(args: argparse.Namespace) -> int:
    import pandas as pd

    import ipgkit

    tasks = [
        ipgkit.tasks.load(args.task, split=s, path=args.path, n=args.limit) for s in args.splits
    ]
    policy = ipgkit.load_model(args.model)
    # with --out, finished sampling batches are kept beside it so a killed run resumes
    progress_dir = None
    if args.out:
        progress_dir = Path(args.out).with_name(f".{Path(args.out).stem}.progress")
        if args.overwrite and progress_dir.exists():
            shutil.rmtree(progress_dir)
    frames = [
        ipgkit.evaluate(
            policy,
            task,
            n_samples=args.samples,
            ks=args.ks,
            temperature=args.temperature,
            progress=True,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            checkpoint_dir=progress_dir,
        )
        for task in tasks
    ]
    table = pd.concat(frames, ignore_index=True)
    print_table(table)
    if args.out:
        from ipgkit.io import atomic_write_text

        atomic_write_text(Path(args.out), table.to_csv(index=False))
        shutil.rmtree(progress_dir, ignore_errors=True)
        print(f"wrote {args.out}")
    return 0


def model_card(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit.experiments.model_card import markdown, write_model_card

    policy = ipgkit.load_model(args.model)
    card = write_model_card(policy, args.out, n=args.limit, n_samples=args.samples)
    print(markdown(card))
    print(f"wrote {args.out}")
    return 0
