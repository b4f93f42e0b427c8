"""A policy: a HookedTransformer, its tokenizer and prompt format (what every pipeline takes)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from ipgkit.errors import IpgkitError


@dataclass
class Policy:
    """A language model that ipgkit can sample from, score, hook and steer.

    Attributes:
        model: the hooked model (``HookedTransformer`` or ``HookedSAETransformer``).
        tokenizer: its tokenizer (also ``model.tokenizer``, so TransformerLens string APIs work).
        name: a short name for logs and result files.
        prompt_format: ``question -> prompt text``; a chat model's chat template, or the embedded
            model's ``"Q: ...\\nA:\\n"``.
        stop_token_ids: generation stops after any of these (EOS by default).
        prepend_bos: whether prompts start with the tokenizer's BOS token.
        metadata: facts about how the model was trained that pipelines read, e.g. the embedded
            model's ``"verifier_format"`` (which InT verification format it learned).
    """

    model: HookedTransformer = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    name: str
    prompt_format: Callable[[str], str] = field(repr=False)
    stop_token_ids: tuple[int, ...] = field(default=())
    prepend_bos: bool = True
    metadata: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        require_hooked_model(self.model)
        if len(self.tokenizer) > self.model.cfg.d_vocab:
            raise IpgkitError(
                f"the tokenizer of {self.name!r} has {len(self.tokenizer)} tokens but the model's "
                f"d_vocab is {self.model.cfg.d_vocab}: ids from {self.model.cfg.d_vocab} on have "
                "no embedding. Pair the model with the tokenizer it was trained with"
            )
        if not self.stop_token_ids and self.tokenizer.eos_token_id is not None:
            self.stop_token_ids = (int(self.tokenizer.eos_token_id),)
        if self.tokenizer.pad_token_id is None:
            raise IpgkitError(
                f"tokenizer of {self.name!r} needs a pad token (set tokenizer.pad_token)"
            )
        # what TransformerLens's set_tokenizer does, minus its by-name reload (a hub look-up):
        # attach the tokenizer and detect whether it adds BOS itself, so to_tokens prepends it
        # exactly once
        self.model.tokenizer = self.tokenizer
        self.model.cfg.tokenizer_prepends_bos = len(self.tokenizer.encode("")) > 0

    def clone(self) -> Policy:
        """The same policy on its own copy of the model (weights and hooks): a branch to fine-tune
        or a frozen reference, leaving this one untouched."""
        return replace(self, model=copy.deepcopy(self.model))

    @property
    def n_ctx(self) -> int:
        return self.model.cfg.n_ctx

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt text (with BOS when the policy uses one), unpadded."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if self.prepend_bos and self.tokenizer.bos_token_id is not None:
            ids = [[int(self.tokenizer.bos_token_id), *row] for row in ids]
        return [list(map(int, row)) for row in ids]

    def encode_completions(self, texts: Sequence[str], add_eos: bool = True) -> list[list[int]]:
        """Token ids of completion texts (no BOS), ending with the first stop token when
        ``add_eos``, as a sampled completion that finished would. For teacher forcing references."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        stop = [self.stop_token_ids[0]] if add_eos and self.stop_token_ids else []
        return [[*map(int, row), *stop] for row in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of completion ids, without special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def require_hooked_model(model) -> None:
    if not isinstance(model, HookedTransformer):
        raise IpgkitError(
            f"Policy.model must be a TransformerLens HookedTransformer, got {type(model).__name__}"
        )


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` puts BOS in front of a text by itself."""
    return tokenizer.bos_token_id is not None and len(tokenizer.encode("")) > 0


def chat_prompt_format(tokenizer):
    """``question -> prompt`` through the tokenizer's chat template (one user turn, with the
    generation prompt), or ``"Question: ...\\nAnswer:"`` when it has none.

    When the tokenizer adds BOS itself and the template also writes it as text (Llama 3), the
    text's copy is stripped: the policy prepends BOS, and a second one would change the input.
    """
    if getattr(tokenizer, "chat_template", None):
        bos = tokenizer.bos_token if adds_bos(tokenizer) else None

        def with_template(question: str) -> str:
            messages = [{"role": "user", "content": question}]
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return text[len(bos) :] if bos and text.startswith(bos) else text

        return with_template
    return lambda question: f"Question: {question}\nAnswer:"


def policy_from_hooked(
    model: HookedTransformer, prompt_format: Callable[[str], str] | None = None
) -> Policy:
    """A :class:`Policy` around a plain ``HookedTransformer`` that carries its tokenizer
    (``HookedTransformer.from_pretrained`` sets ``model.tokenizer``): named after
    ``model.cfg.model_name``, prompts through the tokenizer's chat template when it has one and
    ``"Question: ...\\nAnswer:"`` otherwise (:func:`chat_prompt_format`), BOS as the model's
    ``default_prepend_bos`` says.

    Example:
        >>> model = HookedTransformer.from_pretrained("Qwen/Qwen2.5-0.5B")   # doctest: +SKIP
        >>> ipgkit.sample(model, ["What is 2+3?"])  # wrapped on the way in  # doctest: +SKIP
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise IpgkitError(
            "this HookedTransformer has no tokenizer (model.tokenizer is None), so ipgkit cannot "
            "turn questions into tokens or find the pad/EOS ids: wrap it as "
            "ipgkit.Policy(model, tokenizer, name, prompt_format=lambda q: q), or set "
            "model.set_tokenizer(tokenizer) first"
        )
    if tokenizer.pad_token_id is None:
        raise IpgkitError(
            f"the tokenizer of {model.cfg.model_name!r} has no pad token; set tokenizer.pad_token "
            "(e.g. to its EOS token) or wrap the model in ipgkit.Policy yourself"
        )
    prepend_bos = bool(model.cfg.default_prepend_bos) and tokenizer.bos_token_id is not None
    return Policy(
        model=model,
        tokenizer=tokenizer,
        name=model.cfg.model_name,
        prompt_format=prompt_format or chat_prompt_format(tokenizer),
        prepend_bos=prepend_bos,
    )


def require_policy(value, where: str) -> Policy:
    """``value`` as a :class:`Policy`: a policy as it is, a plain ``HookedTransformer`` with its
    tokenizer wrapped by :func:`policy_from_hooked`; anything else is refused with a message
    that says how to make one.

    Example:
        >>> require_policy(policy, "sample")                                 # doctest: +SKIP
    """
    if isinstance(value, Policy):
        return value
    if isinstance(value, HookedTransformer):
        return policy_from_hooked(value)
    raise IpgkitError(
        f"{where} takes an ipgkit Policy or a HookedTransformer, got {type(value).__name__}"
    )
