"""Arguments shared by the subcommands that need a backbone, a dataset or the cache (no heavy imports)."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe._console import progress_option
from probe.vocab import FAMILIES

#: How --progress/--no-progress reads in every command's --help (``probe._console.progress_option``).
PROGRESS_HELP = ("on a terminal; when the output is not a terminal (a log file), one line per finished step "
                 "(default); --progress: bars there too; --no-progress: neither")

#: Default cache directory (relative to the current directory).
DEFAULT_CACHE_DIR = "cache"
#: Default results directory (relative to the current directory).
DEFAULT_RESULTS_DIR = "results"


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """BACKBONE and how its weights are obtained."""
    parser.add_argument("backbone", metavar="BACKBONE",
                        help="timm model name with its tag, e.g. vit_base_patch16_224.augreg_in21k or test_vit")
    add_weights_arguments(parser)


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """How a backbone's weights are obtained, its input size and family (without the BACKBONE positional)."""
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="PATH", default=None,
                         help="load weights from a local checkpoint (.safetensors or torch .pt/.pth/.bin) instead "
                              "of the hub tag; a probe fine-tune checkpoint works too")
    weights.add_argument("--random-init", action="store_true",
                         help="use randomly initialised weights (seeded by --seed); never used as a silent fallback")
    parser.add_argument("--img-size", type=int, default=None, metavar="N",
                        help="override the input size (pixels, square); default: the checkpoint's own")
    parser.add_argument("--family", choices=FAMILIES, default=None,
                        help="override the family from probe's families table (see probe.family_of)")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """DATASET and its data root."""
    parser.add_argument("dataset", metavar="DATASET",
                        help="dataset spec: digits, shapes, imagefolder:PATH, csv:PATH (or .parquet manifest), "
                             "torchvision:NAME, hf:REPO, or an official download with its split: cub200:PATH, "
                             "flowers102:PATH, indoor67:PATH, caltech101:PATH, wikiart:PATH[?target=genre], "
                             "covid-cxr:PATH (options after '?', see the README)")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="where torchvision:/hf: datasets live (default: ./data)")
    parser.add_argument("--keep-background", action="store_true",
                        help="caltech101:PATH only: keep the BACKGROUND_Google clutter class (the same as "
                             "caltech101:PATH?keep_background=1)")


def add_shift_arguments(parser: argparse.ArgumentParser) -> None:
    """--eval-on and --shared-classes: shifted sets the selected model is scored on once (probe._shifted)."""
    parser.add_argument("--eval-on", action="append", default=[], metavar="SPEC",
                        help="a shifted evaluation set (repeatable) that shares the dataset's class names, e.g. "
                             "'digits-c?corruption=blur&severity=3' (gaussian_noise, blur, contrast, rotation, invert, "
                             "jpeg; severity 1-5), shapes-texture, or any dataset spec with a test split: the model "
                             "selected and refitted on DATASET scores its test split once (rows with eval_dataset = "
                             "its name); nothing is fitted or selected on it")
    parser.add_argument("--shared-classes", action=argparse.BooleanOptionalAction, default=False,
                        help="score an --eval-on set that has classes DATASET lacks on its images of the shared "
                             "classes only (recorded in the rows' params); without it such a set is an error naming "
                             "the classes")


def dataset_spec(args: argparse.Namespace) -> str:
    """The dataset spec of parsed CLI arguments, with the options that flags set (``--keep-background``)."""
    spec = args.dataset
    if getattr(args, "keep_background", False):
        if not spec.startswith("caltech101:"):
            from probe._errors import UsageError

            raise UsageError(f"--keep-background applies to caltech101:PATH only; drop it for {spec}")
        spec += ("&" if "?" in spec else "?") + "keep_background=1"
    return spec


def add_extraction_arguments(parser: argparse.ArgumentParser) -> None:
    """Everything that controls how features are computed and cached (shared by extract, sweep, run)."""
    parser.add_argument("--taps", nargs="+", default=None, metavar="TAP",
                        help="representations to store: pooled (the default; patch for dense tasks), cls, mean, "
                             "block<i> (e.g. block3, block-1), patch, patch16 (the token grid at output stride 16: "
                             "a ConvNet's stage before the last, for matched-stride dense probes)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init and every seeded step")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR", help="feature cache directory")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="data loading worker processes (default: on a GPU, usable CPU cores - 1, at most 32; on "
                             "CPU, chosen from the first batches' timings)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage dtype of cached features; float16 falls back to float32 for a tap that overflows")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="compute precision of the forward passes: auto = bf16 autocast on CUDA, fp32 elsewhere "
                             "(part of the cache key and of the results' backbone configuration)")
    parser.add_argument("--pixels", choices=["pil", "gpu"], default=None,
                        help="how images become pixels: pil (the default) decodes and resizes with PIL in the loader "
                             "workers; gpu decodes JPEGs with torchvision (batched on the GPU with nvJPEG, or per "
                             "image on the CPU) and resizes, crops and normalises as tensor ops in timm's eval "
                             "geometry, other images taking the PIL path (part of the cache key)")
    parser.add_argument("--reuse-pixels", action=argparse.BooleanOptionalAction, default=False,
                        help="keep each split's decoded, resized and cropped 8-bit pixels in <cache-dir>/pixels/ and "
                             "read them back instead of decoding again: the next backbone with the same input size, "
                             "interpolation and crop skips decoding (identical features; costs rows x H x W x 3 "
                             "bytes of disk per split; off by default)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="run the backbone's forward through torch.compile (compiled on the first batch; part of "
                             "the cache key; off by default: it did not pay on CPU)")
    parser.add_argument("--allow-overlap", action=argparse.BooleanOptionalAction, default=False,
                        help="accept the same image (same path or identical file) in two splits; by default that "
                             "is an error naming both entries")
    parser.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False,
                        help="skip unreadable images (their ids are recorded in the cache's 'skipped' attribute) "
                             "instead of stopping with an error")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars " + PROGRESS_HELP)


def add_task_argument(parser: argparse.ArgumentParser) -> None:
    """``--task`` of the commands that extract a dataset's targets: classification or a dense task."""
    from probe import tasks

    choices = [tasks.DEFAULT] + [t.name for t in tasks.all_tasks() if t.dense]
    parser.add_argument("--task", choices=choices, default=tasks.DEFAULT,
                        help="which target of the dataset to use: classification (default), or segmentation / depth "
                             "for a dataset with dense targets (shapes, nyuv2:PATH, a dense manifest)")


def _default_taps(task: str | None) -> tuple[str, ...]:
    """The taps a task probes when none are named (``pooled``; ``patch`` for the dense tasks)."""
    from probe import tasks

    return tuple(tasks.get(task).default_taps)


def extraction_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`probe.extract_features` taken from parsed CLI arguments."""
    return dict(
        weights=args.weights,
        random_init=args.random_init,
        img_size=args.img_size,
        family=args.family,
        data_root=args.data_root,
        taps=tuple(args.taps or _default_taps(getattr(args, "task", None))),
        seed=args.seed,
        cache_dir=Path(args.cache_dir),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        precision=args.precision,
        skip_bad=args.skip_bad,
        allow_overlap=args.allow_overlap,
        pixels=args.pixels,
        reuse_pixels=args.reuse_pixels,
        compile=args.compile,
        progress=progress_option(args.progress),
    )
