from dataclasses import replace

import pytest

from ipgkit.errors import IpgkitError, RewardError
from ipgkit.tasks import Task, call_reward, keyword_count, length_reward, load, reward_columns
from ipgkit.tasks.arith import grade_integer


def test_empty_task_is_refused():
    with pytest.raises(IpgkitError, match=r"task 'mine' .* has no problems"):
        Task("mine", "test", [], grade_integer)


def test_correctness_reward_uses_the_answer_column():
    task = load("arith-chain", n=2)
    columns = reward_columns(task.problems)
    completions = [task.problems[0].reference, "#### -1"]
    assert task.correctness(["", ""], completions, **columns) == [1.0, 0.0]
    assert task.subset(1).problems == task.problems[:1]
    with pytest.raises(IpgkitError, match="limit must be positive"):
        task.subset(0)


def test_length_and_keyword_rewards():
    assert length_reward(["p"], ["abc"]) == [3.0]
    assert length_reward(["p"], ["abc"], completion_ids=[[1, 2]]) == [2.0]
    reward = keyword_count(["wait", "check"])
    assert reward(["q", "q"], ["Wait, let me check. wait", "waiting"]) == [3.0, 0.0]
    assert reward.__name__ == "keyword_count(wait, check)"
    with pytest.raises(ValueError):
        keyword_count([])


def test_call_reward_names_the_function():
    def my_reward(prompts, completions, **_):
        return [1.0]

    with pytest.raises(RewardError, match="'my_reward' returned 1 values for 2 completions"):
        call_reward(my_reward, ["a", "b"], ["a", "b"])


def test_mix_tasks_interleaves_families_so_prefixes_are_balanced():
    from ipgkit.tasks import load, mix_tasks

    word, chain = load("arith-word", split="train", n=3), load("arith-chain", split="train", n=2)
    mixed = mix_tasks([word, chain])
    assert [p.id for p in mixed.problems] == [
        word.problems[0].id,
        chain.problems[0].id,
        word.problems[1].id,
        chain.problems[1].id,
        word.problems[2].id,
    ]
    assert mixed.name == "arith-word+arith-chain" and mixed.grade is word.grade
    with pytest.raises(IpgkitError, match="grade differently"):
        mix_tasks([word, replace(chain, grade=lambda c, a: True)])


def test_rewards_written_for_trl_work_unchanged():
    """TRL calls ``reward_func(prompts=..., completions=..., completion_ids=..., **columns)``:
    the form its documentation shows gets the completions, not the prompts."""
    import ipgkit
    from tests.conftest import tiny_policy

    seen = {}

    def trl_reward(completions, **kwargs):  # as in TRL's documentation
        seen.update(kwargs)
        return [float(len(c)) for c in completions]

    prompts, completions = ["a long prompt", "p"], ["x", "yy"]
    assert call_reward(trl_reward, prompts, completions, answer=["1", "2"]) == [1.0, 2.0]
    assert seen["prompts"] == prompts and seen["answer"] == ["1", "2"]
    assert call_reward(lambda p, c, **_: [len(p[0])] * len(c), prompts, completions) == [13.0] * 2

    task = load("arith-chain", n=2)
    rollouts = ipgkit.sample(tiny_policy(), task.problems, n=2, max_new_tokens=4, reward=trl_reward)
    assert rollouts.rewards.tolist() == [float(len(t)) for t in rollouts.texts]
    assert {"completion_ids", "answer", "reference", "problem_id"} <= set(seen)
