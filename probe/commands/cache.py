"""Inspect the feature cache: 'ls' lists entries (backbone, weights, dataset, split, taps, rows, size, key),
'verify' checks every file against the cache contract and exits 1 if any is broken."""

from __future__ import annotations

import argparse

from ._common import DEFAULT_CACHE_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["ls", "verify"], help="ls: list entries; verify: check every file")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR", help="feature cache directory")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probe._cache import list_cache, verify_cache
    from probe._errors import UsageError

    if not Path(args.cache_dir).is_dir():
        raise UsageError(f"cache directory {args.cache_dir} does not exist; run 'probe extract-features' first "
                         f"or pass --cache-dir")
    if args.action == "ls":
        rows = list_cache(args.cache_dir)
        header = ["backbone", "weights", "dataset", "split", "taps", "rows", "size", "key"]
        table = [[str(r["backbone"]), str(r["weights"]), str(r["dataset"]), str(r["split"]),
                  ",".join(r["taps"] or []), str(r["rows"]), _size(r["size"]), str(r["key"])] for r in rows]
        widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for t in table:
            print("  ".join(c.ljust(w) for c, w in zip(t, widths)))
        print(f"{len(table)} entries in {args.cache_dir}")
        return 0
    problems = verify_cache(args.cache_dir)
    for path, probs in problems.items():
        for p in probs:
            print(f"BROKEN {path}: {p}")
    n = len(list_cache(args.cache_dir))
    print(f"{n - len(problems)} of {n} entries ok" + (f"; {len(problems)} broken (delete and re-extract them)"
                                                     if problems else ""))
    return 1 if problems else 0
