"""Faces, identity and continuous targets: FG-NET names, folds, regression probes, identification, verification,
pairs files, and the task sweeps end to end (results read back, report section)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probe._cv import carve_groups, cluster_bootstrap, cv_folds
from probe._errors import UsageError
from probe._faces import Pairs, draw_pairs, parse_fgnet_name, read_pairs
from probe._retrieval import loo_retrieval, retrieve
from probe._verify import best_threshold, verify
from tests._helpers import assert_one_line_error, run_main

# ------------------------------------------------------------------------------------------------ data


@pytest.mark.parametrize("name,subject,age", [("001A02.JPG", "001", 2), ("001A43a.JPG", "001", 43),
                                              ("078A11b.jpg", "078", 11), ("082a00.png", "082", 0)])
def test_fgnet_names(name, subject, age):
    assert parse_fgnet_name(name) == (subject, age)


@pytest.mark.parametrize("name", ["001B02.JPG", "A02.JPG", "001A.JPG", "001A02ab.JPG", "portrait.jpg"])
def test_malformed_fgnet_name_is_one_line_naming_the_file(name):
    with pytest.raises(UsageError, match=name.replace(".", r"\.")) as info:
        parse_fgnet_name(name)
    assert "\n" not in str(info.value)


def _fgnet_folder(root, names):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for i, n in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8)).save(root / "images" / n, format="JPEG")
    return root


def test_fgnet_dataset_carries_identity_and_age(tmp_path):
    from probe._datasets import open_dataset

    root = _fgnet_folder(tmp_path / "FGNET", ["001A02.JPG", "001A43a.JPG", "001A43b.JPG", "010A05.JPG"])
    (root / "images" / ".DS_Store").write_bytes(b"x")  # hidden files are not images
    src = open_dataset(f"fgnet:{root}")
    assert src.classes == ["001", "010"] and src.split_names == ["train"]
    assert src.tasks == ("classification", "identification", "verification", "regression")
    assert src.ids["train"] == ["001A02.JPG", "001A43a.JPG", "001A43b.JPG", "010A05.JPG"]
    assert src.labels["train"].tolist() == [0, 0, 0, 1]
    assert src.target("age", "train").tolist() == [2, 43, 43, 5]
    assert np.asarray(src.load("train", 3)).shape == (8, 8, 3)
    with pytest.raises(UsageError, match="no target 'height'.*age"):
        src.target("height", "train")


def test_malformed_fgnet_file_stops_the_sweep_with_one_line(tmp_path, capsys):
    root = _fgnet_folder(tmp_path / "FGNET", ["001A02.JPG", "oops.JPG"])
    proc = run_main(capsys, "sweep", "test_vit", f"fgnet:{root}", "--random-init", "--task", "regression", "--cv", "2",
                    "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "r")
    assert_one_line_error(proc, 2, "oops.JPG", "<subject>A<age>")
    assert not (tmp_path / "c").exists()


def test_manifest_target_column(tmp_path):
    from probe._datasets import open_dataset

    from PIL import Image

    for i in range(3):
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text("path,target\n0.png,1.5\n1.png,20\n2.png,3e1\n")
    src = open_dataset(f"csv:{tmp_path / 'm.csv'}")
    assert src.target("target", "train").tolist() == [1.5, 20.0, 30.0]
    before = src.fingerprint()
    (tmp_path / "m.csv").write_text("path,target\n0.png,1.5\n1.png,21\n2.png,3e1\n")
    assert open_dataset(f"csv:{tmp_path / 'm.csv'}").fingerprint() != before  # targets are data
    (tmp_path / "m.csv").write_text("path,target\n0.png,1.5\n1.png,old\n")
    with pytest.raises(UsageError, match="row 2 has target 'old'"):
        open_dataset(f"csv:{tmp_path / 'm.csv'}")


# ------------------------------------------------------------------------------------------------ folds


def test_leave_one_person_out_never_shares_a_person():
    rng = np.random.default_rng(0)
    people = rng.integers(0, 9, size=120)
    ids = [f"img{i}" for i in range(120)]
    folds = cv_folds(ids, k=9, groups=people)
    assert len(folds) == 9
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(120))  # every image is held out exactly once
    for tr, te in folds:
        assert len(np.unique(people[te])) == 1  # leave ONE person out
        assert not set(people[tr]) & set(people[te])
        assert len(tr) + len(te) == 120
        # the inner val carve of a training fold is grouped too
        inner_tr, inner_val = carve_groups(np.asarray(ids)[tr], fraction=0.25, seed=1, groups=people[tr])
        assert not set(people[tr][inner_tr]) & set(people[tr][inner_val])
    grouped = cv_folds(ids, k=3, groups=people, seed=4)
    for tr, te in grouped:
        assert not set(people[tr]) & set(people[te])
    with pytest.raises(UsageError, match="--cv 9 for leave-one-person-out"):
        cv_folds(ids, k=10, groups=people)


def test_stratified_folds_are_balanced_and_order_free():
    labels = np.repeat(np.arange(4), [10, 10, 7, 3])
    ids = [f"x{i}" for i in range(30)]
    folds = cv_folds(ids, k=3, labels=labels, seed=2)
    for _, te in folds:
        assert len(te) == 10
        assert all(abs(np.sum(labels[te] == c) - np.sum(labels == c) / 3) < 1 for c in range(4))
    perm = np.random.default_rng(1).permutation(30)
    shuffled = cv_folds([ids[i] for i in perm], k=3, labels=labels[perm], seed=2)
    as_sets = lambda fs, order: sorted(sorted(order[te].tolist()) for _, te in fs)  # noqa: E731
    assert as_sets(folds, np.arange(30)) == as_sets(shuffled, perm)
    assert as_sets(cv_folds(ids, k=3, labels=labels, seed=3), np.arange(30)) != as_sets(folds, np.arange(30))


def test_cluster_bootstrap_resamples_people():
    values = np.r_[np.zeros(50), np.ones(50)]
    people = np.r_[np.zeros(50), np.ones(50)]  # two people: the mean is 0, 0.5 or 1 in every resample
    low, high = cluster_bootstrap(values, people, n_boot=400, seed=0)
    assert low == 0.0 and high == 1.0
    low, high = cluster_bootstrap(values, None, n_boot=400, seed=0)  # 100 images: a narrow interval
    assert 0.35 < low < 0.5 < high < 0.65


# ------------------------------------------------------------------------------------------------ regression


@pytest.fixture(scope="module")
def regression_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 20))
    y = X @ rng.normal(size=20) * 3 + 40 + rng.normal(size=120)
    return X, y


@pytest.mark.parametrize("n", [120, 12])  # primal (n > d) and dual (n < d) decompositions
def test_ridge_regression_matches_scikit_learn(regression_data, n):
    from sklearn.linear_model import Ridge

    from probe.probes import RidgeRegressionProbe

    X, y = regression_data
    X, y = X[:n], y[:n]
    Xe = X[:7] + 0.1
    for alpha in (0.01, 1.0, 100.0):
        ours = RidgeRegressionProbe(alpha=alpha, device="cpu").fit(X, y)
        ref = Ridge(alpha=alpha).fit(X, y)
        np.testing.assert_allclose(ours.predict(Xe), ref.predict(Xe), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-3, atol=1e-4)
    # the sweep's path (one decomposition for every alpha) gives the single fits' predictions
    import torch

    est = RidgeRegressionProbe(device="cpu")
    points = [{"alpha": a} for a in (0.01, 1.0, 100.0)]
    path = {i: p.numpy() for i, p, _ in est._sweep_path(torch.as_tensor(X, dtype=torch.float32),
                                                        torch.as_tensor(y), torch.as_tensor(Xe, dtype=torch.float32),
                                                        points)}
    for i, p in enumerate(points):
        np.testing.assert_allclose(path[i], Ridge(**p).fit(X, y).predict(Xe), rtol=1e-4, atol=1e-3)


def test_knn_regression_matches_scikit_learn(regression_data):
    from sklearn.neighbors import KNeighborsRegressor

    from probe.probes import KNNRegressionProbe

    X, y = regression_data
    for k in (1, 5, 200):
        ours = KNNRegressionProbe(k=k, temperature=None, device="cpu").fit(X[:100], y[:100]).predict(X[100:])
        ref = KNeighborsRegressor(n_neighbors=min(k, 100), metric="cosine", algorithm="brute").fit(
            X[:100], y[:100]).predict(X[100:])
        np.testing.assert_allclose(ours, ref, rtol=1e-6)
    # DINO weighting leans towards the nearest neighbour
    near = KNNRegressionProbe(k=5, temperature=1e-4, device="cpu").fit(X[:100], y[:100]).predict(X[100:])
    nn1 = KNNRegressionProbe(k=1, temperature=None, device="cpu").fit(X[:100], y[:100]).predict(X[100:])
    np.testing.assert_allclose(near, nn1, rtol=1e-6)


def test_regression_sweep_selects_on_val_and_scores_test_once(regression_data):
    from probe._cv import sweep_regression

    X, y = regression_data
    res = sweep_regression("ridge", (X[:80], y[:80]), None, (X[80:], y[80:]), grid={"alpha": [1e-2, 1.0, 1e4]},
                           seed=0, device="cpu")
    vals = [r for r in res.rows if r["split"] == "val"]
    test = [r for r in res.rows if r["split"] == "test"]
    assert len(vals) == 3 and len(test) == 1 and test[0]["selected"]
    best = min(vals, key=lambda r: r["mae"])
    assert json.loads(test[0]["params"]) == json.loads(best["params"])
    assert test[0]["n_train"] == 80 and test[0]["n_eval"] == 40 and test[0]["task"] == "regression"
    err = np.abs(res.test["pred"] - y[80:])
    assert test[0]["mae"] == pytest.approx(err.mean()) and test[0]["cs5"] == pytest.approx(np.mean(err <= 5))
    assert test[0]["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)))


# ------------------------------------------------------------------------------------------------ identification


def _tied_reference(sims, hits):
    """rank1, rank5 and AP of one query with exact ties scored as the package promises: AP by scikit-learn's
    ``average_precision_score`` (a tie group counted at once); rank-k averaged over the orders of the tie group
    holding the k-th place, from the hypergeometric chance that one of its places there draws a positive."""
    from math import comb

    from sklearn.metrics import average_precision_score

    values = np.round(sims, 10)  # exact duplicates tie; float64 noise below 1e-10 does not split them
    ap = float(average_precision_score(hits, values))
    groups = [(int(hits[values == v].sum()), int((values == v).sum())) for v in np.unique(values)[::-1]]
    out = []
    for k in (1, 5):
        before = pos_before = 0
        found = 1.0 if hits.any() else 0.0  # fewer than k candidates: every positive is inside
        for p, g in groups:
            if before + g >= k:
                m = k - before
                found = 1.0 if pos_before else 1 - comb(g - p, m) / comb(g, m)
                break
            before, pos_before = before + g, pos_before + p
        out.append(found)
    return out[0], out[1], ap


def _brute_force(X, y, top=5):
    """Reference: full similarity matrix; neighbours by a stable sort (ties: earlier row first), scores with ties
    counted (:func:`_tied_reference`)."""
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    out = {"rank1": [], "rank5": [], "ap": [], "neighbours": []}
    for q in range(len(y)):
        order = np.argsort(-np.where(np.arange(len(y)) == q, -np.inf, S[q]), kind="stable")
        order = order[order != q]
        hits = y[order] == y[q]
        out["neighbours"].append(order[:top])
        if not hits.any():
            for k in ("rank1", "rank5", "ap"):
                out[k].append(np.nan)
            continue
        for k, v in zip(("rank1", "rank5", "ap"), _tied_reference(S[q, order], hits)):
            out[k].append(v)
    return {k: np.asarray(v) for k, v in out.items()}


def test_identification_against_brute_force_with_known_neighbours():
    # 40 people around their own direction, 2-7 images each, plus one person seen once (not scored), duplicated
    # images (exact ties) and a few people placed next to others (errors at rank 1)
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(41, 32))
    y = np.concatenate([np.full(2 + p % 6, p) for p in range(40)] + [np.array([40])])
    X = (centres[y] + 0.35 * rng.normal(size=(len(y), 32))).astype(np.float32)
    X[5] = X[6] = X[7]  # exact ties among one person's images (scored as a group)
    X[2] = X[9]  # and between two people's (rows 2: person 1, 9: person 2): a positive tied with a negative
    X[y == 3] = centres[2] + 0.4 * rng.normal(size=((y == 3).sum(), 32))  # person 3 looks like person 2
    # person 41: six unrelated images, ranked far down each other's lists (past the top-K: rows sorted in full)
    y = np.r_[y, np.full(6, 41)]
    X = np.r_[X, rng.normal(size=(6, 32)).astype(np.float32) * 3]
    ref = _brute_force(X.astype(np.float64), y)
    for method in ("auto", "sort"):
        r = loo_retrieval(X, y, method=method, block_bytes=4 * len(y) * 13)  # 13 queries a block: chunked
        assert r.valid.tolist() == (y != 40).tolist()
        assert np.isnan(r.rank1[y == 41]).sum() == 0 and r.ap[y == 41].max() < 0.5
        np.testing.assert_allclose(r.rank1, ref["rank1"], rtol=1e-12)
        np.testing.assert_allclose(r.rank5, ref["rank5"], rtol=1e-12)
        np.testing.assert_allclose(r.ap, ref["ap"], rtol=1e-12)
        np.testing.assert_array_equal(r.neighbours, ref["neighbours"])
    m = r.metrics()
    assert m["rank1"] == pytest.approx(np.nanmean(ref["rank1"])) and 0 < m["map"] <= m["rank5"] <= 1
    assert m["rank1"] < 1.0  # person 3 is sometimes found as person 2


def test_retrieval_ties_scored_as_scikit_learn_whatever_the_file_order():
    from sklearn.metrics import average_precision_score

    # by hand: query 0's two nearest images are one duplicated image, filed under person 0 (row 1) and person 1
    # (row 2). AP counts the tie group at once (1 positive in 2: 1/2, as scikit-learn); rank-1 is half a hit
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.9, 0.1], [0.0, 1.0]])
    for y in (np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])):  # the same images, the duplicates' rows swapped
        for method in ("auto", "sort"):
            r = loo_retrieval(X, y, method=method)
            assert (r.rank1[0], r.rank5[0], r.ap[0]) == pytest.approx((0.5, 1.0, 0.5))
    # random people with duplicated images, within a person and across people: AP equals scikit-learn's on every
    # query, and every score follows an image, not its row, when the files are shuffled
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(12), 4)
    X = (rng.normal(size=(12, 24))[y] + 0.8 * rng.normal(size=(len(y), 24))).astype(np.float32)
    for i, j in ((0, 1), (0, 5), (9, 30), (17, 18), (17, 40), (44, 2)):
        X[j] = X[i]
    Xn = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
    S = np.round(Xn @ Xn.T, 10)
    perm = rng.permutation(len(y))
    for method in ("auto", "sort"):
        r = loo_retrieval(X, y, method=method, block_bytes=4 * len(y) * 7)
        for q in range(len(y)):
            others = np.arange(len(y)) != q
            assert r.ap[q] == pytest.approx(average_precision_score(y[others] == y[q], S[q, others]), rel=1e-12)
        shuffled = loo_retrieval(X[perm], y[perm], method=method)
        for name in ("rank1", "rank5", "ap"):
            np.testing.assert_allclose(getattr(shuffled, name), getattr(r, name)[perm], rtol=1e-12)
    assert r.rank1[0] == pytest.approx(0.5)  # row 0's duplicates: row 1 (its person) and row 5 (another)


def test_average_precision_by_hand():
    # query 0's ranking of the others: row 2 (same), row 1 (other), row 3 (same) -> AP = (1/1 + 2/3) / 2
    X = np.array([[1.0, 0.0], [0.8, 0.6], [0.99, 0.141], [0.6, 0.8]])
    y = np.array([0, 1, 0, 0])
    r = loo_retrieval(X, y)
    assert r.neighbours[0, :3].tolist() == [2, 1, 3]
    assert r.ap[0] == pytest.approx((1 + 2 / 3) / 2) and r.rank1[0] == 1.0
    assert not r.valid[1] and np.isnan(r.rank1[1])



def test_gallery_probe_retrieval_against_brute_force():
    # queries rank a separate gallery: no self-exclusion, identities missing from the gallery are not scored, and
    # gallery images tied with each other keep the earlier gallery row first
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(12, 16))
    gy = np.repeat(np.arange(10), 3)  # people 0-9 in the gallery, three images each
    qy = np.r_[np.arange(12), np.arange(6)]  # people 10 and 11 only query: not valid
    G = (centres[gy] + 0.6 * rng.normal(size=(len(gy), 16))).astype(np.float32)
    G[4] = G[1]  # an exact tie between two gallery rows of different people
    Q = (centres[qy] + 0.6 * rng.normal(size=(len(qy), 16))).astype(np.float32)
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    S = Qn.astype(np.float64) @ Gn.T.astype(np.float64)
    for method in ("auto", "sort"):
        r = retrieve(Q, qy, G, gy, method=method, block_bytes=4 * len(gy) * 5)
        assert r.valid.tolist() == (qy < 10).tolist()
        for q in np.flatnonzero(qy < 10):
            order = np.argsort(-S[q], kind="stable")
            hits = gy[order] == qy[q]
            assert r.neighbours[q].tolist() == order[:5].tolist()
            assert [r.rank1[q], r.rank5[q], r.ap[q]] == pytest.approx(_tied_reference(S[q, order], hits), rel=1e-12)
    with pytest.raises(ValueError, match="both gallery_features and gallery_labels"):
        retrieve(Q, qy, G)

# ------------------------------------------------------------------------------------------------ verification


def _pair_features(sims):
    """Two rows per pair whose cosine similarity is exactly the given value."""
    rows = []
    for s in sims:
        rows += [[1.0, 0.0], [s, np.sqrt(1 - s * s)]]
    return np.asarray(rows)


def test_verification_fold_logic_by_hand():
    # fold:      0            1           2
    # same:      0.9          0.7         0.4
    # different: 0.25         0.5         0.2
    sims = [0.9, 0.25, 0.7, 0.5, 0.4, 0.2]
    pairs = Pairs(a=np.arange(0, 12, 2), b=np.arange(1, 12, 2), same=np.array([1, 0, 1, 0, 1, 0], dtype=bool),
                  fold=np.array([0, 0, 1, 1, 2, 2]))
    v = verify(_pair_features(sims), pairs)
    # fold 0 is judged at the threshold best on folds 1-2: 0.3 (3 of 4 right, tied with 0.6: the lower wins);
    # fold 1 at 0.325 and fold 2 at 0.6 (4 of 4 right on the other folds)
    np.testing.assert_allclose(v.thresholds, [0.3, 0.325, 0.6])
    np.testing.assert_allclose(v.fold_accuracy, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(v.similarity, sims)
    m = v.metrics(pairs.same)
    assert m["verif_acc"] == pytest.approx(2 / 3)
    assert m["verif_acc_sd"] == pytest.approx(np.std([1.0, 0.5, 0.5], ddof=1))
    # LFW's protocol: mean ± standard error of the mean over the folds, sd (ddof 1) / sqrt(folds)
    assert m["verif_acc_se"] == pytest.approx(np.std([1.0, 0.5, 0.5], ddof=1) / np.sqrt(3))
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert m["tar_far1e3"] is None  # 3 negative pairs: FAR = 1e-3 is not attainable (needs 1,000)
    # a fold's threshold never sees the fold's own pairs
    moved = verify(_pair_features([0.9, 0.95, 0.7, 0.5, 0.4, 0.2]), pairs)
    assert moved.thresholds[0] == v.thresholds[0] and moved.fold_accuracy[0] == 0.5


def test_tar_at_far_needs_a_thousand_negative_pairs_by_hand():
    from probe._verify import MIN_NEGATIVES, Verification

    # 1,000 negatives scored 0.000, 0.001, ..., 0.999; four positives. FAR <= 1e-3 allows one false accept: the
    # threshold sits above the second-highest negative (0.998), accepting 0.999 (FAR = 1/1000) and the positives
    # 0.9985, 0.9995 and 1.0 but not 0.5: TAR = 3/4
    neg = np.arange(1000) / 1000
    pos = np.array([0.9985, 0.9995, 1.0, 0.5])
    sims = np.concatenate([neg, pos])
    same = np.concatenate([np.zeros(1000, bool), np.ones(4, bool)])
    v = Verification(similarity=sims, correct=np.zeros(len(sims), bool), thresholds=np.zeros(1),
                     fold_accuracy=np.array([0.5]))
    assert MIN_NEGATIVES == 1000 and v.metrics(same)["tar_far1e3"] == pytest.approx(3 / 4)
    # one negative fewer: one false accept is 1/999 > 1e-3, only FAR = 0 is attainable: null, not TAR at FAR = 0
    drop = np.ones(len(sims), bool)
    drop[0] = False
    v.similarity = sims[drop]
    assert v.metrics(same[drop])["tar_far1e3"] is None


def test_best_threshold_ties_go_low():
    assert best_threshold([0.9, 0.2], [False, True]) == pytest.approx(-0.8)
    assert best_threshold([0.1, 0.4, 0.35, 0.8], [False, True, False, True]) == pytest.approx(0.375)


def test_verification_pca_is_fitted_on_the_other_folds():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    pairs = draw_pairs(np.repeat(np.arange(10), 4), folds=5, seed=0)
    a = verify(X, pairs, pca_dim=3)
    X2 = X.copy()
    test_rows = np.unique(np.r_[pairs.a[pairs.fold == 0], pairs.b[pairs.fold == 0]])
    X2[test_rows] += 5.0  # fold 0's own images move: no other fold's projection or threshold may change...
    b = verify(X2, pairs, pca_dim=3)
    np.testing.assert_allclose(a.thresholds[0], b.thresholds[0])


def test_drawn_pairs_keep_people_in_one_fold():
    labels = np.repeat(np.arange(12), 4)
    p = draw_pairs(labels, folds=6, seed=1)
    assert p.n_folds == 6 and p.same.sum() == (~p.same).sum()
    for f in range(6):
        people = set(labels[p.a[p.fold == f]]) | set(labels[p.b[p.fold == f]])
        others = set(labels[p.a[p.fold != f]]) | set(labels[p.b[p.fold != f]])
        assert not people & others
    assert (labels[p.a] == labels[p.b]).tolist() == p.same.tolist()


def _lfw(root):
    from tests._helpers import write_image_folder

    write_image_folder(root, classes=("Ann_Lee", "Bo_Chen"), per_class=2, splits=("",), size=8)
    for name in ("Ann_Lee", "Bo_Chen"):  # LFW's own file names
        for i in range(2):
            (root / name / f"img_{i}.png").rename(root / name / f"{name}_{i + 1:04d}.jpg")
    return root


def test_pairs_file_parsing_and_missing_image(tmp_path, capsys):
    root = _lfw(tmp_path / "lfw")
    ids = ["Ann_Lee/Ann_Lee_0001.jpg", "Ann_Lee/Ann_Lee_0002.jpg", "Bo_Chen/Bo_Chen_0001.jpg",
           "Bo_Chen/Bo_Chen_0002.jpg"]
    (tmp_path / "pairs.txt").write_text("2\t1\nAnn_Lee\t1\t2\nAnn_Lee\t1\tBo_Chen\t2\n"
                                        "Bo_Chen 1 2\nBo_Chen 1 Ann_Lee 2\n")
    p = read_pairs(tmp_path / "pairs.txt", ids)
    assert p.a.tolist() == [0, 0, 2, 2] and p.b.tolist() == [1, 3, 3, 1]
    assert p.same.tolist() == [True, False, True, False] and p.fold.tolist() == [0, 0, 1, 1]
    (tmp_path / "bad.txt").write_text("1 1\nAnn_Lee 1 3\nAnn_Lee 1 Bo_Chen 2\n")
    with pytest.raises(UsageError, match="line 2 names image Ann_Lee/Ann_Lee_0003.jpg"):
        read_pairs(tmp_path / "bad.txt", ids)
    (tmp_path / "short.txt").write_text("1 1\nAnn_Lee 1\nAnn_Lee 1 Bo_Chen 2\n")
    with pytest.raises(UsageError, match="line 2 'Ann_Lee 1' is not 'name n1 n2"):
        read_pairs(tmp_path / "short.txt", ids)
    proc = run_main(capsys, "sweep", "test_vit", f"imagefolder:{root}", "--random-init", "--task", "verification",
                    "--pairs", tmp_path / "bad.txt", "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "r")
    assert_one_line_error(proc, 2, "Ann_Lee/Ann_Lee_0003.jpg", "bad.txt")
    assert not (tmp_path / "c").exists()  # checked before any extraction


@pytest.mark.parametrize("args,needles", [
    (["--cv-group", "subject"], ["--cv-group", "--cv K"]),
    (["--task", "regression", "--probes", "cosine"], ["ridge, knn", "cosine"]),
    (["--task", "regression"], ["no test split", "--cv"]),
    (["--task", "identification", "--probes", "logistic"], ["cross-validation", "--cv"]),
    (["--pairs", "p.txt"], ["--pairs is for --task verification"]),
    (["--task", "regression", "--cv", "1"], ["at least 2"]),
    (["--task", "verification", "--whiten", "0"], ["--whiten must be at least 1"]),
    (["--task", "identification", "--whiten", "8"], ["--whiten is for --task verification"]),
])
def test_task_flag_errors_are_one_line(tmp_path, capsys, args, needles):
    proc = run_main(capsys, "sweep", "test_vit", "faces", "--random-init", "--cache-dir", tmp_path / "c",
                    "--results-dir", tmp_path / "r", *args)
    assert_one_line_error(proc, 2, *needles)


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def face_results(tmp_path_factory):
    from probe._sweep import sweep_cached

    root = tmp_path_factory.mktemp("faces")
    kw = dict(random_init=True, img_size=32, cache_dir=root / "cache", results_dir=root / "results", progress=False,
              device="cpu")
    paths = {}
    for bb in ("test_vit", "test_resnet"):
        paths[bb, "identification"] = sweep_cached(bb, "faces", task="identification", **kw)
        paths[bb, "verification"] = sweep_cached(bb, "faces", task="verification", **kw)
        # leave-one-person-out for one backbone; 5 grouped folds for the other (the same held-out images)
        paths[bb, "regression"] = sweep_cached(bb, "faces", task="regression", probes=["ridge"],
                                               cv=20 if bb == "test_vit" else 5, cv_group="subject",
                                               grids={"ridge": {"alpha": [1.0, 100.0, 1e4]}}, **kw)
    paths["classifier"] = sweep_cached("test_vit", "faces", task="identification", probes=["centroid"], cv=4, **kw)
    return root, paths


def test_task_results_read_back(face_results):
    import polars as pl

    from probe.results import load_artifacts

    root, paths = face_results
    (ident,) = paths["test_vit", "identification"]
    row = pl.read_parquet(ident).row(0, named=True)
    assert (row["task"], row["probe"], row["selected"], row["split"]) == ("identification", "cosine", True, "test")
    art = load_artifacts(ident)
    assert row["rank1"] == pytest.approx(art["item/rank1"].mean()) and row["map"] == pytest.approx(
        art["item/map"].mean())
    assert row["n_eval"] == 100 and row["top1"] is None
    (verif,) = paths["test_vit", "verification"]
    row = pl.read_parquet(verif).row(0, named=True)
    assert row["task"] == "verification" and 0 <= row["verif_acc"] <= 1 and row["verif_acc_sd"] >= 0
    assert row["tar_far1e3"] is None  # 10 folds of 2 people: far fewer than 1,000 negative pairs
    art = load_artifacts(verif)
    folds = art["fold"]
    per_fold = [art["item/verif_acc"][folds == f].mean() for f in np.unique(folds)]
    assert len(per_fold) == 10 and row["verif_acc"] == pytest.approx(np.mean(per_fold))
    assert row["verif_acc_sd"] == pytest.approx(np.std(per_fold, ddof=1))
    assert row["verif_acc_se"] == pytest.approx(np.std(per_fold, ddof=1) / np.sqrt(10))

    (reg,) = paths["test_vit", "regression"]
    frame = pl.read_parquet(reg)
    tests = frame.filter(pl.col("selected") & (pl.col("split") == "test"))
    assert tests["fold"].null_count() == 1 and tests.height == 21  # 20 people: 20 folds + the summary
    summary = tests.filter(pl.col("fold").is_null()).row(0, named=True)
    per = tests.filter(pl.col("fold").is_not_null())
    assert summary["mae"] == pytest.approx(per["mae"].mean())
    params = json.loads(summary["params"])
    assert params["folds"] == 20 and params["interval_over"] == "people"
    assert params["fold_sd"]["mae"] == pytest.approx(per["mae"].std())
    low, high = params["interval"]["mae"]
    assert low < summary["mae"] < high
    art = load_artifacts(reg)
    assert sorted(art["ids"].tolist()) == sorted(set(art["ids"].tolist())) and len(art["ids"]) == 100
    for f in range(20):  # each fold held out exactly one person, whose ages were predicted by the others
        assert len(set(art["group"][art["fold"] == f])) == 1
    vals = frame.filter(pl.col("split") == "val")
    assert vals.height == 20 * 3 and vals["n_val"].min() >= 4  # every fold's own val carve (people)


def test_every_row_names_its_evaluation_and_clustered_items_save_their_people(face_results):
    """The evaluation scheme is a column of every row (and part of the protocol id); jobs whose items cluster in
    people save the person of every item (``group``), which the bootstrap resamples."""
    import polars as pl

    from probe.results import load_artifacts

    root, paths = face_results
    expected = {("test_vit", "identification"): "loo", ("test_vit", "verification"): "pairs drawn 10 folds",
                ("test_vit", "regression"): "cv20 by subject", ("test_resnet", "regression"): "cv5 by subject",
                "classifier": "cv4"}
    for key, label in expected.items():
        (path,) = paths[key]
        frame = pl.read_parquet(path)
        assert set(frame["evaluation"]) == {label}, (key, set(frame["evaluation"]))
        art = load_artifacts(path)
        people = art["group"]
        assert len(people) == len(art["ids"])
        if key == ("test_vit", "verification"):  # a pair clusters in both its people: [N, 2]
            names = [[side.split("/")[0] for side in i.split("|")] for i in art["ids"]]
            assert people.shape == (len(names), 2)
            assert [[f"person{int(p):02d}" for p in pair] for pair in people] == names
            assert ((people[:, 0] == people[:, 1]) == art["labels"].astype(bool)).all()
        else:  # a query, an image: its person
            names = [i.split("/")[0] for i in art["ids"]]
            assert [f"person{int(p):02d}" for p in people] == names
    # identification queries and verification pairs: their intervals resample the 20 people
    from probe.analysis import job_ci

    for key, metric in ((("test_vit", "identification"), "rank1"), (("test_vit", "verification"), "verif_acc")):
        ci = job_ci(paths[key][0], metric=metric, n_boot=200)
        assert (ci.over, ci.n_groups) == ("people", 20) and ci.low <= ci.estimate <= ci.high
    # grouped and ungrouped schemes are different protocols
    ids = {pl.read_parquet(paths[k][0])["protocol"][0] for k in expected}
    assert len(ids) == len(expected)


def test_analysis_and_report_cover_the_tasks(face_results, tmp_path):
    import polars as pl

    from probe import analysis, write_report

    root, paths = face_results
    jobs = analysis.job_table(root / "results")
    reg = jobs.filter(pl.col("task") == "regression")
    assert reg.height == 2 and reg["fold"].null_count() == 2 and reg["val_score"].null_count() == 0
    (file,) = [str(p) for p in paths["test_vit", "regression"]]
    frame = pl.read_parquet(file)
    fold_val = []
    for f in range(20):
        t = frame.filter((pl.col("fold") == f) & (pl.col("split") == "test")).row(0, named=True)
        v = frame.filter((pl.col("fold") == f) & (pl.col("split") == "val") & (pl.col("params") == t["params"]))
        fold_val.append(v["mae"][0])
    assert reg.filter(pl.col("file") == file)["val_score"][0] == pytest.approx(np.mean(fold_val))
    best = analysis.best_by_val(analysis.aggregate_seeds(reg))
    assert best.height == 2
    diff = analysis.compare_jobs([str(p) for p in paths["test_vit", "regression"]],
                                 [str(p) for p in paths["test_resnet", "regression"]], metric="mae", n_boot=200)
    assert diff.n == 100 and diff.low <= diff.estimate <= diff.high
    report = write_report(root / "results", tmp_path / "report", n_boot=200)
    text = report.read_text()
    assert "## Faces and continuous targets" in text
    for needle in ("Identification (who is this?)", "Verification (same person?)", "Regression", "(over people)",
                   "vs best rank1", "transformers", "centroid / pooled",
                   "| n/a |", "_n/a in TAR@FAR=1e-3 (%): TAR at FAR = 1e-3 needs ≥ 1,000 negative pairs"):
        assert needle in text, needle
    # verification accuracy ± the standard error over the pair folds (LFW's protocol), labelled in the heading
    verif = [r for r in jobs.filter(pl.col("task") == "verification").to_dicts()
             if r["backbone"] == "test_vit" and r["evaluation"] == "pairs drawn 10 folds"]
    acc, se = verif[0]["verif_acc"], verif[0]["verif_acc_se"]
    assert 0 < se < verif[0]["verif_acc_sd"]  # the SE, not the sd
    assert "| accuracy (%) ± SE over folds |" in text and f"{acc * 100:.1f} ± {se * 100:.1f}" in text
    figures = {p.name for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert "faces-cosine_pooled-retrieval.png" in figures and "faces-regression-scatter.png" in figures


def test_whiten_flag_reaches_verification_as_its_own_protocol(face_results, capsys):
    import polars as pl

    from probe.results import load_artifacts

    root, paths = face_results
    (plain,) = paths["test_vit", "verification"]
    common = ["sweep", "test_vit", "faces", "--random-init", "--img-size", "32", "--device", "cpu", "--no-progress",
              "--task", "verification", "--cache-dir", root / "cache", "--results-dir", root / "whitened"]
    proc = run_main(capsys, *common, "--whiten", "8")
    assert proc.returncode == 0, proc.stderr
    (path,) = (root / "whitened").rglob("*.parquet")
    row, base = pl.read_parquet(path).row(0, named=True), pl.read_parquet(plain).row(0, named=True)
    assert row["protocol"] != base["protocol"] and path.name != plain.name
    # the same pairs and folds, scored on whitened features
    art = load_artifacts(path)
    assert not np.allclose(art["similarity"], load_artifacts(plain)["similarity"])
    assert row["verif_acc"] == pytest.approx(np.mean([art["item/verif_acc"][art["fold"] == f].mean()
                                                      for f in np.unique(art["fold"])]))
    too_many = run_main(capsys, *common, "--whiten", "1000")
    assert_one_line_error(too_many, 2, "--whiten 1000", "use --whiten")


def test_task_jobs_run_in_parallel_with_identical_results(face_results):
    import polars as pl

    from probe._sweep import sweep_cached

    root, _ = face_results
    kw = dict(random_init=True, img_size=32, cache_dir=root / "cache", progress=False, device="cpu",
              task="regression", probes=["ridge", "knn"], cv=4, cv_group="subject")
    frames = []
    for jobs in (1, 2):
        paths = sweep_cached("test_vit", "faces", jobs=jobs, results_dir=root / f"jobs{jobs}", **kw)
        assert len(paths) == 2
        frames.append(pl.concat([pl.read_parquet(p).drop("fit_seconds", "created") for p in paths]))
    assert frames[0]["fold"].null_count() == 2 and set(frames[0]["probe"]) == {"ridge", "knn"}
    assert frames[0].equals(frames[1])


def test_task_rows_count_images_left_out_by_skip_bad(tmp_path):
    import polars as pl

    from probe._sweep import sweep_cached
    from tests._helpers import write_image_folder

    root = write_image_folder(tmp_path / "people", classes=("ann", "bo", "cy", "di"), per_class=3, splits=("",),
                              size=8)
    (root / "bo" / "broken.png").write_bytes(b"not a png")
    kw = dict(random_init=True, img_size=32, cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
              progress=False, device="cpu", workers=0, skip_bad=True)
    paths = sweep_cached("test_resnet", f"imagefolder:{root}", task="identification", **kw)
    paths += sweep_cached("test_resnet", f"imagefolder:{root}", task="identification", probes=["centroid"], cv=3,
                          **kw)
    rows = pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")
    assert rows["n_skipped"].to_list() == [1] * rows.height and rows["fold"].null_count() == 2
    assert set(rows["probe"]) == {"cosine", "centroid"} and rows.filter(pl.col("probe") == "cosine")["n_eval"][0] == 12


def test_study_dataset_runs_each_of_its_tasks_with_its_protocol_settings(face_results, tmp_path):
    import polars as pl

    from probe.study import run_study
    from probe._sweep import sweep_cached

    root, paths = face_results
    study = tmp_path / "faces.toml"
    study.write_text('[[backbones]]\nname = "test_vit"\nrandom_init = true\nimg_size = 32\n\n'
                     '[[datasets]]\nspec = "faces"\ntasks = ["identification", "verification"]\nwhiten = 8\n')
    run_study(study, cache_dir=root / "cache", results_dir=tmp_path / "results", report_dir=None, device="cpu",
              progress=False, out=open(tmp_path / "log.txt", "w"))
    made = sorted((tmp_path / "results").rglob("*.parquet"))
    rows = pl.concat([pl.read_parquet(p) for p in made], how="diagonal_relaxed")
    assert sorted(rows["task"]) == ["identification", "verification"]
    # the study's whiten reached verify: the file is the one `--whiten 8` names, not the plain protocol's
    (whitened,) = sweep_cached("test_vit", "faces", task="verification", whiten=8, random_init=True, img_size=32,
                               cache_dir=root / "cache", results_dir=tmp_path / "results", progress=False)
    assert whitened in made and whitened.name != paths["test_vit", "verification"][0].name


def test_gallery_and_query_splits_run_identification_queries_against_the_gallery(face_results, tmp_path, capsys):
    import polars as pl

    from probe._cache import load_split
    from probe._extract import extract_features
    from probe._retrieval import retrieve
    from probe._sweep import sweep_cached
    from tests._helpers import write_image_folder

    root = write_image_folder(tmp_path / "people", classes=("ann", "bo", "cy", "di"), per_class=3, splits=("",),
                              size=8)
    # ann, bo, cy: two gallery images and one query each; di: a query the gallery cannot answer (not valid)
    rows = [(f"{p}/img_{i}.png", p, "gallery" if i < 2 and p != "di" else "query")
            for p in ("ann", "bo", "cy", "di") for i in range(3) if p != "di" or i == 0]
    manifest = root / "faces.csv"
    manifest.write_text("path,label,split\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    kw = dict(random_init=True, img_size=32, cache_dir=tmp_path / "cache", progress=False, device="cpu", workers=0)
    (path,) = sweep_cached("test_resnet", f"csv:{manifest}", task="identification",
                           results_dir=tmp_path / "results", **kw)
    row = pl.read_parquet(path).row(0, named=True)
    assert (row["n_train"], row["n_eval"]) == (6, 3)
    splits = {s: load_split(e) for s, e in extract_features("test_resnet", f"csv:{manifest}", **kw).items()}
    assert sorted(splits) == ["gallery", "query"]
    q, g = splits["query"], splits["gallery"]
    ref = retrieve(q.features["pooled"], q.labels, g.features["pooled"], g.labels).metrics()
    assert (row["rank1"], row["rank5"], row["map"]) == pytest.approx((ref["rank1"], ref["rank5"], ref["map"]))
    # a protocol of its own: never pooled with leave-one-image-out retrieval
    loo = pl.read_parquet(face_results[1]["test_vit", "identification"][0]).row(0, named=True)
    assert row["protocol"] != loo["protocol"]
    # split values other than train/val/test/gallery/query, or a gallery without queries: one line naming the fix
    manifest.write_text("path,label,split\nann/img_0.png,ann,gallry\nbo/img_0.png,bo,query\n")
    proc = run_main(capsys, "sweep", "test_resnet", f"csv:{manifest}", "--random-init", "--task", "identification",
                    "--cache-dir", tmp_path / "cache", "--results-dir", tmp_path / "results")
    assert_one_line_error(proc, 2, "unknown split values ['gallry']", "gallery and query")
    manifest.write_text("path,label,split\nann/img_0.png,ann,gallery\nbo/img_0.png,bo,train\n")
    proc = run_main(capsys, "sweep", "test_resnet", f"csv:{manifest}", "--random-init", "--task", "identification",
                    "--cache-dir", tmp_path / "cache", "--results-dir", tmp_path / "results")
    assert_one_line_error(proc, 2, "gallery split but no query split")
