import matplotlib
import pytest
import torch

from ipgkit.attribution import AttributionResult
from ipgkit.components import ComponentSet, resid_neurons
from ipgkit.errors import DataFormatError, IpgkitError

matplotlib.use("Agg")


def make_result():
    per_prompt = torch.tensor([[1.0, -3.0, 0.5, 2.0], [3.0, -1.0, 0.5, 0.0]])
    components = resid_neurons(1, [4, 8, 15, 16])
    return AttributionResult.from_per_prompt(
        components, per_prompt, "ipg", {"delta": 0.01, "frac_reward_zero_std": 0.25}
    )


def test_scores_are_prompt_means_with_standard_errors():
    result = make_result()
    assert result.scores.tolist() == [2.0, -2.0, 0.5, 1.0]
    assert result.stderr.tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0])
    assert result.delta == 0.01 and result.frac_reward_zero_std == 0.25


def test_top_and_ranks():
    result = make_result()
    assert result.top(2).indices == (4, 16)
    assert result.top(1, by="negative").indices == (8,)
    assert result.top(2, by="abs").indices == (4, 8)  # ties keep index order
    frame = result.to_dataframe()
    assert list(frame.columns[:6]) == ["hook", "kind", "index", "score", "stderr", "rank"]
    assert frame.set_index("index")["rank"].to_dict() == {4: 1, 8: 4, 15: 3, 16: 2}
    with pytest.raises(IpgkitError, match="top 5 of only 4"):
        result.top(5)


def test_save_load_round_trip(tmp_path):
    result = make_result()
    loaded = AttributionResult.load(result.save(tmp_path / "scores.safetensors"))
    assert loaded.components == result.components
    for name in ("scores", "stderr", "per_prompt"):
        assert torch.equal(getattr(loaded, name), getattr(result, name))
    assert loaded.info == result.info and loaded.method == "ipg"
    direction = ComponentSet("blocks.0.hook_resid_post", (0,), "direction", torch.eye(3)[:1])
    vector = AttributionResult(direction, torch.tensor([0.9]), method="control_vector")
    loaded = AttributionResult.load(vector.save(tmp_path / "vector.safetensors"))
    assert torch.equal(loaded.components.directions, direction.directions)
    assert loaded.stderr is None


def test_load_refuses_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a tensor file")
    with pytest.raises(DataFormatError, match="not a safetensors file"):
        AttributionResult.load(bad)
    with pytest.raises(IpgkitError, match="no attribution result"):
        AttributionResult.load(tmp_path / "missing.safetensors")


def test_plot_draws_every_unit():
    ax = make_result().plot(top=2)
    assert len(ax.collections) >= 2


def test_plot_saves_without_clipping():
    from tests.figures_fit import drawn_inside_figure

    assert drawn_inside_figure(make_result().plot(top=2).figure)
