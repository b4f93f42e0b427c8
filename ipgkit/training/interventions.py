"""InT (arXiv 2601.14209): find hard problems, have a proposer locate the first error of a failed
attempt against the reference solution and write a one-step fix, filter the fixes, and build the
prefix + intervention SFT data.

Pipeline, each stage a function over ipgkit's own sampler and scorer:

1. :func:`hard_pool`: problems whose pass@k is zero under the current model, with a failed attempt
   each (split into steps with the task's segmentation).
2. Proposers: :class:`SelfProposer` (the model itself, with an InT verification prompt: the
   embedded model's trained verifier format, or a real instruction through a chat model's prompt
   format) and :class:`ReferenceChecker` (the exact first wrong step of step-aligned arithmetic,
   an upper bound and ground truth for tests).
3. :func:`propose_interventions`: parse (with repairs; unparsable answers are counted and
   dropped), drop fixes that point outside the attempt or contain the final answer, keep one per
   attempt, and keep it only if one of ``n_continuations`` samples from prefix + fix reaches the
   correct answer. ``InterventionSet.yields`` reports what survives each filter.
4. :func:`int_examples`: prompt -> prefix + intervention (no suffix, no EOS), and the ablations.
5. :func:`continuation_table`: continuation accuracy and coverage from (prefix), (prefix +
   original step) and (prefix + intervention).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import pandas as pd
import torch

from ipgkit.errors import IpgkitError
from ipgkit.models.arith import arith_prompt
from ipgkit.models.policy import Policy
from ipgkit.rollouts import sample
from ipgkit.tasks.base import Task, split_lines
from ipgkit.tasks.verification import (
    INT_INSTRUCTION,
    INT_INSTRUCTION_NO_REFERENCE,
    Intervention,
    first_divergence,
    format_intervention,
    number_steps,
    parse_intervention_text,
    verifier_prompt,
)
from ipgkit.training.sft import SFTExample, completion_nll, text_example

from .comparison_verifier import propose_by_comparison
from .continuations import continuation_table, continue_from, misplaced_table
from .int_records import FailedAttempt, HardPool, InterventionSet


def hard_pool(
    policy: Policy,
    task: Task,
    k: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> HardPool:
    """The problems of ``task`` whose pass@k is zero under ``policy`` (the InT paper uses k = 64 to
    128 on LLMs), each with its first failed attempt.

    Example:
        >>> pool = hard_pool(policy, ipgkit.tasks.load("arith-word", split="hard-train", n=200))
        >>> len(pool.problems), pool.fraction                              # doctest: +SKIP
    """
    if k < 1:
        raise IpgkitError(f"k must be >= 1, got {k}")
    rollouts = sample(
        policy,
        task.problems,
        n=k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens or task.max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        reward=task.correctness,
        progress=progress,
    )
    solved = rollouts.rewards_by_group().amax(-1) > 0
    problems, attempts = [], []
    for group, problem in enumerate(task.problems):
        if bool(solved[group]):
            continue
        text = rollouts.texts[group * k]
        problems.append(problem)
        attempts.append(FailedAttempt(problem, text, tuple(task.split_steps(text))))
    return HardPool(problems, attempts, k, len(task.problems))


# --- proposers ----------------------------------------------------------------------------------


class Proposer(Protocol):
    """Anything that answers failed attempts with intervention texts (one list per attempt)."""

    name: str

    def __call__(self, attempts: Sequence[FailedAttempt]) -> list[list[str]]: ...


@dataclass
class ReferenceChecker:
    """The rule-based proposer for step-aligned arithmetic: the first attempt step that differs
    from the reference, replaced by the reference's step (exact; an upper bound for proposers)."""

    split_steps: Callable[[str], list[str]] = field(default=split_lines, repr=False)
    name: str = "reference-checker"

    def __call__(self, attempts: Sequence[FailedAttempt]) -> list[list[str]]:
        answers = []
        for attempt in attempts:
            fix = first_divergence(self.split_steps(attempt.problem.reference), attempt.steps)
            answers.append([format_intervention(fix)] if fix is not None else [])
        return answers


@dataclass
class SelfProposer:
    """The policy proposes its own interventions.

    Attributes:
        policy: the model that verifies (usually the one being trained).
        n: proposals per attempt.
        temperature, max_new_tokens, seed: sampling settings.
        style: ``"verifier"`` (the embedded model's block format, :func:`verifier_prompt`),
            ``"compare"`` (the comparison table, :mod:`ipgkit.tasks.comparison`; needs the
            reference) or ``"chat"`` (:data:`INT_INSTRUCTION` through the policy's prompt format,
            i.e. its chat template). None: the format the policy was trained on
            (``policy.metadata["verifier_format"]``; without the reference a comparison-trained
            model answers in the block format, which its no-reference examples use), else
            ``"verifier"`` for the embedded model's prompt format and ``"chat"`` for others.
        with_reference: show the reference solution (InT); False asks the model to find the
            first error on its own (the paper's "without reference" ablation).
        name: the proposer's name in the yields table.
    """

    policy: Policy
    n: int = 1
    temperature: float = 0.7
    max_new_tokens: int = 96
    seed: int = 0
    style: Literal["verifier", "compare", "chat"] | None = None
    with_reference: bool = True
    name: str = "self"

    @property
    def resolved_style(self) -> str:
        if self.style is not None:
            return self.style
        fallback = "verifier" if self.policy.prompt_format is arith_prompt else "chat"
        trained = self.policy.metadata.get("verifier_format", fallback)
        return "verifier" if trained == "compare" and not self.with_reference else trained

    def prompts(self, attempts: Sequence[FailedAttempt]) -> list[str]:
        style = self.resolved_style
        if style == "compare":
            raise IpgkitError("the comparison format has no prompt of its own; call the proposer")
        if style == "verifier":
            return [
                verifier_prompt(
                    a.problem.question,
                    a.problem.reference if self.with_reference else None,
                    a.steps,
                )
                for a in attempts
            ]
        instruction = INT_INSTRUCTION if self.with_reference else INT_INSTRUCTION_NO_REFERENCE
        return [
            self.policy.prompt_format(
                instruction.format(
                    question=a.problem.question,
                    reference=a.problem.reference,
                    attempt=number_steps(a.steps),
                )
            )
            for a in attempts
        ]

    def __call__(self, attempts: Sequence[FailedAttempt]) -> list[list[str]]:
        """``n`` answers per attempt; none for an attempt whose verification prompt leaves no room
        for ``max_new_tokens`` in the context (counted by :func:`propose_interventions`)."""
        if self.resolved_style == "compare":
            if not self.with_reference:
                raise IpgkitError(
                    "the comparison format compares with the reference; use "
                    "style='verifier' to verify without it"
                )
            items = [
                (a.problem.question, a.steps, split_lines(a.problem.reference)) for a in attempts
            ]
            return propose_by_comparison(
                self.policy, items, self.n, self.temperature, self.max_new_tokens, self.seed
            )
        prompts = self.prompts(attempts)
        lengths = [len(ids) for ids in self.policy.encode(prompts)]
        fits = [
            i
            for i, length in enumerate(lengths)
            if length + self.max_new_tokens <= self.policy.n_ctx
        ]
        answers: list[list[str]] = [[] for _ in attempts]
        if not fits:
            return answers
        rollouts = sample(
            self.policy,
            [prompts[i] for i in fits],
            n=self.n,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            format_prompts=False,
            progress=False,
        )
        for row, index in enumerate(fits):
            answers[index] = rollouts.texts[row * self.n : (row + 1) * self.n]
        return answers


# --- filters ------------------------------------------------------------------------------------


def leaks_answer(content: str, answer: str) -> bool:
    """Does an intervention reveal the final answer? True when it contains the answer as a whole
    number or expression (not as part of a longer number) or the final-answer mark ``####``.

    Example:
        >>> leaks_answer("228+53=281", "281"), leaks_answer("228+53=2810", "281")
        (True, False)
    """
    if "####" in content or "\\boxed" in content:
        return True
    answer = answer.strip()
    if not answer:
        return False
    pattern = rf"(?<![\w.]){re.escape(answer)}(?![\w]|\.\d)"
    return re.search(pattern, content) is not None


def propose_interventions(
    policy: Policy,
    task: Task,
    attempts: Sequence[FailedAttempt],
    proposer: Proposer,
    n_continuations: int = 4,
    require_correct_continuation: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> InterventionSet:
    """Propose, parse and filter interventions for ``attempts``.

    Filters, in order (``yields`` counts the survivors of each; a proposer may leave an attempt
    unanswered, e.g. when its prompt does not fit the context): parsed; location inside the
    attempt; no answer leak (:func:`leaks_answer`); one per attempt (the first survivor); at least
    one of ``n_continuations`` continuations sampled by ``policy`` from prompt + prefix +
    intervention reaches the correct answer (skipped when ``require_correct_continuation`` is
    False, InT's "without the correctness filter" ablation; continuations are still sampled).
    """
    answers = proposer(attempts)
    counts = {"proposed": 0, "parsed": 0, "in range": 0, "no answer leak": 0}
    status: dict[str, int] = {}
    candidates: list[Intervention | None] = []
    for attempt, texts in zip(attempts, answers, strict=True):
        chosen = None
        for text in texts:
            counts["proposed"] += 1
            outcome = parse_intervention_text(text)
            status[outcome.status] = status.get(outcome.status, 0) + 1
            if outcome.intervention is None:
                continue
            counts["parsed"] += 1
            if outcome.intervention.location > len(attempt.steps):
                continue
            counts["in range"] += 1
            if leaks_answer(outcome.intervention.content, attempt.problem.answer):
                continue
            counts["no answer leak"] += 1
            chosen = chosen or outcome.intervention
        candidates.append(chosen)
    with_fix = [i for i, fix in enumerate(candidates) if fix is not None]
    continuations: list[str | None] = [None] * len(attempts)
    correct = [False] * len(attempts)
    if with_fix:
        results = continue_from(
            policy,
            task,
            [attempts[i] for i in with_fix],
            [candidates[i] for i in with_fix],
            "intervention",
            n_continuations,
            temperature,
            seed,
            progress,
        )
        for index, (texts, rewards) in zip(with_fix, results, strict=True):
            hits = [t for t, r in zip(texts, rewards, strict=True) if r > 0]
            correct[index] = bool(hits)
            continuations[index] = hits[0] if hits else None
    kept = [
        fix if (correct[i] or not require_correct_continuation) else None
        for i, fix in enumerate(candidates)
    ]
    answered = sum(bool(texts) for texts in answers)
    rows = [{"stage": "attempts answered", "count": answered, "unit": "attempts"}]
    rows += [{"stage": stage, "count": n, "unit": "proposals"} for stage, n in counts.items()]
    rows.append({"stage": "one per attempt", "count": len(with_fix), "unit": "attempts"})
    rows.append({"stage": "correct continuation", "count": sum(correct), "unit": "attempts"})
    rows.append({"stage": "kept", "count": sum(k is not None for k in kept), "unit": "attempts"})
    yields = pd.DataFrame(rows).assign(attempts=len(attempts), proposer=proposer.name)
    return InterventionSet(list(attempts), kept, continuations, yields, status, candidates)


# --- SFT data -------------------------------------------------------------------------------------

Variant = Literal["prefix+intervention", "intervention only", "with suffix"]


def int_examples(
    policy: Policy, interventions: InterventionSet, variant: Variant = "prefix+intervention"
) -> list[SFTExample]:
    """SFT pairs from kept interventions: prompt -> prefix + intervention (InT; no suffix, no
    EOS), or the paper's ablations: ``"intervention only"`` (no prefix: the prompt then carries
    the prefix as context) and ``"with suffix"`` (prefix + intervention + the correct continuation
    found by the filter, with EOS)."""
    examples = []
    for attempt, fix, continuation in interventions.kept():
        prompt = policy.prompt_format(attempt.problem.statement)
        prefix = attempt.prefix(fix.location)
        if variant == "prefix+intervention":
            examples.append(
                text_example(
                    policy,
                    prompt,
                    prefix + fix.content + "\n",
                    eos=False,
                    source=attempt.problem.id,
                )
            )
        elif variant == "intervention only":
            examples.append(
                text_example(
                    policy,
                    prompt + prefix,
                    fix.content + "\n",
                    eos=False,
                    source=attempt.problem.id,
                )
            )
        elif variant == "with suffix":
            if continuation is None:
                continue
            examples.append(
                text_example(policy, prompt, continuation, eos=True, source=attempt.problem.id)
            )
        else:
            raise IpgkitError(f"unknown variant {variant!r}")
    return examples


def intervention_logprob(policy: Policy, interventions: InterventionSet) -> torch.Tensor:
    """Mean log-probability per token of each kept intervention step given prompt + prefix
    (the InT paper's "likelihood of the intervention", before and after SFT)."""
    examples = int_examples(policy, interventions, "intervention only")
    if not examples:
        raise IpgkitError("no kept interventions")
    total, count = completion_nll(policy, examples)
    return -total / count


__all__ = [
    "INT_INSTRUCTION",
    "INT_INSTRUCTION_NO_REFERENCE",
    "FailedAttempt",
    "HardPool",
    "InterventionSet",
    "Proposer",
    "ReferenceChecker",
    "SelfProposer",
    "continuation_table",
    "continue_from",
    "hard_pool",
    "int_examples",
    "intervention_logprob",
    "leaks_answer",
    "misplaced_table",
    "propose_interventions",
]
