"""The tensor pixel path (``--pixels gpu``) on CPU tensors: timm's eval geometry, agreement with the PIL path,
per-image fallback, and an extraction into a cache entry of its own."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm.data
import torch
from PIL import Image

import probe
from probe._datasets import open_dataset
from probe._extract import _SplitImages
from probe._pixels import TensorImages, check_data_config, decode_jpegs, eval_geometry, jpeg_bytes
from tests._helpers import assert_one_line_error, run_cli, run_main

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

#: Data configs of timm's eval transform: crop_pct < 1 and > 1 (padding), non-square inputs, bicubic vs bilinear,
#: and the squash and border crop modes.
CONFIGS = [
    dict(input_size=(3, 32, 32), crop_pct=0.875, interpolation="bicubic", crop_mode="center"),
    dict(input_size=(3, 32, 32), crop_pct=0.875, interpolation="bilinear", crop_mode="center"),
    dict(input_size=(3, 40, 24), crop_pct=0.9, interpolation="bicubic", crop_mode="center"),
    dict(input_size=(3, 28, 28), crop_pct=1.15, interpolation="bilinear", crop_mode="center"),
    dict(input_size=(3, 30, 36), crop_pct=1.0, interpolation="bicubic", crop_mode="squash"),
    dict(input_size=(3, 24, 32), crop_pct=0.95, interpolation="bilinear", crop_mode="border"),
]
#: (height, width) of the test images: portrait, landscape, square, and smaller than the input (upscaled).
SIZES = [(61, 45), (37, 83), (50, 50), (20, 26)]


def _config(cfg):
    return {**cfg, "mean": MEAN, "std": STD}


def _photo(height, width, seed=0) -> Image.Image:
    """A smooth random texture with a sharp bar: edges and gradients, as photos have."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(height // 6 + 2, width // 6 + 2, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC)).copy()
    arr[height // 3: height // 3 + 3] = (250, 20, 30)
    return Image.fromarray(arr)


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['crop_mode']}-{c['interpolation']}-{c['crop_pct']}-"
                                                       f"{c['input_size'][1]}x{c['input_size'][2]}")
def test_geometry_is_timms_eval_transform(cfg):
    """Same resize size, same crop box (pixel for pixel on timm's own resized image), same output size."""
    cfg = _config(cfg)
    steps = timm.data.create_transform(**cfg, is_training=False).transforms
    assert type(steps[-2]).__name__ in ("ToTensor", "MaybeToTensor")
    resize, crop = steps[-4], steps[-3]
    for h, w in SIZES:
        img = _photo(h, w)
        geo = eval_geometry(h, w, cfg)
        resized = resize(img)
        assert (resized.height, resized.width) == geo.resize, (h, w)
        want = np.asarray(crop(resized))
        # the crop box applied to timm's resized image (padded first where it is smaller than the input)
        left, top, right, bottom = geo.pad
        arr = np.asarray(resized)
        padded = np.empty((arr.shape[0] + top + bottom, arr.shape[1] + left + right, 3), dtype=np.uint8)
        padded[:] = geo.fill
        padded[top:top + arr.shape[0], left:left + arr.shape[1]] = arr
        t, l_, ch, cw = geo.box
        got = padded[t:t + ch, l_:l_ + cw]
        assert got.shape == want.shape == (*cfg["input_size"][1:], 3)
        np.testing.assert_array_equal(got, want)


def _pair(tmp_path, cfg, files):
    """(PIL path dataset, tensor path dataset on CPU, tensor path dataset that decodes in finish_payloads)."""
    root = tmp_path / "imgs"
    for name, data in files.items():
        p = root / "train" / "a" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "a" / "x.png").write_bytes(files[next(iter(files))])
    source = open_dataset(f"imagefolder:{root}")
    tf = timm.data.create_transform(**cfg, is_training=False)
    pil = _SplitImages(source, "train", tf, tuple(cfg["input_size"]))
    return (source, pil, TensorImages(pil, source, "train", cfg, on_device=False),
            TensorImages(pil, source, "train", cfg, on_device=True))


@pytest.mark.parametrize("cfg", CONFIGS[:3] + CONFIGS[4:], ids=lambda c: f"{c['crop_mode']}-{c['interpolation']}")
def test_pixels_agree_with_pil(tmp_path, cfg):
    """Per image, after normalisation: at most 2 8-bit levels apart anywhere, 0.4 of a level on average.

    Why these bounds: torchvision and PIL decode with the same libjpeg-turbo (checked below: identical pixels), so
    the difference is the resize alone. PIL resamples in two separable 8-bit passes, rounding after each (half a
    level, spread by the second pass's weights, whose absolute values sum to at most 1.25 for bicubic), then the
    result; the tensor path rounds once, in float32. That bounds a pixel's difference by 0.5 * 1.25 + 0.5 + 0.5 <
    2 levels; the mean is a fraction of a level.
    """
    cfg = _config(cfg)
    files = {f"{i}.jpg": _jpeg(_photo(h, w, seed=i)) for i, (h, w) in enumerate(SIZES)}
    files["gray.jpg"] = _jpeg(_photo(45, 61, seed=9).convert("L"))  # 1-channel JPEG: the tensor path, as RGB
    source, pil, tensor, device = _pair(tmp_path, cfg, files)
    for i in range(len(pil)):
        assert jpeg_bytes(source, "train", i) is not None  # every one of these takes the tensor path
        (decoded,) = decode_jpegs([jpeg_bytes(source, "train", i)], "cpu")
        decoded = decoded.permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(decoded, np.asarray(source.load("train", i)))  # same decoder as PIL
    idx, ref, _ = torch.utils.data.default_collate([pil[i] for i in range(len(pil))])
    _, got, errors = torch.utils.data.default_collate([tensor[i] for i in range(len(tensor))])
    assert not any(errors)
    ref, got = pil.finish(ref), tensor.finish(got)
    assert ref.shape == got.shape == (len(pil), *cfg["input_size"])
    levels = (ref - got).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255  # back to 8-bit levels
    per_image_max = levels.amax(dim=(1, 2, 3))
    per_image_mean = levels.mean(dim=(1, 2, 3))
    assert (per_image_max <= 2.0 + 1e-3).all(), per_image_max
    assert (per_image_mean <= 0.4).all(), per_image_mean
    # the CUDA layout's code (whole batch decoded and resized in finish_payloads) gives the same tensors on CPU
    batch = TensorImages.collate([device[i] for i in range(len(device))])
    blob, lengths, jpeg, pixels, rest = batch[1]  # bytes travel, not pixels
    assert blob.ndim == 1 and len(lengths) == len(jpeg) == len(device) and len(rest) == len(pixels) == 0
    x, errors = device.finish_payloads(*batch, "cpu")
    assert not any(errors)
    torch.testing.assert_close(x, got, rtol=0, atol=0)


def _cmyk_jpeg():
    return _jpeg(_photo(30, 40).convert("CMYK"))


def _rotated_jpeg():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    return _jpeg(_photo(30, 40), exif=exif.tobytes())


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_images_the_tensor_path_cannot_take_fall_back_to_pil_one_by_one(tmp_path):
    """PNG, palette, CMYK, 16-bit and EXIF-rotated images come from the PIL path, identical to it; the JPEGs in the
    same batch still take the tensor path; a truncated JPEG gets the PIL path's error naming the file."""
    cfg = _config(CONFIGS[0])
    photo = _photo(30, 40)
    sixteen = Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    assert sixteen.mode.startswith("I;16")
    good = _jpeg(photo)
    files = {"a_png.png": _png(photo), "b_palette.png": _png(photo.convert("P")), "c_cmyk.jpg": _cmyk_jpeg(),
             "d_16bit.png": _png(sixteen), "e_rotated.jpg": _rotated_jpeg(), "f_good.jpg": good,
             "g_truncated.jpg": good[:-100]}
    source, pil, tensor, device = _pair(tmp_path, cfg, files)
    names = [Path(r).name for r in source.splits["train"]]
    assert names == sorted(files)
    takes_tensor = [jpeg_bytes(source, "train", i) is not None for i in range(len(names))]
    # the truncated JPEG's header is fine: the tensor path tries it, torchvision refuses it, PIL names it
    assert takes_tensor == [False, False, False, False, False, True, True]
    for i, name in enumerate(names):
        _, want, want_err = pil[i]
        _, got, got_err = tensor[i]
        if name == "g_truncated.jpg":
            assert "g_truncated.jpg" in got_err and got_err == want_err
        elif name != "f_good.jpg":
            assert not got_err
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    x, errors = device.finish_payloads(*TensorImages.collate([device[i] for i in range(len(device))]), "cpu")
    assert [bool(e) for e in errors] == [n == "g_truncated.jpg" for n in names]
    assert "g_truncated.jpg" in errors[-1]
    _, ref, _ = torch.utils.data.default_collate([tensor[i] for i in range(len(tensor))])
    torch.testing.assert_close(x[:-1], tensor.finish(ref)[:-1], rtol=0, atol=0)


def test_unsupported_data_config_is_a_clear_error():
    with pytest.raises(probe.UsageError, match="lanczos.*--pixels pil"):
        check_data_config({"interpolation": "lanczos", "input_size": (3, 8, 8)}, "some_model")
    with pytest.raises(probe.UsageError, match="crop mode 'odd'"):
        check_data_config({"interpolation": "bicubic", "crop_mode": "odd"}, "some_model")


def test_extract_with_the_tensor_path_writes_its_own_entry(tmp_path):
    """extract_features(pixels="gpu") on CPU: a complete entry read back with h5py, beside (never instead of) the
    PIL path's entry; features of the two paths agree image by image (cosine)."""
    root = tmp_path / "pets"
    for split, n in (("train", 6), ("test", 4)):
        for i in range(n):
            d = root / split / ("cat" if i % 2 else "dog")
            d.mkdir(parents=True, exist_ok=True)
            img = _photo(40 + 3 * i, 52 - 2 * i, seed=10 * i + len(split))
            if i == 1:
                (d / f"{i}.png").write_bytes(_png(img))  # one per split takes the PIL path
            else:
                (d / f"{i}.jpg").write_bytes(_jpeg(img))
    spec = f"imagefolder:{root}"
    kwargs = dict(random_init=True, img_size=32, batch_size=4, workers=0, progress=False, cache_dir=tmp_path / "c",
                  taps=("pooled", "patch"))
    gpu = probe.extract_features("test_vit", spec, pixels="gpu", **kwargs)
    pil = probe.extract_features("test_vit", spec, **kwargs)
    again = probe.extract_features("test_vit", spec, pixels="gpu", **kwargs)
    files = sorted(p.name for p in (tmp_path / "c").rglob("*.h5"))
    assert len(files) == 4  # two splits x two pixel paths
    for split in ("train", "test"):
        assert gpu[split].path != pil[split].path and gpu[split].key != pil[split].key
        assert again[split].reused and again[split].path == gpu[split].path
        with h5py.File(gpu[split].path, "r") as f, h5py.File(pil[split].path, "r") as g:
            assert f.attrs["complete"] and f.attrs["pixels"] == "gpu" and g.attrs["pixels"] == "pil"
            assert list(f["ids"].asstr()[()]) == list(g["ids"].asstr()[()])
            assert f["features/patch"].shape == g["features/patch"].shape
            a, b = f["features/pooled"][()].astype(np.float64), g["features/pooled"][()].astype(np.float64)
            assert a.shape == (6 if split == "train" else 4, probe.create_backbone(
                "test_vit", random_init=True, img_size=32).model.num_features)
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert (cos > 0.999).all(), cos
            assert json.loads(f.attrs["data_config"]) == json.loads(g.attrs["data_config"])
    assert probe.verify_cache(tmp_path / "c") == {}
    # results computed on the two entries are two backbone configurations (never pooled); PIL's id is unchanged
    from probe._identity import backbone_config_id
    from probe._sweep import backbone_context

    g, p = probe.load_split(gpu["train"]), probe.load_split(pil["train"])
    assert backbone_context(g)["backbone_config"] != backbone_context(p)["backbone_config"]
    assert backbone_context(p)["backbone_config"] == backbone_config_id(p.backbone, p.weights,
                                                                        p.attrs["data_config"], p.attrs["precision"])


def test_pixels_flag_on_the_command_line(tmp_path, capsys):
    root = tmp_path / "pets"
    for split in ("train", "test"):
        for i in range(2):
            d = root / split / ("cat", "dog")[i]
            d.mkdir(parents=True, exist_ok=True)
            (d / "0.jpg").write_bytes(_jpeg(_photo(30, 30, seed=i + 2 * len(split))))
    out = run_cli("extract-features", "test_vit", f"imagefolder:{root}", "--random-init", "--img-size", "32",
                  "--pixels", "gpu", "--cache-dir", str(tmp_path / "c"), "--no-progress", "--splits", "train", check=0)
    path = Path(out.stdout.strip().split("\t")[-1])
    with h5py.File(path, "r") as f:
        assert f.attrs["pixels"] == "gpu" and f["features/pooled"].shape[0] == 2
    assert_one_line_error(run_main(capsys, "extract-features", "test_vit", f"imagefolder:{root}", "--pixels",
                                   "nvjpeg"), 2, "--pixels")


@pytest.mark.parametrize("pixels", ["pil", "gpu"], ids=["pil-path", "tensor-path"])  # "gpu" would mark it
def test_backbone_is_built_while_the_first_batch_loads(tmp_path, image_folder, monkeypatch, pixels):
    """The build waits (up to 30 s) for the first image to be read: it completes only if reading has started
    without it, i.e. the loader runs while the backbone is built (a sequential build would time out and fail)."""
    import threading

    import probe._backbones as backbones
    from probe._datasets import DatasetSource

    read = threading.Event()
    real_load, real_create = DatasetSource.load, backbones.create_backbone
    monkeypatch.setattr(DatasetSource, "load", lambda self, *a: (read.set(), real_load(self, *a))[1])
    if pixels == "gpu":
        import probe._pixels as pixel_module

        real_bytes = pixel_module.jpeg_bytes
        monkeypatch.setattr(pixel_module, "jpeg_bytes", lambda *a: (read.set(), real_bytes(*a))[1])
    overlapped = []
    monkeypatch.setattr(backbones, "create_backbone",
                        lambda *a, **k: (overlapped.append(read.wait(timeout=30)), real_create(*a, **k))[1])
    entries = probe.extract_features("test_vit", f"imagefolder:{image_folder}", random_init=True, img_size=32,
                                     batch_size=4, workers=0, progress=False, cache_dir=tmp_path / "c",
                                     pixels=pixels)
    assert overlapped and all(overlapped)
    assert all(e.rows > 0 for e in entries.values())


def test_the_cuda_layout_of_the_tensor_path_runs_on_cpu_tensors(tmp_path, monkeypatch):
    """Loader workers send JPEG bytes, this process decodes each batch together and writes through the writer thread
    (the code every CUDA run takes): the same features as decoding image by image in the workers, PNGs included."""
    from probe import _extract

    root = tmp_path / "pets"
    for i in range(7):
        d = root / "train" / ("cat" if i % 2 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        img = _photo(36 + i, 44 - i, seed=i)
        (d / f"{i}.png").write_bytes(_png(img)) if i == 3 else (d / f"{i}.jpg").write_bytes(_jpeg(img))
    kwargs = dict(random_init=True, img_size=32, batch_size=3, workers=1, progress=False, pixels="gpu")
    import probe._pixels as pixel_module

    calls = []  # decode calls in this process (the loader's worker processes count in their own memory)
    real = pixel_module.decode_jpegs
    monkeypatch.setattr(pixel_module, "decode_jpegs", lambda datas, device: (calls.append(len(datas)),
                                                                            real(datas, device))[1])
    per_image = probe.extract_features("test_vit", f"imagefolder:{root}", cache_dir=tmp_path / "a", **kwargs)
    assert calls == []  # decoded in the worker
    monkeypatch.setattr(_extract, "_DECODE_ON_DEVICE", True)
    batched = probe.extract_features("test_vit", f"imagefolder:{root}", cache_dir=tmp_path / "b", **kwargs)
    assert calls == [2, 3, 1]  # 3 batches decoded here, each together; the PNG (cat/3) took the PIL path
    a, b = probe.load_split(per_image["train"]), probe.load_split(batched["train"])
    assert a.ids == b.ids and len(a.ids) == 7 and a.key == b.key
    np.testing.assert_array_equal(a.features["pooled"], b.features["pooled"])


def _jpeg_folder(root: Path, n: int = 7) -> str:
    for i in range(n):
        d = root / "train" / ("cat" if i % 2 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        img = _photo(36 + 2 * i, 44 - i, seed=i)
        (d / f"{i}.png").write_bytes(_png(img)) if i == 3 else (d / f"{i}.jpg").write_bytes(_jpeg(img))
    return f"imagefolder:{root}"


@pytest.mark.parametrize("pixels", ["pil", "gpu"], ids=["pil-path", "tensor-path"])
@pytest.mark.parametrize("workers", [1, None], ids=["loader-workers", "cpu-auto"])
def test_reused_pixels_give_identical_features(tmp_path, pixels, workers):
    """Two backbones with one eval geometry but different mean and std (test_vit, test_efficientnet): with
    reuse_pixels the first writes every row of the split's pixel store (read back as a .npy file) and the second reads
    them; the features of both, read back with h5py, are the very features of runs without reuse."""
    spec = _jpeg_folder(tmp_path / "pets")
    kwargs = dict(random_init=True, img_size=32, batch_size=3, workers=workers, progress=False, pixels=pixels)
    with_store, without = {}, {}
    for name in ("test_vit", "test_efficientnet"):
        with_store[name] = probe.extract_features(name, spec, cache_dir=tmp_path / "a", reuse_pixels=True,
                                                  **kwargs)["train"]
        without[name] = probe.extract_features(name, spec, cache_dir=tmp_path / "b", **kwargs)["train"]
        (store,) = (tmp_path / "a" / "pixels").rglob("train-*.npy")  # one store serves both backbones
        rows = np.fromfile(store.with_suffix(".rows"), dtype=np.uint8)
        assert rows.tolist() == [1] * 7 and np.load(store).shape == (7, 32, 32, 3)
    assert not (tmp_path / "b" / "pixels").exists()
    for name in with_store:
        assert with_store[name].key == without[name].key  # reuse is not a configuration
        with h5py.File(with_store[name].path, "r") as f, h5py.File(without[name].path, "r") as g:
            assert list(f["ids"].asstr()[()]) == list(g["ids"].asstr()[()])
            np.testing.assert_array_equal(f["features/pooled"][()], g["features/pooled"][()])


def test_the_second_backbone_reads_the_stored_pixels(tmp_path, monkeypatch):
    """Once a split's pixels are stored, another backbone with the same geometry opens no image, and what it
    forwards is what the store holds (pixels overwritten in the store change its features)."""
    from probe._datasets import DatasetSource

    spec = _jpeg_folder(tmp_path / "pets")
    kwargs = dict(random_init=True, img_size=32, batch_size=3, workers=0, progress=False, reuse_pixels=True)
    probe.extract_features("test_vit", spec, cache_dir=tmp_path / "a", **kwargs)
    loads = []
    real = DatasetSource.load
    monkeypatch.setattr(DatasetSource, "load", lambda self, *a: (loads.append(a), real(self, *a))[1])
    reused = probe.load_split(probe.extract_features("test_convnext", spec, cache_dir=tmp_path / "a",
                                                     **kwargs)["train"])
    assert loads == []
    (store,) = (tmp_path / "a" / "pixels").rglob("train-*.npy")
    pixels = np.load(store, mmap_mode="r+")
    pixels[:] = 255 - pixels  # the same rows, other pixels
    pixels.flush()
    (tmp_path / "d").mkdir()  # another cache with the same pixel store
    (tmp_path / "d" / "pixels").symlink_to(tmp_path / "a" / "pixels")
    inverted = probe.load_split(probe.extract_features("test_convnext", spec, cache_dir=tmp_path / "d",
                                                       **kwargs)["train"])
    assert loads == []
    assert not np.allclose(inverted.features["pooled"], reused.features["pooled"], atol=1e-3)


@pytest.mark.slow
def test_compile_flag_extracts_the_eager_features_into_an_entry_of_its_own(tmp_path):
    """--compile on the command line (a subprocess): a complete entry with its own key beside the eager one, the same
    features to float rounding, the pixel store written by --reuse-pixels, and no library warning on stderr."""
    spec = _jpeg_folder(tmp_path / "pets", n=5)
    common = ("--random-init", "--img-size", "32", "--batch-size", "4", "--cache-dir", str(tmp_path / "c"),
              "--no-progress", "--splits", "train")
    eager = run_cli("extract-features", "test_vit", spec, *common, "--no-compile", check=0)
    compiled = run_cli("extract-features", "test_vit", spec, *common, "--compile", "--reuse-pixels", check=0)
    assert compiled.stderr.strip() == ""
    paths = [Path(r.stdout.strip().split("\t")[-1]) for r in (eager, compiled)]
    assert paths[0] != paths[1]
    with h5py.File(paths[0], "r") as f, h5py.File(paths[1], "r") as g:
        assert g.attrs["complete"]
        np.testing.assert_allclose(g["features/pooled"][()], f["features/pooled"][()], rtol=1e-2, atol=1e-3)
    assert len(list((tmp_path / "c" / "pixels").rglob("train-*.npy"))) == 1


@pytest.mark.slow
def test_a_study_decodes_once_for_its_backbones(tmp_path):
    """``reuse_pixels = true`` in a study's [extract] table (a ``probe run`` subprocess): its two backbones with one
    geometry share one pixel store per split, every row written, and their entries hold the features of runs
    without the store."""
    study = """
[study]
name = "reuse"
seeds = [0]

[[backbones]]
name = "test_vit"
random_init = true
img_size = 32

[[backbones]]
name = "test_convnext"
random_init = true
img_size = 32

[[datasets]]
spec = "shapes"

[extract]
batch_size = 64
workers = 0
reuse_pixels = true

[[sweeps]]
probes = ["centroid"]
taps = ["pooled"]
"""
    (tmp_path / "s.toml").write_text(study)
    run_cli("run", "s.toml", "--no-progress", "--no-report", cwd=tmp_path, timeout=600, check=0)
    stores = sorted((tmp_path / "cache" / "pixels").rglob("*.npy"))
    assert [p.name.split("-")[0] for p in stores] == ["test", "train", "val"]
    for p in stores:
        assert np.fromfile(p.with_suffix(".rows"), dtype=np.uint8).all()
    for name in ("test_vit", "test_convnext"):
        plain = probe.extract_features(name, "shapes", random_init=True, img_size=32, batch_size=64, workers=0,
                                       progress=False, cache_dir=tmp_path / "plain", splits=["val"])["val"]
        (entry,) = (tmp_path / "cache" / name).rglob("val-*.h5")
        np.testing.assert_array_equal(probe.load_split(entry).features["pooled"],
                                      probe.load_split(plain).features["pooled"])
