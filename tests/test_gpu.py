"""The CUDA paths (bf16 autocast, channels_last, pinned memory with non_blocking copies, the out-of-memory fallback
of fine-tuning, nccl under torchrun). Every test is marked ``gpu`` and skipped without CUDA (conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import probe

pytestmark = pytest.mark.gpu

SMALL = dict(random_init=True, img_size=32, batch_size=16, workers=2, progress=False, dtype="float32")


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_cuda_extraction_matches_cpu(tmp_path, image_folder, name):
    """bf16 autocast (the CUDA default) within bf16 tolerance of CPU float32 and its own cache key; fp32 on CUDA
    (uint8 batches finished on the GPU, TF32 off, channels_last, pinned memory both ways, the overlapped loop)
    within float32 kernel tolerance of the CPU and the same entry (its own cache directory, so it is computed)."""
    spec = f"imagefolder:{image_folder}"
    cpu = probe.extract_features(name, spec, splits=["test"], device="cpu", cache_dir=tmp_path / "c", **SMALL)
    bf16 = probe.extract_features(name, spec, splits=["test"], device="cuda", cache_dir=tmp_path / "c", **SMALL)
    fp32 = probe.extract_features(name, spec, splits=["test"], device="cuda", precision="fp32",
                                  cache_dir=tmp_path / "g", **SMALL)
    a, b, c = (probe.load_split(e["test"]) for e in (cpu, bf16, fp32))
    assert not fp32["test"].reused and torch.backends.cudnn.allow_tf32  # computed here; TF32 setting restored
    assert b.attrs["precision"] == "bf16" and c.attrs["precision"] == "fp32"
    assert a.key == c.key != b.key and a.ids == b.ids == c.ids
    ref = a.features["pooled"]
    scale = np.abs(ref).max()
    np.testing.assert_allclose(c.features["pooled"], ref, atol=1e-4 * scale, rtol=1e-4)
    np.testing.assert_allclose(b.features["pooled"], ref, atol=3e-2 * scale, rtol=3e-2)


def test_finetune_out_of_memory_halves_the_micro_batch(tmp_path, monkeypatch):
    """A CUDA out-of-memory error in a step doubles the accumulation steps and retries the same step."""
    from probe._finetune.trainer import Trainer

    real = Trainer._accumulate

    def tight(self, x, targets):
        if len(x) / self.accum_steps > 8:  # pretend more than 8 images do not fit
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, x, targets)

    monkeypatch.setattr(Trainer, "_accumulate", tight)
    result = probe.finetune("test_resnet", "digits", random_init=True, img_size=32, epochs=1, batch_size=32,
                            device="cuda", workers=2, results_dir=tmp_path / "r", progress=False, verbose=False)
    assert result.history[0]["accum_steps"] == 4 and np.isfinite(result.history[0]["train_loss"])


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_nccl_extraction_matches_one_process(tmp_path):
    args = ["extract-features", "test_vit", "shapes", "--random-init", "--img-size", "32", "--batch-size", "8",
            "--no-progress", "--splits", "val", "--dtype", "float32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                    "probe", *args, "--cache-dir", str(tmp_path / "two")], check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "probe", *args, "--cache-dir", str(tmp_path / "one")], check=True,
                   env=env, timeout=600)
    [a], [b] = (list((tmp_path / d).rglob("*.h5")) for d in ("two", "one"))
    x, y = probe.load_split(a), probe.load_split(b)
    assert x.key == y.key and x.ids == y.ids
    np.testing.assert_allclose(x.features["pooled"], y.features["pooled"], rtol=2e-2, atol=2e-2)
