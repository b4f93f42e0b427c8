"""Teacher-forced scoring: prompt + completion in one pass, per-token log pi(a_t | s_t) and entropy.

Every consumer of log-probabilities goes through :func:`iter_scores`: IPG's engine and GRPO's loss
(with gradient, chunk by chunk), SFT, and the no-grad callers through :func:`token_logprobs`
(GRPO's old/reference log-probs, NLL metrics, IPG's end-point surrogate). Rows are right-padded;
the pass sets a :class:`~ipgkit.positions.SequenceLayout` so scaling hooks know which positions
are generated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ipgkit.errors import IpgkitError
from ipgkit.memory import MemoryBudget, as_budget, bounded_passes, checkpoint_in_layout
from ipgkit.models.policy import Policy, require_policy
from ipgkit.positions import SequenceLayout, sequence_layout
from ipgkit.progress import tqdm

from .data import Rollouts, pad_right
from .sampling import check_context


def _final_residual(model, tokens, attention_mask, shared_prefix_layer=None, layout=None):
    """The residual stream after the last block, for every position (teacher forcing)."""
    if shared_prefix_layer is None:
        return model(tokens, attention_mask=attention_mask, stop_at_layer=model.cfg.n_layers)
    return _run_with_shared_prefix(model, tokens, attention_mask, shared_prefix_layer, layout)


def _token_scores(model, resid, targets, with_entropy: bool, position_chunk_size: int):
    """log pi of ``targets`` (and entropy) from final residuals [batch, width, d_model].

    Logits exist for ``position_chunk_size`` positions at a time; with gradient on, each block is
    checkpointed (its logits are recomputed in the backward pass), so memory for a long
    completion is bounded by batch x block x vocab, not batch x completion x vocab.
    """

    def scores_of(resid_block, targets_block):
        logits = model.unembed(model.ln_final(resid_block))
        # at least float32 (half-precision models), float64 models keep their precision
        log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        chosen = log_probs.gather(-1, targets_block[..., None])[..., 0]
        if not with_entropy:
            return chosen, torch.zeros_like(chosen)
        return chosen, -(log_probs.exp() * log_probs).sum(-1)

    width = resid.shape[1]
    if width <= position_chunk_size:
        return scores_of(resid, targets)
    pieces = []
    for start in range(0, width, position_chunk_size):
        block = (
            resid[:, start : start + position_chunk_size],
            targets[:, start : start + position_chunk_size],
        )
        if torch.is_grad_enabled() and resid.requires_grad:
            pieces.append(checkpoint_in_layout(scores_of, *block))
        else:
            pieces.append(scores_of(*block))
    return tuple(torch.cat(parts, dim=1) for parts in zip(*pieces, strict=True))


def _run_with_shared_prefix(model, tokens, attention_mask, layer: int, layout: SequenceLayout):
    """Blocks below ``layer`` once per distinct row, then every row from ``layer`` on.

    Rows count as the same when tokens, attention mask and generation start all agree, so hooks in
    the shared part (which see the distinct rows, under their own layout) act as they would on
    each row.
    """
    start = layout.generated_start.to(tokens.device)
    key = torch.cat([tokens, attention_mask, start[:, None]], dim=1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    width = tokens.shape[1]
    with sequence_layout(SequenceLayout(distinct[:, -1].cpu())):
        shared = model(
            distinct[:, :width], attention_mask=distinct[:, width : 2 * width], stop_at_layer=layer
        )
    return model(
        shared.index_select(0, inverse),
        start_at_layer=layer,
        attention_mask=attention_mask,
        stop_at_layer=model.cfg.n_layers,
    )


@dataclass
class TokenScores:
    """Per-token scores of completions under teacher forcing.

    Attributes:
        logprobs: [batch, completion] log pi(a_t | s_t) (0 where masked), with gradient.
        entropy: [batch, completion] entropy of pi(. | s_t) (0 where masked), or None.
        mask: [batch, completion] True on real completion tokens.
    """

    logprobs: Float[Tensor, "batch completion"]
    entropy: Float[Tensor, "batch completion"] | None
    mask: Bool[Tensor, "batch completion"]

    def sequence_logprobs(self) -> Float[Tensor, " batch"]:
        """log pi(completion | prompt), summed over tokens."""
        return self.logprobs.sum(-1)


def right_padded(prompts, completions, pad_id: int) -> tuple[Tensor, Tensor]:
    """Prompt + completion rows, right-padded: token ids and attention mask [rows, longest]."""
    total = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    tokens = torch.full((len(prompts), total), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), total), dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        tokens[row, : len(p) + len(c)] = torch.tensor([*p, *c], dtype=torch.long)
        attention[row, : len(p) + len(c)] = 1
    return tokens, attention


def iter_scores(
    policy: Policy,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    chunk_size: int | None = None,
    with_entropy: bool = True,
    shared_prefix_layer: int | None = None,
    position_chunk_size: int = 256,
    memory_budget: MemoryBudget | float | None = None,
    gradient_from_block: int = -1,
    progress: bool = False,
    description: str = "scoring",
) -> Iterator[tuple[slice, TokenScores]]:
    """Teacher-forced scores chunk by chunk (``chunk_size`` rows each), so callers can backward per
    chunk and keep memory bounded. Yields ``(rows, scores)`` with ``rows`` a slice of the inputs.

    Gradient flows when grad mode is on; active hooks apply. Completion positions are those after
    each row's prompt; a scaling hook with ``positions="generated"`` touches exactly those.

    ``shared_prefix_layer=L`` computes blocks ``0..L-1`` once for rows of a chunk that are the same
    sequence and copies the residual stream before block L to each of them: IPG scores each rollout
    at q alpha points whose hooks differ only from block L on. Gradients then reach activations at
    block L and above, not parameters or activations below it.

    Logits are computed ``position_chunk_size`` completion positions at a time (checkpointed under
    gradient), so long completions do not hold [rows, completion, vocab] in memory; hooks on
    ``ln_final``/``unembed`` then also run again in the backward pass.

    With a ``memory_budget`` (a :class:`ipgkit.memory.MemoryBudget` or its size in MiB) each chunk
    runs with fused attention and the blocks above ``gradient_from_block`` checkpointed, until the
    caller resumes the iterator (so a backward in the loop body is bounded too); chunks of
    ``chunk_size`` rows are split further to fit the budget, and positions per logits block follow
    it. ``progress`` shows a tqdm bar over rows, labelled ``description``.

    Example:
        >>> for rows, scores in iter_scores(policy, prompts, completions, chunk_size=16):
        ...     (-scores.logprobs.sum()).backward()                       # doctest: +SKIP
    """
    policy = require_policy(policy, "iter_scores")
    if len(prompt_ids) != len(completion_ids):
        raise IpgkitError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if not prompt_ids:
        raise IpgkitError("nothing to score (no completions)")
    memory = as_budget(memory_budget)
    everything = list(range(len(prompt_ids)))
    size = chunk_size or len(everything)
    chunks = [everything[i : i + size] for i in range(0, len(everything), size)]
    if memory is not None:
        widths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        chunks = memory.split(chunks, widths, policy.model.cfg)
        position_chunk_size = memory.position_chunk_size(policy.model.cfg)
    with tqdm(
        total=len(everything), desc=description, unit="row", disable=not progress, leave=False
    ) as bar:
        for chunk in chunks:
            rows = slice(chunk[0], chunk[-1] + 1)
            passes = (
                contextlib.nullcontext()
                if memory is None
                else bounded_passes(policy.model, gradient_from_block)
            )
            with passes:
                yield (
                    rows,
                    _score_chunk(
                        policy,
                        prompt_ids[rows],
                        completion_ids[rows],
                        with_entropy,
                        shared_prefix_layer,
                        position_chunk_size,
                    ),
                )
            bar.update(len(chunk))


def _score_chunk(
    policy, prompts, completions, with_entropy, shared_prefix_layer, position_chunk_size
) -> TokenScores:
    """One teacher-forced pass over a chunk of right-padded prompt + completion rows."""
    model, device = policy.model, policy.model.cfg.device
    prompt_lengths = torch.tensor([len(p) for p in prompts])
    completion_lengths = torch.tensor([len(c) for c in completions])
    if int(completion_lengths.min()) == 0:
        raise IpgkitError("cannot score an empty completion")
    total = int((prompt_lengths + completion_lengths).max())
    check_context(policy, total, 0)
    tokens, attention = right_padded(prompts, completions, policy.pad_token_id)
    steps = torch.arange(int(completion_lengths.max()))
    mask = steps[None, :] < completion_lengths[:, None]
    # the logits at position prompt_len - 1 + t predict completion token t
    positions = (prompt_lengths[:, None] - 1 + steps[None, :]).clamp(max=total - 1)
    targets = tokens.gather(1, (positions + 1).clamp(max=total - 1))
    layout = SequenceLayout(generated_start=prompt_lengths)
    with sequence_layout(layout):
        resid = _final_residual(
            model, tokens.to(device), attention.to(device), shared_prefix_layer, layout
        )
        resid = resid.gather(1, positions.to(device)[..., None].expand(-1, -1, resid.shape[-1]))
        token_logprobs, entropy = _token_scores(
            model, resid, targets.to(device), with_entropy, position_chunk_size
        )
    mask = mask.to(token_logprobs.device)
    token_logprobs = token_logprobs.masked_fill(~mask, 0.0)
    entropy = entropy.masked_fill(~mask, 0.0) if with_entropy else None
    return TokenScores(token_logprobs, entropy, mask)


def score_completions(
    policy: Policy,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    chunk_size: int | None = None,
    with_entropy: bool = True,
    memory_budget: MemoryBudget | float | None = None,
    progress: bool = True,
) -> TokenScores:
    """Teacher-forced per-token log pi(a_t | s_t) and entropy for whole batches.

    Args:
        policy: the policy to score under (active hooks apply).
        prompt_ids: per row, the prompt token ids (as :meth:`Policy.encode` returns).
        completion_ids: per row, the completion token ids (EOS included if it was generated).
        chunk_size: rows per forward pass (all at once when None).
        with_entropy: also return the entropy of each next-token distribution.
        memory_budget: bounds each pass (see :func:`iter_scores`).
        progress: a tqdm bar over rows (``False`` silences it).

    Returns:
        :class:`TokenScores` with ``[rows, longest completion]`` tensors, with gradient when grad
        mode is on (use :func:`token_logprobs` for scores without gradient).

    Example:
        >>> scores = score_completions(policy, rollouts.row_prompt_ids(),
        ...                            rollouts.row_completion_ids())             # doctest: +SKIP
        >>> scores.sequence_logprobs().shape                                    # doctest: +SKIP
        torch.Size([256])
    """
    chunks = list(
        iter_scores(
            policy,
            prompt_ids,
            completion_ids,
            chunk_size,
            with_entropy,
            memory_budget=memory_budget,
            progress=progress,
        )
    )
    width = max(scores.mask.shape[1] for _, scores in chunks)

    def cat(attribute, value):
        return torch.cat([pad_right(getattr(s, attribute), width, value) for _, s in chunks])

    entropy = cat("entropy", 0.0) if with_entropy else None
    return TokenScores(cat("logprobs", 0.0), entropy, cat("mask", False))


def token_logprobs(
    policy: Policy,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    chunk_size: int | None = 32,
    with_entropy: bool = False,
    memory_budget: MemoryBudget | float | None = None,
) -> TokenScores:
    """Teacher-forced scores without gradient, on the CPU: the entry point of every caller that
    only reads log-probabilities (GRPO's old and reference policies, NLL, IPG's surrogate).

    Example:
        >>> old = token_logprobs(policy, rollouts.row_prompt_ids(),
        ...                      rollouts.row_completion_ids()).logprobs       # doctest: +SKIP
    """
    with torch.no_grad():
        scores = score_completions(
            policy, prompt_ids, completion_ids, chunk_size, with_entropy, memory_budget, False
        )
    entropy = None if scores.entropy is None else scores.entropy.cpu()
    return TokenScores(scores.logprobs.cpu(), entropy, scores.mask.cpu())


def score_rollouts(
    policy: Policy,
    rollouts: Rollouts,
    chunk_size: int | None = None,
    with_entropy: bool = True,
    progress: bool = True,
) -> TokenScores:
    """:func:`score_completions` over a :class:`Rollouts` (rows in the same order)."""
    return score_completions(
        policy,
        rollouts.row_prompt_ids(),
        rollouts.row_completion_ids(),
        chunk_size,
        with_entropy,
        progress=progress,
    )
