"""The ``probe`` command line: a thin shell over the public functions.

Each subcommand lives in ``probe/commands/<name>.py`` as ``add_arguments(parser)`` plus ``run(args) -> int``.
Those modules import torch and the heavy parts only inside ``run``, so ``probe --help`` answers instantly.
Errors derived from :class:`probe.ProbeError` become one line on stderr and exit code 2 (usage) or 1 (failure).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module under probe.commands, one-line help). Order is the order shown in --help.
COMMANDS = [
    ("run", "run", "run a whole study (extract, sweep, fine-tune, report) from a TOML file or the default"),
    ("extract-features", "extract", "run a frozen backbone once over a dataset and cache its features (HDF5)"),
    ("sweep", "sweep", "fit probes (logistic, ridge, knn, centroid) on cached features and write results"),
    ("finetune", "finetune", "fine-tune a whole backbone on a dataset and write results beside the probes"),
    ("similarity", "similarity", "compare representations of the same images: CKA and mutual k-NN from the cache"),
    ("transfer", "transfer", "transferability scores (LogME, LEEP, ...) of backbones on a dataset's cached features"),
    ("report", "report", "turn a results directory into a markdown report with figures"),
    ("cache", "cache", "list, verify or remove feature cache entries (ls, verify, rm, prune)"),
]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default unless it is empty (None/False) or the help text already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (with where to find help), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``probe`` argument parser with every subcommand that is installed."""
    from ._version import __version__

    parser = _Parser(
        prog="probe",
        description="Whose visual representations transfer better? Extract frozen timm backbone features once, "
                    "probe them, fine-tune the same backbones on the same splits, and report.",
    )
    parser.add_argument("--version", action="version", version=f"probe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(f"probe.commands.{module_name}")
        except ModuleNotFoundError as exc:  # a subcommand not written yet
            if exc.name == f"probe.commands.{module_name}":
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=_HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``probe`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return _dispatch(args._run, args)


def extract_features_main(argv: list[str] | None = None) -> int:
    """Entry point of the ``extract-features`` console script (the same as ``probe extract-features``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(["extract-features", *argv])


def _dispatch(run, args) -> int:
    from ._console import console
    from ._errors import ProbeError

    try:
        with console():  # warnings as one counted line each; see probe._console
            return int(run(args) or 0)
    except ProbeError as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("probe: interrupted; completed work is kept in the cache and results", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
