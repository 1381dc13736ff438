"""Running one job of a study's plan: the call both runners make (:func:`run_job`).

A job starts here from what the study and the plan give it: the backbone's weights (its own, or the file its
pretraining produced), the dataset's protocol settings for the job's task, asked of the task registry, and the
study's shared carve and selection metric. Everything it writes is found again and skipped on a rerun.
"""

from __future__ import annotations

from pathlib import Path

from .. import tasks as _tasks
from .._errors import ProbeError
from .file import ALL_BLOCKS, DEFAULT_SCORES, BackboneSpec, Study
from .plan import Job, expand_taps


def run_job_on_ranks(job: Job, study: Study, pretrained: dict[str, str], **options) -> str:
    """:func:`run_job`; under torchrun extraction and fine-tuning (pretraining included) are shared by the ranks
    and a sweep runs on rank 0 alone (the others wait for it)."""
    from .. import _distributed

    if job.kind != "sweep" or not _distributed.active():
        return run_job(job, study, pretrained, **options)
    status, weights = _distributed.on_main(lambda: (run_job(job, study, pretrained, **options), pretrained))
    pretrained.update(weights)
    return status


def run_job(job: Job, study: Study, pretrained: dict[str, str], *, cache_dir, results_dir, pretrain_dir, device,
            jobs, workers, progress) -> str:
    """Run one job; returns its status line (``done, ...``, ``cached``, ``skipped (done before)``).

    Parameters
    ----------
    pretrained : dict
        Backbone name -> the weights file of its pretraining; a pretrain job adds its own, every other job of the
        backbone starts from it.
    cache_dir, results_dir, pretrain_dir, device, jobs, workers, progress
        The run's options (:func:`probe.run_study`).
    """
    bb, ds = job.backbone, job.dataset
    extract_opts = dict(study.extract)
    if workers is not None:
        extract_opts["workers"] = workers
    if job.kind == "pretrain":
        return _pretrain(job, pretrained, cache_dir=cache_dir, pretrain_dir=pretrain_dir, device=device,
                         progress=progress, workers=extract_opts.get("workers"))
    img_size = ds.img_size or bb.img_size
    if job.kind in ("extract", "sweep"):
        job = Job(job.kind, bb, ds, {**job.settings, "taps": expand_taps(job.settings["taps"], bb.name, img_size)},
                  needs=job.needs)
    common = dict(img_size=img_size, family=bb.family, data_root=ds.data_root, cache_dir=cache_dir, device=device,
                  progress=progress, **_weights_for(bb, pretrained))
    if job.kind == "extract":
        from .._extract import extract_features

        entries = extract_features(bb.name, ds.spec, taps=tuple(job.settings["taps"]), seed=bb.seed,
                                   full_frame=bool(job.settings.get("full_frame")), **common, **extract_opts)
        reused = all(e.reused for e in entries.values())
        return "cached" if reused else f"extracted {sum(e.rows for e in entries.values())} images"
    if job.kind == "sweep":
        from .._sweep import sweep_cached

        s = job.settings
        before = _count_results(results_dir)
        sweep_cached(bb.name, ds.spec, probes=s["probes"], taps=s["taps"], shots=s["shots"], seeds=s["seeds"],
                     grids=s["grids"] or None, select_metric=_select_metric(job, study), task=job.task,
                     val_fraction=study.val_fraction, test_fraction=ds.test_fraction, results_dir=results_dir,
                     jobs=jobs, seed=bb.seed, **_evaluation_args(job), **common, **extract_opts)
        made = _count_results(results_dir) - before
        return f"{made} result files written" if made else "skipped (done before)"
    if job.kind == "transfer":
        from ..transfer import default_scores, score_backbone

        s = job.settings
        names = s["scores"]
        if names == DEFAULT_SCORES:  # every score of the task this configuration can give
            names = default_scores(bb.name, task=s["task"], weights=common["weights"], img_size=img_size)
        before = _count_results(results_dir)
        score_backbone(bb.name, ds.spec, scores=names, tap=s["tap"], task=s["task"], results_dir=results_dir,
                       seed=bb.seed, **common, **extract_opts)
        made = _count_results(results_dir) - before
        return f"{len(names)} scores written" if made else "skipped (done before)"
    if job.kind == "similarity":
        return _similarity(job, study, pretrained, results_dir=results_dir, extract_opts=extract_opts,
                           common=common)
    if job.kind == "finetune":
        result = _finetune(job, study, results_dir=results_dir, extract_opts=extract_opts, common=common)
        if result.skipped:
            return "skipped (done before)"
        scores = ", ".join(f"{task} {metric} {m[metric]:.3f}" if task != _tasks.DEFAULT else f"{metric} {m[metric]:.3f}"
                           for task, m in result.task_metrics.items() for metric in list(m)[:1])
        chosen = (f"epochs chosen per fold {result.fold_epochs}" if result.fold_epochs
                  else f"best epoch {result.best_epoch}")
        return f"done, {chosen}" + (f", test {scores}" if scores else "")
    raise AssertionError(job.kind)


def _finetune(job: Job, study: Study, *, results_dir, extract_opts: dict, common: dict):
    """Run (or read back, when its results exist) a fine-tune job; returns its :class:`FinetuneResult`."""
    from .._finetune import finetune

    bb, ds = job.backbone, job.dataset
    settings = dict(job.settings)
    ft_size = settings.pop("img_size", None) or bb.finetune_img_size or common["img_size"]
    if ds.eval_on and "tasks" not in settings and "cv" not in settings:  # a split-based classification fine-tune
        settings.update(eval_on=list(ds.eval_on), shared_classes=ds.shared_classes)
    # the job's seed carves val and drives training; the backbone's own seed is its random initialisation,
    # so a random-init fine-tune starts from the weights whose frozen features the sweeps probed
    return finetune(bb.name, ds.spec, select_metric=_select_metric(job, study, finetune=True),
                    val_fraction=study.val_fraction, test_fraction=ds.test_fraction, init_seed=bb.seed,
                    allow_overlap=bool(extract_opts.get("allow_overlap", False)),
                    results_dir=results_dir, verbose=False,
                    workers=extract_opts.get("workers"),
                    **{**common, "img_size": ft_size}, **settings)


def _similarity(job: Job, study: Study, pretrained: dict[str, str], *, results_dir, extract_opts: dict,
                common: dict) -> str:
    """One matrix of :func:`probe.similarity.run_job` on the job's split: the entries are read through the cache
    (extracted when missing), the fine-tuned side with the fine-tune's exported weights as any weights file."""
    from .._extract import extract_features
    from ..similarity import run_job as compare

    s, ds = job.settings, job.dataset
    kind, split = s["kind"], s["split"]

    def entry(bb: BackboneSpec, weights: dict):
        img_size = ds.img_size or bb.img_size
        taps = [s["tap"]] if kind == "configs" else expand_taps([ALL_BLOCKS], bb.name, img_size)
        entries = extract_features(bb.name, ds.spec, splits=[split], taps=taps, seed=bb.seed,
                                   **{**common, "img_size": img_size, "family": bb.family, **weights},
                                   **extract_opts)
        return entries[split]

    entries = [entry(bb, _weights_for(bb, pretrained)) for bb in job.backbones]
    if kind == "finetune":
        bb = job.backbone
        tune = Job("finetune", bb, ds, s["finetune"])
        result = _finetune(tune, study, results_dir=results_dir, extract_opts=extract_opts,
                           common={**common, **_weights_for(bb, pretrained)})
        if result.weights_path is None:
            raise ProbeError(f"the fine-tune of {bb.name} on {ds.spec} exported no weights to compare with its "
                             "frozen features; rerun it with --overwrite")
        entries.append(entry(bb, {"weights": str(result.weights_path), "random_init": False}))
    before = _count_results(results_dir)
    compare(kind, entries, results_dir=results_dir, tap=s.get("tap", "pooled"), measures=s["measures"], k=s["k"],
            groups=s["groups"], n_boot=s["n_boot"], device=common["device"])
    made = _count_results(results_dir) - before
    return f"{kind} matrix of {len(entries)} entries written" if made else "skipped (done before)"


def _pretrain(job: Job, pretrained: dict[str, str], *, cache_dir, pretrain_dir, device, progress, workers) -> str:
    from .._finetune import finetune

    bb = job.backbone
    settings = dict(job.settings)
    source = settings.pop("dataset")
    # pretraining produces weights, not a compared test score: no refit unless the study asks for it
    settings.setdefault("refit", False)
    result = finetune(bb.name, source, weights=bb.weights, random_init=bb.random_init, init_seed=bb.seed,
                      family=bb.family, img_size=settings.pop("img_size", bb.finetune_img_size or bb.img_size),
                      data_root=settings.pop("data_root", None), cache_dir=cache_dir, results_dir=pretrain_dir,
                      device=device, progress=progress, verbose=False, workers=workers, **settings)
    if result.weights_path is None:
        raise ProbeError(f"pretraining {bb.name} on {source} produced no weights file")
    pretrained[bb.name] = str(result.weights_path)
    return "skipped (done before)" if result.skipped else f"done, weights {result.weights_path}"


def _weights_for(bb: BackboneSpec, pretrained: dict[str, str]) -> dict:
    if bb.name in pretrained:
        return {"weights": pretrained[bb.name], "random_init": False}
    return {"weights": bb.weights, "random_init": bb.random_init}


def _select_metric(job: Job, study: Study, *, finetune: bool = False) -> str | None:
    """The dataset's (else the study's) selection metric where the job's task selects on it; otherwise the
    task's own default (None). A fine-tune's ``select_metric`` is the default task's (its other tasks select
    on their headline metric, :mod:`probe._finetune.selection`)."""
    metric = job.dataset.select_metric or study.select_metric
    task = _tasks.get(None if finetune else job.task)
    if metric in task.selectable():
        return metric
    return task.headline if finetune else None


def _evaluation_args(job: Job) -> dict:
    """The dataset's protocol settings that the job's task accepts (its :attr:`probe.tasks.Task.options`): the
    folds of ``cv`` (and their grouping) when the job is cross-validated, a verification's pairs and whitening."""
    ds, options = job.dataset, _tasks.get(job.task).options
    out = {}
    if job.folded:
        out.update(cv=ds.cv, cv_group=ds.cv_group)
    for key in ("pairs", "whiten"):
        if key in options:
            out[key] = getattr(ds, key)
    if "eval_on" in options and ds.eval_on and not job.folded:
        out.update(eval_on=list(ds.eval_on), shared_classes=ds.shared_classes)
    return out


def _count_results(results_dir) -> int:
    root = Path(results_dir)
    return sum(1 for _ in root.rglob("*.parquet")) if root.is_dir() else 0
