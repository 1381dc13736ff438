"""Transferability scores against independent numpy float64 implementations of each paper's formula, on random
features and on real cached features (tiny timm models on scikit-learn's digits); their properties; the agreement
statistics against scipy; the CLI's one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import probe
from probe import transfer
from probe._errors import UsageError
from tests._helpers import assert_one_line_error, run_cli

RTOL = 1e-6


def close(a, b, rtol=RTOL):
    assert math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12), (a, b, abs(a - b) / max(abs(b), 1e-300))


# ---------------------------------------------------------------------------------------------- references
def ref_logme(f, y=None, targets=None, tol=1e-3, max_iter=11):
    """The fixed-point LogME, one target column at a time, through the thin SVD of F (the published algorithm)."""
    f = f.astype(np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    cols = ([(y == c).astype(np.float64) for c in np.unique(y)] if targets is None
            else list(np.atleast_2d(targets.T).astype(np.float64)))
    out = []
    for col in cols:
        x = u.T @ col
        x2 = x ** 2
        res_x2 = col @ col - x2.sum()
        alpha = beta = 1.0
        for _ in range(max_iter):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / (t + sigma) ** 2).sum()
            res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= tol:
                break
        # the paper's log-determinant: every one of the D eigenvalues of F^T F (zeros beyond min(N, D))
        logdet = np.log(alpha + beta * sigma).sum() + (d - len(sigma)) * np.log(alpha)
        ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * logdet - beta / 2 * res2 - alpha / 2 * m2
              - n / 2 * np.log(2 * np.pi))
        out.append(ev / n)
    return float(np.mean(out))


def ref_between(f, y):
    g = np.empty_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    return np.cov(g, rowvar=False, bias=True)


def ref_hscore(f, y):
    f = f.astype(np.float64)
    return float(np.trace(np.linalg.pinv(np.cov(f, rowvar=False, bias=True), rcond=1e-15) @ ref_between(f, y)))


def ref_hscore_shrink(f, y):
    from sklearn.covariance import ledoit_wolf_shrinkage

    f = f.astype(np.float64)
    a = ledoit_wolf_shrinkage(f)
    cov = np.cov(f, rowvar=False, bias=True)
    d = cov.shape[0]
    shrunk = (1 - a) * cov + a * np.trace(cov) / d * np.eye(d)
    return float(np.trace(np.linalg.inv(shrunk) @ ((1 - a) * ref_between(f, y))))


def ref_leep(logits, y):
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(y)
    classes = np.unique(y)
    joint = np.stack([p[y == c].sum(0) / n for c in classes])  # P(y, z)
    cond = joint / joint.sum(0, keepdims=True)
    yi = np.searchsorted(classes, y)
    return float(np.mean(np.log(np.einsum("nz,nz->n", p, cond[yi]))))


def ref_nce(logits, y):
    z = np.argmax(logits, axis=1)
    n = len(y)
    total = 0.0
    for zv in np.unique(z):
        pz = np.mean(z == zv)
        for yv in np.unique(y):
            pyz = np.sum((z == zv) & (y == yv)) / n
            if pyz > 0:
                total += pyz * np.log(pyz / pz)
    return total


def ref_gmm_posteriors(x, k, max_iter=100, tol=1e-3, reg=1e-6, seed=0):
    n, d = x.shape
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    mu = x[idx].copy()
    var = np.tile(x.var(0) + reg, (k, 1))
    w = np.full(k, 1.0 / k)

    def e_step():
        logp = np.stack([-0.5 * (d * np.log(2 * np.pi) + np.log(var[j]).sum() + ((x - mu[j]) ** 2 / var[j]).sum(1))
                         for j in range(k)], axis=1) + np.log(w)
        norm = scipy.special.logsumexp(logp, axis=1)
        return norm.mean(), np.exp(logp - norm[:, None])

    lb = -np.inf
    for _ in range(max_iter):
        prev = lb
        lb, r = e_step()
        nk = r.sum(0) + 10 * np.finfo(np.float64).eps
        mu = r.T @ x / nk[:, None]
        var = np.stack([(r[:, j:j + 1] * (x - mu[j]) ** 2).sum(0) / nk[j] for j in range(k)]) + reg
        w = nk / n
        if abs(lb - prev) < tol:
            break
    return e_step()[1]


def ref_nleep(f, y, variance=0.8, per_class=5):
    f = f.astype(np.float64)
    xc = f - f.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    ratio = np.cumsum(s ** 2) / np.sum(s ** 2)
    k = int(np.searchsorted(ratio, variance, side="right")) + 1
    post = ref_gmm_posteriors(xc @ vt[:k].T, per_class * len(np.unique(y)))
    return ref_leep(np.log(np.maximum(post, 1e-300)), y)


def ref_sfda(f, y, a=5.0):
    """SFDA through the generalised eigenproblem of the Fisher criterion, as the paper writes it."""
    f = f.astype(np.float64).copy()
    n, d = f.shape
    classes = np.unique(y)
    priors = np.array([np.mean(y == c) for c in classes])

    def fit(x, lam):
        means = np.stack([x[y == c].mean(0) for c in classes])
        sw = sum(p * np.cov(x[y == c], rowvar=False, bias=True) for p, c in zip(priors, classes))
        if lam is None:
            lam = max(np.exp(-a * np.linalg.eigvalsh(sw)[-1]), 1e-10)
        shrink = lambda m: (1 - lam) * m + lam * np.trace(m) / d * np.eye(d)  # noqa: E731
        sw_l = shrink(sw)
        sb = shrink(np.cov(x, rowvar=False, bias=True)) - sw_l
        _, vecs = scipy.linalg.eigh(sb, sw_l)
        coef = means @ vecs @ vecs.T
        logits = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(priors)
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True), lam, means

    prob, lam, means = fit(f, None)
    prob = np.exp(prob) / np.exp(prob).sum(1, keepdims=True)
    for i, c in enumerate(classes):
        rows = y == c
        other = (means.sum(0) - means[i]) / (len(classes) - 1)
        p = prob[rows, i][:, None]
        f[rows] = p * f[rows] + (1 - p) * other
    prob, _, _ = fit(f, lam)
    return float(np.mean(prob[np.arange(n), np.searchsorted(classes, y)]))


def ref_transrate(f, y, eps=1e-4):
    def rate(z):
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))[1]

    z = f.astype(np.float64) - f.mean(0)
    classes = np.unique(y)
    return rate(z) - sum(rate(z[y == c]) for c in classes) / len(classes)


def ref_gbc(f, y, gaussian="spherical"):
    f = f.astype(np.float64)
    classes = np.unique(y)
    stats = []
    for c in classes:
        v = np.maximum(f[y == c].var(0), 1e-4)
        stats.append((f[y == c].mean(0), np.full_like(v, v.mean()) if gaussian == "spherical" else v))
    total = 0.0
    for i in range(len(classes)):
        for j in range(len(classes)):
            if i != j:
                (m1, v1), (m2, v2) = stats[i], stats[j]
                v = (v1 + v2) / 2
                db = np.sum((m1 - m2) ** 2 / v) / 8 + 0.5 * (np.log(v).sum() - 0.5 * np.log(v1).sum()
                                                             - 0.5 * np.log(v2).sum())
                total += np.exp(-db)
    return -total


REFS = {"logme": lambda f, y: ref_logme(f, y), "hscore": ref_hscore, "hscore_shrink": ref_hscore_shrink,
        "nleep": ref_nleep, "sfda": ref_sfda, "transrate": ref_transrate, "gbc": ref_gbc}


def random_problem(seed=0, n=300, d=12, c=4, offset=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    centres = rng.normal(size=(c, d)) * 2
    f = centres[y] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d) + offset
    logits = rng.normal(size=(n, 7)) + 2 * np.eye(7)[y % 7]
    return f.astype(np.float32), y, logits.astype(np.float32)


# --------------------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("name", list(REFS))
@pytest.mark.parametrize("seed", [0, 1])
def test_scores_match_numpy_reference_on_random_features(name, seed):
    f, y, _ = random_problem(seed)
    if name == "nleep":  # the exact float64 fit; the default float32 EM is checked below
        ours = transfer.nleep(f, y, dtype="float64")
    else:
        ours = transfer.compute_scores(f, y, scores=[name])[name]
    close(ours, REFS[name](f, y))


def test_nleep_float32_mixture_is_close_to_the_float64_fit():
    f, y, _ = random_problem(0)
    close(transfer.compute_scores(f, y, scores=["nleep"])["nleep"], ref_nleep(f, y), rtol=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_leep_and_nce_match_reference(seed):
    f, y, logits = random_problem(seed)
    got = transfer.compute_scores(f, y, logits=logits, scores=["leep", "nce"])
    close(got["leep"], ref_leep(logits, y))
    close(got["nce"], ref_nce(logits, y))


def test_logme_regression_and_wide_features_match_reference():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(200, 8))
    t = np.stack([f @ rng.normal(size=8) + rng.normal(size=200), rng.normal(size=200) * 3 + 20], 1)
    close(transfer.logme(f, targets=t), ref_logme(f, targets=t))
    close(transfer.logme(f, targets=t[:, 0]), ref_logme(f, targets=t[:, :1]))
    # more dimensions than images: zero eigenvalues enter the log-determinant as log(alpha)
    wide, yw = rng.normal(size=(20, 40)), rng.integers(0, 3, 20)
    close(transfer.logme(wide, yw), ref_logme(wide, yw))


def test_streaming_statistics_equal_one_block():
    f, y, _ = random_problem(2, n=500)
    one = transfer.stats_from_arrays(f, y, chunk=10_000)
    many = transfer.stats_from_arrays(f, y, chunk=37)
    for fn in (transfer.logme_from_stats, transfer.hscore_from_stats, transfer.hscore_shrink_from_stats):
        close(fn(many), fn(one), rtol=1e-9)
    # LogME and the plain H-score skip the fourth moments; the shrinkage, which needs them, says so
    lean = transfer.stats_from_arrays(f, y, chunk=37, fourth_moments=False)
    close(transfer.logme_from_stats(lean), transfer.logme_from_stats(one), rtol=1e-9)
    with pytest.raises(ValueError, match="fourth_moments=True"):
        transfer.hscore_shrink_from_stats(lean)


# ---------------------------------------------------------------------------------------------- properties
def test_logme_invariant_to_reordering_images():
    f, y, _ = random_problem(4)
    perm = np.random.default_rng(0).permutation(len(y))
    close(transfer.logme(f[perm], y[perm]), transfer.logme(f, y), rtol=1e-9)


@pytest.mark.parametrize("name", ["hscore", "hscore_shrink"])
def test_hscore_invariant_to_orthogonal_rotation(name):
    f, y, _ = random_problem(5)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(f.shape[1], f.shape[1])))
    rotated = f.astype(np.float64) @ q
    a = transfer.compute_scores(f, y, scores=[name])[name]
    close(transfer.compute_scores(rotated, y, scores=[name])[name], a, rtol=1e-8)


def test_leep_of_an_exact_source_head_is_the_maximum():
    _, y, logits = random_problem(6)
    exact = np.where(np.eye(4)[y] > 0, 0.0, -1e4)  # a head whose prediction is the target label itself
    best = transfer.leep(exact, y)
    assert best == pytest.approx(0.0, abs=1e-12)  # log 1: LEEP is a mean log-probability, at most 0
    rng = np.random.default_rng(0)
    others = (logits, rng.normal(size=(len(y), 4)), 3.0 * np.eye(4)[y], exact + 1e4 * (rng.random(exact.shape) < 0.05))
    for other in others:
        assert transfer.leep(other, y) < best


def test_bad_input_is_one_usage_error_each():
    f, y, _ = random_problem(0, n=40)
    with pytest.raises(UsageError, match="at least two classes"):
        transfer.compute_scores(f, np.zeros(len(f), dtype=int))
    with pytest.raises(UsageError, match="more images than classes"):
        transfer.compute_scores(f[:3], np.arange(3))
    bad = f.copy()
    bad[3, 2] = np.nan
    with pytest.raises(UsageError, match="non-finite"):
        transfer.compute_scores(bad, y, scores=["logme"])
    with pytest.raises(UsageError, match="classifier head"):
        transfer.compute_scores(f, y, scores=["leep"])
    with pytest.raises(UsageError, match="unknown score"):
        transfer.check_scores(["logmee"])


# ------------------------------------------------------------------------------------------ cached features
@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return probe.extract_features("test_resnet", "digits", splits=["train"], taps=("pooled", "logits"),
                                  cache_dir=cache, random_init=True, img_size=32, batch_size=64, workers=0,
                                  progress=False)["train"]


def test_scores_from_the_cache_match_references(digits_cache):
    import h5py

    with h5py.File(digits_cache.path, "r") as f:
        feats = f["features/pooled"][:].astype(np.float64)
        logits = f["features/logits"][:].astype(np.float64)
        y = f["labels"][:]
    assert logits.shape[1] > 1 and feats.shape[0] == len(y)
    got = transfer.scores_from_cache(digits_cache, chunk=500)  # several blocks
    assert set(got) == set(transfer.SCORES)
    for name, ref in REFS.items():
        if name in ("nleep", "sfda"):
            continue  # in-memory scores: the same code path as the random features; checked on a subset below
        close(got[name], ref(feats, y))
    close(got["leep"], ref_leep(logits, y))
    close(got["nce"], ref_nce(logits, y))
    sub = np.isin(y, [0, 1, 2])
    close(transfer.sfda(feats[sub], y[sub]), ref_sfda(feats[sub], y[sub]))
    close(transfer.nleep(feats[sub][:150], y[sub][:150], dtype="float64"), ref_nleep(feats[sub][:150], y[sub][:150]))


def test_regression_logme_from_the_cache_streams_the_targets(digits_cache):
    import h5py

    with h5py.File(digits_cache.path, "r") as f:
        feats = f["features/pooled"][:].astype(np.float64)
        y = f["labels"][:]
    age = y * 3.0 + np.random.default_rng(0).normal(size=len(y))  # a continuous target aligned with the rows
    got = transfer.scores_from_cache(digits_cache, targets=age, chunk=300)
    assert list(got) == ["logme"]
    close(got["logme"], ref_logme(feats, targets=age[:, None]))


def test_logits_tap_refused_for_a_backbone_without_head():
    from probe._taps import check_taps

    class Headless:
        num_classes = 0

    with pytest.raises(UsageError, match="no classifier head"):
        check_taps(Headless(), ("logits",), "headless_net")


# ------------------------------------------------------------------------------------------------ judgement
def _write_scores(results_dir, values: dict, *, dataset: str, score: str = "logme"):
    """Score rows of ``probe transfer`` for the fixture's configurations (same identity as its other rows)."""
    from probe.results import job_stem, make_row, write_results
    from tests._results_fixture import BACKBONES

    for backbone, value in values.items():
        row = make_row(backbone=backbone, family=BACKBONES[backbone], weights="hub", dataset=dataset, tap="pooled",
                       probe="transfer", params={"score": score}, selected=False, split="train", shots=0, seed=0,
                       val_fraction=0.0, select_metric="-", cache_key=f"key-{backbone}-{dataset}", n_train=40,
                       n_eval=40, fit_seconds=0.1, score=score, score_value=value,
                       protocol=transfer.transfer_protocol(score, task="classification", tap="pooled"))
        stem = job_stem(results_dir, backbone=backbone, dataset=dataset, probe="transfer", tap="pooled", tag=score)
        write_results([row], str(stem) + ".parquet")


@pytest.fixture()
def judged_results(tmp_path):
    from tests._results_fixture import write_fixture

    truth = write_fixture(tmp_path, layerwise=False, few_shot=False)
    scores = {"alpha": {"vit_a": 3.0, "vit_b": 1.0, "cnn_c": 2.0}, "beta": {"vit_a": 0.5, "vit_b": 0.1, "cnn_c": 0.9}}
    for dataset, values in scores.items():
        _write_scores(tmp_path, values, dataset=dataset)
        _write_scores(tmp_path, {b: {"vit_a": 5.0, "vit_b": 6.0, "cnn_c": 25.0}[b] for b in values},
                      dataset=dataset, score="params")
    return tmp_path, truth, scores


def test_agreement_matches_scipy_and_hand_counts(judged_results):
    from probe.analysis import _transfer as judge

    results, truth, scores = judged_results
    targets = judge.target_table(results)
    table = judge.agreement(judge.score_table(results), targets, n_boot=200)
    for dataset in ("alpha", "beta"):
        names = sorted(scores[dataset])
        for against in ("finetune", "frozen"):
            want = {b: truth["finetune"][(dataset, b)] if against == "finetune"
                    else truth["best_frozen"][(dataset, b)][2] for b in names}
            row = table.filter((table["dataset"] == dataset) & (table["score"] == "logme")
                               & (table["against"] == against)).row(0, named=True)
            s = np.array([scores[dataset][b] for b in names])
            t = np.array([want[b] for b in names])
            assert row["n"] == 3
            assert row["wtau"] == pytest.approx(scipy.stats.weightedtau(s, t).statistic, abs=1e-12)
            assert row["tau"] == pytest.approx(scipy.stats.kendalltau(s, t).statistic, abs=1e-12)
            pick = names[int(np.argmax(s))]
            assert row["hit"] == float(want[pick] == max(t))
            assert row["regret"] == pytest.approx(max(t) - want[pick], abs=1e-12)
            assert row["wtau_low"] <= row["wtau"] <= row["wtau_high"] or math.isnan(row["wtau_low"])
    # the frozen target is chosen on val: on alpha, vit_a's logistic probe (val 0.90, test 0.70), not kNN (test 0.85)
    frozen = targets.filter((targets["dataset"] == "alpha") & (targets["backbone_config"].str.contains("vit_a")))
    assert frozen["frozen"][0] == pytest.approx(truth["best_frozen"][("alpha", "vit_a")][2])
    assert frozen["knn_val"][0] == pytest.approx(0.80) and frozen["logistic_val"][0] == pytest.approx(0.90)
    # baselines are judged beside the scores: params ranks cnn_c first, the fine-tuning winner on both datasets
    params = table.filter((table["score"] == "params") & (table["against"] == "finetune"))
    assert params["hit"].to_list() == [1.0, 1.0]
    assert set(table["score"].unique()) >= {"logme", "params", "knn_val", "logistic_val"}


def test_mean_agreement_is_the_mean_over_datasets(judged_results):
    from probe.analysis import _transfer as judge

    results, _, _ = judged_results
    scores, targets = judge.score_table(results), judge.target_table(results)
    per = judge.agreement(scores, targets, n_boot=0)
    means = judge.mean_agreement(scores, targets, n_boot=100)
    for stat in judge.STATISTICS:
        want = per.filter((per["score"] == "logme") & (per["against"] == "finetune"))[stat].mean()
        got = means.filter((means["score"] == "logme") & (means["against"] == "finetune"))
        assert got["datasets"][0] == 2
        assert got[stat][0] == pytest.approx(want, abs=1e-12)


def test_report_section_has_the_tables_and_the_figure(judged_results, tmp_path_factory):
    from probe.analysis import _transfer as judge

    results, _, _ = judged_results
    out = tmp_path_factory.mktemp("fig")
    saved = []

    def save(fig, name):
        path = out / f"{name}.png"
        fig.savefig(path)
        saved.append(path)
        return path.name

    lines = judge.transfer_section(results, save, n_boot=100)
    text = "\n".join(lines)
    assert lines[0] == "## Can frozen features predict fine-tuning?"
    assert "### alpha (classification, 3 configurations)" in text and "| LogME |" in text
    assert "| kNN probe (val) |" in text and "| parameters |" in text and "Across datasets" in text
    assert saved and saved[0].stat().st_size > 0 and f"({saved[0].name})" in text


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_writes_one_row_per_score(tmp_path):
    import polars as pl
    import timm

    proc = run_cli("transfer", "test_vit", "digits", "--random-init", "--img-size", "32", "--scores", "logme",
                   "gbc", "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "r", "--workers", "0",
                   "--no-progress", check=0)
    frame = probe.scan_results(tmp_path / "r").collect()
    assert sorted(frame["score"].to_list()) == ["gbc", "gflops", "logme", "params"]
    assert set(frame["probe"]) == {"transfer"} and set(frame["split"]) == {"train"}
    assert frame["protocol"].n_unique() == 4 and frame["backbone_config"].n_unique() == 1
    assert frame.filter(pl.col("score") == "params")["score_value"][0] == pytest.approx(
        sum(p.numel() for p in timm.create_model("test_vit", num_classes=0, img_size=32).parameters()))
    assert frame.filter(pl.col("score") == "gflops")["score_value"][0] > 0
    assert proc.stdout.count("\n") == 4


@pytest.mark.parametrize("case", ["one-class", "few-images", "no-head", "weights-many"])
def test_cli_bad_input_is_one_line(tmp_path, case):
    from tests._helpers import write_image_folder

    args = ["--random-init", "--img-size", "32", "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "r",
            "--workers", "0", "--no-progress"]
    if case == "one-class":
        write_image_folder(tmp_path / "d", classes=("cat",), per_class=4, splits=("train",))
        proc = run_cli("transfer", "test_vit", f"imagefolder:{tmp_path / 'd'}", *args)
        assert_one_line_error(proc, 2, "at least two classes")
    elif case == "few-images":
        write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=1, splits=("train",))
        proc = run_cli("transfer", "test_vit", f"imagefolder:{tmp_path / 'd'}", *args)
        assert_one_line_error(proc, 2, "more images than classes")
    elif case == "no-head":
        proc = run_cli("transfer", "vit_small_patch14_dinov2.lvd142m", "digits", "--scores", "leep", *args)
        assert_one_line_error(proc, 2, "no classifier head", "logits")
    else:
        proc = run_cli("transfer", "test_vit", "test_resnet", "digits", "--weights", tmp_path / "w.pt",
                       "--cache-dir", tmp_path / "c")
        assert_one_line_error(proc, 2, "--weights")
    assert not (tmp_path / "r").exists()


def test_default_scores_leave_out_the_head_scores_for_a_headless_checkpoint():
    assert transfer.has_head("test_vit") and not transfer.has_head("vit_small_patch14_dinov2.lvd142m")
    assert "leep" in transfer.default_scores("test_vit")
    names = transfer.default_scores("vit_small_patch14_dinov2.lvd142m")
    assert "leep" not in names and "nce" not in names and "logme" in names
    assert transfer.default_scores("test_vit", task="regression") == ("logme",)
    assert "leep" not in transfer.default_scores("test_vit", weights="some.safetensors")


def test_wide_gram_matrix_from_its_block_upper_triangle():
    """D >= 256 takes the block upper triangle and mirrors it: the full product, its off-diagonal blocks mirrored
    exactly."""
    import torch

    from probe._linalg import gram

    a = torch.as_tensor(np.random.default_rng(7).normal(size=(50, 301)))
    g = gram(a)
    assert torch.equal(g[:75, 75:], g[75:, :75].T)
    np.testing.assert_allclose(g.numpy(), a.numpy().T @ a.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["random", "rank-deficient", "one-column", "repeated"])
def test_eigen_coordinates_without_the_eigenvectors_equal_scipy_eigh(case):
    """The tridiagonal route (dsytrd, Q^T B by dormqr, dstevd) gives LAPACK's eigenvalues and V^T B: equal to
    scipy's eigh and its eigenvectors' products (up to each eigenvector's sign; within a repeated eigenvalue only
    the squared length of B's coordinates in the eigenspace is defined, and that is compared)."""
    import torch

    from probe._linalg import eigh_coordinates

    rng = np.random.default_rng(11)
    f = rng.normal(size=(40, 30)) + 3.0
    if case == "rank-deficient":
        f = rng.normal(size=(12, 30))  # rank 12 < 30: 18 zero eigenvalues
    a = f.T @ f
    if case == "repeated":
        q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
        a = (q * np.repeat([1.0, 5.0, 9.0], 10)) @ q.T
    b = rng.normal(size=(30, 1 if case == "one-column" else 7))
    w, z = eigh_coordinates(torch.from_numpy(a), torch.from_numpy(b))
    w_ref, v_ref = scipy.linalg.eigh(a)
    z_ref = v_ref.T @ b
    scale = np.abs(w_ref).max()
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=0, atol=1e-12 * scale)
    if case == "repeated":
        for lo in range(0, 30, 10):
            np.testing.assert_allclose((z.numpy()[lo:lo + 10] ** 2).sum(0), (z_ref[lo:lo + 10] ** 2).sum(0),
                                       rtol=1e-10)
    elif case == "rank-deficient":  # the null space is one repeated eigenvalue: its share of B as a whole
        np.testing.assert_allclose(np.abs(z.numpy()[18:]), np.abs(z_ref[18:]), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose((z.numpy()[:18] ** 2).sum(0), (z_ref[:18] ** 2).sum(0), rtol=1e-10)
    else:
        np.testing.assert_allclose(np.abs(z.numpy()), np.abs(z_ref), rtol=1e-8, atol=1e-10)


def test_gram_sum_over_blocks_equals_one_float64_product():
    """GramSum adds each block's a^T a into one triangle (dsyrk on the CPU) and mirrors it: equal to numpy's product
    of all rows; a NaN in any block leaves the diagonal's sum non-finite."""
    import torch

    from probe._linalg import GramSum

    rng = np.random.default_rng(5)
    a = rng.normal(size=(301, 257)) * 10.0 + 1.0
    s = GramSum(257)
    for lo, hi in [(0, 100), (100, 101), (101, 301)]:
        s.add(torch.from_numpy(a[lo:hi]))
    total = s.total().numpy()
    assert total.flags.c_contiguous and np.array_equal(total, total.T)
    np.testing.assert_allclose(total, a.T @ a, rtol=1e-12, atol=1e-9)
    assert math.isclose(s.trace(), float(np.trace(a.T @ a)), rel_tol=1e-12)
    s.add(torch.from_numpy(a[:3].T.copy().T))  # a non-contiguous view of rows
    np.testing.assert_allclose(s.total().numpy(), a.T @ a + a[:3].T @ a[:3], rtol=1e-12, atol=1e-9)
    bad = a[:4].copy()
    bad[2, 100] = np.nan
    s.add(torch.from_numpy(bad))
    assert not math.isfinite(s.trace())
