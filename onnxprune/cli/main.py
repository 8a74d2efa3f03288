"""Entry point of the ``onnxprune`` command.

Each subcommand lives in ``onnxprune/cli/cmd_<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; this module only dispatches and turns errors into one line. A user error (any
:class:`OnnxPruneError`) exits 1 with ``onnxprune: error: ...`` on stderr and no traceback unless
``--verbose``; Ctrl-C exits 130 and, because every write is atomic, leaves no partial output.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from onnxprune import __version__
from onnxprune.core.errors import OnnxPruneError

#: Subcommands, in the order ``--help`` lists them; each is ``onnxprune.cli.cmd_<name>``.
COMMANDS = ["analyze", "prune", "validate", "bench", "eval", "sensitivity"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in our one-line format (exit 2, as argparse does)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"onnxprune: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered subcommand."""
    parser = _Parser(prog="onnxprune", description="Prune ONNX models and prove what it costs and gains.")
    parser.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"onnxprune.cli.cmd_{name}")
        p = module.add_parser(sub)
        for action in common._actions:
            if action.option_strings and not any(o in p._option_string_actions for o in action.option_strings):
                p._add_action(action)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 user error or failed check, 2 usage, 3 bug, 4 a ``validate``
    bound crossed, 130 Ctrl-C)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0)
    verbose = bool(getattr(args, "verbose", False))
    quiet = bool(getattr(args, "quiet", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else (logging.ERROR if quiet else logging.WARNING),
        format="onnxprune: %(levelname)s: %(message)s",
        force=True,
    )
    from onnxprune.cli.flags import DEPRECATED_DEST
    from onnxprune.core.progress import progress_switched_on, set_progress_enabled

    for note in getattr(args, DEPRECATED_DEST, ()):  # old flag spellings still work, for one version
        logging.getLogger(__name__).warning(note)

    progress_before = progress_switched_on()
    if quiet:
        set_progress_enabled(False)
    try:
        return int(args._run(args))
    except OnnxPruneError as exc:
        if verbose:
            traceback.print_exc()
        sys.stderr.write(f"onnxprune: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("onnxprune: interrupted; files are written atomically, so no partial output was left\n")
        return 130
    except MemoryError:
        if verbose:
            traceback.print_exc()
        sys.stderr.write("onnxprune: error: out of memory; close other programs or use a bigger machine\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort: a bug must still end in one readable line
        if verbose:
            traceback.print_exc()
        sys.stderr.write(f"onnxprune: internal error: {type(exc).__name__}: {exc}; no output was written. "
                         f"Rerun with --verbose and report it\n")
        return 3
    finally:
        set_progress_enabled(progress_before)  # main() may run many times in one process (tests, scripts)


if __name__ == "__main__":
    sys.exit(main())
