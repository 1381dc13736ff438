"""Representation similarity (probe.similarity): CKA against its definitions, mutual k-NN against a brute-force
count, the jackknife's replicates against recomputation, ids joined out of order, errors through the CLI, and real
cache files written by probe.extract_features."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

import probe
from probe import similarity as sim
from probe._errors import UsageError
from tests._helpers import assert_one_line_error, run_cli


# ---------------------------------------------------------------------------------------------- references
def gram_cka(X, Y, debiased=False):
    """CKA from n x n Gram matrices (numpy): HSIC = tr(KHLH) or the unbiased estimator's closed form."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = len(X)

    def hsic(K, L):
        if not debiased:
            H = np.eye(n) - 1.0 / n
            return np.trace(K @ H @ L @ H)
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        one = np.ones(n)
        return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))

    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def u_statistic_hsic(K, L):
    """The unbiased HSIC as its U-statistic definition (Song et al. 2007/2012): over ordered distinct 4-tuples,
    the mean of k_ij (l_ij + l_qr - 2 l_iq)."""
    n = len(K)
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * (L[i, j] + L[q, r] - 2 * L[i, q])
        count += 1
    return total / count


def brute_mutual_knn(X, Y, k):
    """Set intersections of each row's k nearest other rows by cosine, ties to the lower row."""
    def lists(F):
        F = F / np.linalg.norm(F, axis=1, keepdims=True)
        S = F @ F.T
        out = []
        for i in range(len(F)):
            cands = sorted((j for j in range(len(F)) if j != i), key=lambda j: (-S[i, j], j))
            out.append(set(cands[:k]))
        return out

    a, b = lists(np.asarray(X, float)), lists(np.asarray(Y, float))
    return float(np.mean([len(s & t) / k for s, t in zip(a, b)]))


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)) + 3.0
    Y = np.tanh(X @ rng.normal(size=(6, 9))) + 0.5 * rng.normal(size=(40, 9)) + 10.0
    return X, Y


# ---------------------------------------------------------------------------------------------- CKA
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_a_representation_with_itself_is_one(xy, debiased):
    X, _ = xy
    assert probe.linear_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariances(xy, debiased):
    X, Y = xy
    rng = np.random.default_rng(1)
    base = probe.linear_cka(X, Y, debiased=debiased)
    Qx = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    Qy = np.linalg.qr(rng.normal(size=(9, 9)))[0]
    assert probe.linear_cka(X @ Qx, Y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert probe.linear_cka(X, Y @ Qy, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert probe.linear_cka(7.5 * X, Y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert probe.linear_cka(X, 0.01 * Y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    # an invertible but non-orthogonal, non-isotropic map changes the value
    M = np.diag([10.0, 1, 1, 1, 1, 0.1]) @ rng.normal(size=(6, 6))
    assert np.linalg.matrix_rank(M) == 6
    assert abs(probe.linear_cka(X @ M, Y, debiased=debiased) - base) > 1e-3


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("block_rows", [4096, 7, 1])
def test_streaming_equals_the_gram_matrix_formula(xy, debiased, block_rows):
    X, Y = xy
    value = probe.linear_cka(X, Y, debiased=debiased, block_rows=block_rows)
    assert value == pytest.approx(gram_cka(X, Y, debiased), abs=1e-10)


def test_float32_products_stay_close(xy):
    X, Y = xy
    value = probe.linear_cka(X, Y, product_dtype="float32")
    assert value == pytest.approx(gram_cka(X, Y), abs=1e-5)


def test_debiased_matches_the_unbiased_hsic_definition():
    # hand-worked: six images, 1-d and 2-d features with small integers
    X = np.array([[0.0], [1.0], [2.0], [4.0], [5.0], [9.0]])
    Y = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [2.0, 2.0], [5.0, 4.0], [4.0, 7.0]])
    K, L = X @ X.T, Y @ Y.T
    expected = u_statistic_hsic(K, L) / np.sqrt(u_statistic_hsic(K, K) * u_statistic_hsic(L, L))
    assert probe.linear_cka(X, Y, debiased=True) == pytest.approx(expected, abs=1e-12)
    # and the closed form of Song et al. agrees with the U-statistic (the reference used above)
    assert gram_cka(X, Y, debiased=True) == pytest.approx(expected, abs=1e-12)
    # the debiased value differs from the biased one on so few images
    assert abs(probe.linear_cka(X, Y) - expected) > 1e-3


def test_jackknife_replicates_equal_recomputation(xy):
    """Each delete-one-group replicate from the groups' statistics equals CKA recomputed without that group."""
    import torch

    X, Y = xy
    G = 6
    groups = sim._groups(len(X), G, 0, 9)
    for start in range(0, 40, 9):  # balanced within each block of rows
        sizes = np.bincount(groups[start:start + 9], minlength=G)
        assert sizes.max() - sizes.min() <= 1
    plan = sim._Plan(views=[(0, "x"), (1, "x")], pairs=[(0, 1)], dims=[6, 9])
    out = sim._cka_values([sim._Entry({"x": X}), sim._Entry({"x": Y})], [np.arange(40)] * 2, plan,
                          groups=groups, G=G, device=torch.device("cpu"), product_dtype="float64", block_rows=9,
                          memory_bytes=1 << 30)
    for g in range(G):
        Xg, Yg = X[groups != g], Y[groups != g]
        assert out[(0, 1)]["cka"][1][g] == pytest.approx(gram_cka(Xg, Yg), abs=1e-10)
        assert out[(0, 1)]["cka_debiased"][1][g] == pytest.approx(gram_cka(Xg, Yg, True), abs=1e-10)


def test_jackknife_interval(xy):
    X, Y = xy
    row = sim._compare([{"x": X}, {"x": Y}], [(0, "x"), (1, "x")], [(0, 1)], measures=["cka"], groups=8)[0]
    assert row["interval"] == "group jackknife" and row["groups"] == 8 and row["n_boot"] is None
    # by hand: leave each group out, recompute, t interval with 7 degrees of freedom
    from scipy.stats import t

    groups = sim._groups(40, 8, 0, sim.DEFAULT_BLOCK_ROWS)
    reps = np.array([gram_cka(X[groups != g], Y[groups != g]) for g in range(8)])
    se = np.sqrt(7 / 8 * np.sum((reps - reps.mean()) ** 2))
    assert row["low"] == pytest.approx(row["value"] - t.ppf(0.975, 7) * se, abs=1e-9)
    assert row["high"] == pytest.approx(row["value"] + t.ppf(0.975, 7) * se, abs=1e-9)


def test_knn_bootstrap_draws_images(xy):
    """The multinomial shortcut has the distribution of resampling images: same mean and spread."""
    values = np.random.default_rng(0).integers(0, 6, size=500)
    reps = sim._bootstrap_mean(values, 6, 4000, 0)
    rng = np.random.default_rng(1)
    direct = np.array([values[rng.integers(0, 500, 500)].mean() / 5 for _ in range(4000)])
    assert reps.mean() == pytest.approx(values.mean() / 5, abs=2e-3)
    assert reps.std() == pytest.approx(direct.std(), rel=0.08)


def test_accumulators_split_over_passes_give_the_same_values(xy):
    X, Y = xy
    kw = dict(measures=["cka", "cka_debiased"], n_boot=50)
    sources = [{"x": X, "y": Y}, {"x": Y, "y": X}]
    views = [(0, "x"), (0, "y"), (1, "x"), (1, "y")]
    pairs = [(0, 2), (0, 3), (1, 2), (1, 3)]
    one = sim.similarity_frame(sim._compare(sources, views, pairs, **kw))
    many = sim.similarity_frame(sim._compare(sources, views, pairs, memory_bytes=1, **kw))
    assert np.allclose(one["value"].to_numpy(), many["value"].to_numpy(), atol=1e-12)
    assert np.allclose(one["low"].to_numpy(), many["low"].to_numpy(), atol=1e-12)


# ---------------------------------------------------------------------------------------------- mutual k-NN
@pytest.mark.parametrize("k", [1, 3, 7])
def test_mutual_knn_equals_a_brute_force_count(xy, k):
    X, Y = xy
    X = X.copy()
    X[5] = X[4]  # duplicated features: ties go to the lower row on both sides
    assert probe.mutual_knn(X, Y, k=k) == pytest.approx(brute_mutual_knn(X, Y, k), abs=1e-12)
    assert probe.mutual_knn(X, X, k=k) == 1.0


def test_mutual_knn_blocks_of_queries_agree(xy, monkeypatch):
    X, Y = xy
    whole = probe.mutual_knn(X, Y, k=4)
    monkeypatch.setattr(sim, "_KNN_BLOCK_CELLS", 40 * 3)  # three query rows per block
    assert probe.mutual_knn(X, Y, k=4) == whole


# ---------------------------------------------------------------------------------------------- files
def write_entry(path: Path, features: dict, ids, *, dataset="toy", split="test", backbone="toy_net",
                family="convnet") -> Path:
    """A complete cache file in the contract's layout (HDF5, read back by the code under test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["labels"] = np.zeros(len(ids), dtype=np.int64)
        f["ids"] = np.array([str(i) for i in ids], dtype=h5py.string_dtype())
        for tap, value in features.items():
            f[f"features/{tap}"] = np.asarray(value, dtype=np.float32)
        attrs = {"format": 1, "key": f"{backbone}-{path.stem}", "backbone": backbone, "weights": "random-init:seed0",
                 "family": family, "dataset": dataset, "split": split, "complete": True, "precision": "fp32"}
        for k, v in attrs.items():
            f.attrs[k] = v
        for k, v in {"classes": ["a"], "taps": sorted(features), "data_config": {"input_size": [3, 32, 32]},
                     "versions": {}, "skipped": []}.items():
            f.attrs[k] = json.dumps(v)
    return path


def test_ids_joined_out_of_order(tmp_path, xy):
    X, Y = (v.astype(np.float32).astype(np.float64) for v in xy)  # as the file stores them
    ids = [f"img{i:03d}" for i in range(40)]
    perm = np.random.default_rng(3).permutation(40)
    a = write_entry(tmp_path / "a.h5", {"pooled": X}, ids)
    b = write_entry(tmp_path / "b.h5", {"pooled": Y[perm]}, [ids[i] for i in perm], backbone="toy_vit",
                    family="transformer")
    frame = probe.compare_entries(a, b, taps=["pooled"], n_boot=200, k=3, block_rows=16)
    got = dict(zip(frame["measure"], frame["value"]))
    assert got["cka"] == pytest.approx(gram_cka(X, Y), abs=1e-10)
    assert got["cka_debiased"] == pytest.approx(gram_cka(X, Y, True), abs=1e-10)
    assert got["mutual_knn"] == pytest.approx(brute_mutual_knn(X, Y, 3), abs=1e-12)
    assert (frame["low"] <= frame["value"]).all() and (frame["value"] <= frame["high"]).all()
    assert set(frame["family_b"]) == {"transformer"} and set(frame["n_images"]) == {40}
    # the shared images only, when asked
    c = write_entry(tmp_path / "c.h5", {"pooled": Y[:30]}, ids[:30])
    with pytest.raises(UsageError, match="10 only in the first, 0 only in the second"):
        probe.compare_entries(a, c)
    common = probe.compare_entries(a, c, join="common", measures=["cka"], n_boot=10)
    assert common["value"][0] == pytest.approx(gram_cka(X[:30], Y[:30]), abs=1e-10)
    assert common["n_images"][0] == 30


def test_bad_input_is_one_error_before_any_work(tmp_path, xy):
    X, Y = xy
    ids = [str(i) for i in range(40)]
    a = write_entry(tmp_path / "a.h5", {"pooled": X}, ids)
    with pytest.raises(UsageError, match="different datasets"):
        probe.compare_entries(a, write_entry(tmp_path / "d.h5", {"pooled": Y}, ids, dataset="other"))
    with pytest.raises(UsageError, match="different splits"):
        probe.compare_entries(a, write_entry(tmp_path / "s.h5", {"pooled": Y}, ids, split="val"))
    with pytest.raises(UsageError, match="has no tap 'block3'"):
        probe.compare_entries(a, a, taps=["block3"])
    few = write_entry(tmp_path / "few.h5", {"pooled": Y[:3]}, ids[:3])
    with pytest.raises(UsageError, match="only 3 image"):
        probe.compare_entries(a, few, join="common")
    with pytest.raises(UsageError, match="unknown measure"):
        probe.compare_entries(a, a, measures=["svcca"])


# ---------------------------------------------------------------------------------------------- real cache
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """test_resnet and test_vit on digits' test split, written by probe.extract_features, plus the ResNet with
    perturbed weights saved as a fine-tuned export would be (safetensors) and extracted through --weights."""
    import torch

    from probe._backbones import create_backbone
    from probe._finetune import save_safetensors

    root = tmp_path_factory.mktemp("simcache")
    kw = dict(splits=["test"], random_init=True, img_size=32, cache_dir=root / "cache", progress=False,
              batch_size=128)
    from probe.study import expand_taps

    # every block, as the CLI's --blocks asks, so that its run below reuses these entries
    taps = {bb: ["pooled", *expand_taps(["block*"], bb, 32)] for bb in ("test_resnet", "test_vit")}
    resnet = probe.extract_features("test_resnet", "digits", taps=taps["test_resnet"], **kw)["test"]
    vit = probe.extract_features("test_vit", "digits", taps=taps["test_vit"], **kw)["test"]
    model = create_backbone("test_resnet", random_init=True, seed=0, img_size=32).model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer" in name or "stages" in name:
                p.add_(0.05 * torch.randn_like(p))
    weights = save_safetensors(model, root / "tuned.safetensors", {"probe": "test"})
    kw["random_init"] = False
    tuned = probe.extract_features("test_resnet", "digits", taps=taps["test_resnet"], weights=str(weights),
                                   **kw)["test"]
    return {"resnet": resnet, "vit": vit, "tuned": tuned, "weights": weights, "root": root}


def test_real_entries_matrices(real_cache, tmp_path):
    resnet, vit, tuned = real_cache["resnet"], real_cache["vit"], real_cache["tuned"]
    opts = dict(n_boot=100, k=5)
    configs = probe.config_matrix([resnet, vit, tuned], tap="pooled", **opts)
    assert configs.height == 3 * 3  # three pairs, three measures
    ra, va = probe.load_split(resnet, ["pooled"]), probe.load_split(vit, ["pooled"])
    pair = configs.filter((pl.col("backbone_a") == "test_resnet") & (pl.col("backbone_b") == "test_vit")
                          & (pl.col("cache_key_b") == vit.key))
    got = dict(zip(pair["measure"], pair["value"]))
    assert got["cka"] == pytest.approx(gram_cka(ra.features["pooled"], va.features["pooled"]), abs=1e-10)
    assert got["cka_debiased"] == pytest.approx(probe.linear_cka(ra.features["pooled"], va.features["pooled"],
                                                                 debiased=True), abs=1e-12)
    assert got["mutual_knn"] == pytest.approx(probe.mutual_knn(ra.features["pooled"], va.features["pooled"], k=5))
    assert set(pair["family_a"]) == {"convnet"} and set(pair["family_b"]) == {"transformer"}

    blocks = probe.block_matrix(resnet, vit, measures=["cka"], **opts)
    assert blocks.height == 5 * 6 and set(blocks["kind"]) == {"blocks"}  # 5 ResNet stages x 6 ViT blocks
    assert ((blocks["value"] >= 0) & (blocks["value"] <= 1 + 1e-12)).all()

    curve = probe.finetune_curve(resnet, tuned, measures=["cka", "mutual_knn"], **opts)
    assert curve["tap_a"].to_list() == curve["tap_b"].to_list()
    assert curve["tap_a"].unique(maintain_order=True).to_list() == [f"block{i}" for i in range(5)]
    assert set(curve["weights_b"]) != set(curve["weights_a"])

    path = sim.run_job("finetune", [resnet, tuned], results_dir=tmp_path, measures=["cka"], n_boot=50)
    assert path.parent == tmp_path / "similarity" / "digits" and path.suffix == ".parquet"
    back = probe.scan_similarity(tmp_path).collect()
    assert back.columns == list(sim.SIMILARITY_COLUMNS) and back.height == 5
    mtime = path.stat().st_mtime_ns
    assert sim.run_job("finetune", [resnet, tuned], results_dir=tmp_path, measures=["cka"], n_boot=50) == path
    assert path.stat().st_mtime_ns == mtime  # a finished job is skipped


def test_cli_similarity_end_to_end(real_cache, tmp_path):
    root = real_cache["root"]
    proc = run_cli("similarity", "test_resnet", "test_vit", "digits", "--random-init", "--img-size", "32",
                   "--taps", "pooled", "--blocks", "--finetuned", f"test_resnet={real_cache['weights']}",
                   "--n-boot", "50", "--k", "5", "--cache-dir", root / "cache", "--results-dir", tmp_path,
                   "--no-progress", "--batch-size", "128", check=0)
    assert "configs\ttest_resnet" in proc.stdout and "finetune\t" in proc.stdout and "blocks\t" in proc.stdout
    rows = probe.scan_similarity(tmp_path).collect()
    assert set(rows["kind"]) == {"configs", "blocks", "finetune"}
    # the report section: heatmaps, family means, the fine-tuning curve, saved through the callback
    from probe.analysis import similarity_section

    saved = []

    def save(fig, name):
        path = tmp_path / "figures" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        fig.savefig(path, dpi=60)
        saved.append(path)
        return f"figures/{path.name}"

    lines = similarity_section(tmp_path, save)
    text = "\n".join(lines)
    assert text.startswith("## Do ConvNets and transformers see alike?")
    assert "### digits" in text and "ConvNets vs transformers | 1 |" in text
    assert [p.name for p in saved] == ["digits-similarity-pooled.png", "digits-similarity-blocks.png",
                                       "digits-similarity-finetune.png"]
    assert all(p.stat().st_size > 1000 for p in saved)
    assert "| test_resnet · random-init:0 · 32px | convnet | 4 |" in text
    assert similarity_section(tmp_path / "nothing", save) == []
    # the probe results of the same directory are not disturbed by the similarity files
    from probe.results import scan_results

    with pytest.raises(UsageError, match="no results"):
        scan_results(tmp_path)


def test_cli_errors_are_one_line(real_cache, tmp_path):
    ids = probe.load_split(real_cache["resnet"], ["pooled"]).ids[:3]
    few = write_entry(tmp_path / "few.h5", {"pooled": np.eye(3)}, ids, dataset="digits")
    other = write_entry(tmp_path / "other.h5", {"pooled": np.ones((5, 2))}, [str(i) for i in range(5)],
                        dataset="shapes")
    val = write_entry(tmp_path / "val.h5", {"pooled": np.ones((5, 2))}, [str(i) for i in range(5)],
                      dataset="digits", split="val")
    resnet = str(real_cache["resnet"].path)
    common = ["--cache-dir", real_cache["root"] / "cache", "--results-dir", tmp_path / "r", "--n-boot", "10"]
    assert_one_line_error(run_cli("similarity", resnet, str(other), "digits", *common), 2, "different datasets")
    assert_one_line_error(run_cli("similarity", resnet, str(val), "digits", *common), 2, "split 'val'")
    assert_one_line_error(run_cli("similarity", resnet, resnet, "digits", "--taps", "block7", *common), 2,
                          "no tap 'block7'")
    assert_one_line_error(run_cli("similarity", resnet, str(few), "digits", *common), 2, "ids of", "differ")
    assert_one_line_error(run_cli("similarity", resnet, str(few), "digits", "--join", "common", *common), 2,
                          "only 3 image")
    assert not (tmp_path / "r").exists()  # nothing was written


def test_import_is_cheap():
    import subprocess
    import sys

    code = ("import sys, probe.similarity, probe.commands.similarity, probe.analysis._similarity; "
            "heavy = [m for m in ('torch', 'polars', 'matplotlib', 'h5py') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_pass_order_takes_every_pair_once_self_pairs_first():
    """Tile by tile: every cross pair and every view's self pair exactly once, a self pair before its view's first
    cross pair, whatever the budget."""
    views = [(0, f"block{i}") for i in range(5)] + [(1, f"block{i}") for i in range(4)]
    pairs = [(a, b) for a in range(5) for b in range(5, 9)]
    for budget in (1, 3 * 8 * 4 * 4 * 8, 1 << 30):
        order = sim._pass_order(sim._Plan(views=views, pairs=pairs, dims=[4] * 9), 8, budget)
        assert len(order) == len(set(order)) == len(pairs) + len(views)
        assert set(order) == set(pairs) | {(v, v) for v in range(9)}
        for a, b in pairs:
            assert order.index((a, a)) < order.index((a, b)) and order.index((b, b)) < order.index((a, b))
