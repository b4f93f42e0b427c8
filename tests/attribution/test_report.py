"""The HTML report: its numbers are the result's, its heat maps cover exactly the shown rollouts'
completion tokens, it needs nothing from the network, and it renders in headless Chromium."""

import os
import re
import shutil
import subprocess

import pytest
import torch

import ipgkit
from ipgkit.attribution.report import ReportOptions, contrasting_rows, write_report
from ipgkit.components import mlp_neurons
from tests.conftest import tiny_policy


@pytest.fixture(scope="module")
def attributed():
    policy = tiny_policy(seed=4)
    task = ipgkit.tasks.load("arith-chain", split="train", n=3)

    def reward(completions, **_):  # a reward with spread on a random model
        return [float(len(c) % 3) for c in completions]

    result = ipgkit.ipg(
        policy,
        task.problems,
        mlp_neurons(1),
        reward,
        n_rollouts=3,
        n_steps=4,
        max_new_tokens=10,
        temperature=1.0,
        progress=False,
    )
    return policy, result


def section(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}</h2>")
    end = page.find("<h2>", start + 1)
    return page[start : end if end > 0 else None]


def test_summary_and_completeness_state_the_results_own_numbers(attributed):
    _, result = attributed
    page = result.to_html()
    total = float(result.scores.sum())
    assert f"The scores sum to {total:+.4g}" in page
    assert f"{total - result.delta:+.4g}. Delta {result.delta:+.4g}" in page
    assert f"frac_reward_zero_std = {result.frac_reward_zero_std:.2f}" in page
    ranked = result.to_dataframe().sort_values("rank")
    table = section(page, "Scores")
    first = ranked.iloc[0]
    assert f'<td class="num">{first["index"]}</td><td class="num">{first.score:+.4g}' in table
    assert "need the policy" in page and "<h2>Per-token views</h2>" not in page


def test_the_page_says_why_views_are_missing(attributed):
    policy, result = attributed
    bare = ipgkit.AttributionResult(result.components, result.scores, method="activation")
    assert "need the rollouts" in bare.to_html(policy)
    flat = ipgkit.AttributionResult(result.components, torch.zeros(len(result)))
    assert "No unit ranks above another" in flat.to_html(policy, result.rollouts)


def test_heat_maps_cover_the_best_and_worst_rollouts_of_mixed_prompts(attributed):
    policy, result = attributed
    options = ReportOptions(top=2, pairs=2)
    page = result.to_html(policy, top=2, pairs=2)
    pairs = contrasting_rows(result.rollouts, options.pairs)
    rewards = result.rollouts.rewards_by_group()
    for best, worst in pairs:
        group = best // result.rollouts.n
        assert result.rollouts.rewards[best] == rewards[group].max()
        assert result.rollouts.rewards[worst] == rewards[group].min()
    completion = result.rollouts.completion_lengths
    shown = sum(int(completion[row]) for pair in pairs for row in pair)
    views = section(page, "Per-token views")
    assert views.count('<span class="tok"') == 2 * shown  # two units
    assert views.count('<div class="pair">') == 2 * len(pairs)
    assert section(page, "Feature pages").count("<section") == 2


def test_the_page_is_self_contained(attributed):
    policy, result = attributed
    page = result.to_html(policy, top=1)
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)
    assert "data:image/png;base64," in page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    chromium() is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (make test installs it where it can; CI must)",
)
def test_report_renders_in_headless_chromium(attributed, tmp_path):
    from PIL import Image

    assert chromium() is not None, "CI runs this test: install Debian's chromium package"
    policy, result = attributed
    path = write_report(result, tmp_path / "report.html", policy, options=ReportOptions(top=2))
    flags = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1600",
    ]
    url = path.resolve().as_uri()
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for heading in ("Summary", "Completeness", "Scores", "Per-token views", "Feature pages"):
        assert f"<h2>{heading}</h2>" in dom
    top = result.top(1).indices[0]
    assert f"<h3>mlp {top}</h3>" in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600)
    low, high = image.getextrema()
    assert high - low > 100  # something was drawn, not a blank page
    assert torch.tensor(list(image.getdata())).float().std() > 10
