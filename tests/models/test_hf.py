"""Local Hugging Face checkpoints as policies: tiny random Qwen2 and Llama models saved by the test
itself, so nothing is downloaded."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import ipgkit
from ipgkit.errors import IpgkitError
from ipgkit.models.hf import is_hf_directory
from tests.hf_checkpoints import CHAT, save_tiny_checkpoint


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def checkpoint(request, tmp_path_factory):
    # a folder named like the architecture: TransformerLens misreads paths containing "llama"
    folder = tmp_path_factory.mktemp("ckpt") / f"tiny-{request.param}"
    return save_tiny_checkpoint(folder, request.param)


def test_a_local_checkpoint_loads_with_the_models_own_logits(checkpoint):
    assert is_hf_directory(checkpoint)
    policy = ipgkit.load_model(str(checkpoint))
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    prompt = policy.prompt_format("how many apples now?")
    assert prompt.startswith(
        "<|im_start|>user\nhow many apples now?<|im_end|>\n<|im_start|>assistant"
    )
    ids = torch.tensor(policy.encode([prompt]))
    with torch.no_grad():
        expected = reference(ids).logits
        actual = policy.model(ids)
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()
    # prompts are encoded as the tokenizer encodes them by default (BOS only if it adds one)
    assert ids[0].tolist() == policy.tokenizer(prompt)["input_ids"]


def test_sampling_and_steering_run_on_a_local_checkpoint(checkpoint):
    policy = ipgkit.load_model(str(checkpoint))
    rollouts = ipgkit.sample(
        policy, ["how many apples now?"], n=2, temperature=0.0, max_new_tokens=5
    )
    with ipgkit.steer(policy, ipgkit.mlp_neurons(1, [0, 3]), gamma=1.0):
        again = ipgkit.sample(
            policy, ["how many apples now?"], n=2, temperature=0.0, max_new_tokens=5
        )
    assert rollouts.texts == again.texts
    assert torch.equal(rollouts.completion_ids, again.completion_ids)


def test_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert not is_hf_directory(tmp_path)
    with pytest.raises(IpgkitError, match="unknown model"):
        ipgkit.load_model(str(tmp_path))


def _template_ids(tokenizer, question):
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.parametrize("bos", [False, True])
def test_prompts_are_the_chat_templates_tokens_with_one_bos(tmp_path, bos):
    # Llama 3 style: the template writes BOS as text and the tokenizer adds BOS too
    template = "{{ bos_token }}" + CHAT if bos else CHAT
    folder = save_tiny_checkpoint(tmp_path / "tiny-bos", "qwen2", bos=bos, chat_template=template)
    policy = ipgkit.load_model(str(folder))
    question = "how many apples now?"
    ids = policy.encode([policy.prompt_format(question)])[0]
    assert ids == _template_ids(policy.tokenizer, question)
    bos_id = policy.tokenizer.bos_token_id
    assert ids.count(bos_id) == (1 if bos else 0) and (not bos or ids[0] == bos_id)


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-Math-1.5B-Instruct"])
def test_a_hub_name_offline_is_a_one_line_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IpgkitError) as error:
        ipgkit.load_model(name)
    message = str(error.value)
    assert "\n" not in message and name in message and "HF_HUB_OFFLINE" in message


def test_a_hub_name_outside_transformerlens_list_is_converted_like_a_local_checkpoint(
    checkpoint, monkeypatch
):
    import huggingface_hub

    fetched = []
    monkeypatch.setattr(
        huggingface_hub,
        "snapshot_download",
        lambda name, **_: fetched.append(name) or str(checkpoint),
    )
    policy = ipgkit.load_model("someone/tiny-reasoner")
    assert fetched == ["someone/tiny-reasoner"] and policy.name == "tiny-reasoner"
    local = ipgkit.load_model(str(checkpoint))
    ids = torch.tensor(policy.encode(["how many apples now?"]))
    with torch.no_grad():
        assert torch.equal(policy.model(ids), local.model(ids))


def test_a_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(IpgkitError, match="GGUF file not found"):
        ipgkit.load_model(str(tmp_path / "model.gguf"))
