"""Why the shipped verifier's fixes miss: its own failed hard-test attempts, as the model card
draws them (200 problems per family, the first failed sample of 8 at T = 0.7), sorted into exact,
wrong location, right location repeating the attempt's own wrong step, and right location with
another wrong step. The README's model section quotes the counts.

    python benchmarks/verifier_misses.py     # about 2 minutes on one thread
"""

import collections

import torch

import ipgkit
from ipgkit.evaluation import evaluation_rollouts
from ipgkit.experiments.model_card import first_failures
from ipgkit.tasks import arith, load
from ipgkit.tasks.base import split_lines
from ipgkit.tasks.verification import first_divergence, parse_intervention
from ipgkit.training.interventions import FailedAttempt, SelfProposer

torch.set_num_threads(1)
policy = ipgkit.load_model("arith")
attempts = []
for family in arith.FAMILIES:
    task = load(family, split="hard-test", n=200, seed=0)
    _, sampled = evaluation_rollouts(policy, task, 8, seed=0, progress=False)
    attempts += first_failures(task, sampled)
answers = SelfProposer(policy, n=1, temperature=0.0, max_new_tokens=128)(
    [FailedAttempt(p, "", tuple(s)) for p, s in attempts]
)
kinds = collections.Counter()
examples = []
for (problem, steps), answer in zip(attempts, answers, strict=True):
    if not answer:
        kinds["skipped"] += 1
        continue
    got = parse_intervention(answer[0])
    want = first_divergence(split_lines(problem.reference), steps)
    if got is None:
        kinds["unparsed"] += 1
    elif got == want:
        kinds["exact"] += 1
    elif got.location != want.location:
        kinds["wrong location"] += 1
    elif got.content.strip() == steps[want.location - 1].strip():
        kinds["right location, repeats the attempt's step"] += 1
        if len(examples) < 3:
            examples.append((steps[want.location - 1], want.content, got.content))
    else:
        kinds["right location, another wrong step"] += 1
print(len(attempts), dict(kinds))
print(examples)
