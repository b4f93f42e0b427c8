"""Rollouts: sampling under active hooks, advantages, teacher-forced scoring, activation reading.

Two passes, as in every policy-gradient method:

1. :func:`sample` (``sampling.py``) draws completions with a KV cache (``kv_cache.py``) in
   inference mode. Whatever hooks are active on the model (steering, IPG's scaled path) apply to
   every token, prompt and generated.
2. :func:`iter_scores` (``scoring.py``) re-runs prompt + completion in one teacher-forced pass and
   returns per-token log pi(a_t | s_t) and entropy, with gradient. IPG, GRPO, SFT and the
   NLL/entropy metrics all go through it; :func:`token_logprobs` is its no-grad form.

``data.py`` holds :class:`Rollouts` and :class:`SamplingConfig`, ``advantages.py`` the
group-relative advantages IPG and GRPO share, ``activations.py`` the activation streams that
baselines and analysis read.
"""

#: re-exported for code that imported it from here before the positions mask moved to components
from ipgkit.positions import position_mask

from .activations import (
    ActivationChunk,
    iter_activations,
    mean_activations,
    token_activations,
    token_texts,
)
from .advantages import (
    AdvantageMode,
    RewardScaling,
    group_advantages,
    scaled_advantages,
    zero_std_groups,
)
from .data import Rollouts, SamplingConfig, pad_right
from .sampling import check_context, check_memory, choose_tokens, generate, row_generators, sample
from .scoring import (
    TokenScores,
    iter_scores,
    right_padded,
    score_completions,
    score_rollouts,
    token_logprobs,
)
from .token_views import TokenActivations

__all__ = [
    "ActivationChunk",
    "AdvantageMode",
    "RewardScaling",
    "Rollouts",
    "SamplingConfig",
    "TokenActivations",
    "TokenScores",
    "check_context",
    "check_memory",
    "choose_tokens",
    "generate",
    "group_advantages",
    "iter_activations",
    "iter_scores",
    "mean_activations",
    "pad_right",
    "position_mask",
    "right_padded",
    "row_generators",
    "sample",
    "scaled_advantages",
    "score_completions",
    "score_rollouts",
    "token_activations",
    "token_logprobs",
    "token_texts",
    "zero_std_groups",
]
