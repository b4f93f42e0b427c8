"""The embedded reasoning model: a small rotary HookedTransformer trained by ipgkit on arithmetic
chain of thought (and on the InT verifier format), shipped inside the package."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ipgkit.errors import IpgkitError
from ipgkit.models.policy import Policy
from ipgkit.models.tokenizer import VOCAB_SIZE, build_char_tokenizer

WEIGHTS_DIR = Path(__file__).parent / "weights" / "arith"
PROMPT_TEMPLATE = "Q: {question}\nA:\n"


def arith_prompt(question: str) -> str:
    """The embedded model's prompt format (its 'chat template')."""
    return PROMPT_TEMPLATE.format(question=question)


def arith_config(**overrides) -> HookedTransformerConfig:
    """The embedded model's architecture: 4 layers, d_model 128, rotary positions, 0.8M parameters.

    Rotary positions because TransformerLens 3.9's KV-cached generation is wrong with learned ones.
    """
    settings = dict(
        n_layers=4,
        d_model=128,
        n_heads=4,
        d_head=32,
        d_mlp=512,
        d_vocab=VOCAB_SIZE,
        n_ctx=512,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=32,
        original_architecture="ipgkit-arith",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        device="cpu",
        seed=0,
    )
    settings.update(overrides)
    return HookedTransformerConfig(**settings)


def build_policy(
    model: HookedTransformer, name: str = "arith", verifier_format: str = "verifier"
) -> Policy:
    """The embedded model's policy; ``verifier_format`` is the InT verification format it was
    trained on (what :class:`ipgkit.training.SelfProposer` uses by default)."""
    return Policy(
        model=model,
        tokenizer=build_char_tokenizer(),
        name=name,
        prompt_format=arith_prompt,
        metadata={"verifier_format": verifier_format},
    )


def load_arith(weights_dir: str | Path = WEIGHTS_DIR, device: str = "cpu") -> Policy:
    """Load the shipped (or a freshly trained) embedded model from ``weights_dir``."""
    weights_dir = Path(weights_dir)
    config_path, weights_path = weights_dir / "config.json", weights_dir / "model.safetensors"
    if not weights_path.exists():
        raise IpgkitError(
            f"no embedded model weights at {weights_path}; train them with `ipgkit train-model`"
        )
    config = json.loads(config_path.read_text())
    model = HookedTransformer(arith_config(**config["architecture"], device=device))
    model.load_state_dict(load_file(weights_path, device=device))
    model.eval()
    verifier_format = config.get("training", {}).get("verifier_format", "verifier")
    return build_policy(model, name=config.get("name", "arith"), verifier_format=verifier_format)


def save_arith(model: HookedTransformer, weights_dir: str | Path, extra: dict) -> None:
    """Write config.json + model.safetensors (fp32) in the layout ``load_arith`` reads."""
    from safetensors.torch import save_file

    from ipgkit.io import atomic_write_text

    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    architecture = {
        k: getattr(model.cfg, k)
        for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "rotary_dim")
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = weights_dir / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(weights_dir / "model.safetensors")
    # the tokenizer is built in code; the saved copy lets Hugging Face tools read the folder alone
    build_char_tokenizer().backend_tokenizer.save(str(weights_dir / "tokenizer.json"))
    atomic_write_text(
        weights_dir / "config.json",
        json.dumps({"name": "arith", "architecture": architecture, **extra}, indent=2),
    )
