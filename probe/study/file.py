"""The study file: its format, the one declaration of its keys (:func:`study_schema`) and :func:`load_study`.

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
    eval_on = ["digits-c?corruption=blur&severity=3"]   # optional (classification): shifted sets sharing its
                                  # class names; the probe selected and refitted here (and the fine-tune's chosen
                                  # epoch) is scored once on each (rows with eval_dataset = its name)
    shared_classes = false        # optional: score an eval_on set with extra classes on the shared ones only
    probes = ["ridge", "knn"]     # optional: the probes of its identification / verification / regression tasks
                                  # (each runs the listed probes it takes; default: cosine for identification and
                                  # verification, ridge and knn for regression), instead of the [[sweeps]]
                                  # with [finetune], a regression task is also fine-tuned with a regression
                                  # head (under the dataset's cv)

    [extract]                     # how features are computed (see probe extract-features)
    batch_size = 64
    dtype = "float16"
    reuse_pixels = false          # true: decode each split once for all backbones with the same input geometry

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

    [transfer]                    # optional: transferability scores (probe.transfer) of every backbone
    scores = "default"            # configuration on the train split of each dataset with a classification or
    taps = ["pooled"]             # regression task, per task and tap, after extraction ("default": every score
                                  # of the task that the backbone can give; or a list such as ["logme", "sfda"])

    [similarity]                  # optional: representation similarity (probe.similarity) on each dataset with
    taps = ["pooled"]             # a classification task, after extraction: configuration x configuration per tap,
    blocks = false                # block x block per pair of backbones (blocks = true), frozen vs fine-tuned
    finetuned = false             # block by block (finetuned = true: needs [finetune]; its first mode and seed)
    measures = ["cka", "cka_debiased", "mutual_knn"]
    k = 10                        # neighbours of mutual_knn
    groups = 32                   # random groups of images of the CKA jackknife
    n_boot = 1000                 # bootstrap resamples of the mutual_knn interval
    split = "test"                # the split whose images are compared

    [executor]                    # optional: resources of `probe run --executor slurm` (and local), see
    partition = "gpu"             # probe.study.executor; one job array per stage, logs in --log-dir
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
:class:`probe._finetune.FinetuneConfig`; the tasks, probes and evaluation options a dataset or sweep names asked
of the task registry, :mod:`probe.tasks`), so ``--plan`` already rejects a bad value. A single value where a list
is expected is a one-element list (``seeds = 0`` is ``seeds = [0]``, ``probes = "knn"`` is ``["knn"]``).
:func:`probe.study.check_study` then checks backbone names (``--plan`` too) and, before the first job, weights
files, datasets and grid keys. Every error is one line naming the table, the key and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import tasks as _tasks
from .._errors import UsageError
from .._official import KINDS as OFFICIAL_KINDS
from .._schema import MISSING, Setting, check_setting, toml_value
from ..vocab import COSINE, DEFAULT_VAL_FRACTION, DENSE_GRID_KEYS, DENSE_PROBES, FINETUNE_MODES

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
           "pretrain": False, "executor": False, "multitask": False, "transfer": False, "similarity": False}


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
    tasks: list[str] = field(default_factory=lambda: [_tasks.DEFAULT])  # every task studied (probe.tasks.names())
    cv: int | None = None  # folds of cross-validation (for a dataset without a test split)
    cv_group: str | None = None  # "subject": each person's images in one fold
    pairs: str | None = None  # verification pairs file (LFW pairs.txt); default: drawn from the identities
    whiten: int | None = None  # verification: PCA whitening components, fitted on the other folds' images
    probes: list[str] | None = None  # probes of its tasks that run per dataset (Task.dataset_probes)
    eval_on: list[str] = field(default_factory=list)  # shifted sets scored once by the selected models
    shared_classes: bool = False  # score an eval_on set with classes this dataset lacks on the shared ones

    def task_probes(self, task: str) -> list[str]:
        """The probes a task of this dataset runs when it runs per dataset (:attr:`probe.tasks.Task.dataset_probes`):
        the listed ones it takes, else its default probes."""
        t = _tasks.get(task)
        if self.probes is None:
            return list(t.default_probes)
        return [p for p in self.probes if p in t.probes]


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
    transfer: dict | None = None  # [transfer]: scores ("default" or names), taps
    similarity: dict | None = None  # [similarity]: taps, blocks, finetuned, measures, k, groups, n_boot, split
    extract: dict = field(default_factory=dict)
    executor: dict = field(default_factory=dict)  # resources of --executor slurm/local (probe.study.executor)
    seeds: list[int] = field(default_factory=lambda: [0])
    val_fraction: float = DEFAULT_VAL_FRACTION
    select_metric: str = "top1"
    device: str = "auto"
    jobs: int = 1
    source: str = "<default>"


def _default_study_text() -> str:
    from importlib.resources import files

    return files("probe").joinpath("default_study.toml").read_text()


def study_schema() -> dict[str, dict[str, Setting]]:
    """The one declaration of a study file: table -> key -> :class:`probe._schema.Setting` (type, range, choices).

    ``[finetune]`` and ``[pretrain]`` take the fields of :class:`probe._finetune.FinetuneConfig` (the same
    declaration ``probe finetune``'s flags are checked against), so the three cannot drift. A single value where
    a list is expected is a one-element list (``seeds = 0`` is ``seeds = [0]``).
    """
    from .._cv import CV_GROUPS
    from .._finetune import ACCUM_STEPS, config_settings
    from .._finetune.config import FINETUNE_TASKS
    from ..vocab import FAMILIES

    everything = _tasks.all_tasks()
    per_dataset = [t for t in everything if t.dataset_probes]
    size = Setting("int", lo=1)
    config = config_settings()
    # [finetune] runs every mode of `modes` on the study's splits: the carve and the metric are the study's
    finetune = {k: v for k, v in config.items() if k not in _FINETUNE_ELSEWHERE}
    return {
        "study": {"name": Setting("str"), "description": Setting("str"),
                  "seeds": Setting("int", many=True, nonempty=True, lo=0, default=[0]),
                  "val_fraction": Setting("float", lo=0, lo_open=True, hi=1, hi_open=True,
                                          default=DEFAULT_VAL_FRACTION),
                  "select_metric": Setting("str", choices=_tasks.get(None).selectable(), default="top1"),
                  "device": Setting("str", default="auto"), "jobs": Setting("int", lo=1, default=1)},
        "backbones": {"name": Setting("str", default="vit_base_patch16_224.augreg_in21k"),
                      "family": Setting("str", choices=FAMILIES), "weights": Setting("str", default="ckpt.safetensors"),
                      "random_init": Setting("bool", default=False), "img_size": size, "finetune_img_size": size,
                      "seed": Setting("int", lo=0, default=0)},
        "datasets": {"spec": Setting("str", default="imagefolder:data/pets"), "data_root": Setting("str"),
                     "select_metric": Setting("str", choices=_union(t.selectable() for t in everything)),
                     "img_size": size, "name": Setting("str"),
                     "test_fraction": Setting("float", lo=0, hi=1, hi_open=True, default=0.0),
                     "tasks": Setting("str", many=True, nonempty=True, choices=_tasks.names(),
                                      default=[_tasks.DEFAULT]),
                     "cv": Setting("int", lo=2, default=5), "cv_group": Setting("str", choices=CV_GROUPS),
                     "pairs": Setting("str", default="pairs.txt"), "whiten": Setting("int", lo=1, default=128),
                     "probes": Setting("str", many=True, nonempty=True,
                                       choices=_union(t.probes for t in per_dataset), default=[COSINE]),
                     "eval_on": Setting("str", many=True, nonempty=True,
                                        default=["digits-c?corruption=blur&severity=3"]),
                     "shared_classes": Setting("bool", default=False)},
        "extract": {"batch_size": Setting("int", lo=1, default=64), "workers": Setting("int", lo=0),
                    "dtype": Setting("str", choices=("float16", "float32"), default="float16"),
                    "skip_bad": Setting("bool", default=False),
                    "precision": Setting("str", choices=("auto", "fp32", "bf16"), default="auto"),
                    "pixels": Setting("str", choices=("pil", "gpu"), default="pil"),
                    "reuse_pixels": Setting("bool", default=False), "compile": Setting("bool", default=False),
                    "allow_overlap": Setting("bool", default=False)},
        "sweeps": {"probes": Setting("str", many=True, nonempty=True, default=["logistic"],
                                     choices=_union(t.probes for t in everything if not t.dataset_probes)),
                   "taps": Setting("str", many=True, nonempty=True, default=["pooled"]),
                   "shots": Setting("int", many=True, nonempty=True, lo=0, default=[0]),
                   "seeds": Setting("int", many=True, nonempty=True, lo=0, default=[0]),
                   "grids": Setting("table"),
                   "task": Setting("str", choices=_tasks.names(), default=_tasks.DEFAULT)},
        "finetune": {"modes": Setting("str", many=True, nonempty=True, choices=FINETUNE_MODES, default=["full"]),
                     "img_size": size, "accum_steps": ACCUM_STEPS, **finetune},
        "pretrain": {"dataset": Setting("str", default="shapes"), "data_root": Setting("str"), "img_size": size,
                     "accum_steps": ACCUM_STEPS, **config},
        "executor": _executor_table(),
        # dense multi-task fine-tuning on one dataset: the joint run of `tasks` and each task alone
        "multitask": {"dataset": Setting("str", default="shapes"), "data_root": Setting("str"), "img_size": size,
                      "backbones": Setting("str", many=True, nonempty=True, default=["test_vit"]),
                      "accum_steps": ACCUM_STEPS,
                      **{k: v for k, v in config.items() if k not in ("mode", "select_metric", "val_fraction")},
                      "tasks": Setting("str", many=True, nonempty=True, default=["segmentation", "depth"],
                                       choices=tuple(t.name for t in everything
                                                     if t.dense and t.name in FINETUNE_TASKS))},
        "transfer": _transfer_table(),
        "similarity": _similarity_table(),
    }


#: Tasks whose datasets the transferability scores read (probe.transfer.score_backbone).
TRANSFER_TASKS = ("classification", "regression")
#: The value of [transfer] scores that asks for every score of a task the backbone can give.
DEFAULT_SCORES = "default"


def _transfer_table() -> dict[str, Setting]:
    """The ``[transfer]`` table: transferability scores (:mod:`probe.transfer`) as study jobs."""
    from ..transfer import SCORES

    return {"scores": Setting("str", many=True, nonempty=True, choices=(DEFAULT_SCORES, *SCORES),
                              default=[DEFAULT_SCORES]),
            "taps": Setting("str", many=True, nonempty=True, default=["pooled"])}


def _similarity_table() -> dict[str, Setting]:
    """The ``[similarity]`` table: representation similarity (:mod:`probe.similarity`) as study jobs."""
    from ..similarity import DEFAULT_K, DEFAULT_N_BOOT, JACKKNIFE_GROUPS, MEASURES

    return {"taps": Setting("str", many=True, nonempty=True, default=["pooled"]),
            "blocks": Setting("bool", default=False),      # block x block per pair of backbones
            "finetuned": Setting("bool", default=False),   # frozen vs fine-tuned block i ([finetune] needed)
            "measures": Setting("str", many=True, nonempty=True, choices=MEASURES, default=list(MEASURES)),
            "k": Setting("int", lo=1, default=DEFAULT_K),  # neighbours per image of mutual_knn
            "groups": Setting("int", lo=2, default=JACKKNIFE_GROUPS),  # groups of images of the CKA jackknife
            "n_boot": Setting("int", lo=1, default=DEFAULT_N_BOOT),  # resamples of the mutual_knn interval
            "split": Setting("str", default="test")}      # the split whose images are compared


def _union(groups) -> tuple[str, ...]:
    """The names of several tuples, each once, in first-seen order."""
    return tuple(dict.fromkeys(name for group in groups for name in group))


def _executor_table() -> dict[str, Setting]:
    """The ``[executor]`` table: Slurm resources of ``probe run --executor slurm|local``
    (:mod:`probe.study.executor`)."""
    return {
        "partition": Setting("str", default="gpu"),
        "account": Setting("str", default="my-project"),
        "qos": Setting("str", default="normal"),
        "gpus": Setting("int", lo=0, default=1),           # GPUs per job; extraction runs one rank per GPU
        "cpus": Setting("int", lo=1, default=8),           # CPUs per task
        "mem_gb": Setting("int", lo=1, default=64),        # memory per job, GB
        "timeout_min": Setting("int", lo=1, default=240),  # time limit per job, minutes (then requeued)
        "array_parallelism": Setting("int", lo=1, default=64),  # array tasks running at once
        "setup": Setting("str", many=True, default=["module load cuda"]),  # shell lines before each job
        "extra": Setting("table"),  # any other sbatch option, e.g. { constraint = "a100", exclude = "node7" }
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
        if d.get("eval_on"):
            d["eval_on"] = [_resolve_spec(base, e) for e in d["eval_on"]]
        _check_task_keys(d, f"[[datasets]] #{i + 1} in {source}")
        datasets.append(DatasetSpec(**d))
    sweeps = []
    for i, s in enumerate(tables["sweeps"]):
        where = f"[[sweeps]] #{i + 1} in {source}"
        taps = s.get("taps", ["pooled"])
        concrete = [t for t in taps if t != ALL_BLOCKS]
        if concrete:
            from .._taps import parse_taps

            try:
                parse_taps(concrete)
            except UsageError as exc:
                raise UsageError(f"{where}: taps: {exc}; \"{ALL_BLOCKS}\" is every block") from None
        task = s.get("task", _tasks.DEFAULT)
        _check_sweep_task(_tasks.get(task), s["probes"], taps, where)
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
    transfer = tables["transfer"][0] if tables["transfer"] else None
    if transfer is not None:
        transfer = _check_transfer(transfer, datasets, source)
    similarity = tables["similarity"][0] if tables["similarity"] else None
    if similarity is not None:
        similarity = _check_similarity(similarity, backbones, datasets, finetune, source)
    per_dataset = [t.name for t in _tasks.all_tasks() if t.dataset_probes]
    if not sweeps and finetune is None and not any(set(d.tasks) & set(per_dataset) for d in datasets):
        raise UsageError(f"study file {source} has neither [[sweeps]] nor [finetune] (nor a dataset with tasks "
                         f"{', '.join(per_dataset)}): nothing to run")
    return Study(name=head.get("name", Path(source).stem), backbones=backbones, datasets=datasets, sweeps=sweeps,
                 finetune=finetune, pretrain=pretrain, multitask=multitask, transfer=transfer,
                 similarity=similarity, extract=tables["extract"][0] if tables["extract"] else {},
                 executor=tables["executor"][0] if tables["executor"] else {},
                 seeds=head.get("seeds", [0]), val_fraction=head.get("val_fraction", DEFAULT_VAL_FRACTION),
                 select_metric=head.get("select_metric", "top1"), device=head.get("device", "auto"),
                 jobs=head.get("jobs", 1), source=source)


def _check_feature_taps(taps: list[str], where: str) -> list[str]:
    """Taps of [transfer] / [similarity]: known names, each an [N, D] feature (not patch tokens)."""
    from .._taps import parse_taps

    if ALL_BLOCKS in taps:
        raise UsageError(f"{where}: taps: \"{ALL_BLOCKS}\" is for [[sweeps]]; name the taps (pooled, cls, mean, "
                         "block<i>)" + ("; blocks = true compares every block" if "similarity" in where else ""))
    try:
        parse_taps(taps)
    except UsageError as exc:
        raise UsageError(f"{where}: taps: {exc}") from None
    bad = [t for t in taps if t in ("patch", "patch16", "logits")]
    if bad:
        raise UsageError(f"{where}: taps {bad} are not [N, D] features; use pooled, cls, mean or block<i>")
    return list(dict.fromkeys(taps))


def _check_transfer(table: dict, datasets: list[DatasetSpec], source: str) -> dict:
    """``[transfer]``: "default" alone or score names, taps, and a dataset whose tasks the scores read."""
    where = f"[transfer] in {source}"
    scores = table.get("scores", [DEFAULT_SCORES])
    if DEFAULT_SCORES in scores and len(scores) > 1:
        raise UsageError(f"{where}: scores = \"{DEFAULT_SCORES}\" is every score; drop it or the names "
                         f"({', '.join(s for s in scores if s != DEFAULT_SCORES)})")
    if not any(set(d.tasks) & set(TRANSFER_TASKS) for d in datasets):
        raise UsageError(f"{where}: the scores read {' or '.join(TRANSFER_TASKS)} labels and no dataset has those "
                         "tasks; add one to a dataset's tasks or drop [transfer]")
    return {"scores": DEFAULT_SCORES if scores == [DEFAULT_SCORES] else list(scores),
            "taps": _check_feature_taps(table.get("taps", ["pooled"]), where)}


def _check_similarity(table: dict, backbones: list[BackboneSpec], datasets: list[DatasetSpec],
                      finetune: dict | None, source: str) -> dict:
    """``[similarity]``: what it compares exists (two backbones, or a fine-tune; a classification dataset)."""
    from ..similarity import DEFAULT_K, DEFAULT_N_BOOT, JACKKNIFE_GROUPS, MEASURES

    where = f"[similarity] in {source}"
    out = {"taps": _check_feature_taps(table.get("taps", ["pooled"]), where),
           "blocks": table.get("blocks", False), "finetuned": table.get("finetuned", False),
           "measures": list(dict.fromkeys(table.get("measures", MEASURES))), "k": table.get("k", DEFAULT_K),
           "groups": table.get("groups", JACKKNIFE_GROUPS), "n_boot": table.get("n_boot", DEFAULT_N_BOOT),
           "split": table.get("split", "test")}
    if out["finetuned"] and finetune is None:
        raise UsageError(f"{where}: finetuned = true compares each backbone with its fine-tuned weights; add a "
                         "[finetune] table or set finetuned = false")
    if len({b.name for b in backbones}) < 2 and not out["finetuned"]:
        raise UsageError(f"{where}: comparing backbones needs two or more [[backbones]]; add one, or set "
                         "finetuned = true to compare a backbone with its fine-tuned weights")
    if not any(_tasks.DEFAULT in d.tasks for d in datasets):
        raise UsageError(f"{where}: similarity is computed on datasets with the {_tasks.DEFAULT} task and none has "
                         "it; add one or drop [similarity]")
    return out


def _check_sweep_task(task, probes: list[str], taps: list[str], where: str) -> None:
    """A ``[[sweeps]]`` table's probes and taps against its task (the registry's :class:`probe.tasks.Task`)."""
    if task.dataset_probes:
        return  # such a task runs the dataset's own probes; a sweep table of it keeps the probes it names
    wrong = [p for p in probes if p not in task.probes]
    if wrong:
        owners = [t for t in _tasks.all_tasks() if wrong[0] in t.probes and not t.dataset_probes]
        kind = "the dense probe" if owners and all(t.dense for t in owners) else "a probe"
        also = f" of {', '.join(t.name for t in owners)}; add task = \"{owners[0].name}\"" if owners else ""
        raise UsageError(f"{where}: probe {wrong[0]!r} is {kind}{also}, or use {', '.join(task.probes)} "
                         f"(the probes of {task.name})")
    if task.dense:
        bad = [t for t in taps if t not in task.default_taps]
        if bad:
            raise UsageError(f"{where}: a {task.name} sweep runs probes = {toml_value(list(task.probes))} on "
                             f"taps = {toml_value(list(task.default_taps))}; got {bad}")


def _check_task_keys(d: dict, where: str) -> None:
    """The rules between a dataset's tasks and its protocol settings, asked of each task in the registry (each
    key's own type and range are the schema's)."""
    tasks = [_tasks.get(t) for t in d.get("tasks", [_tasks.DEFAULT])]
    if d.get("cv_group") and not d.get("cv"):
        raise UsageError(f"{where}: cv_group = \"{d['cv_group']}\" groups the folds of cv; add cv = K (the number "
                         "of people for leave-one-person-out)")
    if d.get("eval_on") and d.get("cv"):
        raise UsageError(f"{where}: eval_on scores the models refitted on the dataset's splits; a cross-validated "
                         "dataset has one per fold: drop cv or eval_on")
    for key in ("cv", "cv_group", "pairs", "whiten", "eval_on"):
        if d.get(key) is not None and not any(key in t.options for t in tasks):
            owners = [t.name for t in _tasks.all_tasks() if key in t.options]
            raise UsageError(f"{where}: {key} is for {' and '.join(owners) or 'no task'}; add "
                             f"\"{owners[0] if owners else '...'}\" to tasks or drop {key}")
    metric = d.get("select_metric")
    if metric is not None and not any(metric in t.selectable() for t in tasks):
        raise UsageError(f"{where}: select_metric = \"{metric}\" is not a metric of {', '.join(t.name for t in tasks)};"
                         f" use one of {', '.join(_union(t.selectable() for t in tasks))}")
    own = [t for t in tasks if t.dataset_probes]
    if d.get("probes") and not own:
        per_dataset = [t.name for t in _tasks.all_tasks() if t.dataset_probes]
        raise UsageError(f"{where}: probes are those of the {', '.join(per_dataset)} tasks; the other tasks take "
                         "their probes from [[sweeps]]")
    spec = DatasetSpec(spec=d["spec"], tasks=[t.name for t in tasks], probes=d.get("probes"))
    if d.get("probes"):
        unused = [p for p in d["probes"] if not any(p in t.probes for t in own)]
        if unused:
            raise UsageError(f"{where} probes: {unused} are not probes of {', '.join(t.name for t in own)}; use "
                             f"some of {', '.join(_union(t.probes for t in own))}")
        for t in own:
            if not spec.task_probes(t.name):
                raise UsageError(f"{where} probes: none of {d['probes']} is a probe of {t.name}; add one of "
                                 f"{', '.join(t.probes)}")
    for t in tasks:
        # probes that learn the classes (a task that also scores without learning: cosine retrieval)
        learned = [p for p in spec.task_probes(t.name) if p != COSINE] if t.dataset_probes else list(t.probes)
        if not (t.learns_classes and learned):
            continue
        what = (f"{t.name} by identity classifiers ({', '.join(learned)})" if COSINE in t.probes
                else f"{t.name} ({', '.join(learned)} learn its classes)")
        if COSINE in t.probes and not d.get("cv"):
            raise UsageError(f"{where}: {what} is scored under cross-validation; add cv = K, or list only "
                             f"\"{COSINE}\" for leave-one-image-out retrieval")
        if d.get("cv_group") and (t.dataset_probes or d.get("cv")):
            raise UsageError(f"{where}: {what} cannot be scored with cv_group = \"{d['cv_group']}\" (the group is "
                             "the class: a held-out class is never in the training fold); put it in a dataset entry "
                             "of its own without cv_group")


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


def _check_grids(grids: dict, where: str, task: str = _tasks.DEFAULT) -> dict:
    """``grids = { probe = { param = [values] } }``: known probes, tables of value lists (a value is a list of
    one). Parameter names are checked against the probes by :func:`check_study` (the dense probe's here)."""
    out = {}
    known = _tasks.get(task).probes
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
    from .._finetune import FinetuneConfig, check_config_rules

    fields = {k: v for k, v in table.items() if k in FinetuneConfig.__dataclass_fields__}
    for mode in table.get("modes", [fields.get("mode", "full")]):
        cfg = FinetuneConfig(**{**fields, "mode": mode})
        try:
            check_config_rules(cfg, name=lambda key: key)
        except UsageError as exc:
            raise UsageError(f"[{name}] in {source}: {exc}") from None

