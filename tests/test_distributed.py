"""Fine-tuning under torchrun: 2 gloo ranks on CPU take the same steps as one process with the same global batch.
(Extraction under torchrun is tested in test_extract.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import polars as pl
import torch

import probe
from probe._distributed import rank_batches
from tests._helpers import write_image_folder


def test_rank_batches_deal_whole_batches_round_robin():
    batches = [[0, 1], [2, 3], [4, 5], [6]]
    assert rank_batches(batches, 0, 2) == [[0, 1], [4, 5]] and rank_batches(batches, 1, 2) == [[2, 3], [6]]
    assert rank_batches(batches, 0, 1) == batches and rank_batches(batches[:1], 1, 2) == []


def test_torchrun_two_ranks_fine_tune_like_one_process(tmp_path):
    """Per-step train loss of 2 DDP ranks (each half of every global batch) equals one process's within float
    tolerance, over two epochs (the second after a val/checkpoint on rank 0), and the results rows agree."""
    spec = f"imagefolder:{write_image_folder(tmp_path / 'pets', per_class=24)}"
    run = dict(random_init=True, img_size=32, epochs=2, batch_size=8, lr=1e-3, refit=False, workers=0)
    single = probe.finetune("test_vit", spec, **run, results_dir=tmp_path / "one", keep_checkpoints=True,
                            progress=False, verbose=False)
    args = ["finetune", "test_vit", spec, "--random-init", "--img-size", "32", "--epochs", "2", "--batch-size",
            "8", "--lr", "1e-3", "--no-refit", "--workers", "0", "--no-progress", "--keep-checkpoints",
            "--results-dir", str(tmp_path / "two")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "probe", *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("results\twritten") == 1, proc.stdout  # rank 0 writes and speaks
    [ckpt] = list((tmp_path / "two").rglob("last.pt"))
    assert ckpt.parent.name == single.checkpoint_dir.name  # the same job: same settings, same file names
    history = torch.load(ckpt, weights_only=True)["history"]
    one = [x for r in single.history for x in r["step_losses"]]
    two = [x for r in history for x in r["step_losses"]]
    assert len(one) == len(two) >= 8
    np.testing.assert_allclose(two, one, rtol=1e-4)
    a = pl.read_parquet(single.results_path)
    b = pl.read_parquet(next((tmp_path / "two").rglob("*.parquet")))
    assert a.select("split", "n_train", "n_eval").equals(b.select("split", "n_train", "n_eval"))
    np.testing.assert_allclose(b["top1"].to_numpy(), a["top1"].to_numpy(), atol=0.01)
