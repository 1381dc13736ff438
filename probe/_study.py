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
    family = "transformer"        # optional override of the families table (probe.family_of)
    weights = "ckpt.safetensors"  # optional local file (relative to the study file); or random_init = true
    img_size = 224                # optional: input size for frozen features
    finetune_img_size = 384       # optional: input size for fine-tuning (default img_size)

    [[datasets]]
    spec = "torchvision:Flowers102"
    data_root = "data"            # optional (relative to the study file)
    select_metric = "mean_per_class_acc"   # optional per-dataset override
    img_size = 224                # optional: overrides the backbone's img_size for this dataset
    test_fraction = 0.2           # optional: carve a test split from train when the dataset has none
    tasks = ["classification"]    # optional: every task studied on it, any of classification (default),
                                  # segmentation, depth (the [[sweeps]] of these tasks, and fine-tuning for
                                  # classification), identification, verification, regression (the face and
                                  # continuous-target protocols on pooled features, below); e.g.
                                  # ["segmentation", "depth"] for shapes, ["identification", "regression"] for FG-NET
    # the dataset's protocol settings, shared by its tasks:
    cv = 5                        # optional: K-fold cross-validation (a dataset without a test split)
    cv_group = "subject"          # optional: keep each person in one fold (cv = people: leave-one-person-out)
    pairs = "lfw/pairs.txt"       # optional (verification): LFW pairs file, relative to the study file
    whiten = 128                  # optional (verification): PCA whitening to this many components, fitted per
                                  # fold on the other folds' images
    probes = ["ridge", "knn"]     # optional: the probes of its identification / verification / regression tasks
                                  # (each runs the listed probes it takes; default: cosine for identification and
                                  # verification, ridge and knn for regression), instead of the [[sweeps]]
                                  # with [finetune], a regression task is also fine-tuned with a regression
                                  # head (under the dataset's cv)

    [extract]                     # how features are computed (see probe extract-features)
    batch_size = 64
    dtype = "float16"

    [[sweeps]]                    # any number; each names probes x taps x shots
    probes = ["logistic", "ridge", "knn", "centroid"]
    taps = ["pooled"]             # "block*" = every block/stage of each backbone (layer-wise curves)
    shots = [0]                   # 0 = all training examples
    grids = { logistic = { C = [0.01, 0.1, 1.0] } }   # optional, per probe
    task = "classification"       # optional: segmentation / depth run the linear dense probe on the patch tap,
                                  # on the datasets whose tasks include it

    [multitask]                   # optional: dense multi-task fine-tuning on one dataset: the joint run of
    dataset = "shapes"            # `tasks` (one backbone, one head per task) and each task alone, per backbone
    tasks = ["segmentation", "depth"]
    backbones = ["test_vit"]      # optional: a subset of [[backbones]] (default: all)
    epochs = 1                    # any probe finetune setting (head, task_weighting...), as in [finetune]

    [finetune]                    # optional: whole-network fine-tuning on the same splits
    modes = ["full"]              # full | partial | lp-ft
    epochs = 10
    lr = 1e-4
    refit = true                  # retrain the chosen epoch count on train+val before test (default)
    batch_size = 64               # any setting of probe finetune (FinetuneConfig), plus img_size, accum_steps;
                                  # select_metric and val_fraction come from [study] (shared with the sweeps)

    [pretrain]                    # optional: fine-tune each backbone on a source dataset first and use the
    dataset = "shapes"            # resulting weights for every transfer job (pretrain -> transfer)
    epochs = 3                    # (no refit on train+val unless refit = true: the weights are the product)

    [executor]                    # optional: resources of `probe run --executor slurm` (and local), see
    partition = "gpu"             # probe._executor; one job array per stage, logs in --log-dir
    gpus = 1                      # GPUs per job (extraction runs one rank per GPU)
    cpus = 8                      # CPUs per task
    mem_gb = 64
    timeout_min = 240             # time limit per job; a job that reaches it is requeued and resumes
    account = "my-project"        # also: qos, array_parallelism, setup = ["module load cuda"]
    extra = { constraint = "a100" }   # any other sbatch option

Input paths in the file (weights, data roots, the paths of imagefolder:, csv: and official-download specs such as
cub200:) are relative to the file; outputs
(cache, results, report) go under the current directory unless given.

Validation: :func:`load_study` checks the whole file against one declared schema (:func:`study_schema`: type,
range and allowed values of every key; ``[finetune]``/``[pretrain]`` derived from
:class:`probe._finetune.FinetuneConfig`), so ``--plan`` already rejects a bad value. A single value where a list
is expected is a one-element list (``seeds = 0`` is ``seeds = [0]``, ``probes = "knn"`` is ``["knn"]``).
:func:`check_study` then checks backbone names (``--plan`` too) and, before the first job, weights files,
datasets and grid keys. Every error is one line naming the table, the key and the fix.
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
from ._schema import MISSING, TASK, WORKERS, Setting, check_setting, toml_value
from .vocab import (DEFAULT_TASK, DEFAULT_VAL_FRACTION, DENSE_GRID_KEYS, DENSE_PROBES, FINETUNE_MODES, PROBES,
                    TASK_DEFAULT_PROBES, TASK_METRICS, TASK_PROBES)

#: Tasks of a dataset whose probes are the dataset's own (``probes``), run on pooled features by probe._tasks.
FACE_TASKS = ("identification", "verification", "regression")
#: The dense probes and the keys of their grids.
_DENSE_PROBES = {name: DENSE_GRID_KEYS for name in DENSE_PROBES}

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

#: Study-file tap that expands to every block (stage) of each backbone: block0 .. block<n-1>.
ALL_BLOCKS = "block*"
#: Top-level tables: name -> whether it is an array of tables ([[name]]).
_TABLES = {"study": False, "backbones": True, "datasets": True, "extract": False, "sweeps": True, "finetune": False,
           "pretrain": False, "executor": False, "multitask": False}


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
    test_fraction: float = 0.0  # part of train carved off as test when the dataset has no test split
    tasks: list[str] = field(default_factory=lambda: [DEFAULT_TASK])  # every task studied (probe.vocab.TASKS)
    cv: int | None = None  # folds of cross-validation (for a dataset without a test split)
    cv_group: str | None = None  # "subject": each person's images in one fold
    pairs: str | None = None  # verification pairs file (LFW pairs.txt); default: drawn from the identities
    whiten: int | None = None  # verification: PCA whitening components, fitted on the other folds' images
    probes: list[str] | None = None  # probes of the face / regression tasks (default probe.vocab.TASK_DEFAULT_PROBES)

    def task_probes(self, task: str) -> list[str]:
        """The probes a face / regression task of this dataset runs: the listed ones it takes, else its defaults."""
        if self.probes is None:
            return list(TASK_DEFAULT_PROBES[task])
        return [p for p in self.probes if p in TASK_PROBES[task]]


@dataclass
class Study:
    """A parsed study file (see the module docstring for its format)."""

    name: str
    backbones: list[BackboneSpec]
    datasets: list[DatasetSpec]
    sweeps: list[dict] = field(default_factory=list)
    finetune: dict | None = None
    pretrain: dict | None = None
    multitask: dict | None = None
    extract: dict = field(default_factory=dict)
    executor: dict = field(default_factory=dict)  # resources of --executor slurm/local (probe._executor)
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
        if self.dataset is not None and self.dataset.cv and self.kind == "sweep" and _folded(self.settings):
            where += f" [cv {self.dataset.cv}]"
        extra = ""
        if self.kind == "sweep":
            s = self.settings
            extra = f" probes={','.join(s['probes'])} taps={','.join(s['taps'])}"
            if s.get("task", DEFAULT_TASK) != DEFAULT_TASK:
                extra += f" task={s['task']}"
            if any(k for k in s["shots"]):
                extra += f" shots={','.join(map(str, s['shots']))}"
        elif self.kind in ("finetune", "pretrain"):
            extra = f" mode={self.settings.get('mode', 'full')} seed={self.settings.get('seed', 0)}"
            if "tasks" in self.settings:
                extra += f" tasks={'+'.join(self.settings['tasks'])}"
        elif self.kind == "extract":
            extra = f" taps={','.join(self.settings['taps'])}"
        return f"{self.kind:<8} {self.backbone.name} on {where}{extra}"


def _folded(settings: dict) -> bool:
    """Whether a sweep job learns per fold, so that its dataset's cv applies (retrieval and verification have
    their own protocols: leave-one-image-out or gallery/query, and the folds of the pairs)."""
    task = settings.get("task", DEFAULT_TASK)
    return task in (DEFAULT_TASK, "regression") or (task == "identification" and settings["probes"] != ["cosine"])


def _default_study_text() -> str:
    from importlib.resources import files

    return files("probe").joinpath("default_study.toml").read_text()


def study_schema() -> dict[str, dict[str, Setting]]:
    """The one declaration of a study file: table -> key -> :class:`probe._schema.Setting` (type, range, choices).

    ``[finetune]`` and ``[pretrain]`` take the fields of :class:`probe._finetune.FinetuneConfig` (the same
    declaration ``probe finetune``'s flags are checked against), so the three cannot drift. A single value where
    a list is expected is a one-element list (``seeds = 0`` is ``seeds = [0]``).
    """
    from ._cv import CV_GROUPS
    from ._executor import executor_schema
    from ._finetune import ACCUM_STEPS, config_settings
    from .vocab import COSINE, FAMILIES, METRICS, TASK_METRICS

    size = Setting("int", lo=1)
    config = config_settings()
    # [finetune] runs every mode of `modes` on the study's splits: the carve and the metric are the study's
    finetune = {k: v for k, v in config.items() if k not in _FINETUNE_ELSEWHERE}
    return {
        "study": {"name": Setting("str"), "description": Setting("str"),
                  "seeds": Setting("int", many=True, nonempty=True, lo=0, default=[0]),
                  "val_fraction": Setting("float", lo=0, lo_open=True, hi=1, hi_open=True,
                                          default=DEFAULT_VAL_FRACTION),
                  "select_metric": Setting("str", choices=METRICS, default="top1"),
                  "device": Setting("str", default="auto"), "jobs": Setting("int", lo=1, default=1)},
        "backbones": {"name": Setting("str", default="vit_base_patch16_224.augreg_in21k"),
                      "family": Setting("str", choices=FAMILIES), "weights": Setting("str", default="ckpt.safetensors"),
                      "random_init": Setting("bool", default=False), "img_size": size, "finetune_img_size": size,
                      "seed": Setting("int", lo=0, default=0)},
        "datasets": {"spec": Setting("str", default="imagefolder:data/pets"), "data_root": Setting("str"),
                     "select_metric": Setting("str", choices=(*METRICS, *TASK_METRICS["regression"])),
                     "img_size": size, "name": Setting("str"),
                     "test_fraction": Setting("float", lo=0, hi=1, hi_open=True, default=0.0),
                     "tasks": Setting("str", many=True, nonempty=True, choices=TASK.choices,
                                      default=[DEFAULT_TASK]),
                     "cv": Setting("int", lo=2, default=5), "cv_group": Setting("str", choices=CV_GROUPS),
                     "pairs": Setting("str", default="pairs.txt"), "whiten": Setting("int", lo=1, default=128),
                     "probes": Setting("str", many=True, nonempty=True, choices=(COSINE, *PROBES),
                                       default=["cosine"])},
        "extract": {"batch_size": Setting("int", lo=1, default=64), "workers": Setting("int", lo=0),
                    "dtype": Setting("str", choices=("float16", "float32"), default="float16"),
                    "skip_bad": Setting("bool", default=False),
                    "precision": Setting("str", choices=("auto", "fp32", "bf16"), default="auto"),
                    "allow_overlap": Setting("bool", default=False)},
        "sweeps": {"probes": Setting("str", many=True, nonempty=True, choices=(*PROBES, *_DENSE_PROBES),
                                       default=["logistic"]),
                   "taps": Setting("str", many=True, nonempty=True, default=["pooled"]),
                   "shots": Setting("int", many=True, nonempty=True, lo=0, default=[0]),
                   "seeds": Setting("int", many=True, nonempty=True, lo=0, default=[0]),
                   "grids": Setting("table"), "task": TASK},
        "finetune": {"modes": Setting("str", many=True, nonempty=True, choices=FINETUNE_MODES, default=["full"]),
                     "img_size": size, "accum_steps": ACCUM_STEPS, **finetune},
        "pretrain": {"dataset": Setting("str", default="shapes"), "data_root": Setting("str"), "img_size": size,
                     "accum_steps": ACCUM_STEPS, **config},
        "executor": executor_schema(),
        # dense multi-task fine-tuning on one dataset: the joint run of `tasks` and each task alone
        "multitask": {"dataset": Setting("str", default="shapes"), "data_root": Setting("str"), "img_size": size,
                      "backbones": Setting("str", many=True, nonempty=True, default=["test_vit"]),
                      "accum_steps": ACCUM_STEPS,
                      **{k: v for k, v in config.items() if k not in ("mode", "select_metric", "val_fraction")},
                      "tasks": Setting("str", many=True, nonempty=True, choices=("segmentation", "depth"),
                                       default=["segmentation", "depth"])},
    }


#: [finetune] keys that belong elsewhere, with the fix.
_FINETUNE_ELSEWHERE = {
    "mode": "list the modes as modes = [\"full\"] (full, partial, lp-ft)",
    "select_metric": "set select_metric in [study] (or per dataset in [[datasets]]): sweeps and fine-tuning "
                     "select on the same metric",
    "val_fraction": "set val_fraction in [study]: sweeps and fine-tuning share the same val carve",
    "test_fraction": "set test_fraction per dataset in [[datasets]]: sweeps and fine-tuning share the same test "
                     "carve",
    "tasks": "dense and multi-task fine-tuning has its own table: [multitask] with dataset and tasks",
    "head": "dense heads are set in [multitask]",
    "task_weighting": "multi-task loss weights are set in [multitask]",
}
#: How a table-valued key is written (for errors).
_TABLE_EXAMPLES = {"extra": '{ constraint = "a100", exclude = "node7" }'}
#: Keys each table must have.
_REQUIRED = {"backbones": ("name",), "datasets": ("spec",), "sweeps": ("probes",), "pretrain": ("dataset",),
             "multitask": ("dataset", "tasks")}


def load_study(path: str | os.PathLike | None = None) -> Study:
    """Read and validate a study file; ``None`` gives the embedded default study (offline, tiny models).

    Every table and key is checked against :func:`study_schema` here, before any job runs (``--plan``
    included): types, ranges, allowed values, unknown keys. Names of backbones and the dataset paths are
    checked by :func:`check_study` just before the first job.

    Raises
    ------
    UsageError
        One line naming the table, the key, what it must be and how to write it.
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
    schema = study_schema()
    unknown = sorted(set(raw) - set(_TABLES))
    if unknown:
        raise UsageError(f"unknown table(s) {unknown} in {source}; tables are "
                         f"{', '.join(f'[[{t}]]' if many else f'[{t}]' for t, many in _TABLES.items())}")
    tables = {name: _read_table(raw, name, schema[name], source) for name in _TABLES}

    head = tables["study"][0] if tables["study"] else {}
    if not tables["backbones"]:
        raise UsageError(f"study file {source} names no backbones; add [[backbones]] tables with name = \"...\"")
    if not tables["datasets"]:
        raise UsageError(f"study file {source} names no datasets; add [[datasets]] tables with spec = \"...\"")
    backbones = []
    for i, b in enumerate(tables["backbones"]):
        if b.get("weights") and b.get("random_init"):
            raise UsageError(f"[[backbones]] #{i + 1} ({b['name']}) in {source} sets both weights and random_init; "
                             "keep one")
        if b.get("weights"):
            b = {**b, "weights": str(_resolve(base, b["weights"]))}
        backbones.append(BackboneSpec(**b))
    datasets = []
    for i, d in enumerate(tables["datasets"]):
        d["spec"] = _resolve_spec(base, d["spec"])
        if d.get("data_root"):
            d["data_root"] = str(_resolve(base, d["data_root"]))
        if d.get("pairs"):
            d["pairs"] = str(_resolve(base, d["pairs"]))
        _check_task_keys(d, f"[[datasets]] #{i + 1} in {source}")
        datasets.append(DatasetSpec(**d))
    sweeps = []
    for i, s in enumerate(tables["sweeps"]):
        where = f"[[sweeps]] #{i + 1} in {source}"
        taps = s.get("taps", ["pooled"])
        concrete = [t for t in taps if t != ALL_BLOCKS]
        if concrete:
            from ._taps import parse_taps

            try:
                parse_taps(concrete)
            except UsageError as exc:
                raise UsageError(f"{where}: taps: {exc}; \"{ALL_BLOCKS}\" is every block") from None
        task = s.get("task", DEFAULT_TASK)
        if task in ("segmentation", "depth"):
            bad = [p for p in s["probes"] if p != "linear"] + [t for t in taps if t != "patch"]
            if bad:
                raise UsageError(f"{where}: a {task} sweep runs probes = [\"linear\"] on taps = [\"patch\"]; "
                                 f"got {bad}")
        elif "linear" in s["probes"]:
            raise UsageError(f"{where}: probe 'linear' is the dense probe; add task = \"segmentation\" or "
                             "\"depth\", or use logistic, ridge, knn, centroid")
        sweeps.append({"probes": s["probes"], "taps": taps, "shots": s.get("shots", [0]), "seeds": s.get("seeds"),
                       "grids": _check_grids(s.get("grids", {}), where, task), "task": task})
    finetune = tables["finetune"][0] if tables["finetune"] else None
    pretrain = tables["pretrain"][0] if tables["pretrain"] else None
    for name, table in (("finetune", finetune), ("pretrain", pretrain)):
        if table is not None:
            _check_finetune_rules(table, name, source)
    if pretrain is not None and pretrain.get("data_root"):
        pretrain["data_root"] = str(_resolve(base, pretrain["data_root"]))
    if pretrain is not None:
        pretrain["dataset"] = _resolve_spec(base, pretrain["dataset"])
    multitask = tables["multitask"][0] if tables["multitask"] else None
    if multitask is not None:
        multitask["dataset"] = _resolve_spec(base, multitask["dataset"])
        if multitask.get("data_root"):
            multitask["data_root"] = str(_resolve(base, multitask["data_root"]))
        names = {b.name for b in backbones}
        unknown = [n for n in multitask.get("backbones", []) if n not in names]
        if unknown:
            raise UsageError(f"[multitask] in {source}: backbones {unknown} are not in [[backbones]]; use some of "
                             f"{', '.join(sorted(names))}")
        if len(multitask["tasks"]) < 2:
            raise UsageError(f"[multitask] in {source}: tasks needs two dense tasks to train jointly, e.g. "
                             'tasks = ["segmentation", "depth"]')
        _check_finetune_rules({**multitask, "modes": ["full"]}, "multitask", source)
    if not sweeps and finetune is None and not any(set(d.tasks) & set(FACE_TASKS) for d in datasets):
        raise UsageError(f"study file {source} has neither [[sweeps]] nor [finetune] (nor a dataset with tasks "
                         "identification, verification or regression): nothing to run")
    return Study(name=head.get("name", Path(source).stem), backbones=backbones, datasets=datasets, sweeps=sweeps,
                 finetune=finetune, pretrain=pretrain, multitask=multitask,
                 extract=tables["extract"][0] if tables["extract"] else {},
                 executor=tables["executor"][0] if tables["executor"] else {},
                 seeds=head.get("seeds", [0]), val_fraction=head.get("val_fraction", DEFAULT_VAL_FRACTION),
                 select_metric=head.get("select_metric", "top1"), device=head.get("device", "auto"),
                 jobs=head.get("jobs", 1), source=source)


def _check_task_keys(d: dict, where: str) -> None:
    """The rules between a dataset's tasks and protocol settings (each key's own type and range are the schema's)."""
    tasks = d.get("tasks", [DEFAULT_TASK])
    if d.get("cv_group") and not d.get("cv"):
        raise UsageError(f"{where}: cv_group = \"{d['cv_group']}\" groups the folds of cv; add cv = K (the number "
                         "of people for leave-one-person-out)")
    for key in ("pairs", "whiten"):
        if d.get(key) is not None and "verification" not in tasks:
            raise UsageError(f"{where}: {key} is for verification; add \"verification\" to tasks or drop {key}")
    own = [t for t in tasks if t in FACE_TASKS]
    if d.get("probes") and not own:
        raise UsageError(f"{where}: probes are those of the identification, verification and regression tasks; "
                         "classification and dense tasks take their probes from [[sweeps]]")
    spec = DatasetSpec(spec=d["spec"], tasks=tasks, probes=d.get("probes"))
    if d.get("probes"):
        unused = [p for p in d["probes"] if not any(p in TASK_PROBES[t] for t in own)]
        if unused:
            raise UsageError(f"{where} probes: {unused} are not probes of {', '.join(own)}; use some of "
                             f"{', '.join(dict.fromkeys(p for t in own for p in TASK_PROBES[t]))}")
        for t in own:
            if not spec.task_probes(t):
                raise UsageError(f"{where} probes: none of {d['probes']} is a probe of {t}; add one of "
                                 f"{', '.join(TASK_PROBES[t])}")
    learned = [p for p in spec.task_probes("identification") if p != "cosine"] if "identification" in own else []
    if learned and not d.get("cv"):
        raise UsageError(f"{where}: identity classifiers ({', '.join(learned)}) are scored under cross-validation; "
                         "add cv = K, or list only \"cosine\" for leave-one-image-out retrieval")
    if learned and d.get("cv_group"):
        raise UsageError(f"{where}: identity classifiers ({', '.join(learned)}) cannot be scored with cv_group = "
                         f"\"{d['cv_group']}\" (a held-out person is never in the training fold); put them in a "
                         "dataset entry of their own without cv_group")


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _resolve_spec(base: Path, spec: str) -> str:
    """A dataset spec whose path part (imagefolder:, csv:, parquet:, nyuv2:, fgnet: and the official downloads) is taken
    relative to the study file."""
    kind, sep, arg = spec.partition(":")
    if sep and kind in ("imagefolder", "csv", "parquet", "nyuv2", "fgnet", *OFFICIAL_KINDS):
        return f"{kind}:{_resolve(base, arg)}"
    return spec


def _read_table(raw: dict, name: str, schema: dict[str, Setting], source: str) -> list[dict]:
    """The checked tables called ``name`` (a list, empty when absent), values in canonical form."""
    many = _TABLES[name]
    value = raw.get(name)
    if value is None:
        return []
    shape = f"[[{name}]]" if many else f"[{name}]"
    if many and not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
        raise UsageError(f"{name} in {source} must be an array of tables: write each one as {shape} followed by "
                         "its keys")
    if not many and not isinstance(value, dict):
        raise UsageError(f"{name} in {source} must be a table: write {shape} followed by its keys")
    out = []
    for i, table in enumerate(value if many else [value]):
        where = f"{shape}" + (f" #{i + 1}" if many else "")
        unknown = sorted(set(table) - set(schema))
        for key in unknown:
            if name == "datasets" and key == "task":  # the one tasks key lists every task of a dataset
                value = toml_value(table[key])
                raise UsageError(f"{where} in {source}: task = {value} is no longer a dataset key; use tasks = "
                                 f"[{value}] (one list of every task of the dataset)")
            if name == "finetune" and key in _FINETUNE_ELSEWHERE:
                raise UsageError(f"{where} in {source} cannot set {key}: {_FINETUNE_ELSEWHERE[key]}")
            import difflib

            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"unknown key {key!r} in {where} of {source}; {hint}allowed: {', '.join(sorted(schema))}")
        for key in _REQUIRED.get(name, ()):
            if key not in table:
                example = schema[key].default
                raise UsageError(f"{where} in {source} has no {key}; add {key} = {toml_value(example)}")
        checked = {}
        for key, v in table.items():
            setting = schema[key]
            if setting.kind == "table":
                example = _TABLE_EXAMPLES.get(key, "{ logistic = { C = [0.1, 1.0] } }")
                if not isinstance(v, dict) or (key == "extra" and not all(
                        isinstance(x, (str, int)) and not isinstance(x, bool) for x in v.values())):
                    raise UsageError(f"{where} {key} in {source} must be a table"
                                     f"{' of strings or integers' if key == 'extra' else ''}, e.g. {key} = {example}")
                checked[key] = v
                continue
            example = (f"{key} = true (or false)" if setting.kind == "bool"
                       else f"{key} = {toml_value(_example(setting))}")
            checked[key] = check_setting(v, setting, f"{where} {key} in {source}", example=example)
        out.append(checked)
    return out


def _example(setting: Setting):
    if setting.default is not None and setting.default is not MISSING:
        return setting.default
    if setting.choices:
        value = setting.choices[0]
    elif setting.kind == "bool":
        value = True
    elif setting.kind == "str":
        value = "..."
    else:
        value = max(1, setting.lo or 0) if setting.kind == "int" else (setting.lo or 0) + 0.5
    return [value] * (setting.length or 1) if setting.many else value


def _check_grids(grids: dict, where: str, task: str = DEFAULT_TASK) -> dict:
    """``grids = { probe = { param = [values] } }``: known probes, tables of value lists (a value is a list of
    one). Parameter names are checked against the probes by :func:`check_study` (the dense probe's here)."""
    out = {}
    known = tuple(_DENSE_PROBES) if task in ("segmentation", "depth") else PROBES
    for probe_name, grid in grids.items():
        if probe_name not in known:
            raise UsageError(f"{where}: grids names unknown probe {probe_name!r}; {task} probes are "
                             f"{', '.join(known)}")
        bad = sorted(set(grid) - set(_DENSE_PROBES[probe_name])) if probe_name in _DENSE_PROBES and isinstance(
            grid, dict) else []
        if bad:
            raise UsageError(f"{where}: grids.{probe_name}: {bad} are not settings of the {probe_name} dense probe; "
                             f"use {', '.join(_DENSE_PROBES[probe_name])}")
        if not isinstance(grid, dict):
            raise UsageError(f"{where}: grids.{probe_name} must be a table of value lists, e.g. "
                             f"grids = {{ {probe_name} = {{ C = [0.1, 1.0] }} }}")
        out[probe_name] = {}
        for param, values in grid.items():
            values = values if isinstance(values, list) else [values]
            if not values or not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values):
                raise UsageError(f"{where}: grids.{probe_name}.{param} must be a non-empty list of numbers; got "
                                 f"{toml_value(values)}")
            out[probe_name][param] = values
    return out


def _check_finetune_rules(table: dict, name: str, source: str) -> None:
    """The rules between [finetune] / [pretrain] keys, checked on a config built from the table."""
    from ._finetune import FinetuneConfig, check_config_rules

    fields = {k: v for k, v in table.items() if k in FinetuneConfig.__dataclass_fields__}
    for mode in table.get("modes", [fields.get("mode", "full")]):
        cfg = FinetuneConfig(**{**fields, "mode": mode})
        try:
            check_config_rules(cfg, name=lambda key: key)
        except UsageError as exc:
            raise UsageError(f"[{name}] in {source}: {exc}") from None


def check_study(study: Study, *, data: bool = True) -> None:
    """What the schema cannot see, checked before the first job: backbone names (timm, with a did-you-mean),
    and with ``data`` the weights files, every dataset (opened: paths, manifests, classes) and the grid keys.

    Raises
    ------
    UsageError
        One line naming the table, the key and the fix.
    """
    from ._backbones import check_model_name

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
    if any(s["grids"] for s in study.sweeps):
        import inspect

        from .probes import PROBES as ESTIMATORS

        for i, s in enumerate(study.sweeps):
            for name, grid in s["grids"].items():
                if name in _DENSE_PROBES:
                    continue  # checked by _check_grids
                params = set(inspect.signature(ESTIMATORS[name]).parameters) - {"device"}
                bad = sorted(set(grid) - params)
                if bad:
                    raise UsageError(f"[[sweeps]] #{i + 1} grids.{name} in {where}: {bad} are not parameters of the "
                                     f"{name} probe; use {', '.join(sorted(params)) or 'none (it has no grid)'}")


def plan_study(study: Study) -> list[Job]:
    """The study's jobs in the order they run: pretraining, then per backbone x dataset extraction, sweeps and
    fine-tuning. Planning reads nothing but the study (no dataset, no download)."""
    jobs: list[Job] = []
    for bb in study.backbones:
        if study.pretrain is not None:
            jobs.append(Job("pretrain", bb, None, {**study.pretrain, "seed": study.seeds[0]}))
        for ds in study.datasets:
            sweeps = [s for s in study.sweeps if s.get("task", DEFAULT_TASK) in ds.tasks]  # the dataset's tasks
            # the face and continuous-target tasks run their own probes on pooled features (probe._tasks)
            own = [t for t in ds.tasks if t in FACE_TASKS]
            taps = ["pooled"] if own else []
            for s in sweeps:
                taps.extend(t for t in s["taps"] if t not in taps)
            if taps:
                jobs.append(Job("extract", bb, ds, {"taps": taps}))
            for s in sweeps:
                if ds.cv and any(s["shots"]):
                    continue  # few-shot draws are not cross-validated
                jobs.append(Job("sweep", bb, ds, {**s, "seeds": s["seeds"] or study.seeds}))
            for t in own:
                jobs.append(Job("sweep", bb, ds, {"task": t, "probes": ds.task_probes(t), "taps": ["pooled"],
                                                  "shots": [0], "seeds": study.seeds, "grids": {}}))
            jobs += _regression_finetunes(study, bb, ds)
            if study.finetune is not None and DEFAULT_TASK in ds.tasks and not ds.cv:
                settings = {k: v for k, v in study.finetune.items() if k != "modes"}
                for mode in study.finetune.get("modes", ["full"]):
                    for seed in study.seeds:
                        jobs.append(Job("finetune", bb, ds, {**settings, "mode": mode, "seed": seed}))
        mt = study.multitask
        if mt is not None and bb.name in mt.get("backbones", [bb.name]):
            ds = DatasetSpec(spec=mt["dataset"], data_root=mt.get("data_root"))
            settings = {k: v for k, v in mt.items() if k not in ("dataset", "data_root", "backbones", "tasks")}
            for tasks in [list(mt["tasks"])] + [[t] for t in mt["tasks"]]:  # jointly, then each task alone
                for seed in study.seeds:
                    jobs.append(Job("finetune", bb, ds, {**settings, "tasks": tasks, "seed": seed}))
    return jobs


def _regression_finetunes(study: Study, bb: BackboneSpec, ds: DatasetSpec) -> list[Job]:
    """``[finetune]`` on a regression dataset: a regression head (``tasks = ["regression"]``) per mode and seed,
    cross-validated as the dataset's regression sweep is (its ``cv``, ``cv_group``). lp-ft, whose head starts from
    a logistic probe, is left out. The other face tasks are not fine-tuned."""
    if study.finetune is None or "regression" not in ds.tasks:
        return []
    settings = {k: v for k, v in study.finetune.items() if k != "modes"}
    settings.update(tasks=["regression"], **({"cv": ds.cv, "cv_group": ds.cv_group} if ds.cv else {}))
    return [Job("finetune", bb, ds, {**settings, "mode": mode, "seed": seed})
            for mode in study.finetune.get("modes", ["full"]) if mode != "lp-ft" for seed in study.seeds]


def check_datasets(study: Study, *, out=None) -> list[str]:
    """Open every dataset of the study (index files and image lists, no image decoded, nothing downloaded) and,
    when ``out`` is given, print one line each to it: its classes and split sizes, or what is missing.

    Returns
    -------
    list of str
        One line per dataset that cannot be opened, naming its table in the study file (empty when all can).
    """
    from ._datasets import _data_root, open_dataset

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
        targets = [f"{len(source.classes)} classes"] if "classification" in source.tasks else []
        targets += [f"{len(source.segmentation_classes)} segmentation classes" if t == "segmentation" else t
                    for t in source.tasks if t != "classification"]
        say(f"dataset {source.name} ({source.spec}): {', '.join(targets)}; {sizes}")
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
              workers: int | None = None, progress: bool = True, keep_going: bool = False,
              out=None) -> StudyOutcome:
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
    keep_going : bool
        When a job fails, run the remaining ones (jobs that need the failed one are skipped), write the report
        of what succeeded, list the failures on stderr, then raise a ProbeError. Without it the first failure
        stops the study.

    Raises
    ------
    UsageError
        Before any job: a bad study, an output folder that cannot be written, an unknown backbone name, a
        missing dataset or weights file.
    ProbeError
        A failed job (with ``keep_going``: after the others ran, naming how many failed).
    """
    from ._checks import check_output_dirs

    out = out or sys.stdout
    if not isinstance(study, Study):
        study = load_study(study)
    # Everything that can be checked is checked before the first job (pretraining takes minutes).
    check_output_dirs({"--cache-dir": cache_dir, "--results-dir": results_dir, "--report-dir": report_dir,
                       "--pretrain-dir": pretrain_dir if study.pretrain is not None else None})
    check_study(study)
    from ._runtime import resolve_device

    device = device or study.device
    resolve_device(device)
    jobs = check_setting(jobs or study.jobs, Setting("int", lo=1), "--jobs", example="--jobs 2")
    workers = check_setting(workers, WORKERS, "--workers", example="--workers 4")
    from . import _distributed

    if _distributed.init(device) and not _distributed.is_main():
        out = open(os.devnull, "w")  # under torchrun rank 0 speaks for the group
    plan = plan_study(study)
    print(f"study {study.name}: {len(plan)} jobs, {len(study.backbones)} backbones x {len(study.datasets)} datasets; "
          f"cache {cache_dir}, results {results_dir}", file=out, flush=True)
    records, failures = _run_plan(plan, study, cache_dir=cache_dir, results_dir=results_dir,
                                  pretrain_dir=pretrain_dir, device=device, jobs=jobs, workers=workers,
                                  progress=progress, keep_going=keep_going, out=out)
    summary, report_path = _distributed.on_main(lambda: _summarize(results_dir, report_dir, out, study.source))
    if failures:
        _raise_failures(failures, len(plan))
    return StudyOutcome(jobs=records, results_dir=Path(results_dir), report_path=report_path, summary=summary)


def _summarize(results_dir, report_dir, out, source: str = "<default>"):
    """The console summary (printed to ``out``) and the reports (markdown, then HTML); returns (summary frame,
    report.md's path). ``source`` is the study file (``<default>``: the packaged default study)."""
    summary = study_summary(results_dir)
    if summary is not None:
        print(_format_table(summary), file=out)
    report_path = None
    if report_dir is not None:
        from importlib.resources import files

        from ._report import write_report
        from ._report_html import write_html_report

        report_path = write_report(results_dir, report_dir)
        print(f"report: {report_path}", file=out)
        default = source == "<default>"
        study_file = Path(str(files("probe").joinpath("default_study.toml"))) if default else Path(source)
        html = write_html_report(results_dir, report_dir, study=study_file,
                                 command="probe run" + ("" if default else f" {source}"))
        print(f"report: {html}", file=out)
    return summary, report_path


def _run_plan(plan: list[Job], study: Study, *, keep_going: bool, out, **options) -> tuple[list[dict], list[dict]]:
    """Run the jobs in order, one status line each; returns (records, failures).

    Without ``keep_going`` the first failure raises, naming the job. With it, a failure is recorded and the
    jobs that need the failed one (every job of a backbone whose pretraining failed; the sweeps of a failed
    extraction) are skipped rather than run on the wrong weights or retried.
    """
    pretrained: dict[str, str] = {}  # backbone name -> weights file from the pretrain job
    records, failures = [], []
    failed: set[tuple] = set()  # ("pretrain", backbone) and ("extract", backbone, dataset spec)
    for i, job in enumerate(plan, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(plan)}] {job.describe()} ...", file=out, end=" ", flush=True)
        blocked = _blocked_by(job, failed)
        if blocked:
            print(f"skipped ({blocked} failed)", file=out, flush=True)
            records.append({"job": job.describe(), "status": f"skipped ({blocked} failed)", "seconds": 0.0})
            continue
        try:
            status = _run_job_on_ranks(job, study, pretrained, **options)
        except ProbeError as exc:
            print("failed", file=out, flush=True)
            if not keep_going:
                raise type(exc)(f"study job {i}/{len(plan)} ({job.describe()}) failed: {exc}") from None
            failed.add(("pretrain", job.backbone.name) if job.kind == "pretrain"
                       else (job.kind, job.backbone.name, job.dataset.spec if job.dataset else ""))
            failures.append({"index": i, "job": job.describe(), "error": str(exc)})
            records.append({"job": job.describe(), "status": "failed", "seconds": time.perf_counter() - t0})
            continue
        seconds = time.perf_counter() - t0
        print(f"{status} ({seconds:.1f} s)", file=out, flush=True)
        records.append({"job": job.describe(), "status": status, "seconds": seconds})
    return records, failures


def _run_job_on_ranks(job: Job, study: Study, pretrained: dict[str, str], **options) -> str:
    """:func:`_run_job`; under torchrun extraction and fine-tuning (pretraining included) are shared by the ranks
    and a sweep runs on rank 0 alone (the others wait for it)."""
    from . import _distributed

    if job.kind != "sweep" or not _distributed.active():
        return _run_job(job, study, pretrained, **options)
    status, weights = _distributed.on_main(lambda: (_run_job(job, study, pretrained, **options), pretrained))
    pretrained.update(weights)
    return status


def _blocked_by(job: Job, failed: set[tuple]) -> str:
    """The failed job this one needs (``"pretrain"``, ``"extract"``), or ``""``."""
    if ("pretrain", job.backbone.name) in failed:
        return "pretrain"
    if job.kind == "sweep" and ("extract", job.backbone.name, job.dataset.spec) in failed:
        return "extract"
    return ""


def _raise_failures(failures: list[dict], n_jobs: int) -> None:
    """List the failed jobs on stderr, then raise one ProbeError line that counts them."""
    print(f"probe: {len(failures)} of {n_jobs} study jobs failed:", file=sys.stderr)
    for f in failures:
        print(f"  [{f['index']}/{n_jobs}] {f['job']}: {f['error']}", file=sys.stderr)
    raise ProbeError(f"{len(failures)} of {n_jobs} study jobs failed (listed above); fix them and rerun: finished "
                     "jobs are skipped")


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
        # pretraining produces weights, not a compared test score: no refit unless the study asks for it
        settings.setdefault("refit", False)
        result = finetune(bb.name, source, weights=bb.weights, random_init=bb.random_init, init_seed=bb.seed,
                          family=bb.family,
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
        task = s.get("task", DEFAULT_TASK)
        select_metric = ds.select_metric or study.select_metric
        task_args = {}
        if task in FACE_TASKS or (ds.cv and task == DEFAULT_TASK):  # the dataset's protocol settings
            task_args = dict(cv=ds.cv, cv_group=ds.cv_group) if _folded(s) else {}
            if task == "verification":
                task_args.update(pairs=ds.pairs, whiten=ds.whiten)
        if select_metric not in TASK_METRICS[task]:
            select_metric = None  # the task's own default (miou, rmse, mae, ...)
        sweep_cached(bb.name, ds.spec, probes=s["probes"], taps=s["taps"], shots=s["shots"], seeds=s["seeds"],
                     grids=s["grids"] or None, select_metric=select_metric, task=task,
                     val_fraction=study.val_fraction, test_fraction=ds.test_fraction, results_dir=results_dir,
                     jobs=jobs, seed=bb.seed, **task_args,
                     **common, **extract_opts)
        made = _count_results(results_dir) - before
        return f"{made} result files written" if made else "skipped (done before)"
    if job.kind == "finetune":
        from ._finetune import finetune

        settings = dict(job.settings)
        ft_size = settings.pop("img_size", None) or bb.finetune_img_size or img_size
        # the job's seed carves val and drives training; the backbone's own seed is its random initialisation,
        # so a random-init fine-tune starts from the weights whose frozen features the sweeps probed
        select_metric = ds.select_metric or study.select_metric
        if select_metric not in TASK_METRICS[DEFAULT_TASK]:  # a regression's own (mae): the fine-tune's default
            select_metric = "top1"
        result = finetune(bb.name, ds.spec, select_metric=select_metric,
                          val_fraction=study.val_fraction, test_fraction=ds.test_fraction, init_seed=bb.seed,
                          allow_overlap=bool(extract_opts.get("allow_overlap", False)),
                          results_dir=results_dir, verbose=False,
                          workers=extract_opts.get("workers"),
                          **{**common, "img_size": ft_size}, **_finetune_kwargs(settings, bb))
        if result.skipped:
            return "skipped (done before)"
        scores = ", ".join(f"{task} {metric} {m[metric]:.3f}" if task != "classification" else f"top1 {m[metric]:.3f}"
                           for task, m in result.task_metrics.items() for metric in list(m)[:1])
        chosen = (f"epochs chosen per fold {result.fold_epochs}" if result.fold_epochs
                  else f"best epoch {result.best_epoch}")
        return f"done, {chosen}" + (f", test {scores}" if scores else "")
    raise AssertionError(job.kind)


def _finetune_kwargs(settings: dict, bb: BackboneSpec) -> dict:
    """Keyword arguments of :func:`probe.finetune` from a job's (schema-checked) settings."""
    return dict(settings)


def _count_results(results_dir) -> int:
    root = Path(results_dir)
    return sum(1 for _ in root.rglob("*.parquet")) if root.is_dir() else 0


def study_summary(results_dir: str | os.PathLike):
    """One row per (dataset, backbone configuration, selection metric): the test top-1 of every protocol on pooled
    features (``tap`` pooled, fine-tuning) at shots = 0, averaged over seeds (:mod:`probe.analysis`).

    Columns come in a fixed order: dataset, configuration, family, selected on, then the probes in
    :data:`probe.vocab.PROBES` order and the fine-tuning modes. A column is one protocol; when one probe ran under
    several protocols (e.g. two val fractions), each gets its own column, suffixed with its protocol id. Returns
    None when there are no results.
    """
    import polars as pl

    from . import analysis

    try:
        jobs = analysis.job_table(results_dir)
    except UsageError:
        return None
    jobs = (jobs.filter(pl.col("tap").is_in(["pooled", "-"]) & (pl.col("shots") == 0)
                        & (pl.col("task") == "classification")) if jobs.height else jobs)
    if jobs.is_empty():
        return None
    protocols = analysis.aggregate_seeds(jobs, metrics=["top1"])
    # one column per protocol: the method's name, with the protocol id when a method ran under several protocols
    ids = protocols.select("method", "protocol").unique()
    shared = set(ids.group_by("method").len().filter(pl.col("len") > 1)["method"].to_list())
    protocols = protocols.with_columns(
        pl.when(pl.col("method").is_in(sorted(shared)))
        .then(pl.concat_str([pl.col("method"), pl.lit(" ["), pl.col("protocol").str.slice(0, 12), pl.lit("]")]))
        .otherwise(pl.col("method")).alias("column"))
    protocols = protocols.with_columns(pl.col("top1").alias("value"),
                                       pl.col("n").alias("seeds"))
    index = ["dataset", "configuration", "family", "selected on"]
    wide = (protocols.rename({"config_label": "configuration", "select_metric": "selected on"})
            .pivot(on="column", index=index, values="value", aggregate_function=None))
    order = {p: i for i, p in enumerate(PROBES)}
    columns = sorted((c for c in wide.columns if c not in index),
                     key=lambda c: (c.startswith("finetune"), order.get(c.split(" ")[0], len(order)), c))
    renamed = protocols.rename({"config_label": "configuration", "select_metric": "selected on"})
    seeds = (renamed.group_by(index).agg(pl.col("seeds").min().alias("lo"), pl.col("seeds").max().alias("hi"))
             .select(*index, pl.when(pl.col("lo") == pl.col("hi")).then(pl.col("lo").cast(pl.Utf8))
                     .otherwise(pl.concat_str([pl.col("lo"), pl.lit("-"), pl.col("hi")])).alias("seeds")))
    return (wide.join(seeds, on=index, how="left").select(*index, "seeds", *columns)
            .sort("dataset", "configuration", "selected on"))


def _format_table(frame) -> str:
    cols = frame.columns
    rows = [[("-" if v is None else f"{100 * v:.1f}" if isinstance(v, float) else str(v)) for v in r]
            for r in frame.iter_rows()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["test top-1 (%) of the selected setting, pooled features, shots = 0, mean over seeds "
             "(one row per backbone configuration):",
             "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
