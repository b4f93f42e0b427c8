"""The process reward: fraction of reference steps right before the first error."""

import pytest

from ipgkit.tasks import call_reward, load, reward_columns, step_progress

REFERENCE = "48-14=34\n34*5=170\n170+71=241\n#### 241"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (REFERENCE, 1.0),
        ("48 - 14 = 34\n34*5=170\n170+71=241\n#### 241", 1.0),  # spaces do not count
        ("48-14=35\n35*5=175\n175+71=246\n#### 246", 0.0),  # wrong from the first step
        ("48-14=34\n34*5=170\n170+71=231\n#### 231", 0.5),  # two of four steps right
        ("48-14=34\n34*5=170\n170+71=241\n#### 240", 0.75),  # only the answer line wrong
        ("48-14=34\n34*5=170", 0.5),  # stopped after two steps
        ("", 0.0),
    ],
)
def test_step_progress_counts_the_steps_before_the_first_error(completion, expected):
    assert step_progress(["q"], [completion], reference=[REFERENCE]) == [expected]


def test_step_progress_is_called_as_trl_calls_rewards():
    task = load("arith-word", split="test", n=3)
    wrong_last = task.problems[1].reference.rsplit("\n", 1)[0] + "\n#### -1"
    completions = [task.problems[0].reference, wrong_last, "no steps"]
    values = call_reward(step_progress, ["", "", ""], completions, **reward_columns(task.problems))
    steps = len(task.problems[1].reference.splitlines())
    assert values == [1.0, (steps - 1) / steps, 0.0]
