"""Training loops on ipgkit's hooks: SFT (completion-masked), GRPO (TRL names), InT, and the
distilled student of the transfer experiment.

Example:
    >>> from ipgkit.training import GRPOConfig, grpo_train, hard_pool      # doctest: +SKIP
"""

from ipgkit.training.distill import DistillConfig, add_checks, check_rate, distill
from ipgkit.training.gains import GainConfig, GainRun, learn_gains
from ipgkit.training.grpo import GRPOConfig, GRPORun, grpo_step, grpo_train, step_advantages
from ipgkit.training.int_records import FailedAttempt, HardPool, InterventionSet
from ipgkit.training.interventions import (
    ReferenceChecker,
    SelfProposer,
    continuation_table,
    hard_pool,
    int_examples,
    intervention_logprob,
    leaks_answer,
    misplaced_table,
    propose_interventions,
)
from ipgkit.training.sft import (
    SFTConfig,
    SFTExample,
    completion_nll,
    reference_examples,
    sft_loss,
    train_sft,
)

__all__ = [
    "DistillConfig",
    "FailedAttempt",
    "GRPOConfig",
    "GRPORun",
    "GainConfig",
    "GainRun",
    "HardPool",
    "InterventionSet",
    "ReferenceChecker",
    "SFTConfig",
    "SFTExample",
    "SelfProposer",
    "add_checks",
    "check_rate",
    "completion_nll",
    "continuation_table",
    "distill",
    "grpo_step",
    "grpo_train",
    "hard_pool",
    "int_examples",
    "intervention_logprob",
    "leaks_answer",
    "learn_gains",
    "misplaced_table",
    "propose_interventions",
    "reference_examples",
    "sft_loss",
    "step_advantages",
    "train_sft",
]
