"""The `weightconv` command: parse, call the library, render; nothing else.

Exit codes: 0 success; 1 a check failed (diff, verify); 2 bad input or usage (unreadable or
corrupt file, refused pickle, output exists, shape mismatch, unknown option); 3 an internal
error (a bug: rerun with --debug and report it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import traceback
from collections.abc import Sequence

from weightconv._version import __version__
from weightconv.cli import args as common
from weightconv.cli import checks, convert, demo, diff, export, inspect
from weightconv.errors import EXIT_BAD_INPUT, EXIT_OK, WeightconvError
from weightconv.reports import SCHEMA_VERSION

EXIT_INTERNAL = 3

__all__ = ["EXIT_INTERNAL", "build_parser", "main", "run"]


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or, given the `verb` being run, that verb's arguments only
    (the others are listed but not built)."""
    parser = common.Parser(
        prog="weightconv",
        description="Convert neural-network weights between Caffe, .npy, TensorFlow "
        "checkpoints and Keras HDF5: exact, or refused.",
        epilog=common.examples(
            "weightconv caffe2npy bvlc_alexnet.caffemodel --prototxt deploy.prototxt",
            "weightconv npy2ckpt bvlc_alexnet.npy -o ckpt/alexnet.ckpt",
            "weightconv inspect ckpt/alexnet.ckpt --json",
        )
        + "\n\nexit codes: 0 ok, 1 a check failed, 2 bad input or usage, 3 internal error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"weightconv {__version__}")
    common.global_switches(parser, top=True)
    verbs = common.Verbs(
        parser.add_subparsers(
            title="commands", metavar="COMMAND", dest="verb", parser_class=common.Parser
        ),
        verb,
    )
    convert.add(verbs)
    export.add(verbs)
    inspect.add(verbs)
    diff.add(verbs)
    checks.add(verbs)
    demo.add(verbs)
    verbs.finish()
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    # The global switches take no values, so the first word that is not one is the verb.
    parser = build_parser(next((w for w in words if not w.startswith("-")), None))
    try:
        args = parser.parse_args(words)
    except common.CommandLineError as exc:
        exc.render()
        if "--json" in words:
            verb = next((w for w in words if not w.startswith("-")), None)
            print(json.dumps(_error_document(verb, f"{exc.prog}: {exc.message}", exc.exit_code)))
        return exc.exit_code
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_BAD_INPUT
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.handler(args))
    except WeightconvError as exc:
        if args.debug:
            traceback.print_exc()
        _report_error(args, common.translate(str(exc)), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print("weightconv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return EXIT_OK
    except Exception as exc:  # a bug: say so in one line unless --debug
        if args.debug:
            raise
        _report_error(
            args,
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            EXIT_INTERNAL,
        )
        return EXIT_INTERNAL


def run() -> None:
    """The installed command: `main`, and its exit code as the process's."""
    # The modules imported so far live until exit: frozen, no collection walks them again,
    # the last one at exit included (15 ms of a 140 ms inspect).
    gc.freeze()
    sys.exit(main())


def _report_error(args: argparse.Namespace, message: str, code: int) -> None:
    if getattr(args, "json", False):
        print(json.dumps(_error_document(getattr(args, "verb", None), message, code)))
    print(f"weightconv: error: {message}", file=sys.stderr)


def _error_document(verb: str | None, message: str, code: int) -> dict[str, object]:
    return {
        "schema_version": SCHEMA_VERSION,
        "ok": False,
        "verb": verb,
        "error": message,
        "exit_code": code,
    }


if __name__ == "__main__":
    run()
