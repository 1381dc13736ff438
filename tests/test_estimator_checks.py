"""scikit-learn's own estimator contract over every probe, and the input handling it implies for users."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from probe.probes import PROBES, REGRESSORS, CentroidProbe, KNNProbe, LogisticProbe, RidgeProbe
from probe.probes import _base

ALL = [LogisticProbe, RidgeProbe, KNNProbe, CentroidProbe]


def test_every_probe_is_checked():
    assert sorted(cls.__name__ for cls in ALL) == sorted(cls.__name__ for cls in PROBES.values())


# Every check of the installed scikit-learn, none expected to fail (a probe that cannot meet one would declare it,
# with the reason, through expected_failed_checks here). CPU, so the checks' exact-equality comparisons do not
# depend on a GPU's kernels; tests/test_probes.py compares CUDA with CPU.
@parametrize_with_checks([cls(device="cpu") for cls in ALL])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# The regression probes (--task regression) meet scikit-learn's regressor contract the same way.
@parametrize_with_checks([cls(device="cpu") for cls in REGRESSORS.values()])
def test_sklearn_regressor_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32)[:400], y[:400]


@pytest.mark.parametrize("cls", ALL)
def test_class_names_in_class_names_out(cls, digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    base = cls(device="cpu").fit(X, y)
    est = cls(device="cpu").fit(X, names[y].tolist())  # a plain list of str, as read from a manifest
    assert list(est.classes_) == sorted(names)
    pred = est.predict(X)
    assert pred.dtype.kind == "U"
    np.testing.assert_array_equal(pred, names[base.predict(X)])
    assert est.score(X, names[y]) == base.score(X, y)
    # Two classes: one decision score per sample, positive for classes_[1], as in scikit-learn.
    two = np.isin(y, [3, 8])
    est = cls(device="cpu").fit(X[two], names[y[two]])
    assert list(est.classes_) == ["eight", "three"]
    decision = est.decision_function(X[two])
    assert decision.shape == (two.sum(),)
    np.testing.assert_array_equal(est.predict(X[two]), np.where(decision > 0, "three", "eight"))


@pytest.mark.parametrize("cls", ALL)
def test_scikit_learn_messages_for_bad_input(cls, digits):
    X, y = digits
    est = cls(device="cpu")
    with pytest.raises(NotFittedError, match=f"This {cls.__name__} instance is not fitted yet"):
        est.predict(X)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        est.fit(X, y * 0.37)
    with pytest.raises(TypeError, match="Sparse data was passed"):
        from scipy import sparse

        est.fit(sparse.csr_matrix(X), y)
    with pytest.raises(ValueError, match="Complex data not supported"):
        est.fit(X.astype(np.complex64), y)
    with pytest.raises(ValueError, match="0 sample"):
        est.fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="could not convert string to float"):
        est.fit(np.array([["a", "b"]] * 10, dtype=object), [0, 1] * 5)
    with pytest.warns(DataConversionWarning, match="column-vector y was passed"):
        est.fit(X, y[:, None])
    with pytest.raises(ValueError, match=f"X has 10 features, but {cls.__name__} is expecting 64 features"):
        est.predict(X[:, :10])
    assert est.n_features_in_ == 64


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_validation_keeps_features_uncopied(monkeypatch, digits, dtype):
    # Feature matrices are the largest arrays of a sweep: validating them must not copy or widen them on the host
    # (float16 caches are widened on the device, in to_tensor).
    X = np.ascontiguousarray(digits[0], dtype=dtype)
    seen = []
    real = _base.to_tensor
    monkeypatch.setattr(_base, "to_tensor", lambda A, device: seen.append(A) or real(A, device))
    est = RidgeProbe(device="cpu").fit(X, digits[1])
    est.predict(X)
    assert len(seen) == 2 and all(A is X for A in seen)
    assert _base.check_features(X) is X


def test_torch_tensors_and_read_only_arrays_are_accepted(digits):
    X, y = digits
    ref = LogisticProbe(device="cpu").fit(X, y).predict(X)
    est = LogisticProbe(device="cpu").fit(torch.from_numpy(X), torch.from_numpy(y))
    np.testing.assert_array_equal(est.predict(torch.from_numpy(X)), ref)
    frozen = X.copy()
    frozen.flags.writeable = False  # as np.load(..., mmap_mode="r") gives
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(LogisticProbe(device="cpu").fit(frozen, y).predict(frozen), ref)
