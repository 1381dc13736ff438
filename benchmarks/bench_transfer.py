"""Transferability scores of one configuration, and LogME against a numpy reference of the published algorithm.

Data: 20,000 x 768 synthetic class-structured features with 100 classes (``bench_probes.make_features``: class
means in a 32-d subspace, a decaying spectrum, an offset, isotropic noise), and 1,000-class source logits made
from the same latent classes for LEEP and NCE.

Printed, in one run:

1. every score of :mod:`probe.transfer` timed on its own (one run each), then all of them in one call (what
   ``probe transfer`` does for one configuration; median of ``--total-repeats``); NLEEP's mixture is included;
2. LogME: ours (streamed D x D statistics, eigenvalues and V^T F^T Y, every class at once) against a numpy float64
   reference written here from the paper's fixed-point algorithm as the published code runs it (F^T F and its
   SVD, F V, then a loop over classes), side by side, median of ``--repeats`` each, the ratio, and both values;
3. with ``--published DIR`` (a checkout of github.com/thuml/LogME, kept outside this repository), the published
   ``LogME.fit`` on the same features: its time and its value;
4. NLEEP's mixture: ``--em-steps`` EM steps of ours (in-place E-step) against the same steps written with the
   textbook's separate buffers (``reference_gmm_steps``), side by side;
5. the float32 matmul peak of this machine, measured in the same run, and each time as a share of it (the FLOPs
   counted are the dominant matmul and eigendecomposition terms, see ``logme_flops``).

Usage::

    python benchmarks/bench_transfer.py                       # ~1-2 minutes on 2 cores
    python benchmarks/bench_transfer.py --published /tmp/logme_ref --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_probes import blas_kernels, cpu_model, make_features, matmul_peak  # noqa: E402

from probe import transfer  # noqa: E402


def reference_logme(f: np.ndarray, y: np.ndarray) -> float:
    """The published fixed-point LogME in numpy float64: SVD of F^T F, F V, then one class at a time."""
    f = f.astype(np.float64)
    n, d = f.shape
    _, s2, vh = np.linalg.svd(f.T @ f)
    s = np.sqrt(s2)
    k = int(np.sum(s > 1e-10))
    u = (f @ vh.T)[:, :k] / s[:k]
    sigma = s2[:k]
    evidences = []
    for c in range(int(y.max()) + 1):
        col = (y == c).astype(np.float64)
        x = u.T @ col
        x2 = x * x
        res_x2 = col @ col - x2.sum()
        alpha = beta = 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / (t + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * sigma).sum()
              - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
        evidences.append(ev / n)
    return float(np.mean(evidences))


def reference_gmm_steps(x: torch.Tensor, k: int, steps: int, seed: int = 0) -> torch.Tensor:
    """``steps`` EM steps of the diagonal mixture written as the textbook formulas (a quadratic form, the log
    densities, logsumexp, then exp of the log posteriors: separate [N, K] buffers), from the same start as
    ``transfer.gmm_posteriors``: the side-by-side reference for its in-place E-step."""
    import math

    n, d = x.shape
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    means = x[torch.as_tensor(idx)].clone()
    var = (x.var(0, unbiased=False) + 1e-6)[None, :].expand(k, d).clone()
    log_w = torch.full((k,), -math.log(k), dtype=x.dtype)
    both = torch.cat([x * x, x], dim=1)
    const = d * math.log(2 * math.pi)

    def e_step():
        prec = 1.0 / var
        quad = both @ torch.cat([prec, -2 * means * prec], dim=1).T + (means * means * prec).sum(1)[None, :]
        log_p = -0.5 * (const + torch.log(var).sum(1)[None, :] + quad) + log_w[None, :]
        norm = torch.logsumexp(log_p, dim=1)
        return log_p - norm[:, None]

    for _ in range(steps):
        resp = e_step().exp()
        nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
        moments = (resp.T @ both) / nk[:, None]
        means = moments[:, d:]
        var = moments[:, :d] - means * means + 1e-6
        log_w = torch.log(nk / n)
    return e_step().exp()


def logme_flops(n: int, d: int, c: int) -> float:
    """Dominant FLOPs of our LogME: the symmetric Gram matrix (one triangle, N D (D + 1)), the tridiagonal reduction
    (4/3 D^3) and the two products that give V^T B (Q^T B and Z^T (Q^T B): 4 D^2 C); the tridiagonal eigensolver's
    own work is left out (it depends on deflation)."""
    return n * d * (d + 1) + 4 * d ** 3 / 3 + 4 * d * d * c


#: CPU seconds (all threads of this process) of the last :func:`timed` runs, median: on a shared host the wall
#: time depends on the other tenants, the CPU time much less (printed beside the wall time).
CPU = {"last": 0.0}


def timed(fn, repeats: int):
    values, times, cpu = [], [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        values.append(fn())
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    CPU["last"] = statistics.median(cpu)
    return values[-1], statistics.median(times), times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="images")
    parser.add_argument("--dim", type=int, default=768, help="feature dimension")
    parser.add_argument("--classes", type=int, default=100, help="target classes")
    parser.add_argument("--source-classes", type=int, default=1000, help="columns of the source head's logits")
    parser.add_argument("--repeats", type=int, default=3, help="timed LogME runs per side (median printed)")
    parser.add_argument("--total-repeats", type=int, default=1, help="timed runs of all scores in one call")
    parser.add_argument("--published", default=None, metavar="DIR",
                        help="directory holding the published LogME.py (github.com/thuml/LogME), run on the same "
                             "features for its time and value; never part of this repository")
    parser.add_argument("--em-steps", type=int, default=10,
                        help="EM steps of NLEEP's mixture timed side by side with the textbook formulation")
    parser.add_argument("--device", default="cpu", help="torch device of our scores (cpu, cuda)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    (x, y), _, _ = make_features(args.n, 1, 1, dim=args.dim, n_classes=args.classes)
    rng = np.random.default_rng(1)
    source_of = rng.integers(0, args.source_classes, args.classes)  # each target class resembles a source class
    logits = (rng.normal(size=(args.n, args.source_classes)) * 1.5).astype(np.float32)
    logits[np.arange(args.n), source_of[y]] += 3.0
    print(f"load average {os.getloadavg()[0]:.1f} at the start (the host may be shared)")
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; numpy BLAS: {blas_kernels()}")
    print(f"features {args.n} x {args.dim}, {args.classes} classes, logits {args.source_classes} columns; "
          f"device {device}; median of {args.repeats} runs\n")
    peak_start = matmul_peak(device)

    ours_value, ours_t, ours_all = timed(lambda: transfer.logme(x, y, device=device), args.repeats)
    ours_cpu = CPU["last"]
    time.sleep(1.0)  # let the other side's BLAS threads settle
    ref_value, ref_t, ref_all = timed(lambda: reference_logme(x, y), args.repeats)
    ref_cpu = CPU["last"]
    peak = statistics.median([peak_start, matmul_peak(device)])
    flops = logme_flops(args.n, args.dim, args.classes)
    runs = lambda times: ", ".join(f"{t:.3f}" for t in times)  # noqa: E731
    print(f"LogME, ours (streamed Gram, eigenvalues + V^T F^T Y): {ours_t:.3f} s (runs {runs(ours_all)}), "
          f"value {ours_value:.10f}")
    print(f"LogME, numpy reference (SVD, F V, class loop):       {ref_t:.3f} s (runs {runs(ref_all)}), "
          f"value {ref_value:.10f}")
    print(f"CPU seconds (median, all threads): ours {ours_cpu:.3f}, reference {ref_cpu:.3f}: ratio "
          f"{ref_cpu / ours_cpu:.2f}x")
    print(f"ratio reference / ours: {ref_t / ours_t:.2f}x; |difference| {abs(ours_value - ref_value):.2e} "
          f"(relative {abs(ours_value - ref_value) / abs(ref_value):.2e})")
    if device.type == "cpu":  # LogME's eigen step, and why it runs on one thread (probe._linalg.symmetric_eigh)
        from probe._linalg import eigh_coordinates, symmetric_eigh

        stats = transfer.stats_from_arrays(x, y, fourth_moments=False)
        gram, cross = stats.raw_gram(), (stats.class_sum + stats.class_count[:, None] * stats.shift[None, :]).T
        _, coord_t, _ = timed(lambda: eigh_coordinates(gram, cross), args.repeats)
        _, one_t, _ = timed(lambda: symmetric_eigh(gram)[1].T @ cross, args.repeats)
        _, all_t, _ = timed(lambda: torch.linalg.eigh(gram)[1].T @ cross, args.repeats)
        print(f"LogME's eigenvalues and V^T F^T Y ({args.dim} x {args.dim} float64, {args.classes} columns): "
              f"{coord_t:.3f} s as eigh_coordinates runs it (tridiagonal, no eigenvectors formed, one thread), "
              f"{one_t:.3f} s through symmetric_eigh (scipy dsyevd, one thread), {all_t:.3f} s through "
              f"torch.linalg.eigh on {torch.get_num_threads()} threads (median of {args.repeats})")
    if args.published:
        sys.path.insert(0, args.published)
        from LogME import LogME  # the published implementation (numba stubbed where it is not installed)

        pub_value, pub_t, _ = timed(lambda: LogME(regression=False).fit(x.astype(np.float64), y), args.repeats)
        print(f"LogME, published (thuml/LogME LogME.fit):            {pub_t:.3f} s, value {pub_value:.10f}; "
              f"ratio published / ours {pub_t / ours_t:.2f}x, relative difference "
              f"{abs(ours_value - pub_value) / abs(pub_value):.2e}")
    print()
    print(f"{'score':<14s} {'seconds':>8s} {'CPU s':>8s} {'value':>14s}   (each alone, one run; load average "
          f"{os.getloadavg()[0]:.1f})")
    for name in transfer.SCORES:
        value, t, _ = timed(lambda name=name: transfer.compute_scores(x, y, logits=logits, scores=[name],
                                                                     device=device)[name], 1)
        print(f"{name:<14s} {t:8.2f} {CPU['last']:8.2f} {value:14.6g}")
    _, total, totals = timed(lambda: transfer.compute_scores(x, y, logits=logits, device=device), args.total_repeats)
    print(f"{'all scores':<14s} {total:8.2f} {CPU['last']:8.2f}   (one call: LogME and the H-scores share one "
          f"streaming pass; runs {', '.join(f'{t:.1f}' for t in totals)}; load average {os.getloadavg()[0]:.1f})\n")

    # NLEEP's EM, the bulk of "all scores": our in-place E-step against the textbook buffers, the same steps
    z = transfer.pca_components(transfer._as64(x, device), 0.8).float()
    k = 5 * args.classes
    em_flops = args.em_steps * 2 * 2 * z.shape[0] * 2 * z.shape[1] * k  # E- and M-step products per step
    ours_em = timed(lambda: transfer.gmm_posteriors(z, k, max_iter=args.em_steps, tol=0.0), 1)[1]
    ours_em_cpu = CPU["last"]
    ref_em = timed(lambda: reference_gmm_steps(z.cpu(), k, args.em_steps), 1)[1]
    ref_em_cpu = CPU["last"]
    print(f"NLEEP mixture, {args.em_steps} EM steps ({k} components, {z.shape[1]} PCA dimensions): ours "
          f"{ours_em:.2f} s ({ours_em_cpu:.2f} CPU s), textbook buffers {ref_em:.2f} s ({ref_em_cpu:.2f} CPU s): "
          f"ratio {ref_em / ours_em:.2f}x wall, {ref_em_cpu / ours_em_cpu:.2f}x CPU; load average "
          f"{os.getloadavg()[0]:.1f}")

    print(f"\nfloat32 matmul peak ({device}): {peak:.0f} GFLOP/s (median of start and end: {peak_start:.0f}, "
          f"{matmul_peak(device):.0f} now)")
    print(f"NLEEP EM ours: {em_flops / 1e9:.1f} GFLOP counted, {em_flops / ours_em / 1e9 / peak * 100:.1f}% of the "
          f"float32 peak; textbook buffers {em_flops / ref_em / 1e9 / peak * 100:.1f}%")
    print(f"LogME ours: {flops / 1e9:.1f} GFLOP counted, {flops / ours_t / 1e9:.1f} GFLOP/s = "
          f"{flops / ours_t / 1e9 / peak * 100:.1f}% of the float32 peak (float64 work: the float64 peak is lower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
