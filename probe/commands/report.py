"""Turn a results directory into a markdown report (report.md) with PNG figures.

Reads every ``*.parquet`` result under RESULTS_DIR (default ``results``, like every other command) and the
``.npz`` test predictions beside them, and writes ``report.md`` plus ``figures/*.png`` to --out, by default a
``report`` folder beside RESULTS_DIR (for ``results/`` that is ``report/``). Prints the path of report.md.
Best frozen probes and fine-tuning modes are chosen on val (seed means, within one backbone configuration);
every difference has a paired bootstrap confidence interval over the same test images, and family differences
also resample the backbones.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``probe report``."""
    parser.add_argument("results_dir", metavar="RESULTS_DIR", nargs="?", default="results",
                        help="folder of results, searched recursively (default: results)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder for report.md and figures/ (default: 'report' beside RESULTS_DIR)")
    parser.add_argument("--n-boot", type=int, default=10_000, metavar="N",
                        help="bootstrap resamples per confidence interval")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")


def run(args: argparse.Namespace) -> int:
    """Write the report and print the path of report.md."""
    from .._checks import check_output_dir
    from .._report import write_report
    from .._schema import SEED, Setting, check_setting

    check_setting(args.n_boot, Setting("int", lo=1), "--n-boot", example="--n-boot 10000")
    check_setting(args.seed, SEED, "--seed", example="--seed 0")
    if args.out is not None:
        check_output_dir(args.out, "--out")
    path = write_report(args.results_dir, args.out, n_boot=args.n_boot, seed=args.seed)
    print(path)
    return 0
