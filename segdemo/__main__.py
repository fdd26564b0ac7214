"""``python -m segdemo {predict,evaluate,models,convert}``; see ``python -m segdemo -h``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from segdemo import cli, convert, evaluate

    parser = argparse.ArgumentParser(prog="python -m segdemo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cli.add_predict_command(commands)
    cli.add_models_command(commands)
    evaluate.add_evaluate_command(commands)
    convert.add_convert_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Each subcommand's parser sets ``run``: a function of the parsed args returning an exit code."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
