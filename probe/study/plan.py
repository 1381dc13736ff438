"""The plan of a study: its jobs in the order they run, each carrying the keys of the jobs it needs.

A job is ``pretrain`` (fine-tune a backbone on a source dataset first), ``extract`` (the frozen features of a
backbone x dataset), ``sweep`` (probes on those features), ``finetune``, ``transfer`` (transferability scores of
a backbone x dataset x task x tap, :mod:`probe.transfer`) or ``similarity`` (one matrix of :mod:`probe.similarity`
between the features of several backbones, or of a backbone and its fine-tune). Its prerequisites are decided here
and nowhere else (:attr:`Job.needs`, :func:`blocked_by`): every job of a backbone needs the backbone's pretraining,
a sweep or a transfer job needs the extraction of its backbone x dataset, a similarity job the extractions of
every backbone it compares (and the fine-tune whose weights it compares). Both runners (:mod:`probe.study.inprocess`,
:mod:`probe.study.executor`) ask :func:`blocked_by` whether a job can run.

Planning reads nothing but the study (no dataset, no download); :func:`expand_taps` builds a backbone on the
meta device (no weights) when a sweep asks for every block.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Callable

from .. import tasks as _tasks
from ..vocab import COSINE
from .file import ALL_BLOCKS, DEFAULT_SCORES, TRANSFER_TASKS, BackboneSpec, DatasetSpec, Study


@dataclass
class Job:
    """One unit of work of a study: ``pretrain``, ``extract``, ``sweep``, ``finetune``, ``transfer`` or
    ``similarity``.

    Attributes
    ----------
    kind : str
        What the job does.
    backbone, dataset : BackboneSpec, DatasetSpec or None
        What it runs on (``dataset`` is None for pretraining, whose source dataset is in ``settings``).
    settings : dict
        The job's own settings (a sweep's probes, taps, shots; a fine-tune's mode, seed, recipe).
    needs : tuple of str
        The :attr:`key` of every job that must have finished for this one to run (pretraining, extraction).
    partners : tuple of BackboneSpec
        The other backbones a similarity job compares with ``backbone`` (empty for every other job).
    """

    kind: str
    backbone: BackboneSpec
    dataset: DatasetSpec | None
    settings: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    partners: tuple[BackboneSpec, ...] = ()

    @property
    def backbones(self) -> tuple[BackboneSpec, ...]:
        """Every backbone the job reads: ``backbone``, then its :attr:`partners`."""
        return (self.backbone, *self.partners)

    @cached_property
    def key(self) -> str:
        """A stable id of the job (kind, backbones, dataset, settings; not its prerequisites)."""
        dataset = asdict(self.dataset) if self.dataset is not None else None
        if dataset is not None:  # keys of studies without shifted sets stay what they were
            for k in ("eval_on", "shared_classes"):
                if not dataset.get(k):
                    dataset.pop(k, None)
        material = {"kind": self.kind, "backbone": asdict(self.backbone), "dataset": dataset,
                    "settings": self.settings}
        if self.partners:
            material["partners"] = [asdict(b) for b in self.partners]
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def task(self) -> str:
        """The task a sweep job runs (the default task otherwise)."""
        return self.settings.get("task", _tasks.DEFAULT)

    @property
    def folded(self) -> bool:
        """A sweep whose dataset's cv applies: its task is cross-validated (``cv`` in the task's options) and it
        runs a probe that learns (cosine retrieval and verification have their own protocols: leave one image
        out or gallery/query, and the folds of the pairs)."""
        if self.kind != "sweep" or self.dataset is None or not self.dataset.cv:
            return False
        return "cv" in _tasks.get(self.task).options and any(p != COSINE for p in self.settings["probes"])

    def describe(self) -> str:
        """A short human-readable line: kind, backbone, dataset and the settings that tell jobs apart."""
        where = self.dataset.spec if self.dataset is not None else self.settings.get("dataset", "")
        if self.folded:
            where += f" [cv {self.dataset.cv}]"
        extra = ""
        if self.kind == "sweep":
            s = self.settings
            extra = f" probes={','.join(s['probes'])} taps={','.join(s['taps'])}"
            if self.task != _tasks.DEFAULT:
                extra += f" task={s['task']}"
            if any(k for k in s["shots"]):
                extra += f" shots={','.join(map(str, s['shots']))}"
        elif self.kind in ("finetune", "pretrain"):
            extra = f" mode={self.settings.get('mode', 'full')} seed={self.settings.get('seed', 0)}"
            if "tasks" in self.settings:
                extra += f" tasks={'+'.join(self.settings['tasks'])}"
        elif self.kind == "extract":
            extra = f" taps={','.join(self.settings['taps'])}" + (" whole frame" if self.settings.get("full_frame")
                                                                  else "")
        elif self.kind == "transfer":
            s = self.settings
            scores = s["scores"] if isinstance(s["scores"], str) else ",".join(s["scores"])
            extra = f" task={s['task']} tap={s['tap']} scores={scores}"
        elif self.kind == "similarity":
            s = self.settings
            extra = f" {s['kind']}" + (f" tap={s['tap']}" if "tap" in s else "") + f" split={s['split']}"
        names = ",".join(b.name for b in self.backbones)
        return f"{self.kind:<8} {names} on {where}{extra}"


def plan_study(study: Study) -> list[Job]:
    """The study's jobs in the order they run: pretraining, then per backbone x dataset extraction, sweeps,
    fine-tuning and transfer scores, then the similarity matrices of each dataset; each job names the jobs it needs (:attr:`Job.needs`). Planning reads nothing but the study."""
    jobs: list[Job] = []
    extracts: dict[tuple[int, int], tuple[str, ...]] = {}  # (backbone, dataset) index -> keys its features need
    finetunes: dict[tuple[int, int], Job] = {}  # (backbone, dataset) -> the fine-tune a similarity job compares
    for b, bb in enumerate(study.backbones):
        first: tuple[str, ...] = ()
        if study.pretrain is not None:
            pretrain = Job("pretrain", bb, None, {**study.pretrain, "seed": study.seeds[0]})
            jobs.append(pretrain)
            first = (pretrain.key,)
        for d, ds in enumerate(study.datasets):
            sweeps = [s for s in study.sweeps if s.get("task", _tasks.DEFAULT) in ds.tasks]  # the dataset's tasks
            # tasks that run once per dataset, on pooled features, with the dataset's own probes
            own = [t for t in ds.tasks if _tasks.get(t).dataset_probes]
            taps = ["pooled"] if own else []
            dense_taps: list[str] = []  # dense tasks see the whole frame: features of their own (probe.dense)
            for s in sweeps:
                into = dense_taps if _tasks.get(s.get("task", _tasks.DEFAULT)).dense else taps
                into.extend(t for t in s["taps"] if t not in into)
            taps.extend(t for t in _comparison_taps(study, ds) if t not in taps)
            extracted = first
            for settings in ({"taps": taps}, {"taps": dense_taps, "full_frame": True}):
                if settings["taps"]:
                    extract = Job("extract", bb, ds, settings, needs=first)
                    jobs.append(extract)
                    extracted = (*extracted, extract.key)
            for s in sweeps:
                if ds.cv and any(s["shots"]):
                    continue  # few-shot draws are not cross-validated
                jobs.append(Job("sweep", bb, ds, {**s, "seeds": s["seeds"] or study.seeds}, needs=extracted))
            for t in own:
                jobs.append(Job("sweep", bb, ds, {"task": t, "probes": ds.task_probes(t), "taps": ["pooled"],
                                                  "shots": [0], "seeds": study.seeds, "grids": {}},
                                needs=extracted))
            tuned = _finetunes(study, bb, ds, first)
            jobs += tuned
            jobs += _transfers(study, bb, ds, extracted)
            extracts[b, d] = extracted
            compared = [j for j in tuned if "tasks" not in j.settings and "cv" not in j.settings]
            if compared:
                finetunes[b, d] = compared[0]  # the first mode and seed
        mt = study.multitask
        if mt is not None and bb.name in mt.get("backbones", [bb.name]):
            ds = DatasetSpec(spec=mt["dataset"], data_root=mt.get("data_root"))
            settings = {k: v for k, v in mt.items() if k not in ("dataset", "data_root", "backbones", "tasks")}
            for tasks in [list(mt["tasks"])] + [[t] for t in mt["tasks"]]:  # jointly, then each task alone
                for seed in study.seeds:
                    jobs.append(Job("finetune", bb, ds, {**settings, "tasks": tasks, "seed": seed}, needs=first))
    return jobs + _similarities(study, extracts, finetunes)


def _comparison_taps(study: Study, ds: DatasetSpec) -> list[str]:
    """The taps that the ``[transfer]`` and ``[similarity]`` jobs read on a dataset (extracted with the rest)."""
    taps: list[str] = []
    if study.transfer is not None and set(ds.tasks) & set(TRANSFER_TASKS):
        taps += study.transfer["taps"]
    sim = study.similarity
    if sim is not None and _tasks.DEFAULT in ds.tasks:
        taps += sim["taps"] + ([ALL_BLOCKS] if sim["blocks"] or sim["finetuned"] else [])
    return list(dict.fromkeys(taps))


def _transfers(study: Study, bb: BackboneSpec, ds: DatasetSpec, needs: tuple[str, ...]) -> list[Job]:
    """``[transfer]`` on a dataset: one job per task the scores read (classification, regression) and tap. A list
    of scores keeps, per task, the scores defined for it (a task none of them is defined for has no job)."""
    from ..transfer import SCORES

    if study.transfer is None:
        return []
    jobs = []
    for task in (t for t in TRANSFER_TASKS if t in ds.tasks):
        scores = study.transfer["scores"]
        if scores != DEFAULT_SCORES:
            scores = [s for s in scores if task in SCORES[s].tasks]
            if not scores:
                continue
        jobs += [Job("transfer", bb, ds, {"task": task, "tap": tap, "scores": scores}, needs=needs)
                 for tap in study.transfer["taps"]]
    return jobs


def _similarities(study: Study, extracts: dict, finetunes: dict) -> list[Job]:
    """``[similarity]`` on each dataset with the classification task: configuration x configuration per tap (two
    or more backbones), block x block per pair of backbones (``blocks``), frozen vs fine-tuned block i per
    backbone whose classification fine-tune exports weights (``finetuned``: the first mode and seed)."""
    sim = study.similarity
    if sim is None:
        return []
    options = {k: sim[k] for k in ("measures", "k", "groups", "n_boot", "split")}
    bbs = study.backbones
    jobs = []
    for d, ds in enumerate(study.datasets):
        if _tasks.DEFAULT not in ds.tasks:
            continue

        def needs(*indices: int, d: int = d) -> tuple[str, ...]:
            return tuple(dict.fromkeys(k for b in indices for k in extracts[b, d]))

        if len(bbs) >= 2:
            jobs += [Job("similarity", bbs[0], ds, {"kind": "configs", "tap": tap, **options},
                         needs=needs(*range(len(bbs))), partners=tuple(bbs[1:])) for tap in sim["taps"]]
        if sim["blocks"]:
            jobs += [Job("similarity", bbs[a], ds, {"kind": "blocks", **options}, needs=needs(a, b),
                         partners=(bbs[b],)) for a in range(len(bbs)) for b in range(a + 1, len(bbs))]
        if sim["finetuned"]:
            for b in range(len(bbs)):
                ft = finetunes.get((b, d))
                if ft is not None:
                    jobs.append(Job("similarity", bbs[b], ds, {"kind": "finetune", "finetune": ft.settings,
                                                               **options}, needs=(*needs(b), ft.key)))
    return jobs


def _finetunes(study: Study, bb: BackboneSpec, ds: DatasetSpec, needs: tuple[str, ...]) -> list[Job]:
    """``[finetune]`` on a dataset: per mode and seed, one fine-tune of each of its tasks that the fine-tuning
    trains with a head on pooled features (:data:`probe._finetune.config.POOLED_TASKS`). Under the dataset's
    ``cv`` only the tasks the fine-tuning cross-validates run (:data:`probe._finetune.config.CV_TASKS`, with
    the dataset's ``cv`` and ``cv_group``); lp-ft, whose head starts from a logistic probe, only for the default
    task. The default task keeps the settings it always had (no ``tasks`` key)."""
    from .._finetune.config import CV_TASKS, POOLED_TASKS

    if study.finetune is None:
        return []
    settings = {k: v for k, v in study.finetune.items() if k != "modes"}
    jobs = []
    for task in ds.tasks:
        if task not in POOLED_TASKS or (ds.cv and task not in CV_TASKS):
            continue
        extra = {} if task == _tasks.DEFAULT else {"tasks": [task]}
        if ds.cv:
            extra.update(cv=ds.cv, cv_group=ds.cv_group)
        jobs += [Job("finetune", bb, ds, {**settings, **extra, "mode": mode, "seed": seed}, needs=needs)
                 for mode in study.finetune.get("modes", ["full"]) if mode != "lp-ft" or task == _tasks.DEFAULT
                 for seed in study.seeds]
    return jobs


def blocked_by(job: Job, plan: list[Job], finished: Callable[[Job], bool]) -> str:
    """The kind of the first job that ``job`` needs and that did not finish (``"pretrain"``, ``"extract"``), or
    ``""`` when it can run. ``finished(other)`` says whether a job of the plan finished."""
    by_key = {j.key: j for j in plan}
    for key in job.needs:
        other = by_key.get(key)
        if other is not None and not finished(other):
            return other.kind
    return ""


def expand_taps(taps: list[str], backbone: str, img_size: int | None = None) -> list[str]:
    """Replace ``block*`` by every block of ``backbone`` (built on the meta device: no weights, no download)."""
    if ALL_BLOCKS not in taps:
        return list(taps)
    import torch

    from .._backbones import _create, check_model_name
    from .._taps import block_count

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
