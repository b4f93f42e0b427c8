import pytest

from ipgkit.cli import build_parser, main


@pytest.mark.parametrize("command", [[], ["train-model"], ["evaluate"], ["demo"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ipgkit" in capsys.readouterr().out


def test_training_options_mirror_the_config():
    args = build_parser().parse_args(["train-model", "--steps", "7", "--verifier-fraction", "0.5"])
    assert args.steps == 7 and args.verifier_fraction == 0.5


def test_bad_input_is_a_one_line_error(capsys):
    assert main(["evaluate", "--task", "gsm8k"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("ipgkit evaluate: error: gsm8k is read from disk") and err.count("\n") == 1
    )
