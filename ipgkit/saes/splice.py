"""Splicing SAEs into a model with the error term kept, so every latent is a component.

Splicing follows SAELens: the model becomes a ``HookedSAETransformer`` and the SAE sits at its hook
(``blocks.L.hook_resid_post``), which then exposes ``blocks.L.hook_resid_post.hook_sae_acts_post``
(the latents, [batch, pos, d_sae]). With the error term, the SAE's output is
``decode(f) + (x - decode(encode(x)))``: the model computes what it computed before, up to one
float rounding, and scaling latent i by gamma adds ``(gamma - 1) * f_i * W_dec[i]`` to the stream.
Feature IPG and feature steering are then the same :class:`ComponentSet` and scaling hook as for
neurons (kind ``"sae"``).

Caveat, from sae-lens: the error term is computed under ``no_grad``. Gradients with respect to the
latents are exact (everything downstream of them is differentiable), but a hook *upstream* of a
spliced SAE only receives gradient through the SAE's reconstruction path. Attribute neurons on the
plain model (or with SAEs spliced only at or below their layer); ipgkit warns when it sees this.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ipgkit.components import ComponentSet, hook_layer, resolve_hook, site_width
from ipgkit.errors import DataFormatError, IpgkitError
from ipgkit.models.policy import Policy

#: where the SAEs shipped for the embedded model live (``saes/<model>-L<layer>`` in sae-lens format)
SAES_DIR = Path(__file__).resolve().parents[2] / "saes"
FEATURE_HOOK = "hook_sae_acts_post"


def sae_site(layer: int) -> str:
    """The hook an SAE of ``layer`` reads and replaces: ``blocks.{layer}.hook_resid_post``."""
    return f"blocks.{int(layer)}.hook_resid_post"


def feature_hook(layer: int) -> str:
    """The latents' hook once spliced: ``blocks.{layer}.hook_resid_post.hook_sae_acts_post``."""
    return f"{sae_site(layer)}.{FEATURE_HOOK}"


def save_sae(sae, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save ``sae`` in sae-lens format (``cfg.json`` + ``sae_weights.safetensors``) plus
    ``ipgkit_training.json`` holding ``extra``; the folder appears whole or not at all."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        sae.save_model(str(staging))
        if extra is not None:
            (staging / "ipgkit_training.json").write_text(json.dumps(extra, indent=2, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# --- loading and splicing -----------------------------------------------------------------------


def shipped_sae_dir(model_name: str, layer: int) -> Path:
    """``saes/<model>-L<layer>``: where the SAE shipped for ``model_name`` at ``layer`` lives."""
    return SAES_DIR / f"{model_name}-L{int(layer)}"


def load_sae(
    source, sae_id: str | None = None, policy: Policy | None = None, device: str | None = None
):
    """Load an SAE: a layer number (the SAE shipped for ``policy``), a directory in sae-lens
    format, a sae-lens pretrained release with its ``sae_id`` (through sae-lens's own loader,
    ``SAE.from_pretrained``; needs the hub or its cache), or an SAE object (returned as is). With
    ``policy`` it is checked against the model.

    Example:
        >>> sae = load_sae(2, policy=policy)                              # doctest: +SKIP
        >>> sae.cfg.metadata.hook_name, sae.cfg.d_sae                     # doctest: +SKIP
        ('blocks.2.hook_resid_post', 2048)
        >>> sae = load_sae("gpt2-small-res-jb", "blocks.8.hook_resid_pre")  # doctest: +SKIP
    """
    from sae_lens import SAE

    if isinstance(sae_id, Policy):  # load_sae(source, policy), as before releases
        sae_id, policy = None, sae_id
    if isinstance(source, SAE):
        sae = source
    elif sae_id is not None:
        sae = _load_release(str(source), sae_id, device or "cpu")
    else:
        if isinstance(source, int):
            if policy is None:
                raise IpgkitError("loading a shipped SAE by layer needs the policy it belongs to")
            path = shipped_sae_dir(policy.name, source)
            if not (path / "cfg.json").exists():
                available = sorted(
                    p.name for p in SAES_DIR.glob("*-L*") if (p / "cfg.json").exists()
                )
                raise IpgkitError(
                    f"no shipped SAE for model {policy.name!r} at layer {source} ({path}); "
                    f"available: {available or 'none'}; train one with `ipgkit train-sae`"
                )
        else:
            path = Path(source)
            if not (path / "cfg.json").exists():
                raise IpgkitError(f"{path} is not an SAE directory (no cfg.json); see load_sae")
        sae = _load_sae_folder(path, device or "cpu")
    if policy is not None:
        check_sae(policy, sae)
    return sae


def _load_release(release: str, sae_id: str, device: str):
    """sae-lens's pretrained loader, with a one-line error offline or for an unknown release."""
    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except OSError:
        raise IpgkitError(
            f"SAE {release!r}/{sae_id!r} needs the Hugging Face hub, which cannot be reached here "
            "and whose cache lacks it: download it where there is a network (sae-lens caches it) "
            "or save it with sae.save_model(DIR) and load_sae(DIR)"
        ) from None
    except ValueError as error:
        raise IpgkitError(f"sae-lens cannot load {release!r}/{sae_id!r}: {error}") from None


def _load_sae_folder(path: Path, device: str):
    """sae-lens's loader, with its errors on a damaged folder turned into one that names it."""
    from sae_lens import SAE

    try:
        json.loads((path / "cfg.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path / 'cfg.json'} is not valid JSON ({error})") from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This SAE has non-empty")
            return SAE.load_from_disk(str(path), device=device)
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as error:
        raise DataFormatError(
            f"{path} is not an SAE folder sae-lens can load ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}); check cfg.json and "
            "sae_weights.safetensors"
        ) from None


def check_sae(policy: Policy, sae) -> None:
    """Raise a clear error when ``sae`` cannot read ``policy``'s activations: its hook is missing
    from the model, or its d_in is not the hook's width. Warn when it was trained on another
    model of the same width."""
    hook_name = sae.cfg.metadata.hook_name
    if not hook_name:
        raise IpgkitError("the SAE has no hook name (cfg.metadata.hook_name is empty)")
    model = policy.model
    sites = getattr(model, "acts_to_saes", {})
    if hook_name not in sites:
        resolve_hook(model, hook_name)
    width = site_width(model, hook_name)
    if sae.cfg.d_in != width:
        raise IpgkitError(
            f"SAE for {hook_name} has d_in = {sae.cfg.d_in}, but {policy.name!r} has width {width} "
            "there: it was trained on another model"
        )
    trained_on = getattr(sae.cfg.metadata, "model_name", None)
    if trained_on and trained_on != policy.name:
        warnings.warn(
            f"SAE was trained on {trained_on!r}, attached to {policy.name!r} (same width {width})",
            stacklevel=3,
        )


def as_sae_policy(policy: Policy) -> Policy:
    """The same policy on a ``HookedSAETransformer`` (weights copied), ready for ``add_sae``; a
    policy that already is one is returned unchanged."""
    from sae_lens import HookedSAETransformer

    if isinstance(policy.model, HookedSAETransformer):
        return policy
    model = policy.model
    cfg = model.cfg
    # a config that names a tokenizer would make TransformerLens fetch it from the hub
    tokenizer_name, cfg.tokenizer_name = cfg.tokenizer_name, None
    try:
        sae_model = HookedSAETransformer(cfg)
    finally:
        cfg.tokenizer_name = tokenizer_name
    sae_model.load_state_dict(model.state_dict())
    sae_model.to(next(model.parameters()).device, print_details=False)
    sae_model.train(model.training)
    return replace(policy, model=sae_model)


def attach_saes(policy: Policy, saes: Sequence, use_error_term: bool = True) -> Policy:
    """Splice SAEs into ``policy``'s model at their hooks, the error term kept by default.

    Args:
        policy: a policy on a HookedTransformer (converted) or a HookedSAETransformer (mutated).
        saes: SAE objects, SAE directories, or layer numbers of shipped SAEs.
        use_error_term: keep the reconstruction error, so the spliced model computes what the
            plain one does; False replaces the stream by the SAE's reconstruction.

    Returns:
        The policy whose model has the SAEs (a new Policy when the model had to be converted).

    Example:
        >>> policy = attach_saes(ipgkit.load_model("arith"), [2])         # doctest: +SKIP
        >>> list(policy.model.acts_to_saes)                               # doctest: +SKIP
        ['blocks.2.hook_resid_post']
    """
    policy = as_sae_policy(policy)
    loaded = [load_sae(sae, policy=policy) for sae in saes]
    sites = [sae.cfg.metadata.hook_name for sae in loaded]
    if len(set(sites)) != len(sites):
        raise IpgkitError(f"two SAEs for the same hook: {sites}")
    taken = sorted(set(sites) & set(spliced_saes(policy)))
    if taken:
        raise IpgkitError(
            f"an SAE is already spliced at {taken}; remove it first with policy.model.reset_saes()"
        )
    for sae in loaded:
        sae.to(device=next(policy.model.parameters()).device, dtype=policy.model.cfg.dtype)
        policy.model.add_sae(sae, use_error_term=use_error_term)
    return policy


def spliced_saes(policy: Policy) -> dict[str, Any]:
    """Hook name -> SAE for every SAE spliced into ``policy``'s model."""
    return dict(getattr(policy.model, "acts_to_saes", {}))


def sae_features(
    policy: Policy,
    layer: int | None = None,
    indices: Sequence[int] | None = None,
    hook_name: str | None = None,
) -> ComponentSet:
    """A :class:`ComponentSet` over latents of the SAE spliced at ``layer`` (or at ``hook_name``,
    the site the SAE reads); every latent when ``indices`` is None.

    Example:
        >>> features = sae_features(policy, layer=2)                      # doctest: +SKIP
        >>> features.hook_name
        'blocks.2.hook_resid_post.hook_sae_acts_post'
    """
    sites = spliced_saes(policy)
    if (layer is None) == (hook_name is None):
        raise IpgkitError("give exactly one of layer= or hook_name= to sae_features")
    site = sae_site(layer) if layer is not None else hook_name
    if site not in sites:
        raise IpgkitError(
            f"no SAE is spliced at {site}; spliced: {sorted(sites) or 'none'} "
            "(load_model(name, saes=[layer]) or attach_saes(policy, [...]) splices one)"
        )
    components = ComponentSet(
        f"{site}.{FEATURE_HOOK}", None if indices is None else tuple(indices), kind="sae"
    )
    return components.validate(policy.model)


def decoder_directions(policy: Policy, components: ComponentSet) -> Float[Tensor, "n d_model"]:
    """What each unit writes into the residual stream, per unit of activation: SAE decoder rows,
    MLP output weights, residual basis vectors or direction rows (for logit-lens style reads)."""
    model = policy.model
    components = components.resolved(model)
    index = list(components.indices)
    if components.kind == "sae":
        site = components.hook_name.rsplit(".hook_sae_", 1)[0]
        return spliced_saes(policy)[site].W_dec.detach()[index]
    if components.kind == "mlp":
        layer = hook_layer(components.hook_name, model.cfg.n_layers)
        return model.blocks[layer].mlp.W_out.detach()[index]
    if components.kind == "direction":
        return components.basis()
    return torch.eye(model.cfg.d_model, dtype=model.cfg.dtype)[index]


def hooks_upstream_of_saes(policy: Policy, hook_name: str) -> list[str]:
    """Sites of spliced SAEs (with error term) whose input depends on ``hook_name``: gradients
    reaching ``hook_name`` through them miss the error term (computed under no_grad)."""
    own_site = hook_name.rsplit(".hook_sae_", 1)[0] if ".hook_sae_" in hook_name else None
    if own_site is not None and not hook_name.endswith(".hook_sae_input"):
        own_layer = _layer_of(policy, own_site)
    else:
        own_layer = _layer_of(policy, hook_name)
    wrappers = getattr(policy.model, "_acts_to_saes", {})
    upstream = []
    for site, wrapper in wrappers.items():
        if site == own_site and not hook_name.endswith(".hook_sae_input"):
            continue
        if wrapper.use_error_term and own_layer <= _layer_of(policy, site):
            upstream.append(site)
    return upstream


def _layer_of(policy: Policy, hook_name: str) -> int:
    return hook_layer(hook_name, policy.model.cfg.n_layers)
