"""SAE feature figures for the embedded model: IPG over the latents of one shipped SAE, the pages of
its top latents, the process-level activation frequency (IPG paper, appendix B.3.2) against
ReasonScore and random latents, and a first suppression check on held-out problems.

    python figures/sae_features.py [--layer 2] [--prompts 50] [--test 200]

Writes, for layer L: figures/sae_pages_L{L}.png, figures/sae_progress_L{L}.png, and
figures/data/sae_features_L{L}.json (every number printed), plus the IPG result as
figures/data/sae_ipg_L{L}.safetensors. About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import ipgkit
from ipgkit.analysis import activation_by_progress, feature_pages, plot_activation_by_progress
from ipgkit.attribution import random_baseline, reason_score

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=50, help="support-set size")
    parser.add_argument("--test", type=int, default=200, help="held-out problems per family")
    parser.add_argument("--top", type=int, default=20, help="latents per set")
    args = parser.parse_args()
    torch.manual_seed(0)
    plain = ipgkit.load_model("arith")
    policy = ipgkit.load_model("arith", saes=[args.layer])
    features = ipgkit.sae_features(policy, layer=args.layer)
    support = ipgkit.tasks.load("arith-word", split="train", n=args.prompts)
    # the spliced model equals the plain one, so sample from the cheaper plain model
    rollouts = ipgkit.sample(
        plain,
        support.problems,
        n=5,
        temperature=0.6,
        top_p=0.8,
        max_new_tokens=support.max_new_tokens,
        reward=support.correctness,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IPG completeness gap")
        result = ipgkit.ipg(
            policy,
            support.problems,
            features,
            support.correctness,
            rollouts=rollouts,
            progress=True,
        )
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    result.save(data / f"sae_ipg_L{args.layer}.safetensors")
    reason = reason_score(policy, rollouts, features)
    sets = {
        f"IPG top {args.top}": result.top(args.top),
        f"ReasonScore top {args.top}": reason.top(args.top),
        f"random {args.top}": random_baseline(policy, features, seed=0).top(args.top),
    }
    report = {
        "layer": args.layer,
        "prompts": args.prompts,
        "ipg": {
            "delta": result.delta,
            "surrogate": result.info["surrogate"],
            "frac_reward_zero_std": result.frac_reward_zero_std,
            "seconds": result.info["seconds"],
            "top": result.to_dataframe().sort_values("rank").head(10).to_dict("records"),
        },
    }
    ipg_top, reason_top = (set(s.indices) for s in list(sets.values())[:2])
    report["dice_ipg_reasonscore"] = 2 * len(ipg_top & reason_top) / (2 * args.top)

    pages = feature_pages(policy, result.top(5), rollouts, n_contexts=6, n_tokens=8)
    report["pages"] = {unit: pages.page(unit) for unit in pages.units}
    for text in report["pages"].values():
        print(text, end="\n\n")
    figure, axes = plt.subplots(3, 1, figsize=(7, 10))
    for ax, unit in zip(axes, pages.units[:3], strict=True):
        pages.plot(unit, ax=ax)
    figure.tight_layout()
    figure.savefig(HERE / f"sae_pages_L{args.layer}.png", dpi=130, bbox_inches="tight")

    progress = activation_by_progress(policy, sets, rollouts, support.split_steps)
    report["progress"] = progress.to_dict("records")
    ax = plot_activation_by_progress(progress)
    ax.set_title(f"SAE latents at layer {args.layer}: activation frequency along the chain")
    ax.figure.savefig(HERE / f"sae_progress_L{args.layer}.png", dpi=130, bbox_inches="tight")

    rows = []
    for family in ("arith-word", "arith-chain"):
        task = ipgkit.tasks.load(family, split="test", n=args.test)
        base = ipgkit.evaluate(plain, task).set_index("metric").loc["accuracy@1"]
        rows.append({"family": family, "set": "none", "gamma": 1.0, "accuracy": base.value})
        for name, chosen in sets.items():
            with ipgkit.steer(policy, chosen, gamma=0.0):
                table = ipgkit.evaluate(policy, task).set_index("metric").loc["accuracy@1"]
            rows.append(
                {
                    "family": family,
                    "set": name,
                    "gamma": 0.0,
                    "accuracy": table.value,
                    "ci": [table.ci_low, table.ci_high],
                }
            )
    report["suppression"] = rows
    print(
        json.dumps(
            {k: report[k] for k in ("ipg", "dice_ipg_reasonscore", "suppression")},
            indent=1,
            default=str,
        )
    )
    (data / f"sae_features_L{args.layer}.json").write_text(
        json.dumps(report, indent=1, default=str)
    )


if __name__ == "__main__":
    main()
