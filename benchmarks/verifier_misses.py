"""Why the shipped verifier's fixes miss: its own failed hard-test attempts, as the model card
draws them (200 problems per family, the first failed sample of 8 at T = 0.7), sorted into exact,
wrong location, right location repeating the attempt's own wrong step, and right location with
another wrong step. The README's model section quotes the counts.

    python benchmarks/verifier_misses.py     # under a minute on 2 cores
"""

import collections

import torch

import ipgkit
from ipgkit.evaluation import evaluation_rollouts
from ipgkit.experiments.model_card import first_failures, verifier_outcomes
from ipgkit.tasks import arith, load

torch.set_num_threads(2)
policy = ipgkit.load_model("arith")
attempts = []
for family in arith.FAMILIES:
    task = load(family, split="hard-test", n=200, seed=0)
    _, sampled = evaluation_rollouts(policy, task, 8, seed=0, progress=False)
    attempts += first_failures(task, sampled)
kinds = collections.Counter()
examples = []
for (_, steps), outcome in zip(attempts, verifier_outcomes(policy, attempts), strict=True):
    if outcome is None:
        kinds["skipped"] += 1
        continue
    got, want = outcome
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
