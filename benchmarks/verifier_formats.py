"""Can the embedded model learn to locate the first error of a failed attempt? A format probe.

Fine-tunes the shipped model (or a fresh one with ``--scratch``) on a mix of reasoning and InT
verifier examples whose prompt and answer follow one of several formats, then measures, greedily
on synthetic one-slip attempts at test and hard-test problems, how often the answer parses, points
at the right step and gives the exact fix. Each run is independent (run several at once with
``--threads 1``) and writes its JSON to ``--out``. ``benchmarks/results/verifier_formats.json``
holds the runs of 2026-12-02 (the failed attempts of the training mix were
``make_varied_failed_attempt``'s, as ``--varied`` sets). Every format here leaves location at
chance; ``benchmarks/verifier_tables.py`` lays the comparison out row by row, and its interleaved
layout is the one the model learns (``ipgkit.tasks.comparison``).

Formats:
    plain:       the shipped one (reference unnumbered, attempt numbered, block out);
    numbered:    reference and attempt both numbered 1., 2., ...;
    check:       numbered, and the answer starts with a per-step verdict line ``1= 2= 3!``;
    aligned:     one line per step, ``k. <attempt step> | <reference step>``;
    fixed:       one line per step, ``k | <attempt step> | <reference step>``, both columns
                 padded to 11 characters (compared characters at a constant distance);
    fixed-check: fixed, with the verdict line.

    python benchmarks/verifier_formats.py check --steps 450 --out /tmp/check.json
"""

import argparse
import json
import random
import time

import torch
import torch.nn.functional as F

import ipgkit.models.training as training
from ipgkit.models.arith import arith_config, build_policy, load_arith
from ipgkit.rollouts import sample
from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.verification import (
    first_divergence,
    format_intervention,
    number_steps,
    parse_intervention,
)

FORMATS = ("plain", "numbered", "check", "aligned", "fixed", "fixed-check")


def make_prompt(form: str):
    def prompt(question, reference, attempt):
        steps = split_lines(reference)
        if form == "aligned":
            rows = [
                f"{i}. {step} | {steps[i - 1] if i <= len(steps) else '-'}"
                for i, step in enumerate(attempt, 1)
            ]
            table = "\n".join(rows)
            return f"Verify.\nQ: {question}\nAttempt | Reference:\n{table}\nIntervention:\n"
        if form in ("fixed", "fixed-check"):
            rows = [
                f"{i} | {step:<11} | {steps[i - 1] if i <= len(steps) else '':<11}"
                for i, step in enumerate(attempt, 1)
            ]
            table = "\n".join(rows)
            return f"Verify.\nQ: {question}\nStep | attempt | reference:\n{table}\nIntervention:\n"
        shown = reference if form == "plain" else number_steps(steps)
        return (
            f"Verify.\nQ: {question}\nReference:\n{shown}\n"
            f"Attempt:\n{number_steps(attempt)}\nIntervention:\n"
        )

    return prompt


def make_answer(form: str):
    def answer(fix):
        block = format_intervention(fix)
        if form not in ("check", "fixed-check"):
            return block
        marks = " ".join([f"{k}=" for k in range(1, fix.location)] + [f"{fix.location}!"])
        return f"Check: {marks}\n{block}"

    return answer


def verdict_positions(targets: torch.Tensor, tokenizer) -> torch.Tensor:
    """[batch, pos] True at the ``=``/``!`` verdicts of a ``Check: 1= 2= 3!`` line."""
    found = torch.zeros_like(targets, dtype=torch.bool)
    for row, line in enumerate(targets.tolist()):
        # one character per token; special tokens become a placeholder of the same width
        pieces = tokenizer.convert_ids_to_tokens(line)
        text = "".join(piece if len(piece) == 1 else "\0" for piece in pieces)
        start = text.find("Check: ")
        if start < 0:
            continue
        stop = text.find("\n", start)
        for position in range(start, stop if stop >= 0 else len(text)):
            if text[position] in "=!" and text[position - 1].isdigit():
                found[row, position] = True
    return found


def measure(policy, prompt, n: int, seed: int = 7) -> dict:
    rng, results = random.Random(seed), {}
    for split in ("test", "hard-test"):
        pairs = [
            (problem, arith.make_failed_attempt(rng, problem))
            for family in arith.FAMILIES
            for problem in load(family, split=split, n=n, seed=3).problems
        ]
        pairs = [(p, a) for p, a in pairs if len(prompt(p.question, p.reference, a)) + 112 <= 512]
        expected = [first_divergence(split_lines(p.reference), a) for p, a in pairs]
        texts = sample(
            policy,
            [prompt(p.question, p.reference, a) for p, a in pairs],
            temperature=0.0,
            max_new_tokens=110,
            format_prompts=False,
        ).texts
        parsed = [parse_intervention(text) for text in texts]
        pairs_found = list(zip(parsed, expected, strict=True))
        right = [p is not None and p.location == e.location for p, e in pairs_found]
        results[split] = {
            "n": len(pairs),
            "parsed": sum(p is not None for p in parsed) / len(pairs),
            "location": sum(right) / len(pairs),
            "exact": sum(p == e for p, e in pairs_found) / len(pairs),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--verifier-fraction", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scratch", action="store_true", help="a fresh model, not the shipped")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--problems", type=int, default=60, help="per family and split")
    parser.add_argument("--varied", action="store_true", help="varied failed attempts to train")
    parser.add_argument(
        "--verdict-weight", type=float, default=1.0, help="loss weight of the verdict tokens"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompt = make_prompt(args.format)
    training.verifier_prompt, training.format_intervention = prompt, make_answer(args.format)
    policy = load_arith()
    if args.scratch:
        from transformer_lens import HookedTransformer

        policy = build_policy(HookedTransformer(arith_config(seed=3)))
    config = training.TrainingConfig(
        steps=args.steps,
        lr=args.lr,
        verifier_fraction=args.verifier_fraction,
        failed_attempts="varied" if args.varied else "one-slip",
        seed=1,
    )
    model = policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    model.train()
    started = time.time()
    for step in range(args.steps):
        tokens, mask = training.batch_for_step(step, config, policy.tokenizer, 512)
        for group in optimizer.param_groups:
            group["lr"] = training.learning_rate(step, config)
        logits = training.training_logits(model, tokens)[:, :-1]
        losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        verdicts = verdict_positions(tokens[:, 1:], policy.tokenizer) & mask
        weights = torch.where(verdicts, args.verdict_weight, 1.0)[mask]
        optimizer.zero_grad()
        ((losses[mask] * weights).sum() / weights.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            verdict = losses[verdicts].mean().item() if verdicts.any() else float("nan")
            print(
                step,
                f"loss {losses[mask].mean().item():.4f}",
                f"verdicts {verdict:.3f}",
                f"{time.time() - started:.0f}s",
                flush=True,
            )
    model.eval()
    torch.save(model.state_dict(), args.out + ".pt")
    results = {"format": args.format, **vars(args), **measure(policy, prompt, args.problems)}
    results["seconds"] = time.time() - started
    print(json.dumps(results, indent=1))
    with open(args.out, "w") as file:
        json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
