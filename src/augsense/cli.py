"""The command line: build the parser from the sub-commands in ``augsense.commands`` and dispatch.

Each sub-command lives in its own module under ``augsense/commands/``. Errors print one line, exit 2.
Exit codes: 0 done; 2 bad input or a refused/failed run (one line on stderr); 130 / 143 stopped by
SIGINT / SIGTERM (a checkpoint is written and the resume command printed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from augsense.errors import AugsenseError

EXIT_BAD_INPUT = 2

# listed first in --help, in this order; every other module in augsense.commands follows alphabetically
FIRST_COMMANDS = ("run", "demo", "layers", "factors", "report")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or of ``only`` that one (when it names one).

    ``main`` passes the command it was given, so ``augsense run`` does not import the other commands'
    modules (``augsense maps`` alone pulls in scikit-learn: 0.3-0.7 s of a run's start).
    """
    parser = argparse.ArgumentParser(prog="augsense", description="Which input augmentations move which units "
                                     "of an image classifier (Sobol indices, Shapley effects, guided masking).")
    from augsense import __version__

    parser.add_argument("--version", action="version", version=f"augsense {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    import importlib
    import pkgutil

    import augsense.commands

    found = [m.name for m in pkgutil.iter_modules(augsense.commands.__path__) if not m.name.startswith("_")]
    if only is not None and only.replace("-", "_") in found:
        found = [only.replace("-", "_")]
    for name in sorted(found, key=lambda n: (FIRST_COMMANDS.index(n) if n in FIRST_COMMANDS else len(FIRST_COMMANDS), n)):
        importlib.import_module(f"augsense.commands.{name}").register(sub)
    return parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    """The sub-command names ``parser`` knows."""
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues an interrupted run: the same arguments, --resume, no --overwrite."""
    import shlex

    words = [word for word in argv if word != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return "augsense " + shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    from augsense.interrupts import RunInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(only=first)
    if first not in _commands(parser):  # not a command's name: the full parser says so, listing them all
        parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except AugsenseError as error:
        print(f"augsense: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunInterrupted as stop:
        if stop.rank == 0:
            out = getattr(args, "out", None)
            given = any(word == "--out" or word.startswith("--out=") for word in argv)
            if stop.checkpoint or (out is not None and (Path(out) / "checkpoint.pt").exists()):
                hint = (f"; resume with: {resume_command(argv)}" + ("" if given else f" --out {out}")
                        + (" (under torchrun: the same torchrun line with --resume)"
                           if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""))
            else:
                hint = "; no checkpoint yet: start it again" if out is not None else ""
            print(f"augsense: {stop.describe()}{hint}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        print("augsense: interrupted" + (f"; if {out}/checkpoint.pt exists, resume with: {resume_command(argv)}"
                                         if out else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


def entry() -> None:
    """The ``augsense`` console script (and ``python -m augsense``): :func:`main`, then a fast exit.

    Once a command has returned, everything it wrote is closed and synced (results are written
    atomically, with fsync), so the exit handlers are run and the process leaves at once instead of
    tearing the interpreter down: freeing torch's modules, tensors and libraries one by one took 1-4 s
    after a reference-workload run (of ~20 s) and bought nothing. An exception escaping ``main``
    exits the ordinary way, with its traceback.
    """
    code = main()
    import atexit

    atexit._run_exitfuncs()  # what a normal exit would run: logging, temporary files, torch.distributed
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`augsense ... | head`) or a closed stream
            pass
    os._exit(int(code or 0))


if __name__ == "__main__":
    entry()
