"""The shared first cell of the analysis notebooks: arguments, output folder and a figure saver."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .._io import safe_name


@dataclass
class NotebookSetup:
    """What a notebook needs: the results folder, the figure folder, bootstrap settings and ``show``."""

    results: Path
    out: Path
    n_boot: int
    seed: int
    show: Callable


def notebook_setup(description: str, argv: list[str] | None = None) -> NotebookSetup:
    """Parse ``--results``, ``--out``, ``--n-boot``, ``--seed`` (ignoring Jupyter's own arguments).

    ``--out`` defaults to ``notebook-figures`` beside the results folder. ``show(fig, name)`` saves a Figure as
    ``out/name`` and, inside Jupyter, displays it.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--results", default="results", help="results directory (searched recursively)")
    parser.add_argument("--out", default=None, help="figure folder (default: notebook-figures beside --results)")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples per interval")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args, _ = parser.parse_known_args(argv)
    results = Path(args.results)
    out = Path(args.out) if args.out else results.resolve().parent / "notebook-figures"
    out.mkdir(parents=True, exist_ok=True)

    def show(fig, name: str) -> None:
        path = out / safe_name(name)  # dataset names may hold characters a file name cannot
        fig.savefig(path, dpi=150)
        print("wrote", path)
        try:
            get_ipython  # noqa: B018  (defined inside Jupyter only)
        except NameError:
            return
        from IPython.display import display

        display(fig)

    print(f"results: {results}\nfigures: {out}")
    return NotebookSetup(results=results, out=out, n_boot=args.n_boot, seed=args.seed, show=show)
