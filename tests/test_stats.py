"""The bootstrap against known cases: identical results, the normal approximation, index resampling."""

from __future__ import annotations

import time

import numpy as np
import pytest

import probe
from probe import UsageError
from probe.analysis import bootstrap_ci, paired_bootstrap
from probe.results import mean_per_class_accuracy


@pytest.fixture(params=[0, 1, 2])
def seed(request):
    return request.param


def _naive_index_bootstrap(values, labels, n_boot, seed, per_class):
    """The textbook bootstrap: resample image indices with replacement and recompute (slow, for reference)."""
    rng = np.random.default_rng(seed + 1000)
    n = len(values)
    out = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        if per_class:
            v, y = values[idx], labels[idx]
            out[b] = np.mean([v[y == c].mean() for c in np.unique(y)])
        else:
            out[b] = values[idx].mean()
    return out


def test_public_name_is_the_stats_function():
    assert probe.paired_bootstrap is paired_bootstrap


@pytest.mark.parametrize("metric", ["top1", "mean_per_class_acc"])
def test_identical_inputs_give_a_zero_interval(metric, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, 500)
    correct = rng.random(500) < 0.7
    r = paired_bootstrap(correct, correct.copy(), labels=labels, metric=metric, n_boot=2000, seed=seed)
    assert (r.estimate, r.low, r.high) == (0.0, 0.0, 0.0)
    assert r.p_le_zero == 1.0 and r.n == 500 and r.paired


def test_large_n_difference_matches_the_normal_approximation(seed):
    rng = np.random.default_rng(seed)
    n = 20_000
    a = rng.random(n) < 0.80
    b = rng.random(n) < 0.78
    d = a.astype(float) - b
    se = d.std() / np.sqrt(n)  # standard error of a mean of paired differences
    r = paired_bootstrap(a, b, n_boot=20_000, seed=seed)
    assert r.estimate == pytest.approx(d.mean(), abs=1e-12)
    assert r.std_error == pytest.approx(se, rel=0.03)
    assert r.low == pytest.approx(d.mean() - 1.96 * se, abs=0.1 * se)
    assert r.high == pytest.approx(d.mean() + 1.96 * se, abs=0.1 * se)
    assert r.excludes_zero == (r.low > 0)
    # The share of resamples <= 0 is close to the normal tail probability.
    from math import erf, sqrt
    assert r.p_le_zero == pytest.approx(0.5 * (1 + erf(-d.mean() / se / sqrt(2))), abs=0.01)


def test_single_accuracy_matches_the_binomial_standard_error(seed):
    rng = np.random.default_rng(seed)
    correct = rng.random(5000) < 0.6
    p = correct.mean()
    r = bootstrap_ci(correct, n_boot=20_000, seed=seed)
    assert r.estimate == p and not r.paired and np.isnan(r.p_le_zero)
    assert r.std_error == pytest.approx(np.sqrt(p * (1 - p) / 5000), rel=0.03)
    assert r.low < p < r.high


@pytest.mark.parametrize("paired", [False, True])
def test_mean_per_class_matches_resampling_image_indices(paired, seed):
    # Small, imbalanced classes (one with 3 images) so resamples often miss a class; the fast multinomial
    # draw must give the same distribution as resampling indices.
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(40), np.ones(25), np.full(3, 2)].astype(int)
    a = rng.random(len(labels)) < 0.7
    b = rng.random(len(labels)) < 0.5
    pred_a = np.where(a, labels, (labels + 1) % 3)
    if paired:
        r = paired_bootstrap(a, b, labels=labels, metric="mean_per_class_acc", n_boot=20_000, seed=seed)
        values = a.astype(float) - b
        assert r.estimate == pytest.approx(mean_per_class_accuracy(labels, pred_a)
                                           - mean_per_class_accuracy(labels, np.where(b, labels, (labels + 1) % 3)))
    else:
        r = bootstrap_ci(a, labels=labels, metric="mean_per_class_acc", n_boot=20_000, seed=seed)
        values = a.astype(float)
        assert r.estimate == pytest.approx(mean_per_class_accuracy(labels, pred_a))
    ref = _naive_index_bootstrap(values, labels, 4000, seed, per_class=True)
    assert r.samples.mean() == pytest.approx(ref.mean(), abs=0.01)
    assert r.std_error == pytest.approx(ref.std(), rel=0.06)
    assert r.low == pytest.approx(np.quantile(ref, 0.025), abs=0.03)
    assert r.high == pytest.approx(np.quantile(ref, 0.975), abs=0.03)


def test_seeded_and_order_invariant():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    a, b = rng.random(300) < 0.6, rng.random(300) < 0.5
    kw = dict(labels=labels, metric="mean_per_class_acc", n_boot=3000)
    r1, r2 = paired_bootstrap(a, b, seed=7, **kw), paired_bootstrap(a, b, seed=7, **kw)
    assert np.array_equal(r1.samples, r2.samples) and (r1.low, r1.high) == (r2.low, r2.high)
    assert not np.array_equal(r1.samples, paired_bootstrap(a, b, seed=8, **kw).samples)
    # The images' order does not matter (pairs stay together): the same draws after a permutation.
    perm = rng.permutation(300)
    r3 = paired_bootstrap(a[perm], b[perm], seed=7, n_boot=3000, labels=labels[perm], metric="mean_per_class_acc")
    assert np.array_equal(r1.samples, r3.samples)


def test_sign_and_formatting():
    a = np.r_[np.ones(90), np.zeros(10)].astype(bool)
    b = np.r_[np.ones(70), np.zeros(30)].astype(bool)
    r = paired_bootstrap(a, b, n_boot=2000)
    assert r.estimate == pytest.approx(0.2) and r.low > 0 and r.p_le_zero == 0.0
    assert r.format(signed=True).startswith("+20.0 [+")
    assert "n=100" in str(r)
    assert paired_bootstrap(b, a, n_boot=2000).estimate == pytest.approx(-0.2)


def test_ten_thousand_resamples_of_ten_thousand_images_take_seconds():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, 10_000)
    a, b = rng.random(10_000) < 0.8, rng.random(10_000) < 0.75
    start = time.perf_counter()
    paired_bootstrap(a, b, n_boot=10_000)
    paired_bootstrap(a, b, labels=labels, metric="mean_per_class_acc", n_boot=10_000)
    assert time.perf_counter() - start < 10  # ~0.5 s on one core; generous for a shared CPU


@pytest.mark.parametrize("call, match", [
    (lambda: paired_bootstrap([1, 0, 1], [1, 0]), "same images"),
    (lambda: paired_bootstrap([1, 0], [1, 0], metric="mean_per_class_acc"), "needs labels"),
    (lambda: paired_bootstrap([1, 0], [1, 0], labels=[0], metric="mean_per_class_acc"), "one entry per"),
    (lambda: paired_bootstrap([1, 0], [1, 0], metric="f1"), "must be one of"),
    (lambda: paired_bootstrap([1, 0], [1, 0], n_boot=0), "positive"),
    (lambda: paired_bootstrap([1, 0], [1, 0], ci=95), r"\(0, 1\)"),
    (lambda: bootstrap_ci([0.3, 0.9]), "correctness"),
    (lambda: bootstrap_ci([]), "zero test images"),
])
def test_bad_input_is_a_usage_error(call, match):
    with pytest.raises(UsageError, match=match):
        call()


def test_compare_jobs_pairs_saved_predictions_by_id(tmp_path):
    from probe.results import save_artifacts

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    pred_a = np.where(rng.random(200) < 0.8, labels, (labels + 1) % 4)
    pred_b = np.where(rng.random(200) < 0.6, labels, (labels + 1) % 4)
    ids = np.array([f"img{i}" for i in range(200)])
    save_artifacts(tmp_path / "a", ids=ids, labels=labels, scores=np.eye(4)[pred_a])
    order = rng.permutation(200)  # job b saved its rows in another order
    save_artifacts(tmp_path / "b", ids=ids[order], labels=labels[order], scores=np.eye(4)[pred_b[order]])
    diff = probe.compare_jobs(tmp_path / "a.parquet", tmp_path / "b.npz", n_boot=500)
    assert diff.estimate == pytest.approx(np.mean(pred_a == labels) - np.mean(pred_b == labels))
    assert diff.low < diff.estimate < diff.high and diff.n == 200
    single = probe.job_ci(tmp_path / "a", n_boot=500)
    assert single.estimate == pytest.approx(np.mean(pred_a == labels))
    assert probe.compare_jobs(tmp_path / "a", tmp_path / "missing") is None


def test_compare_jobs_refuses_results_that_disagree_on_labels(tmp_path):
    from probe.results import save_artifacts

    ids = np.array(["a", "b", "c"])
    save_artifacts(tmp_path / "x", ids=ids, labels=np.array([0, 1, 0]), scores=np.eye(2)[[0, 1, 1]])
    save_artifacts(tmp_path / "y", ids=ids, labels=np.array([1, 1, 0]), scores=np.eye(2)[[0, 1, 1]])
    assert probe.compare_jobs(tmp_path / "x", tmp_path / "y", n_boot=50) is None


def test_items_of_two_groups_count_as_often_as_both_are_drawn():
    """A verification pair of two people is in a resample as often as both its people are drawn (c_a x c_b); a
    pair of one person as often as that person (the dyadic bootstrap of pairs over people)."""
    from probe.analysis._stats import Resampling
    from probe.tasks import get

    metric = get("verification").metric("verif_acc")
    # items 0-2: pairs of one person (0, 1, 2); items 3, 4: pairs of persons (0, 1) and (1, 2)
    group_index = np.array([[0, 0], [1, 1], [2, 2], [0, 1], [1, 2]])
    hits = {"item/verif_acc": np.array([1.0, 1.0, 0.0, 0.0, 1.0])}
    r = Resampling.build(np.arange(5).astype(str), [(metric, [hits])], group_index=group_index, over="people")
    assert r.n_groups == 3
    counts = r.draw(np.random.default_rng(0), 2000)
    assert (counts[:, :3].sum(axis=1) == 3).all()  # three people drawn with repetition
    np.testing.assert_array_equal(counts[:, 3], counts[:, 0] * counts[:, 1])
    np.testing.assert_array_equal(counts[:, 4], counts[:, 1] * counts[:, 2])
    assert (counts[:, 3] == 0).any() and (counts[:, 3] == 2).any()  # left out when a person is not drawn; 2 x 1
    # each resample's accuracy is the weighted mean of its pairs' hits
    values = r.values(counts)[:, 0]
    expected = (counts @ hits["item/verif_acc"]) / counts.sum(axis=1)
    np.testing.assert_allclose(values, expected)
