"""Self-verification in the comparison-table format (:mod:`ipgkit.tasks.comparison`): where the
model flags the first error of an attempt, and the intervention it writes there."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.rollouts import sample
from ipgkit.rollouts.scoring import right_padded
from ipgkit.tasks.comparison import (
    MARKS,
    Slot,
    comparison_prompt,
    comparison_table,
    fix_prompt,
    flagged_prefix,
    flagged_row,
)


def _tables(policy: Policy, items) -> list[tuple[str, list[Slot], list[int]]]:
    tables = []
    for question, attempt_steps, reference_steps in items:
        text, slots = comparison_table(question, attempt_steps, reference_steps)
        ids = policy.encode([text])[0]
        if len(ids) != len(text) + int(policy.prepend_bos):
            raise IpgkitError(
                f"the comparison format needs one token per character; {policy.name!r}'s "
                "tokenizer merges characters (use SelfProposer(style='chat') for such models)"
            )
        tables.append((text, slots, ids))
    return tables


def flag_logits(
    policy: Policy, items: Sequence[tuple[str, Sequence[str], Sequence[str]]], chunk_size: int = 32
) -> list[Float[Tensor, " slots"]]:
    """For each (question, attempt steps, reference steps): per slot of its comparison table,
    logit(flags an error) - logit(matches) from one teacher-forced pass with every slot set to
    "matches" (active hooks apply). A table longer than the context is cut there: its margins
    then cover only the slots inside (fewer than the table's slots).

    Example:
        >>> margins = flag_logits(policy, [(question, attempt, reference)])  # doctest: +SKIP
        >>> first_flag = int((margins[0] > 0).nonzero()[0])                  # doctest: +SKIP
    """
    return _margins(policy, _tables(policy, items), chunk_size)


@torch.no_grad()
def _margins(policy: Policy, tables, chunk_size: int = 32) -> list[Tensor]:
    margins: list[Tensor] = []
    ids_of = {
        kind: [policy.tokenizer.convert_tokens_to_ids(c) for c in marks]
        for kind, marks in MARKS.items()
    }
    offset = int(policy.prepend_bos)
    for start in range(0, len(tables), chunk_size):
        chunk = tables[start : start + chunk_size]
        rows = [ids[: policy.n_ctx] for _, _, ids in chunk]
        tokens, _ = right_padded(rows, [[]] * len(rows), policy.pad_token_id)
        logits = policy.model(tokens.to(policy.model.cfg.device)).float().cpu()
        for row, (_, slots, _) in enumerate(chunk):
            # text index p is token p + offset, predicted at position p + offset - 1
            slots = [s for s in slots if s.position + offset < policy.n_ctx]
            if not slots:
                margins.append(torch.zeros(0))
                continue
            positions = torch.tensor([s.position + offset - 1 for s in slots])
            match = torch.tensor([ids_of[s.kind][0] for s in slots])
            flag = torch.tensor([ids_of[s.kind][1] for s in slots])
            at = logits[row, positions]
            margins.append(at.gather(-1, flag[:, None])[:, 0] - at.gather(-1, match[:, None])[:, 0])
    return margins


def first_error_prefixes(
    policy: Policy,
    items: Sequence[tuple[str, Sequence[str], Sequence[str]]],
    n: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[str | None]]:
    """``n`` draws per item of where the model flags the first error: the table text up to the
    flagged row (closed, ready for the intervention block), or None when it flags no row; an
    empty list where the table does not fit the context and no flag falls inside it. Greedy
    (``temperature=0``) takes each slot's more likely mark, exactly as greedy decoding restricted
    to the two marks would; otherwise each slot flags with probability sigmoid(margin /
    temperature), the same restriction at that temperature.
    """
    generator = torch.Generator().manual_seed(seed)
    draws: list[list[str | None]] = []
    tables = _tables(policy, items)
    for (text, slots, _), margin in zip(tables, _margins(policy, tables), strict=True):
        if temperature == 0:
            flags = (margin > 0)[None].expand(n, -1)
        else:
            chance = torch.sigmoid(margin / temperature)
            flags = torch.rand((n, len(margin)), generator=generator) < chance
        row_draws = []
        for flagged in flags:
            hits = flagged.nonzero()
            row_draws.append(flagged_prefix(text, slots[int(hits[0])]) if len(hits) else None)
        complete = len(margin) == len(slots)
        draws.append(row_draws if complete else [d for d in row_draws if d is not None])
    return draws


def propose_by_comparison(
    policy: Policy,
    items: Sequence[tuple[str, Sequence[str], Sequence[str]]],
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 96,
    seed: int = 0,
) -> list[list[str]]:
    """``n`` verifier answers per item: the table's rows up to the flagged one, then the
    intervention block the model writes after the fix prompt for that row
    (:func:`~ipgkit.tasks.comparison.fix_prompt`); an empty list for an item whose table does
    not fit the context, and an answer without a block where the model flags no row. A fix
    prompt is short, but a long question with a large budget can still pass ``n_ctx``: the block
    is then written in the room that is left (in steps of 8 tokens)."""
    draws = first_error_prefixes(policy, items, n, temperature, seed)
    prompts = [
        fix_prompt(question, flagged_row(prefix), attempt, reference)
        for (question, attempt, reference), row in zip(items, draws, strict=True)
        for prefix in row
        if prefix is not None
    ]
    budgets = [
        min(max_new_tokens, (policy.n_ctx - len(ids)) // 8 * 8) for ids in policy.encode(prompts)
    ]
    blocks = [""] * len(prompts)
    for budget in sorted(b for b in set(budgets) if b > 0):
        rows = [i for i, b in enumerate(budgets) if b == budget]
        written = sample(
            policy,
            [prompts[i] for i in rows],
            temperature=temperature,
            max_new_tokens=budget,
            seed=seed,
            format_prompts=False,
            progress=False,
        ).texts
        for i, text in zip(rows, written, strict=True):
            blocks[i] = text
    block_of = iter(blocks)
    answers = []
    for (question, _, _), row in zip(items, draws, strict=True):
        head = len(comparison_prompt(question))
        answers.append(["" if p is None else p[head:] + next(block_of) for p in row])
    return answers
