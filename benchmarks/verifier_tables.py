"""Can the embedded model find the first error when the comparison is laid out for it? A probe.

``benchmarks/verifier_formats.py`` showed that with the attempt and the reference as two blocks the
model learns the answer's format and copying, not where the first difference is (location at
chance). Here the verifier prompt is a table that puts attempt step k next to reference step k, and
the model writes a verdict per row, stopping at the first mismatch, then the intervention block:

    verdict:      ``k | <attempt, 11 wide> | <reference, 11 wide> =`` (or ``!``), one row per step;
    diff:         the same row, then a character diff the model writes (``.`` same, ``^`` differs)
                  before the verdict: a dense signal, but the compared characters are 14 and 28
                  positions back;
    interleaved:  ``k | `` then the two steps' characters in pairs, each pair followed by the mark
                  the model writes (``33.99.**.55.==.11.89^``), stopping at the first ``^``: the
                  compared characters are adjacent.

The marks and verdicts are trained with extra loss weight; the table's characters are given (no
loss). Location is read from ONE teacher-forced pass over the whole table with ``.``/``=`` in every
slot: the first slot whose argmax is ``^``/``!`` is exactly where greedy decoding would first flag a
mismatch (the slots before it are ``.``/``=`` in both, so by causality the logits agree). The block
is then generated greedily from the text up to that mark. Measured on synthetic one-slip attempts
(test and hard-test) and, after the last step, on the model's own failed hard-test attempts, with
greedy accuracy on test; ``--out`` gets the JSON (one record per evaluation).
``benchmarks/results/verifier_tables.json`` holds the runs of 2026-12-02: the interleaved layout
locates the first error on 99-100% of attempts after 300-1200 warm steps, the other two at chance.

    python benchmarks/verifier_tables.py interleaved --steps 1200 --varied --out /tmp/inter.json
"""

import argparse
import json
import random
import time

import torch
import torch.nn.functional as F

import ipgkit.models.training as training
from ipgkit.models.arith import arith_config, arith_prompt, build_policy, load_arith
from ipgkit.rollouts import sample
from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.comparison import HEADER, comparison_rows
from ipgkit.tasks.verification import first_divergence, format_intervention, parse_intervention

LAYOUTS = ("verdict", "diff", "interleaved")
WIDTH = 11
HEADERS = {
    "verdict": "Step | attempt | reference\n",
    "diff": "Step | attempt | reference\n",
    "interleaved": HEADER,
}
MISMATCH = {"mark": ("^", "."), "verdict": ("!", "=")}  # role -> (flags an error, does not)


def step_at(steps, k):
    return steps[k - 1] if k <= len(steps) else ""


def table_pieces(layout, attempt, reference, truth):
    """(text, role) pieces of the table; role is "mark", "verdict" or None (given text).

    ``truth``: the training text (right marks, stopping at the first mismatch) rather than the
    probe text (every row, ``.``/``=`` in every slot). The interleaved layout is the package's
    (``ipgkit.tasks.comparison``)."""
    if layout == "interleaved":
        return comparison_rows(attempt, reference, truth)
    stop = first_divergence(reference, attempt).location
    pieces = []
    for k in range(1, max(len(attempt), len(reference)) + 1):
        att, ref = f"{step_at(attempt, k):<{WIDTH}}", f"{step_at(reference, k):<{WIDTH}}"
        pieces.append((f"{k} | {att} | {ref} ", None))
        if layout == "diff":
            width = max(len(att), len(ref))
            pieces.append(("| ", None))
            for x, y in zip(att.ljust(width), ref.ljust(width), strict=True):
                pieces.append(("." if x == y or not truth else "^", "mark"))
            pieces.append((" ", None))
        pieces += [("!" if truth and k == stop else "=", "verdict"), ("\n", None)]
        if truth and k == stop:
            break
    return pieces


def closing(layout, role):
    """The text after a flagged slot up to the block: the given characters around the verdict
    (the model is trained on the marks, verdicts and block, not on the table's own characters,
    so they are written for it, as in the rows); after a diff mark the model writes the rest."""
    if role == "verdict":
        return "!\n"
    return "^" if layout == "diff" else "^ !\n"


def prompt_head(layout, question):
    return f"Verify.\nQ: {question}\n{HEADERS[layout]}"


def training_pieces(rng, args, max_tokens=512):
    """(text, loss weight) pieces of one example of the mix (0: not trained)."""
    weights = {"mark": args.mark_weight, "verdict": args.verdict_weight, None: 0.0}
    while True:
        difficulty = arith.TRAINING[0] if rng.random() < 0.75 else arith.TRAINING[1]
        family = rng.choice(arith.FAMILIES)
        problem = arith.make_problem(family, rng, difficulty, "train", bucket="train")
        if rng.random() < args.verifier_fraction:
            varied = args.varied and rng.random() < 0.5
            make = arith.make_varied_failed_attempt if varied else arith.make_failed_attempt
            attempt = make(rng, problem)
            reference = split_lines(problem.reference)
            table = table_pieces(args.layout, attempt, reference, truth=True)
            fix = first_divergence(reference, attempt)
            pieces = [(prompt_head(args.layout, problem.question), 0.0)]
            pieces += [(text, weights[role]) for text, role in table]
            pieces.append((format_intervention(fix), 1.0))
        else:
            pieces = [(arith_prompt(problem.question), 0.0), (problem.reference, 1.0)]
        if sum(len(text) for text, _ in pieces) + 2 <= max_tokens:
            return pieces


def batch(step, args, tokenizer):
    """Tokens [batch, pos] and per-target loss weights [batch, pos - 1] (0: not trained)."""
    rng = random.Random(f"{args.seed}:{step}")
    rows = []
    for _ in range(args.batch_size):
        ids, weights = [tokenizer.bos_token_id], []
        for text, weight in training_pieces(rng, args):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            weights += [weight] * len(piece)
        rows.append(([*ids, tokenizer.eos_token_id], [*weights, 1.0]))
    length = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), length), tokenizer.pad_token_id)
    weights = torch.zeros((len(rows), length - 1))
    for i, (ids, row_weights) in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        weights[i, : len(row_weights)] = torch.tensor(row_weights)
    return tokens, weights


@torch.no_grad()
def locate(policy, layout, items, chunk=16):
    """For (question, attempt, reference steps): (flagged row or None if it does not fit, text up
    to and including the first mismatch symbol the model prefers, or None if it flags none)."""
    tokenizer = policy.tokenizer
    found = []
    for start in range(0, len(items), chunk):
        tables = []
        for question, attempt, reference in items[start : start + chunk]:
            text, slots = prompt_head(layout, question), []
            for piece, role in table_pieces(layout, attempt, reference, truth=False):
                if role is not None:
                    slots.append((len(text), role, text.count("\n") - 2))
                text += piece
            tables.append((text, slots))
        encoded = [
            [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
            for text, _ in tables
        ]
        fits = [len(ids) <= policy.n_ctx for ids in encoded]
        length = max([len(ids) for ids, ok in zip(encoded, fits, strict=True) if ok] + [1])
        tokens = torch.full((len(tables), length), tokenizer.pad_token_id)
        for i, ids in enumerate(encoded):
            if fits[i]:
                tokens[i, : len(ids)] = torch.tensor(ids)
        logits = training.training_logits(policy.model, tokens)
        for i, (text, slots) in enumerate(tables):
            if not fits[i]:
                found.append((None, None))
                continue
            result = (text.count("\n") - 2, None)  # flags nothing: "after the last row"
            for position, role, row in slots:
                bad, good = (tokenizer.convert_tokens_to_ids(c) for c in MISMATCH[role])
                # the character at text index p is token p + 1, predicted at position p
                if logits[i, position, bad] > logits[i, position, good]:
                    result = (row, text[:position] + closing(layout, role))
                    break
            found.append(result)
    return found


def score(policy, layout, items):
    """Location, exact-fix and parse rates for (problem, attempt steps) pairs."""
    references = [split_lines(problem.reference) for problem, _ in items]
    flagged = locate(
        policy, layout, [(p.question, a, r) for (p, a), r in zip(items, references, strict=True)]
    )
    kept = [i for i, (row, _) in enumerate(flagged) if row is not None]
    # the block needs up to 90 new tokens; a prefix that leaves less room counts as unparsed
    room = [len(ids) + 90 <= policy.n_ctx for ids in policy.encode([t or "" for _, t in flagged])]
    prefixes = [i for i in kept if flagged[i][1] is not None and room[i]]
    texts = sample(
        policy,
        [flagged[i][1] for i in prefixes],
        temperature=0.0,
        max_new_tokens=90,
        format_prompts=False,
        progress=False,
    ).texts
    parsed = {i: parse_intervention(text) for i, text in zip(prefixes, texts, strict=True)}
    expected = {i: first_divergence(references[i], items[i][1]) for i in kept}
    right = [flagged[i][0] == expected[i].location for i in kept]
    exact = [
        r and parsed.get(i) is not None and parsed[i].content == expected[i].content
        for i, r in zip(kept, right, strict=True)
    ]
    n = max(1, len(kept))
    return {
        "n": len(kept),
        "skipped_too_long": len(items) - len(kept),
        "location": sum(right) / n,
        "exact": sum(exact) / n,
        "parsed": sum(parsed.get(i) is not None for i in kept) / n,
        "first_row_baseline": sum(expected[i].location == 1 for i in kept) / n,
    }


def own_failures(policy, n, samples=4):
    """The model's own wrong attempts at hard-test problems (T = 0.7, ``samples`` per problem)."""
    problems = [p for f in arith.FAMILIES for p in load(f, split="hard-test", n=n, seed=5).problems]
    rollouts = sample(
        policy, problems, n=samples, temperature=0.7, max_new_tokens=128, seed=11, progress=False
    )
    items = []
    for row, text in enumerate(rollouts.texts):
        problem, steps = problems[row // samples], split_lines(text)
        if steps and steps[-1] != f"#### {problem.answer}":
            items.append((problem, steps))
    return items


def evaluate(policy, layout, n, final, seed=7):
    rng, record = random.Random(seed), {}
    for split in ("test", "hard-test"):
        problems = [p for f in arith.FAMILIES for p in load(f, split=split, n=n, seed=3).problems]
        record[split] = score(
            policy, layout, [(p, arith.make_failed_attempt(rng, p)) for p in problems]
        )
    if final:
        record["own_hard_failures"] = score(policy, layout, own_failures(policy, 60))
        for family in arith.FAMILIES:
            task = load(family, split="test", n=50, seed=3)
            rollouts = sample(
                policy, task.problems, temperature=0.0, reward=task.correctness, progress=False
            )
            record[f"greedy_{family}_test"] = rollouts.rewards.float().mean().item()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("layout", choices=LAYOUTS)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--verifier-fraction", type=float, default=0.5)
    parser.add_argument("--verdict-weight", type=float, default=3.0)
    parser.add_argument("--mark-weight", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scratch", action="store_true", help="a fresh model, not the shipped")
    parser.add_argument("--varied", action="store_true", help="half the attempts varied")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--problems", type=int, default=40, help="per family and split")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--init", help="start from these weights (a .pt this script saved)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = load_arith()
    if args.scratch:
        from transformer_lens import HookedTransformer

        policy = build_policy(HookedTransformer(arith_config(seed=3)))
    if args.init:
        policy.model.load_state_dict(torch.load(args.init, weights_only=True))
    schedule = training.TrainingConfig(
        steps=args.steps, lr=args.lr, warmup_steps=30 if args.scratch else 10
    )
    model = policy.model
    if args.steps == 0:  # evaluate --init only
        model.eval()
        record = evaluate(policy, args.layout, args.problems, final=True)
        print(json.dumps(record))
        with open(args.out, "w") as file:
            json.dump({"args": vars(args), "evaluations": [record]}, file, indent=1)
        return
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.05
    )
    started, records = time.time(), []
    for step in range(args.steps):
        model.train()
        tokens, weights = batch(step, args, policy.tokenizer)
        for group in optimizer.param_groups:
            group["lr"] = training.learning_rate(step, schedule)
        logits = training.training_logits(model, tokens)[:, :-1]
        losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        optimizer.zero_grad()
        ((losses * weights).sum() / weights.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            slots = (weights == args.mark_weight) | (weights == args.verdict_weight)
            print(step, f"slot loss {losses[slots].mean().item():.4f}", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            torch.save(model.state_dict(), args.out + ".pt")
            model.eval()
            final = step + 1 == args.steps
            record = {"step": step + 1, **evaluate(policy, args.layout, args.problems, final)}
            record["seconds"] = time.time() - started
            print(json.dumps(record), flush=True)
            records.append(record)
            with open(args.out, "w") as file:
                json.dump({"args": vars(args), "evaluations": records}, file, indent=1)


if __name__ == "__main__":
    main()
