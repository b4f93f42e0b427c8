"""Progress bars: on by default for long calls, off with progress=False or IPGKIT_PROGRESS=0."""

import ipgkit
from ipgkit.progress import tqdm


def test_the_environment_silences_every_bar(monkeypatch):
    assert tqdm(range(3)).disable is False
    assert tqdm(range(3), disable=True).disable is True
    monkeypatch.setenv("IPGKIT_PROGRESS", "0")
    assert tqdm(range(3)).disable is True


def test_long_calls_show_a_bar_by_default(policy, capsys):
    problems = ["Compute 1+2.", "Compute 3+4."]
    rollouts = ipgkit.sample(policy, problems, n=2, max_new_tokens=4, temperature=1.0)
    assert "sample" in capsys.readouterr().err
    ipgkit.score_rollouts(policy, rollouts)
    assert "scoring" in capsys.readouterr().err
    ipgkit.sample(policy, problems, max_new_tokens=4, progress=False)
    ipgkit.score_rollouts(policy, rollouts, progress=False)
    assert capsys.readouterr().err == ""
