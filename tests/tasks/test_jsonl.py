import pytest

from ipgkit.errors import DataFormatError, IpgkitError
from ipgkit.tasks import load
from ipgkit.tasks.grading import extract_answer, grade_math, grade_numeric, last_boxed


def test_gsm8k_grader_agrees_with_every_reference(shared_data):
    for split, rows in (("test", 1319), ("train", 7473)):
        task = load("gsm8k", path=shared_data / "gsm8k", split=split)
        assert len(task) == rows
        assert all(task.grade(p.reference, p.answer) for p in task.problems)
        assert "<<" not in task.problems[0].reference


def test_math500_grader_agrees_with_every_reference(shared_data):
    task = load("math500", path=shared_data / "math500" / "test.jsonl")
    assert len(task) == 500
    assert sum(task.grade(p.reference, p.answer) for p in task.problems) == 500
    assert {p.metadata["level"] for p in task.problems} == {1, 2, 3, 4, 5}


def test_graders_reject_wrong_answers(shared_data):
    math = load("math500", path=shared_data / "math500", n=50)
    wrong = [grade_math("\\boxed{" + p.answer + "+1}", p.answer) for p in math.problems]
    assert sum(wrong) == 0
    gsm = load("gsm8k", path=shared_data / "gsm8k", n=50)
    assert not any(gsm.grade(f"#### {float(p.answer) + 1}", p.answer) for p in gsm.problems)


def test_answer_extraction():
    assert extract_answer("a\n#### 1,234") == "1,234"
    assert extract_answer("so $\\boxed{\\frac{1}{2}}$ done") == "\\frac{1}{2}"
    assert extract_answer("it is 12 then 15.") == "15"
    assert extract_answer("no answer") is None
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert grade_numeric("The answer is $1,234.00", "1234")
    assert grade_math("\\boxed{0.5}", "\\frac{1}{2}")


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": broken\n')
    with pytest.raises(DataFormatError, match=r"test\.jsonl:2: malformed JSON"):
        load("gsm8k", path=path)


def test_missing_fields_empty_files_and_paths(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "q"}\n')
    with pytest.raises(DataFormatError, match=r"test\.jsonl:1: missing field\(s\) \['answer'\]"):
        load("gsm8k", path=path)
    path.write_text("\n")
    with pytest.raises(DataFormatError, match="holds no rows"):
        load("gsm8k", path=path)
    with pytest.raises(DataFormatError, match="not found"):
        load("gsm8k", path=tmp_path / "nowhere")
    with pytest.raises(IpgkitError, match="pass path="):
        load("math500")
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataFormatError, match="not UTF-8"):
        load("gsm8k", path=path)


def test_the_paper_answer_format_follows_each_question_in_the_prompt(tmp_path, policy):
    import ipgkit
    from ipgkit.tasks import BOXED_INSTRUCTION

    data = tmp_path / "test.jsonl"
    data.write_text('{"question": "How many?", "answer": "2+1=3\\n#### 3"}\n')
    problem = load("gsm8k", path=data).problems[0]
    assert problem.question == "How many?" and problem.instruction == BOXED_INSTRUCTION
    assert problem.statement == f"How many?\n{BOXED_INSTRUCTION}"
    plain = load("gsm8k", path=data, instruction="").problems[0]
    assert plain.statement == "How many?"
    rollouts = ipgkit.sample(policy, [problem], max_new_tokens=2)
    assert rollouts.prompts == [policy.prompt_format(problem.statement)]
    with pytest.raises(IpgkitError, match="no instruction"):
        load("arith-word", instruction="Answer briefly.")
