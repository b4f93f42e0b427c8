"""Why IPG on the process reward centres its advantages without dividing by the std: on a support
set like Table 1's (50 train prompts per family, 5 rollouts at T = 0.6, top-p 0.8), how many groups
have three or more distinct step fractions, and how IPG on step_progress with ``mean_std``
advantages (which equal correctness's wherever a group has two values) ranks against IPG on
correctness. The README's process-reward bullet quotes it.

    python benchmarks/process_advantage.py     # about 20 seconds on one thread
"""

import numpy as np
import scipy.stats
import torch

import ipgkit
from ipgkit.tasks import mix_tasks, step_progress

torch.set_num_threads(1)
policy = ipgkit.load_model("arith")
tasks = [ipgkit.tasks.load(f, split="train", n=50) for f in ("arith-word", "arith-chain")]
task = mix_tasks(tasks)
rollouts = ipgkit.sample(
    policy,
    task.problems,
    n=5,
    temperature=0.6,
    top_p=0.8,
    max_new_tokens=task.max_new_tokens,
    reward=task.correctness,
)
process = rollouts.with_rewards(step_progress)
fractions = process.rewards.view(len(task.problems), 5)
distinct = [len(set(np.round(group.tolist(), 6))) for group in fractions]
print(
    "groups with >= 3 distinct step fractions:", sum(d >= 3 for d in distinct), "of", len(distinct)
)
units = ipgkit.mlp_neurons(2)
on_correctness = ipgkit.ipg(policy, task.problems, units, rollouts=rollouts)
on_process = ipgkit.ipg(policy, task.problems, units, rollouts=process, advantage="mean_std")
pearson = scipy.stats.pearsonr(on_correctness.scores.numpy(), on_process.scores.numpy())[0]
same_top = set(on_correctness.top(20).indices) == set(on_process.top(20).indices)
print(f"pearson {pearson:.4f}, same top 20: {same_top}")
