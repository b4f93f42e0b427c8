"""The README's per-token attribution snippet runs as written (on the embedded model)."""

from pathlib import Path


def readme_block(after: str) -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return readme.split(after, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_per_token_snippet_runs():
    import ipgkit

    code = readme_block("**Per-token attribution.**")
    namespace = {"ipgkit": ipgkit, "policy": ipgkit.load_model("arith")}
    exec(compile(code, "README.md (per-token attribution)", "exec"), namespace)
    view, result = namespace["view"], namespace["result"]
    frame = view.to_dataframe()
    assert set(frame.unit) == set(result.top(3).indices)
    assert "<span" in view.to_html(0, result.top(3).indices[0], "activation")
