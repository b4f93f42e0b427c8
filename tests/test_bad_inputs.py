"""The bad-input catalogue: every case raises an error that names the problem, and leaves the
files around it as they were (nothing written, nothing lost).

The README's "Bad input" table lists these cases with the messages they produce; print it with
``python -m tests.test_bad_inputs``.
"""

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import pytest

import ipgkit
from ipgkit.components import mlp_neurons, resid_neurons
from ipgkit.errors import DataFormatError, HookNameError, IpgkitError, RewardError
from ipgkit.experiments.workspace import Workspace
from ipgkit.saes import attach_saes, sae_features
from ipgkit.tasks import load
from tests.conftest import tiny_policy

CATALOGUE: list[tuple[str, type[Exception], str, Callable]] = []


def case(name: str, error: type[Exception], message: str):
    """Register a case: ``setup(folder, policy)`` prepares files and returns the failing call."""

    def register(setup):
        CATALOGUE.append((name, error, message, setup))
        return setup

    return register


GOOD_ROW = '{"question": "q", "answer": "1+1=2\\n#### 2"}\n'


@case("malformed JSONL line", DataFormatError, r"data\.jsonl:2: malformed JSON")
def _malformed(folder, policy):
    (folder / "data.jsonl").write_text(GOOD_ROW + '{"question": "q", \n')
    return lambda: load("gsm8k", path=folder / "data.jsonl")


@case("empty data file", DataFormatError, r"data\.jsonl holds no rows")
def _empty(folder, policy):
    (folder / "data.jsonl").write_text("\n")
    return lambda: load("gsm8k", path=folder / "data.jsonl")


@case("data file in another encoding (Latin-1)", DataFormatError, r"is not UTF-8 text")
def _encoding(folder, policy):
    (folder / "data.jsonl").write_bytes(GOOD_ROW.replace("q", "caf\u00e9").encode("latin-1"))
    return lambda: load("gsm8k", path=folder / "data.jsonl")


@case("record without a required field", DataFormatError, r"data\.jsonl:1: missing field")
def _missing_field(folder, policy):
    (folder / "data.jsonl").write_text('{"question": "q"}\n')
    return lambda: load("gsm8k", path=folder / "data.jsonl")


@case("data path that does not exist", DataFormatError, r"GSM8K data not found at")
def _no_data(folder, policy):
    return lambda: load("gsm8k", path=folder / "nowhere")


def _raising(prompts, completions, **_):
    return [1 / 0 for _ in completions]


def _nan(prompts, completions, **_):
    return [math.nan for _ in completions]


def _short(prompts, completions, **_):
    return [1.0]


@case("reward function that raises", RewardError, r"reward '_raising' raised ZeroDivisionError")
def _reward_raises(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+1"], n=2, max_new_tokens=2, reward=_raising)


@case("reward function that returns NaN", RewardError, r"'_nan' returned non-finite values")
def _reward_nan(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+1"], n=2, max_new_tokens=2, reward=_nan)


@case("reward function that returns the wrong length", RewardError,
      r"'_short' returned 1 values for 2 completions")  # fmt: skip
def _reward_short(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+1"], n=2, max_new_tokens=2, reward=_short)


def _steer_inside(policy, components, gamma):
    def run():
        with ipgkit.steer(policy, components, gamma):
            pass

    return run


@case("component set for another model (layer 7 of a 2-layer model)", HookNameError,
      r"blocks\.7\.mlp\.hook_post.*closest")  # fmt: skip
def _other_model(folder, policy):
    return _steer_inside(policy, mlp_neurons(7, [0]), 0.0)


@case(
    "unit index beyond the site's width",
    IpgkitError,
    r"component index 999 is out of range .*width 32",
)
def _out_of_range(folder, policy):
    return _steer_inside(policy, resid_neurons(0, [5, 999]), 0.0)


@case("SAE for another layer", IpgkitError, r"no SAE is spliced at blocks\.1\.hook_resid_post")
def _sae_layer(folder, policy):
    from tests.test_saes import random_sae

    spliced = attach_saes(tiny_policy(), [random_sae(32, 0)])
    return lambda: sae_features(spliced, layer=1)


@case("SAE of another width", IpgkitError, r"d_in = 64.*width 32")
def _sae_width(folder, policy):
    from tests.test_saes import random_sae

    return lambda: attach_saes(tiny_policy(), [random_sae(64, 0)])


@case("gamma negative", IpgkitError, r"gamma must be a finite number >= 0, got -0\.5")
def _gamma_negative(folder, policy):
    return _steer_inside(policy, resid_neurons(0, [1]), -0.5)


@case("gamma NaN", IpgkitError, r"gamma must be a finite number >= 0, got nan")
def _gamma_nan(folder, policy):
    return _steer_inside(policy, resid_neurons(0, [1]), math.nan)


@case("n_steps = 0", IpgkitError, r"n_steps must be a positive integer, got 0")
def _no_steps(folder, policy):
    return lambda: ipgkit.ipg(policy, ["1+1"], resid_neurons(0), _nan, n_steps=0)


@case("more rollouts in a batch than memory allows", IpgkitError,
      r"a sampling batch of 100000000 rows .* lower batch_size")  # fmt: skip
def _too_many_rollouts(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+1"], n=10**8, batch_size=10**8, max_new_tokens=8)


@case("prompt longer than the context", IpgkitError, r"exceeds the context")
def _too_long(folder, policy):
    return lambda: ipgkit.sample(policy, ["1+" * 200], max_new_tokens=8)


@case("output folder holding results of other settings", IpgkitError,
      r"holds results of other settings \(differing: layer\).*--overwrite")  # fmt: skip
def _other_settings(folder, policy):
    Workspace(folder / "run", {"layer": 2})
    (folder / "run" / "evaluations.jsonl").write_text('{"key": "k"}\n')
    return lambda: Workspace(folder / "run", {"layer": 3})


@case("hub model name while offline", IpgkitError,
      r"'Qwen/Qwen2\.5-Math-1\.5B-Instruct' needs the Hugging Face hub.*HF_HUB_OFFLINE")  # fmt: skip
def _offline(folder, policy):
    return lambda: ipgkit.load_model("Qwen/Qwen2.5-Math-1.5B-Instruct")


@case("unknown model name", IpgkitError, r"unknown model 'gpt-7'")
def _unknown_model(folder, policy):
    return lambda: ipgkit.load_model("gpt-7")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.parametrize(("name", "error", "message", "setup"), CATALOGUE,
                         ids=[c[0] for c in CATALOGUE])  # fmt: skip
def test_bad_input_is_named_and_nothing_is_written_or_lost(name, error, message, setup, tmp_path,
                                                           policy):  # fmt: skip
    call = setup(tmp_path, policy)
    before = snapshot(tmp_path)
    with pytest.raises(error, match=message) as raised:
        call()
    assert "Traceback" not in str(raised.value)
    assert snapshot(tmp_path) == before


def test_the_readme_lists_every_case():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name, *_ in CATALOGUE if f"| {name} |" not in readme]
    assert not missing, f"README's bad-input table lacks {missing}"


if __name__ == "__main__":  # print the README table
    import tempfile

    print("| input | error | message |\n|---|---|---|")
    for name, _error, _message, setup in CATALOGUE:
        with tempfile.TemporaryDirectory() as folder:
            try:
                setup(Path(folder), tiny_policy())()
            except Exception as exc:  # the message as users see it
                text = str(exc).replace(str(folder), "<dir>").replace("|", "\\|")
                print(f"| {name} | `{type(exc).__name__}` | {text} |")
