"""The README's "Looking at results" and "Your own model and SAE" snippets run as written, on
the embedded model, and do what the text around them says."""

import pytest

from tests.attribution.test_readme_snippets import readme_block


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets write report.html, unit.png and runs/
    return tmp_path


def run_block(after: str, label: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import ipgkit

    namespace = {"ipgkit": ipgkit, "policy": ipgkit.load_model("arith")}
    exec(compile(readme_block(after), f"README.md ({label})", "exec"), namespace)
    return namespace


def test_looking_at_results_runs_as_written(in_tmp):
    namespace = run_block("**In a notebook** the same pieces", "looking at results")
    page = (in_tmp / "report.html").read_text()
    assert "<h2>Per-token views</h2>" in page and "<h2>Feature pages</h2>" in page
    assert (in_tmp / "unit.png").stat().st_size > 0
    view, top = namespace["view"], namespace["top"]
    assert view.components.indices == tuple(top)


def test_your_own_model_and_sae_runs_as_written(in_tmp):
    namespace = run_block("## Your own model and SAE", "your own model and SAE")
    latents, result = namespace["latents"], namespace["result"]
    assert latents.hook_name == "blocks.1.hook_mlp_out.hook_sae_acts_post"
    assert len(result) == 512  # every latent of the SAE scored
    assert result.info["reward"] == "ends_with_answer"
    again, mine = namespace["again"], namespace["mine"]
    for name, tensor in mine.model.state_dict().items():
        assert (again.model.state_dict()[name] == tensor).all(), name
    assert namespace["greedy"].texts[0]  # the bare HookedTransformer sampled
