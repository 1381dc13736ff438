"""Turn a results directory into a report: report.md with PNG figures, and report.html, a browsable explorer.

Reads every ``*.parquet`` result under RESULTS_DIR (default ``results``, like every other command) and the
``.npz`` test predictions beside them, and writes to --out, by default a ``report`` folder beside RESULTS_DIR
(for ``results/`` that is ``report/``): ``report.md`` plus ``figures/*.png``, and ``report.html``, one
self-contained page (tables sortable and filterable, drill-down per configuration, SVG figures, provenance) that
opens from disk with no server and no network. --format picks which (default both). Prints the path of each file.
Best frozen probes and fine-tuning modes are chosen on val (seed means, within one backbone configuration);
every difference has a paired bootstrap confidence interval over the same test images, and family differences
also resample the backbones.
"""

from __future__ import annotations

import argparse
import shlex

#: What --format writes.
FORMATS = ("md", "html", "both")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``probe report``."""
    parser.add_argument("results_dir", metavar="RESULTS_DIR", nargs="?", default="results",
                        help="folder of results, searched recursively (default: results)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder for report.md, figures/ and report.html (default: 'report' beside "
                             "RESULTS_DIR)")
    parser.add_argument("--n-boot", type=int, default=10_000, metavar="N",
                        help="bootstrap resamples per confidence interval")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--format", choices=FORMATS, default="both",
                        help="md: report.md with PNG figures; html: report.html, the self-contained explorer "
                             "(sort, filter, drill down; no network); both (default)")


def run(args: argparse.Namespace) -> int:
    """Write the report(s) and print the path of each file written."""
    from .._checks import check_output_dir
    from .._schema import SEED, Setting, check_setting

    check_setting(args.n_boot, Setting("int", lo=1), "--n-boot", example="--n-boot 10000")
    check_setting(args.seed, SEED, "--seed", example="--seed 0")
    if args.out is not None:
        check_output_dir(args.out, "--out")
    if args.format in ("md", "both"):
        from .._report import write_report

        print(write_report(args.results_dir, args.out, n_boot=args.n_boot, seed=args.seed))
    if args.format in ("html", "both"):
        from .._report_html import write_html_report

        words = ["probe", "report", args.results_dir, *(["--out", args.out] if args.out is not None else []),
                 "--n-boot", str(args.n_boot), "--seed", str(args.seed), "--format", args.format]
        print(write_html_report(args.results_dir, args.out, n_boot=args.n_boot, seed=args.seed,
                                command=shlex.join(str(w) for w in words)))
    return 0
