"""A whole study from one TOML file: backbones x datasets x protocols, then the report.

The study file (all tables but ``[[backbones]]`` and ``[[datasets]]`` optional)::

    [study]
    name = "my-study"
    seeds = [0]                   # seeds of the val carve, few-shot draws and fine-tuning
    val_fraction = 0.2            # part of train held out as val when a dataset has none
    select_metric = "top1"        # default val metric that selects hyperparameters and epochs
    device = "auto"
    jobs = 1                      # sweep jobs in parallel

    [[backbones]]
    name = "vit_base_patch16_224.augreg_in21k"   # timm name with tag
    family = "transformer"        # optional override of the derived family
    weights = "ckpt.safetensors"  # optional local file (relative to the study file); or random_init = true
    img_size = 224                # optional: input size for frozen features
    finetune_img_size = 384       # optional: input size for fine-tuning (default img_size)

    [[datasets]]
    spec = "torchvision:Flowers102"
    data_root = "data"            # optional (relative to the study file)
    select_metric = "mean_per_class_acc"   # optional per-dataset override
    img_size = 224                # optional: overrides the backbone's img_size for this dataset

    [extract]                     # how features are computed (see probe extract-features)
    batch_size = 64
    dtype = "float16"

    [[sweeps]]                    # any number; each names probes x taps x shots
    probes = ["logistic", "ridge", "knn", "centroid"]
    taps = ["pooled"]             # "block*" = every block/stage of each backbone (layer-wise curves)
    shots = [0]                   # 0 = all training examples
    grids = { logistic = { C = [0.01, 0.1, 1.0] } }   # optional, per probe

    [finetune]                    # optional: whole-network fine-tuning on the same splits
    modes = ["full"]              # full | partial | lp-ft
    epochs = 10
    lr = 1e-4
    batch_size = 64               # any other keyword of probe.finetune is accepted too

    [pretrain]                    # optional: fine-tune each backbone on a source dataset first and use the
    dataset = "shapes"            # resulting weights for every transfer job (pretrain -> transfer)
    epochs = 3

Input paths in the file (weights, data roots, the paths of imagefolder:, csv: and official-download specs such as
cub200:) are relative to the file; outputs
(cache, results, report) go under the current directory unless given.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ProbeError, UsageError
from ._official import KINDS as OFFICIAL_KINDS
from .vocab import DEFAULT_VAL_FRACTION, FINETUNE_MODES, PROBES

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

_STUDY_KEYS = {"name", "seeds", "val_fraction", "select_metric", "device", "jobs", "description"}
_BACKBONE_KEYS = {"name", "family", "weights", "random_init", "img_size", "finetune_img_size", "seed"}
_DATASET_KEYS = {"spec", "data_root", "select_metric", "img_size", "name"}
_EXTRACT_KEYS = {"batch_size", "workers", "dtype", "skip_bad"}
_SWEEP_KEYS = {"probes", "taps", "shots", "seeds", "grids"}
#: Study-file tap that expands to every block (stage) of each backbone: block0 .. block<n-1>.
ALL_BLOCKS = "block*"
_TOP_KEYS = {"study", "backbones", "datasets", "extract", "sweeps", "finetune", "pretrain"}


@dataclass
class BackboneSpec:
    """One backbone of a study and how its weights are obtained."""

    name: str
    family: str | None = None
    weights: str | None = None
    random_init: bool = False
    img_size: int | None = None
    finetune_img_size: int | None = None
    seed: int = 0  # seed of a random initialisation


@dataclass
class DatasetSpec:
    """One target dataset of a study."""

    spec: str
    data_root: str | None = None
    select_metric: str | None = None
    img_size: int | None = None
    name: str | None = None


@dataclass
class Study:
    """A parsed study file (see the module docstring for its format)."""

    name: str
    backbones: list[BackboneSpec]
    datasets: list[DatasetSpec]
    sweeps: list[dict] = field(default_factory=list)
    finetune: dict | None = None
    pretrain: dict | None = None
    extract: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    val_fraction: float = DEFAULT_VAL_FRACTION
    select_metric: str = "top1"
    device: str = "auto"
    jobs: int = 1
    source: str = "<default>"


@dataclass
class Job:
    """One unit of work of a study: ``pretrain``, ``extract``, ``sweep`` or ``finetune``."""

    kind: str
    backbone: BackboneSpec
    dataset: DatasetSpec | None
    settings: dict = field(default_factory=dict)

    def describe(self) -> str:
        """A short human-readable line: kind, backbone, dataset and the settings that tell jobs apart."""
        where = self.dataset.spec if self.dataset is not None else self.settings.get("dataset", "")
        extra = ""
        if self.kind == "sweep":
            s = self.settings
            extra = f" probes={','.join(s['probes'])} taps={','.join(s['taps'])}"
            if any(k for k in s["shots"]):
                extra += f" shots={','.join(map(str, s['shots']))}"
        elif self.kind in ("finetune", "pretrain"):
            extra = f" mode={self.settings.get('mode', 'full')} seed={self.settings.get('seed', 0)}"
        elif self.kind == "extract":
            extra = f" taps={','.join(self.settings['taps'])}"
        return f"{self.kind:<8} {self.backbone.name} on {where}{extra}"


def _default_study_text() -> str:
    from importlib.resources import files

    return files("probe").joinpath("default_study.toml").read_text()


def load_study(path: str | os.PathLike | None = None) -> Study:
    """Read and validate a study file; ``None`` gives the embedded default study (offline, tiny models).

    Raises
    ------
    UsageError
        For a missing file, invalid TOML, an unknown key (named, with the keys allowed there) or a bad value.
    """
    if path is None:
        text, base, source = _default_study_text(), Path.cwd(), "<default study>"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UsageError(f"study file {path} does not exist; pass a .toml file or no file for the default study")
        text, base, source = p.read_text(), p.resolve().parent, str(p)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"study file {source} is not valid TOML: {exc}") from None
    _check_keys(raw, _TOP_KEYS, source, "the top level")
    head = raw.get("study", {})
    _check_keys(head, _STUDY_KEYS, source, "[study]")
    if not raw.get("backbones"):
        raise UsageError(f"study file {source} names no backbones; add [[backbones]] tables with name = \"...\"")
    if not raw.get("datasets"):
        raise UsageError(f"study file {source} names no datasets; add [[datasets]] tables with spec = \"...\"")
    backbones = []
    for i, b in enumerate(raw["backbones"]):
        _check_keys(b, _BACKBONE_KEYS, source, f"[[backbones]] #{i + 1}")
        if "name" not in b:
            raise UsageError(f"[[backbones]] #{i + 1} in {source} has no name")
        if b.get("weights") and b.get("random_init"):
            raise UsageError(f"backbone {b['name']} in {source} sets both weights and random_init; keep one")
        if b.get("weights"):
            b = {**b, "weights": str(_resolve(base, b["weights"]))}
        backbones.append(BackboneSpec(**b))
    datasets = []
    for i, d in enumerate(raw["datasets"]):
        _check_keys(d, _DATASET_KEYS, source, f"[[datasets]] #{i + 1}")
        if "spec" not in d:
            raise UsageError(f"[[datasets]] #{i + 1} in {source} has no spec")
        d = dict(d)
        kind, sep, arg = d["spec"].partition(":")
        if sep and kind in ("imagefolder", "csv", "parquet", *OFFICIAL_KINDS):
            d["spec"] = f"{kind}:{_resolve(base, arg)}"
        if d.get("data_root"):
            d["data_root"] = str(_resolve(base, d["data_root"]))
        datasets.append(DatasetSpec(**d))
    extract = dict(raw.get("extract", {}))
    _check_keys(extract, _EXTRACT_KEYS, source, "[extract]")
    sweeps = []
    for i, s in enumerate(raw.get("sweeps", [])):
        _check_keys(s, _SWEEP_KEYS, source, f"[[sweeps]] #{i + 1}")
        if not s.get("probes"):
            raise UsageError(f"[[sweeps]] #{i + 1} in {source} names no probes; e.g. probes = [\"logistic\"]")
        sweeps.append({"probes": list(s["probes"]), "taps": list(s.get("taps", ["pooled"])),
                       "shots": [int(k) for k in s.get("shots", [0])], "seeds": s.get("seeds"),
                       "grids": dict(s.get("grids", {}))})
    finetune = raw.get("finetune")
    pretrain = raw.get("pretrain")
    if pretrain is not None and "dataset" not in pretrain:
        raise UsageError(f"[pretrain] in {source} needs dataset = \"...\" (the source dataset)")
    if not sweeps and finetune is None:
        raise UsageError(f"study file {source} has neither [[sweeps]] nor [finetune]: nothing to run")
    study = Study(name=head.get("name", Path(source).stem), backbones=backbones, datasets=datasets, sweeps=sweeps,
                  finetune=dict(finetune) if finetune is not None else None,
                  pretrain=dict(pretrain) if pretrain is not None else None, extract=extract,
                  seeds=[int(s) for s in head.get("seeds", [0])], val_fraction=float(head.get("val_fraction", DEFAULT_VAL_FRACTION)),
                  select_metric=head.get("select_metric", "top1"), device=head.get("device", "auto"),
                  jobs=int(head.get("jobs", 1)), source=source)
    _check_values(study)
    return study


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _check_keys(table: Any, allowed: set[str], source: str, where: str) -> None:
    if not isinstance(table, dict):
        raise UsageError(f"{where} in {source} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"unknown key(s) {unknown} in {where} of {source}; allowed: {', '.join(sorted(allowed))}")


def _check_values(study: Study) -> None:
    from ._taps import parse_taps
    from .vocab import METRICS

    probes_known = PROBES
    for s in study.sweeps:
        bad = [p for p in s["probes"] if p not in probes_known]
        if bad:
            raise UsageError(f"unknown probe(s) {bad} in {study.source}; choose from {', '.join(probes_known)}")
        concrete = [t for t in s["taps"] if t != ALL_BLOCKS]
        if concrete or not s["taps"]:
            parse_taps(concrete)
    for metric in [study.select_metric, *(d.select_metric for d in study.datasets if d.select_metric)]:
        if metric not in METRICS:
            raise UsageError(f"select_metric {metric!r} in {study.source} must be one of {', '.join(METRICS)}")
    if study.finetune is not None:
        bad = [m for m in study.finetune.get("modes", ["full"]) if m not in FINETUNE_MODES]
        if bad:
            raise UsageError(f"unknown fine-tune mode(s) {bad} in {study.source}; use full, partial or lp-ft")


def plan_study(study: Study) -> list[Job]:
    """The study's jobs in the order they run: pretraining, then per backbone x dataset extraction, sweeps and
    fine-tuning. Planning reads nothing but the study (no dataset, no download)."""
    jobs: list[Job] = []
    for bb in study.backbones:
        if study.pretrain is not None:
            jobs.append(Job("pretrain", bb, None, {**study.pretrain, "seed": study.seeds[0]}))
        for ds in study.datasets:
            taps = []
            for s in study.sweeps:
                taps.extend(t for t in s["taps"] if t not in taps)
            if taps:
                jobs.append(Job("extract", bb, ds, {"taps": taps}))
            for s in study.sweeps:
                jobs.append(Job("sweep", bb, ds, {**s, "seeds": s["seeds"] or study.seeds}))
            if study.finetune is not None:
                settings = {k: v for k, v in study.finetune.items() if k != "modes"}
                for mode in study.finetune.get("modes", ["full"]):
                    for seed in study.seeds:
                        jobs.append(Job("finetune", bb, ds, {**settings, "mode": mode, "seed": seed}))
    return jobs


def check_datasets(study: Study, *, out=None) -> list[str]:
    """Open every dataset of the study (index files and image lists, no image decoded, nothing downloaded) and
    print one line each to ``out``: its classes and split sizes, or what is missing.

    Returns
    -------
    list of str
        One line per dataset that cannot be opened (empty when all can).
    """
    from ._datasets import _data_root, open_dataset

    out = out or sys.stdout
    wanted = [(ds.spec, ds.data_root) for ds in study.datasets]
    if study.pretrain is not None:
        wanted.insert(0, (study.pretrain["dataset"], study.pretrain.get("data_root")))
    problems = []
    for spec, data_root in wanted:
        kind, _, arg = spec.partition(":")
        if kind == "hf" and not (_data_root(data_root) / arg).is_dir():
            print(f"dataset {spec}: not on disk; fetched from the Hugging Face hub when the study runs", file=out)
            continue
        try:
            source = open_dataset(spec, data_root=data_root)
        except ProbeError as exc:
            problems.append(str(exc))
            print(f"dataset {spec}: CANNOT BE READ: {exc}", file=out)
            continue
        sizes = ", ".join(f"{s} {len(source.splits[s]):,}" for s in source.split_names)
        print(f"dataset {source.name} ({source.spec}): {len(source.classes)} classes; {sizes}", file=out)
    return problems


@dataclass
class StudyOutcome:
    """What :func:`run_study` did: per job its status and seconds, and where the outputs are."""

    jobs: list[dict]
    results_dir: Path
    report_path: Path | None
    summary: Any = None  # polars DataFrame: one row per backbone x dataset


def run_study(study: Study | str | os.PathLike | None = None, *, cache_dir: str | os.PathLike = "cache",
              results_dir: str | os.PathLike = "results", report_dir: str | os.PathLike | None = "report",
              pretrain_dir: str | os.PathLike = "pretrain", device: str | None = None, jobs: int | None = None,
              workers: int | None = None, progress: bool = True, out=None) -> StudyOutcome:
    """Run every job of a study (extraction through the cache, sweeps, fine-tuning), then the report.

    Work already done is found and skipped (cached features are reused, results files that exist are not
    recomputed), so running the same study again takes seconds. Prints one line per job to ``out`` (stdout).

    Parameters
    ----------
    study : Study, path or None
        A parsed study, a study file, or None for the embedded default study.
    cache_dir, results_dir, report_dir, pretrain_dir : path
        Outputs; ``report_dir=None`` skips the report. Pretraining results and weights go to ``pretrain_dir``
        so that they do not mix with the transfer results.
    device, jobs : optional
        Override the study's device and parallel sweep jobs.
    """
    out = out or sys.stdout
    if not isinstance(study, Study):
        study = load_study(study)
    device = device or study.device
    jobs = jobs or study.jobs
    plan = plan_study(study)
    problems = check_datasets(study, out=out)
    if problems:  # before any work: a missing file should not surface hours into the study
        raise UsageError(f"{len(problems)} dataset(s) of {study.source} cannot be read; first: {problems[0]}")
    print(f"study {study.name}: {len(plan)} jobs, {len(study.backbones)} backbones x {len(study.datasets)} datasets; "
          f"cache {cache_dir}, results {results_dir}", file=out, flush=True)
    pretrained: dict[str, str] = {}  # backbone name -> weights file from the pretrain job
    records = []
    for i, job in enumerate(plan, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(plan)}] {job.describe()} ...", file=out, end=" ", flush=True)
        try:
            status = _run_job(job, study, pretrained, cache_dir=cache_dir, results_dir=results_dir,
                              pretrain_dir=pretrain_dir, device=device, jobs=jobs, workers=workers, progress=progress)
        except ProbeError as exc:
            print("failed", file=out, flush=True)
            raise type(exc)(f"study job {i}/{len(plan)} ({job.describe()}) failed: {exc}") from None
        seconds = time.perf_counter() - t0
        print(f"{status} ({seconds:.1f} s)", file=out, flush=True)
        records.append({"job": job.describe(), "status": status, "seconds": seconds})
    summary = study_summary(results_dir)
    if summary is not None:
        print(_format_table(summary), file=out)
    report_path = None
    if report_dir is not None:
        from ._report import write_report

        report_path = write_report(results_dir, report_dir)
        print(f"report: {report_path}", file=out)
    return StudyOutcome(jobs=records, results_dir=Path(results_dir), report_path=report_path, summary=summary)


def expand_taps(taps: list[str], backbone: str, img_size: int | None = None) -> list[str]:
    """Replace ``block*`` by every block of ``backbone`` (built on the meta device: no weights, no download)."""
    if ALL_BLOCKS not in taps:
        return list(taps)
    import torch

    from ._backbones import _create, check_model_name
    from ._taps import block_count

    check_model_name(backbone)
    with torch.device("meta"):
        model = _create(backbone, pretrained=False, img_size=img_size, num_classes=0)
    blocks = [f"block{i}" for i in range(block_count(model))]
    out = []
    for t in taps:
        for u in (blocks if t == ALL_BLOCKS else [t]):
            if u not in out:
                out.append(u)
    return out


def _weights_for(job: Job, pretrained: dict[str, str]) -> dict:
    bb = job.backbone
    if bb.name in pretrained:
        return {"weights": pretrained[bb.name], "random_init": False}
    return {"weights": bb.weights, "random_init": bb.random_init}


def _run_job(job: Job, study: Study, pretrained: dict[str, str], *, cache_dir, results_dir, pretrain_dir, device,
             jobs, workers, progress) -> str:
    bb, ds = job.backbone, job.dataset
    extract_opts = {k: v for k, v in study.extract.items()}
    if workers is not None:
        extract_opts["workers"] = workers
    if job.kind == "pretrain":
        from ._finetune import finetune

        settings = dict(job.settings)
        source = settings.pop("dataset")
        result = finetune(bb.name, source, weights=bb.weights, random_init=bb.random_init, family=bb.family,
                          img_size=settings.pop("img_size", bb.finetune_img_size or bb.img_size),
                          data_root=settings.pop("data_root", None), cache_dir=cache_dir, results_dir=pretrain_dir,
                          device=device, progress=progress, verbose=False, workers=extract_opts.get("workers"),
                          **_finetune_kwargs(settings, bb))
        if result.weights_path is None:
            raise ProbeError(f"pretraining {bb.name} on {source} produced no weights file")
        pretrained[bb.name] = str(result.weights_path)
        return "skipped (done before)" if result.skipped else f"done, weights {result.weights_path}"
    img_size = ds.img_size or bb.img_size
    if job.kind in ("extract", "sweep"):
        job = Job(job.kind, bb, ds, {**job.settings, "taps": expand_taps(job.settings["taps"], bb.name, img_size)})
    common = dict(img_size=img_size, family=bb.family, data_root=ds.data_root, cache_dir=cache_dir, device=device,
                  progress=progress, **_weights_for(job, pretrained))
    if job.kind == "extract":
        from ._extract import extract_features

        entries = extract_features(bb.name, ds.spec, taps=tuple(job.settings["taps"]), seed=bb.seed,
                                   **common, **extract_opts)
        reused = all(e.reused for e in entries.values())
        return "cached" if reused else f"extracted {sum(e.rows for e in entries.values())} images"
    if job.kind == "sweep":
        from ._sweep import sweep_cached

        s = job.settings
        before = _count_results(results_dir)
        sweep_cached(bb.name, ds.spec, probes=s["probes"], taps=s["taps"], shots=s["shots"], seeds=s["seeds"],
                     grids=s["grids"] or None, select_metric=ds.select_metric or study.select_metric,
                     val_fraction=study.val_fraction, results_dir=results_dir, jobs=jobs, seed=bb.seed,
                     **common, **extract_opts)
        made = _count_results(results_dir) - before
        return f"{made} result files written" if made else "skipped (done before)"
    if job.kind == "finetune":
        from ._finetune import finetune

        settings = dict(job.settings)
        ft_size = settings.pop("img_size", None) or bb.finetune_img_size or img_size
        result = finetune(bb.name, ds.spec, select_metric=ds.select_metric or study.select_metric,
                          val_fraction=study.val_fraction, results_dir=results_dir, verbose=False,
                          workers=extract_opts.get("workers"),
                          **{**common, "img_size": ft_size}, **_finetune_kwargs(settings, bb))
        if result.skipped:
            return "skipped (done before)"
        acc = result.test_metrics["top1"] if result.test_metrics else float("nan")
        return f"done, best epoch {result.best_epoch}, test top1 {acc:.3f}"
    raise AssertionError(job.kind)


def _finetune_kwargs(settings: dict, bb: BackboneSpec) -> dict:
    import inspect

    from ._finetune import finetune

    allowed = set(inspect.signature(finetune).parameters) - {"backbone", "dataset"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise UsageError(f"unknown fine-tune setting(s) {unknown}; see 'probe finetune --help' for the options")
    if "crop_scale" in settings:
        settings["crop_scale"] = tuple(settings["crop_scale"])
    return settings


def _count_results(results_dir) -> int:
    root = Path(results_dir)
    return sum(1 for _ in root.rglob("*.parquet")) if root.is_dir() else 0


def study_summary(results_dir: str | os.PathLike):
    """One row per (backbone, dataset): the selected test top-1 of every probe (pooled tap, all shots, mean over
    seeds) and of every fine-tuning mode. Returns None when there are no results."""
    import json

    import polars as pl

    from .results import scan_results

    try:
        frame = scan_results(results_dir).filter(pl.col("selected") & (pl.col("split") == "test")).collect()
    except UsageError:
        return None
    if frame.is_empty():
        return None
    frame = frame.with_columns(
        pl.when(pl.col("probe") == "finetune")
        .then(pl.lit("finetune:") + pl.col("params").map_elements(lambda p: json.loads(p).get("mode", "full"),
                                                                    return_dtype=pl.Utf8))
        .otherwise(pl.col("probe")).alias("protocol"))
    frame = frame.filter((pl.col("tap").is_in(["pooled", "-"])) & (pl.col("shots") == 0))
    if frame.is_empty():
        return None
    wide = (frame.group_by(["backbone", "family", "dataset", "protocol"]).agg(pl.col("top1").mean())
            .pivot(on="protocol", index=["backbone", "family", "dataset"], values="top1")
            .sort(["dataset", "family", "backbone"]))
    return wide


def _format_table(frame) -> str:
    cols = frame.columns
    rows = [[("-" if v is None else f"{100 * v:.1f}" if isinstance(v, float) else str(v)) for v in r]
            for r in frame.iter_rows()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["test top-1 (%) of the selected setting, pooled features, all shots, mean over seeds:",
             "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
