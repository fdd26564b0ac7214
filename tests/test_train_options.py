"""train/run.py's command line: one table of options, sizes as N or H W, help everywhere."""

from __future__ import annotations

import pytest

from train import options


def test_every_option_has_help_with_its_default():
    parser = options.build_parser()
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in actions} == set(options.DEFAULTS)
    for action in actions:
        assert action.help and len(action.help) > 15, action.dest
        if action.nargs != 0:  # flags (store_true) have no default worth printing
            assert "(default: " in action.help, action.dest
    text = parser.format_help()
    assert "--crop-size N|H W" in text and "(default: 512 512)" in text


@pytest.mark.parametrize(
    "given, expected",
    [(["--crop-size", "96"], (96, 96)), (["--crop-size", "96", "128"], (96, 128))],
)
def test_sizes_take_one_number_or_two(given, expected):
    args = options.parse_args(["--data-dir", "d", *given, "--image-size", "64"])
    assert args.crop_size == expected
    assert args.image_size == (64, 64)


@pytest.mark.parametrize(
    "given, message",
    [
        (["--crop-size", "1", "2", "3"], "takes N (square) or H W, got 3 numbers"),
        (["--crop-size", "0"], "is not a size in pixels"),
        (["--threshold", "1.5"], "--threshold must be between 0 and 1"),
        (["--task", "depth"], "invalid choice: 'depth'"),
    ],
)
def test_bad_values_are_one_line_errors(given, message, capsys):
    with pytest.raises(SystemExit):
        options.parse_args(["--data-dir", "d", *given])
    assert message in capsys.readouterr().err


def test_defaults_are_defined_once():
    """The loop, model card and parser read DEFAULTS; the parser's defaults are the table's."""
    args = options.parse_args(["--data-dir", "d"])
    for name, value in options.DEFAULTS.items():
        if name != "data_dir":
            assert getattr(args, name) == value, name
