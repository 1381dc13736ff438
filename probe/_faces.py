"""Face datasets and their protocols' inputs: FG-NET file names, a generated face-like dataset, LFW pairs files.

- ``fgnet:PATH``: the FG-NET image folder as distributed (``PATH`` or ``PATH/images``), where a file name encodes
  the subject and the age: ``001A02.JPG`` is subject 001 at age 2, and a trailing letter (``001A43a.JPG``,
  ``001A43b.JPG``) marks another photo at the same age. The dataset carries two targets: ``identity`` (the
  label; class = subject) and ``age`` (years). It has no split of its own: it is cross-validated (``--cv``).
- ``faces``: a small generated face-like dataset (built-in, deterministic, offline): each identity is a fixed
  random texture on an oval, and age is a smooth change of the same face (a darkening, wrinkle-like stripes and a
  greying border), so identification, verification and age regression all have something to find.
- Pairs files in the LFW ``pairs.txt`` format for verification (:func:`read_pairs`), or pairs drawn from the
  identities of any dataset (:func:`draw_pairs`) when no file is given.

Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._errors import UsageError
from ._images import is_image_file

#: Dataset kinds defined here (``probe._datasets.open_dataset`` dispatches to :func:`open_face_dataset`).
FILE_KINDS = ("fgnet",)
BUILTIN_KINDS = ("faces",)
#: Tasks of a dataset whose classes are people (:attr:`probe._datasets.DatasetSource.tasks`).
IDENTITY_TASKS = ("identification", "verification")

#: ``<subject>A<age>[letter].<ext>``; the subject keeps its spelling (``001``), the letter marks a second photo.
_FGNET_NAME = re.compile(r"^(?P<subject>\d+)A(?P<age>\d+)(?P<extra>[A-Za-z]?)\.[A-Za-z]+$", re.IGNORECASE)


def parse_fgnet_name(name: str) -> tuple[str, int]:
    """``(subject, age)`` of an FG-NET file name: ``001A02.JPG`` -> ``("001", 2)``, ``001A43b.JPG`` -> ``("001", 43)``.

    Raises
    ------
    UsageError
        One line naming the file and the expected pattern.
    """
    m = _FGNET_NAME.match(os.path.basename(name))
    if m is None:
        raise UsageError(f"FG-NET file name {name!r} does not read as <subject>A<age>[letter].<ext> (e.g. "
                         "001A02.JPG: subject 001 at age 2); rename or remove that file")
    return m.group("subject"), int(m.group("age"))


def _open_fgnet(arg: str) -> dict:
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise UsageError(f"FG-NET folder {arg} does not exist; fgnet:PATH takes the folder of FG-NET images "
                         "(PATH or PATH/images holding 001A02.JPG ...)")
    if (root / "images").is_dir():
        root = root / "images"
    files = sorted(p.name for p in root.iterdir() if p.is_file() and is_image_file(p.name))
    if not files:
        raise UsageError(f"FG-NET folder {root} holds no images; expected files such as 001A02.JPG")
    parsed = [parse_fgnet_name(f) for f in files]
    subjects = sorted({s for s, _ in parsed}, key=lambda s: (int(s), s))
    index = {s: i for i, s in enumerate(subjects)}
    labels = np.asarray([index[s] for s, _ in parsed], dtype=np.int64)
    ages = np.asarray([a for _, a in parsed], dtype=np.float64)
    return dict(spec=f"fgnet:{arg}", name="fgnet", classes=subjects, splits={"train": files},
                labels={"train": labels}, ids={"train": list(files)}, root=str(root),
                targets={"age": {"train": ages}}, options={"identity_tasks": list(IDENTITY_TASKS)})


# ---------------------------------------------------------------------------------------------------- generated

#: Version of the generated faces: part of their fingerprint, bumped whenever their content changes.
FACES_VERSION = "faces-v1"
_FACES_PEOPLE = 20
_FACES_PER_PERSON = 5
_FACES_SIZE = 32  # pixels, square
_AGE_RANGE = (5.0, 75.0)  # years


def _open_faces() -> dict:
    n = _FACES_PEOPLE * _FACES_PER_PERSON
    index = np.arange(n)
    labels = (index // _FACES_PER_PERSON).astype(np.int64)
    ages = np.asarray([_face_age(int(i)) for i in index])
    return dict(spec="faces", name="faces", classes=[f"person{p:02d}" for p in range(_FACES_PEOPLE)],
                splits={"train": [int(i) for i in index]}, labels={"train": labels},
                ids={"train": [f"person{int(p):02d}/{int(i):03d}" for p, i in zip(labels, index)]},
                version=FACES_VERSION, options={"size": _FACES_SIZE, "identity_tasks": list(IDENTITY_TASKS)},
                targets={"age": {"train": ages}})


def _face_age(index: int) -> float:
    # each person is seen at ages spread over the whole range (as FG-NET follows people from childhood)
    person, k = divmod(index, _FACES_PER_PERSON)
    rng = np.random.default_rng([11, person])
    lo, hi = _AGE_RANGE
    slot = (k + rng.uniform(0.1, 0.9)) / _FACES_PER_PERSON
    return float(round(lo + (hi - lo) * slot))


def face_image(index: int, size: int = _FACES_SIZE):
    """The generated face ``index``: its person's fixed texture on an oval, changed smoothly by its age."""
    from PIL import Image

    person = index // _FACES_PER_PERSON
    age = _face_age(index)
    t = (age - _AGE_RANGE[0]) / (_AGE_RANGE[1] - _AGE_RANGE[0])  # 0 young .. 1 old
    prng = np.random.default_rng([13, person])
    # identity: a low-frequency random texture (a few random cosines) and a skin tone, fixed per person
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    texture = np.zeros((size, size), dtype=np.float32)
    for _ in range(4):
        fx, fy = prng.uniform(1.0, 4.0, size=2)
        phase = prng.uniform(0, 2 * np.pi)
        texture += np.cos(2 * np.pi * (fx * xx + fy * yy) + phase)
    tone = prng.uniform(110, 220, size=3)
    # age: darker, stripes (wrinkles) that deepen, a border greying towards white
    stripes = np.cos(2 * np.pi * 9 * yy) * t
    face = tone[None, None, :] * (1.0 - 0.25 * t) + 22 * texture[..., None] + 18 * stripes[..., None]
    oval = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.46) ** 2 <= 1.0
    background = np.full(3, 40 + 170 * t)
    noise = np.random.default_rng([17, index]).normal(0, 6, size=(size, size, 3))
    img = np.where(oval[..., None], face, background) + noise
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")


def open_face_dataset(kind: str, arg: str) -> dict:
    """Keyword arguments of :class:`probe._datasets.DatasetSource` for ``fgnet:PATH`` or the built-in ``faces``."""
    if kind == "fgnet":
        return _open_fgnet(arg)
    if kind == "faces":
        return _open_faces()
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------------- pairs


@dataclass
class Pairs:
    """Verification pairs: row indices into one feature array, whether each pair is the same person, its fold.

    Attributes
    ----------
    a, b : numpy.ndarray of int64 [P]
        Row indices of the two images of each pair.
    same : numpy.ndarray of bool [P]
        True for a matched pair (same person).
    fold : numpy.ndarray of int64 [P]
        The fold (0-based) of each pair.
    """

    a: np.ndarray
    b: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self.fold) else 0


def lfw_path(name: str, number: int) -> str:
    """The LFW-layout path of image ``number`` of ``name``: ``<Name>/<Name>_0001.jpg``."""
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_pairs(path: str | os.PathLike, ids) -> Pairs:
    """Read an LFW ``pairs.txt`` file and resolve its images among ``ids`` (paths relative to the LFW folder).

    The format: a header ``<folds> <pairs per fold>`` (or a single count: one fold), then per fold that many
    matched lines ``name n1 n2`` followed by as many mismatched lines ``name1 n1 name2 n2`` (tabs or spaces).

    Raises
    ------
    UsageError
        For a missing file, a malformed line (naming its number) or an image the dataset does not hold (naming it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"pairs file {path} does not exist; --pairs takes an LFW pairs.txt file")
    lines = [ln.split() for ln in path.read_text().splitlines()]
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln]
    if not numbered:
        raise UsageError(f"pairs file {path} is empty; expected a header '<folds> <pairs per fold>' then the pairs")
    (_, head), body = numbered[0], numbered[1:]
    try:
        counts = [int(x) for x in head]
    except ValueError:
        raise UsageError(f"pairs file {path} line 1 {' '.join(head)!r} is not a header '<folds> <pairs per "
                         "fold>' (LFW pairs.txt starts with e.g. '10 300')") from None
    folds, per = (counts[0], counts[1]) if len(counts) == 2 else (1, counts[0]) if len(counts) == 1 else (0, 0)
    if folds < 1 or per < 1:
        raise UsageError(f"pairs file {path} header {' '.join(head)!r} must be '<folds> <pairs per fold>', e.g. "
                         "'10 300'")
    if len(body) != 2 * folds * per:
        raise UsageError(f"pairs file {path} has {len(body)} pair lines; its header '{' '.join(head)}' promises "
                         f"{2 * folds * per} ({folds} folds x {per} matched + {per} mismatched)")
    where = {str(i): r for r, i in enumerate(ids)}
    a, b, same, fold = [], [], [], []
    for k, (lineno, ln) in enumerate(body):
        f, pos = divmod(k, 2 * per)
        matched = pos < per
        try:
            if matched and len(ln) == 3:
                pa, pb = lfw_path(ln[0], int(ln[1])), lfw_path(ln[0], int(ln[2]))
            elif not matched and len(ln) == 4:
                pa, pb = lfw_path(ln[0], int(ln[1])), lfw_path(ln[2], int(ln[3]))
            else:
                raise ValueError
        except ValueError:
            want = "name n1 n2 (matched)" if matched else "name1 n1 name2 n2 (mismatched)"
            raise UsageError(f"pairs file {path} line {lineno} {' '.join(ln)!r} is not '{want}'") from None
        for p in (pa, pb):
            if p not in where:
                raise UsageError(f"pairs file {path} line {lineno} names image {p}, which the dataset does not "
                                 "hold; the dataset must be the LFW folder (<Name>/<Name>_0001.jpg)")
        a.append(where[pa])
        b.append(where[pb])
        same.append(matched)
        fold.append(f)
    return Pairs(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), np.asarray(same, dtype=bool),
                 np.asarray(fold, dtype=np.int64))


def draw_pairs(labels, *, folds: int = 10, per_fold: int | None = None, seed: int = 0) -> Pairs:
    """Draw LFW-style verification pairs from identity labels: ``folds`` folds of people, no person in two folds.

    In each fold, ``per_fold`` matched pairs (two images of one person) and as many mismatched pairs (two people
    of that fold) are drawn without repeating a pair, seeded. ``per_fold`` defaults to the most every fold allows.
    """
    labels = np.asarray(labels)
    people = np.unique(labels)
    rng = np.random.default_rng(seed)
    groups = np.array_split(rng.permutation(people), folds)
    if any(len(g) < 2 for g in groups):
        raise UsageError(f"cannot draw {folds} folds of verification pairs from {len(people)} people: each fold "
                         "needs two people; pass a pairs file (--pairs) or use fewer folds")
    per_fold_pairs = []
    for g in groups:
        members = {p: np.flatnonzero(labels == p) for p in g}
        matched = [(int(i), int(j)) for m in members.values() for x, i in enumerate(m) for j in m[x + 1:]]
        rows = np.concatenate(list(members.values()))
        owner = labels[rows]
        mismatched = [(int(rows[x]), int(rows[y])) for x in range(len(rows)) for y in range(x + 1, len(rows))
                      if owner[x] != owner[y]]
        per_fold_pairs.append((matched, mismatched))
    most = min(min(len(m), len(n)) for m, n in per_fold_pairs)
    if most == 0:
        raise UsageError("cannot draw matched verification pairs: some fold's people have one image each; pass a "
                         "pairs file (--pairs)")
    per = most if per_fold is None else min(int(per_fold), most)
    a, b, same, fold = [], [], [], []
    for f, (matched, mismatched) in enumerate(per_fold_pairs):
        for pairs, is_same in ((matched, True), (mismatched, False)):
            pick = rng.choice(len(pairs), size=per, replace=False)
            for p in sorted(pick):
                a.append(pairs[p][0])
                b.append(pairs[p][1])
                same.append(is_same)
                fold.append(f)
    return Pairs(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), np.asarray(same, dtype=bool),
                 np.asarray(fold, dtype=np.int64))
