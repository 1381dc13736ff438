"""Inspect and tidy the feature cache: 'ls' lists entries (backbone, weights, dataset, split, taps, rows, size,
key), 'verify' checks every file against the cache contract (exit 1 if any is broken) and reports partial
extractions, 'rm' removes the entries that match the filters, 'prune' removes interrupted (partial) extractions
and, with --older-than, entries not touched for that many days. An entry that another process is writing is
never removed (its job lock is held); it is reported and kept."""

from __future__ import annotations

import argparse

from probe.vocab import SPLITS

from ._common import DEFAULT_CACHE_DIR

ACTIONS = ["ls", "verify", "rm", "prune"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS,
                        help="ls: list entries; verify: check every file; rm: remove matching entries; prune: "
                             "remove partial extractions (and, with --older-than, old entries)")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR", help="feature cache directory")
    filters = parser.add_argument_group("filters of rm and prune (all given must match)")
    filters.add_argument("--backbone", metavar="NAME", default=None, help="backbone name (shell wildcards allowed)")
    filters.add_argument("--dataset", metavar="NAME", default=None, help="dataset name (shell wildcards allowed)")
    filters.add_argument("--split", choices=list(SPLITS), default=None, help="split")
    filters.add_argument("--key", metavar="PREFIX", default=None, help="cache key prefix (as 'cache ls' shows)")
    filters.add_argument("--partial", action="store_true",
                         help="only partial (interrupted) extractions; prune always means this unless "
                              "--older-than is given")
    filters.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                         help="only entries whose files were last modified more than DAYS days ago")
    parser.add_argument("--dry-run", action="store_true", help="rm/prune: print what would be removed, remove nothing")


def _size(n: int) -> str:
    from probe._checks import format_bytes

    return format_bytes(n)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probe._errors import UsageError

    if Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        raise UsageError(f"--cache-dir {args.cache_dir} is not a directory; pass the feature cache folder")
    if not Path(args.cache_dir).is_dir():
        raise UsageError(f"cache directory {args.cache_dir} does not exist; run 'probe extract-features' first "
                         f"or pass --cache-dir")
    if args.action == "ls":
        return _ls(args)
    if args.action == "verify":
        return _verify(args)
    return _remove(args)


def _ls(args) -> int:
    from probe._cache import list_cache

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


def _verify(args) -> int:
    from probe._cache import entry_busy, list_cache, verify_cache

    problems = verify_cache(args.cache_dir)
    for path, probs in problems.items():
        for p in probs:
            print(f"BROKEN {path}: {p}")
    rows = list_cache(args.cache_dir)
    partial = [r for r in rows if r["partial"]]
    busy = 0
    for r in partial:
        if entry_busy(args.cache_dir, r["full_key"]):
            busy += 1
            state = "being written by another process"
        else:
            state = "interrupted: rerun the extraction to resume it, or 'probe cache prune' removes it"
        print(f"PARTIAL {r['path']}: {r['rows']} rows written; {state}")
    n = len(rows) - len(partial)
    line = f"{n - len(problems)} of {n} entries ok"
    if problems:
        line += f"; {len(problems)} broken (remove them with 'probe cache rm --key KEY' and re-extract)"
    if partial:
        line += f"; {len(partial)} partial ({busy} being written)"
    print(line)
    return 1 if problems else 0


def _remove(args) -> int:
    from probe._cache import remove_entry, select_entries
    from probe._checks import check_output_dir
    from probe._errors import UsageError

    given = any(v is not None for v in (args.backbone, args.dataset, args.split, args.key, args.older_than))
    if args.older_than is not None and args.older_than < 0:
        raise UsageError(f"--older-than must be a number of days >= 0; got {args.older_than}")
    if args.action == "rm" and not (given or args.partial):
        raise UsageError("probe cache rm needs a filter (--backbone, --dataset, --split, --key, --partial or "
                         "--older-than DAYS); to empty the whole cache, delete its folder")
    partial = True if args.partial or (args.action == "prune" and args.older_than is None) else None
    if not args.dry_run:
        check_output_dir(args.cache_dir, "--cache-dir")
    rows = select_entries(args.cache_dir, backbone=args.backbone, dataset=args.dataset, split=args.split,
                          key=args.key, partial=partial, older_than_days=args.older_than)
    removed = kept = freed = 0
    for row in rows:
        what = f"{row['path']} ({row['backbone']} {row['dataset']} {row['split']}, {_size(row['size'])})"
        if args.dry_run:
            print(f"would remove {what}")
            continue
        if remove_entry(args.cache_dir, row):
            removed += 1
            freed += row["size"]
            print(f"removed {what}")
        else:
            kept += 1
            print(f"kept {what}: another process is writing it")
    if args.dry_run:
        print(f"{len(rows)} entries would be removed from {args.cache_dir}")
    else:
        print(f"removed {removed} entries ({_size(freed)}) from {args.cache_dir}"
              + (f"; kept {kept} that another process is writing" if kept else ""))
    return 0
