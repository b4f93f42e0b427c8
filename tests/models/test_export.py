"""A fine-tuned policy saved by ipgkit loads back: the embedded model through load_model(dir),
a Llama or Qwen2 model through transformers' own from_pretrained, with the same logits."""

import pytest
import torch

import ipgkit
from ipgkit.models.export import save_policy
from tests.hf_checkpoints import save_tiny_checkpoint


def fine_tuned(policy, seed=0):
    """Weights moved away from the checkpoint's, as training would (and W_E, W_U untied)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in policy.model.parameters():
            if parameter.requires_grad:  # what ipgkit's optimisers update
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return policy


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_a_hugging_face_model_round_trips_through_save_pretrained(tmp_path, architecture):
    from transformers import AutoModelForCausalLM

    policy = fine_tuned(
        ipgkit.load_model(str(save_tiny_checkpoint(tmp_path / "tiny", architecture)))
    )
    out = save_policy(policy, tmp_path / "exported")
    tokens = torch.tensor([[1, 5, 9, 42, 7, 3, 11]])
    expected = policy.model(tokens)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(hf(tokens).logits, expected, atol=1e-4)
    again = ipgkit.load_model(str(out))
    assert torch.allclose(again.model(tokens), expected, atol=1e-4)
    assert again.tokenizer.chat_template == policy.tokenizer.chat_template
    with torch.no_grad():  # a bias the architecture lacks, moved by something else, is refused
        policy.model.blocks[0].attn.b_O.add_(1.0)
    with pytest.raises(ipgkit.IpgkitError, match=r"has no place for \['blocks.0.attn.b_O'\]"):
        save_policy(policy, tmp_path / "refused")


def test_the_embedded_model_round_trips_through_load_model(tmp_path):
    policy = fine_tuned(ipgkit.load_model("arith"))
    out = save_policy(policy, tmp_path / "arith", {"trained_by": "a test"})
    tokens = torch.tensor([[1, 20, 30, 40]])
    again = ipgkit.load_model(str(out))
    assert torch.equal(again.model(tokens), policy.model(tokens))


def test_other_architectures_are_refused_with_what_works(tmp_path):
    from tests.conftest import tiny_policy

    policy = tiny_policy()
    policy.model.cfg.original_architecture = "GPT2LMHeadModel"
    with pytest.raises(ipgkit.IpgkitError, match="cannot export a GPT2LMHeadModel"):
        save_policy(policy, tmp_path / "x")
