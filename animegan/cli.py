"""The `animegan` command: subcommands, and one place that turns errors into messages.

Bad input ends the command with one line on stderr and exit status 2, never a
traceback (set ANIMEGAN_DEBUG=1 to see one); credentials in the URLs it names
are redacted. Heavy imports (TensorFlow, Ray)
happen inside the commands, so `--help` and input errors are instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from animegan.retries import StorageError

# Each module in animegan.commands adds its subcommand with `register(subparsers)`
# and sets `run=` on its parser, a function of the parsed arguments returning an exit status.
COMMANDS = ["train", "generate", "data", "eval", "fid-weights", "interpolate", "export", "tune"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="animegan",
        description="Train a DCGAN on anime faces with Ray Train and TensorFlow, and use what it learns.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"animegan.commands.{name.replace('-', '_')}").register(subparsers)
    return parser


def _one_line(error: BaseException) -> str:
    from animegan.storage import redact

    return f"animegan: error: {redact(str(error))}"


def main(argv: list[str] | None = None) -> int:
    from animegan import startup

    startup.command_started()
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries the job's own output.
    # Set before TensorFlow loads; Ray workers started from here inherit it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ValueError as error:
        if os.environ.get("ANIMEGAN_DEBUG"):
            raise
        print(_one_line(error), file=sys.stderr)
        return 2
    except StorageError as error:
        # Storage that kept failing after every retry: the message names the URL.
        if os.environ.get("ANIMEGAN_DEBUG"):
            raise
        print(_one_line(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("animegan: interrupted; run the same command again to resume from the latest checkpoint",
              file=sys.stderr)
        return 130
