"""What the schema cannot see, checked before a study's first job: backbone names, weights files, the datasets
(opened, nothing downloaded) and the keys of probe grids."""

from __future__ import annotations

from pathlib import Path

from .. import tasks as _tasks
from .._errors import ProbeError, UsageError
from .file import _DENSE_PROBES, Study


def check_study(study: Study, *, data: bool = True) -> None:
    """What the schema cannot see, checked before the first job: backbone names (timm, with a did-you-mean),
    and with ``data`` the weights files, every dataset (opened: paths, manifests, classes) and the grid keys.

    Raises
    ------
    UsageError
        One line naming the table, the key and the fix.
    """
    from .._backbones import check_model_name

    where = study.source
    for i, bb in enumerate(study.backbones):
        try:
            check_model_name(bb.name)
        except UsageError as exc:
            raise UsageError(f"[[backbones]] #{i + 1} name in {where}: {exc}") from None
    if not data:
        return
    for i, bb in enumerate(study.backbones):
        if bb.weights and not Path(bb.weights).is_file():
            raise UsageError(f"[[backbones]] #{i + 1} ({bb.name}) weights in {where}: file {bb.weights} does not "
                             "exist; fix the path (relative to the study file) or use random_init = true")
    problems = check_datasets(study)
    if problems:
        raise UsageError(problems[0])
    if study.similarity is not None:
        _check_similarity_split(study)
    if any(s["grids"] for s in study.sweeps):
        import inspect

        from ..probes import PROBES as ESTIMATORS

        for i, s in enumerate(study.sweeps):
            for name, grid in s["grids"].items():
                if name in _DENSE_PROBES:
                    continue  # checked by _check_grids
                params = set(inspect.signature(ESTIMATORS[name]).parameters) - {"device"}
                bad = sorted(set(grid) - params)
                if bad:
                    raise UsageError(f"[[sweeps]] #{i + 1} grids.{name} in {where}: {bad} are not parameters of the "
                                     f"{name} probe; use {', '.join(sorted(params)) or 'none (it has no grid)'}")


def _check_similarity_split(study: Study) -> None:
    """The split ``[similarity]`` compares exists in each dataset it runs on (the classification datasets)."""
    from .._datasets import open_dataset

    split = study.similarity["split"]
    for i, d in enumerate(study.datasets):
        if _tasks.DEFAULT not in d.tasks:
            continue
        try:
            source = open_dataset(d.spec, data_root=d.data_root)
        except ProbeError:
            continue  # not on disk yet (a hub dataset): extraction says so
        if split not in source.splits:
            raise UsageError(f"[similarity] split in {study.source}: [[datasets]] #{i + 1} ({source.name}) has no "
                             f"{split!r} split (it has {', '.join(source.split_names)}); set split = "
                             f"\"{source.split_names[-1]}\"")


def check_datasets(study: Study, *, out=None) -> list[str]:
    """Open every dataset of the study (index files and image lists, no image decoded, nothing downloaded) and,
    when ``out`` is given, print one line each to it: its classes and split sizes, or what is missing.

    Returns
    -------
    list of str
        One line per dataset that cannot be opened, naming its table in the study file (empty when all can).
    """
    from .._datasets import _data_root, open_dataset

    wanted = [(f"[[datasets]] #{i + 1} spec", d.spec, d.data_root) for i, d in enumerate(study.datasets)]
    if study.pretrain is not None:
        wanted.insert(0, ("[pretrain] dataset", study.pretrain["dataset"], study.pretrain.get("data_root")))
    def say(line: str) -> None:
        if out is not None:
            print(line, file=out)

    problems = []
    for label, spec, data_root in wanted:
        kind, _, arg = spec.partition(":")
        if kind == "hf" and not (_data_root(data_root) / arg).is_dir():
            say(f"dataset {spec}: not on disk; fetched from the Hugging Face hub when the study runs")
            continue
        try:
            source = open_dataset(spec, data_root=data_root)
        except ProbeError as exc:
            problems.append(f"{label} in {study.source}: {exc}")
            say(f"dataset {spec}: CANNOT BE READ: {exc}")
            continue
        sizes = ", ".join(f"{s} {len(source.splits[s]):,}" for s in source.split_names)
        targets = [f"{len(source.classes)} classes"] if _tasks.DEFAULT in source.tasks else []
        targets += [f"{len(source.segmentation_classes)} segmentation classes" if t == "segmentation" else t
                    for t in source.tasks if t != _tasks.DEFAULT]
        say(f"dataset {source.name} ({source.spec}): {', '.join(targets)}; {sizes}")
    return problems

