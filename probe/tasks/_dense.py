"""What the two per-pixel tasks share: the linear dense probe on the ``patch`` tap (or ``patch16``, a ConvNet's
stride-16 stage), one job per (tap, probe, seed), on the whole frame, scored at the label resolution."""

from __future__ import annotations

from ._base import Job, Metric, Task


def dense_metric(task: str, name: str, stats: tuple[str, ...], *, higher_is_better: bool, unit: str,
                 label: str) -> Metric:
    """A per-pixel metric resampled from a job's per-image statistics ``stat/<k>`` through
    :func:`probe.dense.resampled_metric` (the one definition of the dense metrics)."""

    def resample(saved, counts):
        from ..dense import resampled_metric

        return resampled_metric(task, name, {k.split("/", 1)[1]: saved[k] for k in stats if k in saved}, counts)

    return Metric(name, higher_is_better, unit, label, stats, resample=resample)


class DenseTask(Task):
    """A task with per-pixel targets (:mod:`probe._dense_sweep` runs its jobs)."""

    probes = ("linear",)
    default_probes = ("linear",)
    default_taps = ("patch",)
    #: Taps a dense probe reads: the final token grid, or the stride-16 one (:mod:`probe._taps`).
    dense_taps = ("patch", "patch16")
    #: The token grid of the configuration (rows x columns, e.g. ``"14x14"``): its output stride at its input size.
    columns = {"grid": "Utf8"}
    options = frozenset()
    dense = True
    compare_families = False
    report_group = "Dense transfer: segmentation and depth"
    group_noun = "scenes"

    def report_section(self, report, jobs):
        """The frozen dense probe beside single-task linear-head fine-tuning (the probe's counterpart), then
        every other fine-tune with its tasks and head named (:meth:`probe._report.Report.dense_section`)."""
        return report.dense_section(self, jobs)

    @property
    def gain_metrics(self) -> tuple[str, ...]:
        """Every metric beyond the headline (each resampled from its per-image statistics)."""
        return self.metric_names[1:]

    def finetune_counterpart(self, tasks, head) -> bool:
        """Only a single-task fine-tune with the linear head is the frozen linear probe's counterpart (older
        rows that record neither count as one); joint multi-task runs and other heads are listed apart."""
        return tuple(tasks) in ((self.name,), ()) and head in ("linear", None)

    def report_figures(self, report, dataset, evaluation, shown):
        """Test images, ground truth and each configuration's frozen dense probe (the previews its job saved)."""
        return report.dense_examples(self, dataset, evaluation, shown)

    def probe_refusal(self, bad: list) -> str:
        return f"probe(s) {bad} do not take {self.name} targets; dense probes are {', '.join(self.probes)}"

    def check_request(self, request):
        from .._errors import UsageError

        request = super().check_request(request)
        bad = [t for t in request.taps if t not in self.dense_taps]
        if bad:
            raise UsageError(f"dense probes read the token-grid taps {', '.join(self.dense_taps)}; got {bad}. "
                             "Use --taps patch (or patch16 for a ConvNet's stride-16 stage)")
        return request

    def check_source(self, request, source) -> None:
        from .._dense_sweep import check_task

        check_task(self.name, source)

    def load(self, backbone, source, request, **extract):
        from .._dense_sweep import load_dense

        return load_dense(backbone, source, task=self.name, taps=request.taps, **extract)

    def classes(self, source) -> list:
        """Class names of the per-pixel labels (none for a continuous target)."""
        return []

    def plan(self, data, request):
        from .._dense_sweep import dense_estimator
        from .._protocol import protocol_of
        from ..dense import FRAME

        jobs = []
        n_classes = len(self.classes(data.source))
        recorded = 0.0 if "val" in data.entries else float(request.val_fraction)
        for tap in request.taps:
            for name in request.probes:
                for seed in request.seeds:
                    est, points = dense_estimator(self.name, n_classes, (request.grids or {}).get(name),
                                                  seed=int(seed), device=request.device, name=name)
                    # the seed is the job's (its own column), not part of the protocol: seeds are averaged; the
                    # frame (whole, no crop) and the scoring at the label resolution are
                    protocol = protocol_of(est, points, tap=tap, task=self.name, val_fraction=recorded,
                                           test_fraction=0.0, select_metric=request.select_metric, shots=0,
                                           refit=True, exclude=("device", "seed"),
                                           evaluation={"frame": FRAME, "scored": "label resolution"})
                    scheme = self.evaluation(request, name, data)
                    jobs.append(Job(tap=tap, probe=name, seed=int(seed), protocol=protocol,
                                    evaluation=scheme["label"],
                                    tag=f"{self.name}-{data.feature_tag}-{protocol[:8]}",
                                    select_metric=request.select_metric, val_fraction=float(request.val_fraction),
                                    device=request.device, context=data.context(tap, request.family),
                                    extra={"estimator": est, "points": points,
                                           "classes": self.classes(data.source)}))
        return jobs

    def run(self, data, job):
        from .._dense_sweep import run_dense_job

        return run_dense_job(self, data, job)
