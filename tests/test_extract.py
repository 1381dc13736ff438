"""Feature extraction and the HDF5 cache: equality with timm's forward, reuse, invalidation, resume, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import probe
from tests._helpers import assert_one_line_error, png_declaring, run_cli, run_main

SMALL = dict(random_init=True, img_size=32, batch_size=8, workers=0, progress=False)


def _reference_features(backbone, source, split, taps):
    """What timm itself gives for the same images: eval transform, then forward_features/forward_head."""
    model, tf = backbone.model, backbone.eval_transform()
    x = torch.stack([tf(source.load(split, i)) for i in range(len(source.splits[split]))])
    with torch.inference_mode():
        feats = model.forward_features(x)
        ref = {"pooled": model.forward_head(feats, pre_logits=True)}
        if feats.ndim == 3:
            npt = model.num_prefix_tokens
            ref["cls"] = feats[:, 0]
            ref["mean"] = feats[:, npt:].mean(1)
            ref["patch"] = feats[:, npt:]
        else:
            ref["mean"] = feats.mean((2, 3))
            ref["patch"] = feats.flatten(2).transpose(1, 2)
        final, inter = model.forward_intermediates(x, indices=[1], norm=False, output_fmt="NCHW")
        ref["block1"] = inter[0].mean((2, 3))
    return {t: ref[t].numpy() for t in taps}


@pytest.mark.parametrize("name,taps", [
    ("test_vit", ("pooled", "cls", "mean", "patch", "block1")),
    ("test_resnet", ("pooled", "mean", "patch", "block1")),
])
def test_cached_features_equal_timm_forward(tmp_path, image_folder, name, taps):
    entries = probe.extract_features(name, f"imagefolder:{image_folder}", taps=taps, cache_dir=tmp_path / "c",
                                     dtype="float32", **SMALL)
    source = probe.open_dataset(f"imagefolder:{image_folder}")
    bb = probe.create_backbone(name, random_init=True, img_size=32)
    for split in ("train", "test"):
        cached = probe.load_split(entries[split])
        ref = _reference_features(bb, source, split, taps)
        assert cached.ids == source.ids[split]
        np.testing.assert_array_equal(cached.labels, source.labels[split])
        for tap in taps:
            assert cached.features[tap].dtype == np.float32
            np.testing.assert_allclose(cached.features[tap], ref[tap], rtol=1e-5, atol=1e-5, err_msg=tap)


def test_file_layout_read_with_plain_h5py(tmp_path, image_folder):
    entries = probe.extract_features("test_vit", f"imagefolder:{image_folder}", taps=("pooled", "patch"),
                                     cache_dir=tmp_path / "c", **SMALL)
    entry = entries["test"]
    assert entry.path == tmp_path / "c" / "test_vit" / "pets" / f"test-{entry.key[:12]}.h5"
    with h5py.File(entry.path, "r") as f:
        assert set(f.keys()) == {"labels", "ids", "features"}
        assert f["labels"].dtype == np.int64 and f["labels"].shape == (12,)
        assert [s.decode() for s in f["ids"][()]][:2] == ["test/cat/img_0.png", "test/cat/img_1.png"]
        assert f["features/pooled"].dtype == np.float16 and f["features/pooled"].shape == (12, 64)
        assert f["features/patch"].ndim == 3 and f["features/patch"].shape[0] == 12
        a = f.attrs
        assert a["format"] == probe.CACHE_FORMAT and a["key"] == entry.key
        assert a["backbone"] == "test_vit" and a["weights"] == "random-init:seed0"
        assert a["family"] == "transformer" and a["dataset"] == "pets" and a["split"] == "test"
        assert json.loads(a["classes"]) == ["cat", "dog"]
        assert json.loads(a["taps"]) == ["pooled", "patch"]
        assert json.loads(a["data_config"])["input_size"] == [3, 32, 32]
        assert set(json.loads(a["versions"])) >= {"probe", "timm", "torch"}
        assert json.loads(a["skipped"]) == [] and bool(a["complete"]) is True
    assert probe.verify_cache(tmp_path / "c") == {}


def test_reuse_touches_nothing_and_changes_make_new_entries(tmp_path, image_folder):
    spec = f"imagefolder:{image_folder}"
    first = probe.extract_features("test_resnet", spec, splits=["train"], cache_dir=tmp_path / "c", **SMALL)["train"]
    mtime = first.path.stat().st_mtime_ns
    again = probe.extract_features("test_resnet", spec, splits=["train"], cache_dir=tmp_path / "c", **SMALL)["train"]
    assert again.reused and again.path == first.path and first.path.stat().st_mtime_ns == mtime
    keys = {first.key}
    for change in (dict(taps=("pooled", "mean")), dict(dtype="float32"), dict(img_size=40), dict(seed=1)):
        entry = probe.extract_features("test_resnet", spec, splits=["train"], cache_dir=tmp_path / "c",
                                       **{**SMALL, **change})["train"]
        assert not entry.reused and entry.key not in keys, change
        keys.add(entry.key)
    # a subset of stored taps is served by the entry that has them
    subset = probe.extract_features("test_resnet", spec, splits=["train"], taps=("mean",), cache_dir=tmp_path / "c",
                                    **SMALL)["train"]
    assert subset.reused and set(subset.taps) == {"pooled", "mean"}
    # the dataset changing on disk (a file rewritten) is a new key: stale features are never reused
    img = image_folder / "train" / "cat" / "img_0.png"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    changed = probe.extract_features("test_resnet", spec, splits=["train"], cache_dir=tmp_path / "c", **SMALL)["train"]
    assert not changed.reused and changed.key not in keys
    assert first.path.exists()  # the old entry stays beside the new one


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_round_trip(tmp_path, image_folder, suffix):
    from safetensors.torch import save_file

    seeded = probe.create_backbone("test_vit", random_init=True, seed=3, img_size=32)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in seeded.model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # the usual training-checkpoint wrapper
    kw = {**SMALL, "random_init": False}
    from_file = probe.extract_features("test_vit", f"imagefolder:{image_folder}", weights=path, splits=["test"],
                                       cache_dir=tmp_path / "c", dtype="float32", **kw)["test"]
    from_seed = probe.extract_features("test_vit", f"imagefolder:{image_folder}", seed=3, splits=["test"],
                                       cache_dir=tmp_path / "c", dtype="float32", **SMALL)["test"]
    a, b = probe.load_split(from_file), probe.load_split(from_seed)
    assert a.weights.startswith("file:") and from_file.key != from_seed.key
    np.testing.assert_array_equal(a.features["pooled"], b.features["pooled"])


def test_images_of_every_mode_are_read(tmp_path):
    from PIL import Image

    root = tmp_path / "modes" / "only"
    root.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 255, size=(12, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(root / "gray.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.GIF")
    Image.fromarray(rgb).convert("RGBA").save(root / "alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.JPG")
    Image.fromarray(rgb).save(root / "ünïcødé 名前.png")
    sixteen = np.full((12, 12), 65535, dtype=np.uint16)
    sixteen[:, :6] = 32768
    Image.fromarray(sixteen).save(root / "deep16.png")
    (root / ".hidden.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("ignored")
    source = probe.open_dataset(f"imagefolder:{tmp_path / 'modes'}")
    names = sorted(os.path.basename(r) for r in source.splits["train"])
    assert names == sorted(["gray.png", "palette.GIF", "alpha.png", "cmyk.JPG", "ünïcødé 名前.png", "deep16.png"])
    for i, ref in enumerate(source.splits["train"]):
        img = source.load("train", i)
        assert img.mode == "RGB" and img.size == (12, 12), ref
    deep = np.asarray(source.load("train", names_index(source, "deep16.png")))
    assert deep[0, -1, 0] == 255 and deep[0, 0, 0] == 128  # scaled from 16 bits, not clipped at 255
    entries = probe.extract_features("test_resnet", f"imagefolder:{tmp_path / 'modes'}", cache_dir=tmp_path / "c",
                                     **SMALL)
    assert entries["train"].rows == 6


def names_index(source, name):
    return [os.path.basename(r) for r in source.splits["train"]].index(name)


@pytest.mark.parametrize("width,height,needle", [
    (100_000, 100_000, "DecompressionBombError"),  # PIL refuses above twice its limit
    (10_000, 10_000, "DecompressionBombWarning"),  # PIL only warns (then decodes 0.3 GB) between one and two limits
])
def test_decompression_bomb_is_a_bad_image(width, height, needle):
    from probe._images import MAX_IMAGE_PIXELS, load_image

    assert width * height > MAX_IMAGE_PIXELS
    with pytest.raises(probe.ProbeError, match=f"cannot read image bomb.png: {needle}.*decompression bomb.*--skip-bad"):
        load_image(png_declaring(width, height), name="bomb.png")
    from PIL import Image

    assert Image.open(io.BytesIO(png_declaring(40, 30))).size == (40, 30)  # PIL reads the size from the header


def test_decompression_bomb_limit_holds_when_pil_check_is_off(monkeypatch, tmp_path):
    from PIL import Image

    from probe._images import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as some other library in the process may have done
    (tmp_path / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    with pytest.raises(probe.ProbeError, match="bomb.png: its header declares 100000x100000 pixels.*--skip-bad"):
        load_image(tmp_path / "bomb.png")


def test_bad_image_names_the_file_and_skip_bad_records_it(tmp_path, image_folder):
    bad = image_folder / "test" / "dog" / "broken.png"
    good = (image_folder / "test" / "dog" / "img_0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG
    (image_folder / "test" / "dog" / "zbomb.png").write_bytes(png_declaring(100_000, 100_000))  # after broken.png
    cache = tmp_path / "c"
    proc = run_cli("extract-features", "test_resnet", f"imagefolder:{image_folder}", "--random-init",
                   "--img-size", "32", "--cache-dir", cache, "--workers", "0", "--no-progress")
    assert_one_line_error(proc, 1, "broken.png", "--skip-bad")
    assert not list(cache.rglob("test-*.h5"))  # nothing half-written under a final name
    assert len(list(cache.rglob("train-*.h5"))) == 1  # the split that was fine is kept
    proc = run_cli("extract-features", "test_resnet", f"imagefolder:{image_folder}", "--random-init",
                   "--img-size", "32", "--cache-dir", cache, "--workers", "0", "--no-progress", "--skip-bad", check=0)
    test_file = next(p for p in cache.rglob("test-*.h5"))
    with h5py.File(test_file) as f:
        assert json.loads(f.attrs["skipped"]) == ["test/dog/broken.png", "test/dog/zbomb.png"]
        ids = [s.decode() for s in f["ids"][()]]
        assert f["labels"].shape == (12,) and "test/dog/broken.png" not in ids and "test/dog/zbomb.png" not in ids


@pytest.mark.parametrize("args,code,needles", [
    (["vit_bse_patch16_224", "digits", "--random-init"], 2, ["vit_bse_patch16_224", "vit_base_patch16_224"]),
    (["test_resnet", "imagefolder:/no/such/dir", "--random-init"], 2, ["/no/such/dir", "does not exist"]),
    (["test_resnet", "digits", "--random-init", "--splits", "val"], 2, ["no split", "'val'", "train"]),
    (["test_resnet", "digits", "--random-init", "--taps", "pooled", "bogus"], 2, ["bogus", "block<i>"]),
    (["test_resnet", "digits", "--random-init", "--taps", "cls"], 2, ["class token", "cls"]),
    (["test_vit", "digits", "--random-init", "--taps", "block40"], 2, ["block40", "out of range"]),
    (["test_resnet", "nosuch:thing", "--random-init"], 2, ["nosuch:thing", "imagefolder:PATH"]),
    (["test_resnet.r160_in1k", "digits"], 1, ["hub weights", "--weights PATH", "--random-init"]),
    (["test_resnet", "digits", "--weights", "/no/such/w.safetensors"], 2, ["does not exist"]),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, code, needles):
    proc = run_main(capsys, "extract-features", *args, "--cache-dir", tmp_path / "c", "--img-size", "32", "--no-progress")
    assert_one_line_error(proc, code, *needles)
    assert not list((tmp_path / "c").rglob("*.h5"))


def test_empty_dataset_and_mismatched_weights(tmp_path, capsys):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("no images here")
    proc = run_main(capsys, "extract-features", "test_resnet", f"imagefolder:{tmp_path / 'empty'}", "--random-init")
    assert_one_line_error(proc, 2, "no images")
    torch.save(probe.create_backbone("test_vit", random_init=True).model.state_dict(), tmp_path / "vit.pt")
    # a real subprocess: exit code and stderr exactly as a user sees them
    proc = run_cli("extract-features", "test_resnet", "digits", "--weights", tmp_path / "vit.pt",
                   "--cache-dir", tmp_path / "c")
    assert_one_line_error(proc, 2, "does not fit backbone test_resnet", "missing", "unexpected", "conv1")


def test_non_finite_features_name_the_sample(tmp_path, image_folder, capsys):
    bb = probe.create_backbone("test_resnet", random_init=True)
    state = bb.model.state_dict()
    state["conv1.0.weight"] = torch.full_like(state["conv1.0.weight"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    proc = run_main(capsys, "extract-features", "test_resnet", f"imagefolder:{image_folder}", "--weights", tmp_path / "nan.pt",
                   "--img-size", "32", "--cache-dir", tmp_path / "c", "--workers", "0", "--no-progress")
    assert_one_line_error(proc, 1, "non-finite features", "train/cat/img_0.png")


def test_float16_overflow_falls_back_to_float32(tmp_path, image_folder):
    bb = probe.create_backbone("test_vit", random_init=True, img_size=32)
    state = bb.model.state_dict()
    state["norm.weight"] = state["norm.weight"] * 1e6  # pooled features far beyond float16's 65504
    torch.save(state, tmp_path / "big.pt")
    entry = probe.extract_features("test_vit", f"imagefolder:{image_folder}", weights=tmp_path / "big.pt",
                                   taps=("pooled", "block0"), splits=["test"], cache_dir=tmp_path / "c",
                                   **{**SMALL, "random_init": False})["test"]
    with h5py.File(entry.path) as f:
        assert f["features/pooled"].dtype == np.float32
        assert f["features/block0"].dtype == np.float16
        assert np.abs(f["features/pooled"][()]).max() > 65504
        assert json.loads(f.attrs["tap_dtypes"]) == {"pooled": "float32", "block0": "float16"}


def _kill_when(proc, parts_glob, min_files, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [p for p in parts_glob() if p.name.startswith("rows-") and p.suffix == ".npz"]
        if len(found) >= min_files:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return len(found)
        if proc.poll() is not None:
            raise AssertionError(f"extraction ended before it could be killed: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no shard appeared in time")


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    args = ["extract-features", "test_vit", "shapes", "--random-init", "--img-size", "32", "--batch-size", "8",
            "--workers", "0", "--no-progress", "--splits", "val", "--dtype", "float32"]
    killed_cache = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "probe", *args, "--cache-dir", str(killed_cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: list(killed_cache.rglob("*.parts/*")), min_files=3)
    assert not list(killed_cache.rglob("*.h5")), "a killed run left a file under a final name"
    resumed = run_cli(*args, "--cache-dir", killed_cache, check=0)
    assert "resuming" in resumed.stderr and "from row 0 " not in resumed.stderr
    run_cli(*args, "--cache-dir", tmp_path / "clean", check=0)
    a = probe.load_split(next(killed_cache.rglob("*.h5")))
    b = probe.load_split(next((tmp_path / "clean").rglob("*.h5")))
    assert a.ids == b.ids and a.key == b.key
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.features["pooled"], b.features["pooled"])
    assert not list(killed_cache.rglob("*.parts"))


def test_two_processes_extracting_the_same_entry(tmp_path):
    args = [sys.executable, "-m", "probe", "extract-features", "test_resnet", "shapes", "--random-init",
            "--img-size", "32", "--workers", "0", "--no-progress", "--splits", "val", "--cache-dir",
            str(tmp_path / "c")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("reused" in out for out, _ in outs) == 1 and sum("written" in out for out, _ in outs) == 1
    assert len(list((tmp_path / "c").rglob("*.h5"))) == 1
    assert probe.verify_cache(tmp_path / "c") == {}


def test_verify_finds_a_corrupted_file(tmp_path, image_folder, capsys):
    entries = probe.extract_features("test_resnet", f"imagefolder:{image_folder}", cache_dir=tmp_path / "c", **SMALL)
    with h5py.File(entries["train"].path, "r+") as f:
        f["features/pooled"][0, 0] = np.nan
    proc = run_cli("cache", "verify", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 1 and "non-finite" in proc.stdout and "1 of 2 entries ok" in proc.stdout
    listing = run_main(capsys, "cache", "ls", "--cache-dir", tmp_path / "c").stdout
    assert "test_resnet" in listing and "random-init:seed0" in listing and "2 entries" in listing


def test_importing_probe_does_not_import_torch():
    code = ("import sys, probe, probe.cli; probe.cli.build_parser(); "
            "bad = [m for m in ('torch', 'timm', 'h5py', 'polars', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_extract_features_console_script_help_lists_every_flag():
    out = run_cli("extract-features", "--help", check=0).stdout
    for flag in ("--splits", "--taps", "--weights", "--random-init", "--seed", "--img-size", "--cache-dir",
                 "--batch-size", "--workers", "--device", "--dtype", "--skip-bad", "--pixels", "--reuse-pixels",
                 "--no-reuse-pixels", "--compile", "--no-compile"):
        assert flag in out, flag


class _RunsCode:
    """Unpickling this runs code: it writes ``marker`` (what a hostile checkpoint would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_weights_that_need_unpickling_are_refused_without_running_code(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    state = {k: v.contiguous() for k, v in probe.create_backbone("test_resnet", random_init=True).model.state_dict().items()}
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(probe.UsageError, match="needs arbitrary unpickling.*safetensors"):
        probe.create_backbone("test_resnet", weights=evil)
    proc = run_cli("extract-features", "test_resnet", "digits", "--weights", evil, "--cache-dir", tmp_path / "c")
    line = assert_one_line_error(proc, 2, "evil.pt", "needs arbitrary unpickling", "convert it to safetensors")
    assert "builtins.exec" in line  # the global it asked for, named without running it
    proc = run_main(capsys, "finetune", "test_resnet", "digits", "--weights", evil, "--epochs", "1",
                    "--results-dir", tmp_path / "r", "--cache-dir", tmp_path / "c", "--no-progress")
    assert_one_line_error(proc, 2, "needs arbitrary unpickling")
    assert not marker.exists()
    assert not list((tmp_path / "c").rglob("*.h5")) and not list((tmp_path / "r").rglob("*.parquet"))
    # The file really is hostile: full unpickling (torch < 2.6's default) runs its code.
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "ran"


def test_cpu_plan_from_measured_times():
    from probe._runtime import cpu_plan

    # ViT-S/16-like: forward 2.1 s, decoding 0.1 s per batch on 2 cores: every core on the forward, no workers
    assert cpu_plan(0.1, 2.1, 2) == (2, 0, 0)
    # light backbone, heavy decoding: a worker decodes while the forward runs on the other core
    assert cpu_plan(0.1, 0.02, 2) == (1, 1, 0)
    # balanced on 8 cores: enough workers that decoding keeps up, the rest on the forward
    assert cpu_plan(0.8, 0.2, 8) == (5, 3, 0)
    assert cpu_plan(5.0, 0.01, 16, max_workers=3) == (13, 3, 0)
    assert cpu_plan(1.0, 1.0, 1) == (1, 0, 0)  # one core: nothing to split
    assert cpu_plan(1.0, 1.0, 1, forward1_seconds=1.0) == (1, 0, 0)
    # test_resnet on the 2-core AMD host (batch 64): decode 0.15 s, forward 0.49 s on 2 threads, 0.75 s on one:
    # two processes that each decode and forward on one core win (0.53 s per batch against 0.64 s)
    assert cpu_plan(0.15, 0.49, 2, forward1_seconds=0.75) == (1, 0, 2)
    # a forward that scales perfectly over threads keeps one process
    assert cpu_plan(0.15, 0.49, 2, forward1_seconds=0.98) == (2, 0, 0)


def test_default_workers_follow_the_usable_cores():
    """Loader workers come from the cores this process may use (a Slurm allocation or taskset), not the machine's:
    one core leaves one worker; a GPU allows more workers than a CPU run."""
    code = ("import os; from probe._runtime import default_workers, usable_cores; os.sched_setaffinity(0, {0}); "
            "print(usable_cores(), default_workers('cpu'), default_workers('cuda'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "1"]
    from probe._runtime import default_workers, usable_cores

    cores = usable_cores()
    assert default_workers("cpu") == max(1, min(8, cores - 1))
    assert default_workers("cuda") == max(1, min(32, cores - 1)) >= default_workers("cpu")


@pytest.mark.parametrize("plan", [(1, 1, 0), (2, 0, 0), (1, 0, 2)])
def test_measured_cpu_layouts_write_the_same_features(tmp_path, image_folder, monkeypatch, plan):
    from probe import _extract
    from probe._runtime import CpuPlan

    spec = f"imagefolder:{image_folder}"
    ref = probe.extract_features("test_resnet", spec, cache_dir=tmp_path / "ref", **SMALL)
    seen = []
    monkeypatch.setattr(_extract, "cpu_plan", lambda *a, **k: seen.append((*a, k)) or CpuPlan(*plan))
    got = probe.extract_features("test_resnet", spec, cache_dir=tmp_path / "auto",
                                 **dict(SMALL, workers=None, batch_size=2, device="cpu"))
    assert len(seen) == 2 and all(data > 0 and forward > 0 for data, forward, _, _ in seen)  # one per split
    # the third batch timed the forward on one thread (torch's threads > 1 here)
    assert all(k["forward1_seconds"] is None or k["forward1_seconds"] > 0 for *_, k in seen)
    for split in ("train", "test"):
        a, b = probe.load_split(ref[split]), probe.load_split(got[split])
        assert a.ids == b.ids
        np.testing.assert_allclose(a.features["pooled"], b.features["pooled"], rtol=1e-3, atol=1e-3)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its ranks in sessions of their own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def test_torchrun_two_ranks_kill_9_resume_equal_single_process(tmp_path):
    """2 gloo ranks on CPU: the whole job killed with -9 mid-way, then run again: it resumes from the shards both
    ranks wrote and ends with the single-process entry (same key and path, ids in order, equal features)."""
    args = ["extract-features", "test_vit", "shapes", "--random-init", "--img-size", "32", "--batch-size", "4",
            "--workers", "0", "--no-progress", "--splits", "test", "--dtype", "float32", "--cache-dir", tmp_path / "c"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "probe",
              *map(str, args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 180
    while len(list((tmp_path / "c").rglob("*.parts/rows-*.npz"))) < 4:
        assert proc.poll() is None, f"extraction ended before it could be killed: {proc.communicate()}"
        assert time.time() < deadline, "no shard appeared in time"
        time.sleep(0.05)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # the whole job, as Slurm would: launcher and both ranks
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    assert not list((tmp_path / "c").rglob("*.h5")), "a killed run left a file under a final name"
    resumed = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "from row 0 " not in resumed.stderr
    assert resumed.stdout.count("written") == 1, resumed.stdout  # rank 0 speaks for the group
    single = probe.extract_features("test_vit", "shapes", splits=["test"], random_init=True, img_size=32,
                                    batch_size=4, workers=0, progress=False, dtype="float32",
                                    cache_dir=tmp_path / "single")["test"]
    [path] = list((tmp_path / "c").rglob("*.h5"))
    assert path.relative_to(tmp_path / "c") == single.path.relative_to(tmp_path / "single")
    a, b = probe.load_split(path), probe.load_split(single)
    assert a.key == b.key and a.ids == b.ids == probe.open_dataset("shapes").ids["test"]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.features["pooled"], b.features["pooled"])  # bit-identical on CPU float32
    assert not list((tmp_path / "c").rglob("*.parts")) and probe.verify_cache(tmp_path / "c") == {}
