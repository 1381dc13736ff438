"""What the user reads while a command runs: progress, warnings and notes, one line each, in one style.

- :func:`progress` is every progress display of the package: a tqdm bar on a terminal (or in a notebook), one
  plain line per finished step when the output is a log file (``probe run > log.txt``), nothing when turned off.
- :func:`console` (entered by ``probe.cli.main``) routes Python warnings through :func:`emit`: each warning is one
  line (``probe: warning: ...``, never the source line Python's default format adds), printed once, and counted;
  :func:`warning_summary` turns the counts into the lines the end of ``probe run`` prints. A line is never
  printed into the middle of an open stdout line (the study's ``[3/62] sweep ... done``): it waits for that line
  to end.
- :func:`note` says something the user should know that is not a problem (e.g. class names made from ids), once.

No torch here; tqdm is imported only when a bar is shown.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

#: ``progress`` settings: True = auto (a bar on a terminal or in a notebook, else one line per finished step),
#: ``"bar"`` = always a bar (an explicit ``--progress``), ``"lines"`` = always lines, False = nothing.
AUTO, BAR, LINES = True, "bar", "lines"

_lock = threading.RLock()
_active_bars = 0
_tracker: _LineTracker | None = None  # sys.stdout while :func:`console` is entered
_pending: list[str] = []  # lines waiting for the open stdout line to end
_shown: set[str] = set()  # warning and note lines printed so far (each is printed once)
_counts: dict[tuple[str, str], list] = {}  # (kind, key) -> [count, what, wheres]; kind: "counted" | "other"
_job: str = ""  # what the running job is about (a backbone), put before a counted warning's ``where``


# ------------------------------------------------------------------------------------------------------ progress
def progress_option(flag: bool | None, *, lines: bool = True) -> bool | str:
    """The ``progress`` setting for a ``--progress/--no-progress`` flag (None when neither was given).

    Parameters
    ----------
    flag : bool or None
        ``--progress`` (True: bars even into a log file), ``--no-progress`` (False) or neither (None: automatic).
    lines : bool
        What the automatic setting shows when stderr is not a terminal: one line per finished step (True), or
        nothing (False, for callers that print their own line per step, as ``probe run`` does per job).
    """
    if flag is None:
        return AUTO if lines or _interactive() else False
    return BAR if flag else False


def progress_mode(setting: bool | str | None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for a ``progress`` setting (see :data:`AUTO`, :data:`BAR`, :data:`LINES`)."""
    if setting is None or setting is False:
        return "off"
    if setting in (BAR, LINES):
        return str(setting)
    if setting is True:
        return BAR if _interactive() else LINES
    raise ValueError(f"progress must be True, False, {BAR!r} or {LINES!r}; got {setting!r}")


def _interactive() -> bool:
    """Whether stderr is a terminal or this is a notebook kernel (where tqdm.auto draws a widget)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


class Progress:
    """One progress display (see :func:`progress`): ``update``, ``set_postfix``, ``close`` as on a tqdm bar."""

    def __init__(self, mode: str, *, total: int | None, desc: str, unit: str, initial: int = 0, leave: bool = False):
        global _active_bars
        self.mode, self.total, self.desc, self.unit = mode, total, desc, unit
        self.n, self.initial, self.postfix, self.closed = initial, initial, {}, False
        self.start = time.perf_counter()
        self._bar = None
        if mode == BAR:
            from tqdm.auto import tqdm

            with _lock:  # a bar redraws its line from the start: end an open stdout line first, keeping it readable
                if _tracker is not None and _tracker.open:
                    _tracker.write("\n")
                    _tracker.flush()
            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, leave=leave)
            with _lock:
                _active_bars += 1

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (a bar's postfix; the end of the finished step's line)."""
        self.postfix = values
        if self._bar is not None:
            self._bar.set_postfix(refresh=False, **values)

    def close(self, *, finished: bool = True) -> None:
        """End the display; in ``lines`` mode print the step's line, unless the step did nothing or did not finish
        (``finished=False``: the caller is about to raise)."""
        global _active_bars
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            with _lock:
                _active_bars -= 1
        elif self.mode == LINES and finished and self.n > self.initial:
            emit(self.line())

    def line(self) -> str:
        """The finished step's line: ``desc: 1,347 img in 6.2 s (217 img/s), loss 0.5210``."""
        seconds = time.perf_counter() - self.start
        done = self.n - self.initial
        unit = self.unit if done == 1 or self.unit in ("img", "px") else self.unit + "s"
        rate = done / seconds if seconds > 0 else 0.0
        rate = f" ({rate:,.0f} {self.unit}/s)" if rate >= 10 and self.unit == "img" else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        return f"{self.desc}: {done:,} {unit} in {seconds:.1f} s{rate}{extra}"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(finished=kind is None)


def progress(total: int | None, *, desc: str, unit: str, enabled: bool | str = AUTO, initial: int = 0,
             leave: bool = False) -> Progress:
    """A progress display over ``total`` units: a tqdm bar, one line when the step finishes, or nothing.

    Parameters
    ----------
    total : int or None
        Units of the whole step (None: unknown; the line is printed on close).
    desc, unit : str
        What is counted, e.g. ``desc="test_resnet digits/train", unit="img"``.
    enabled : bool or str
        The caller's ``progress`` setting (:func:`progress_mode`): True (automatic), ``"bar"``, ``"lines"``, False.
    initial : int
        Units already done (a resumed extraction); the finished line counts only the new ones.
    leave : bool
        Keep a finished bar on the terminal.
    """
    return Progress(progress_mode(enabled), total=total, desc=desc, unit=unit, initial=initial, leave=leave)


# ------------------------------------------------------------------------------------------------ lines on stderr
def emit(line: str) -> None:
    """Print one line on stderr, after any open stdout line has ended, without breaking a progress bar."""
    with _lock:
        if _tracker is not None and _tracker.open:
            _pending.append(line)
            return
        _write_line(line)


def _write_line(line: str) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()  # a log file holding both streams keeps their order
    if _active_bars and "tqdm" in sys.modules:
        sys.modules["tqdm"].tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def note(text: str) -> None:
    """Print ``probe: note: TEXT`` once per process (for what the user should know that is not a problem)."""
    line = f"probe: note: {one_line(text)}"
    with _lock:
        if line in _shown:
            return
        _shown.add(line)
    emit(line)


def one_line(text: str) -> str:
    """``text`` with its lines joined by spaces and runs of white space made single."""
    return " ".join(str(text).split())


class _LineTracker:
    """Wraps sys.stdout: remembers whether its last line is still open, and prints waiting lines once it ends."""

    def __init__(self, stream):
        self._stream = stream
        self.open = False

    def write(self, text: str) -> int:
        with _lock:
            cut = text.rfind("\n")
            if cut < 0 or not _pending:
                n = self._stream.write(text)
            else:
                n = self._stream.write(text[:cut + 1])
                self.open = False
                waiting = list(_pending)
                _pending.clear()
                for line in waiting:
                    _write_line(line)
                n += self._stream.write(text[cut + 1:])
            if text:
                self.open = not text.endswith("\n")
            return n

    def __getattr__(self, name):
        return getattr(self._stream, name)


# ------------------------------------------------------------------------------------------------------ warnings
class CountedWarning(Warning):
    """Mixed into a warning that the end-of-run summary counts by what happened (see :func:`counted_warning`)."""

    what: str = ""
    where: str = ""
    count: int = 1


_counted_classes: dict[type, type] = {}


def counted_warning(category: type[Warning], message: str, *, what: str, where: str, count: int = 1) -> Warning:
    """A warning of ``category`` (still caught as one) that the summary counts: ``COUNT WHAT: WHERE``.

    Parameters
    ----------
    category : Warning subclass
        What it is, e.g. scikit-learn's ``ConvergenceWarning``.
    message : str
        The line printed when it happens.
    what : str
        What is counted, with ``{s}`` where the plural ends: ``"logistic fit{s} stopped at max_iter"``.
    where : str
        Where it happened, e.g. ``"test_vit, C = 1e5"``.
    count : int
        How many of ``what`` this warning stands for.

    Examples
    --------
    >>> warnings.warn(counted_warning(UserWarning, "...", what="fit{s} stopped", where="test_vit"))  # doctest: +SKIP
    """
    cls = _counted_classes.get(category)
    if cls is None:
        cls = _counted_classes[category] = type(category.__name__, (category, CountedWarning),
                                                {"__module__": category.__module__})
    w = cls(message)
    w.what, w.where, w.count = what, where, int(count)
    return w


def format_value(value: Any) -> str:
    """A hyperparameter as a person writes it: ``1e5`` for 100000.0, ``0.1``, ``5``."""
    if isinstance(value, float) and value != 0:
        exponent = f"{value:e}".split("e")
        mantissa, power = float(exponent[0]), int(exponent[1])
        if mantissa == 1.0 and abs(power) >= 3:
            return f"1e{power}"
        return f"{value:g}"
    return str(value)


def describe_points(points: list[dict]) -> str:
    """Grid points as ``C = 1e4, 1e5`` (one varying name) or ``C = 1, k = 5; C = 10, k = 5``."""
    names = {tuple(p) for p in points}
    if len(names) == 1 and len(next(iter(names))) == 1:
        (name,) = next(iter(names))
        return f"{name} = " + ", ".join(format_value(p[name]) for p in points)
    return "; ".join(", ".join(f"{k} = {format_value(v)}" for k, v in p.items()) for p in points)


def not_converged_warning(probe: str, context: dict, points: list[dict], n_points: int) -> Warning:
    """The sweep's ``ConvergenceWarning`` for grid points whose solver stopped at max_iter, counted per fit.

    Parameters
    ----------
    probe : str
        The probe's name (``logistic``).
    context : dict
        The sweep's row context; its ``backbone`` and ``tap`` say where (the tap unless it is ``pooled``).
    points : list of dict
        The grid points that did not converge.
    n_points : int
        Grid points in the sweep.
    """
    from sklearn.exceptions import ConvergenceWarning

    tap = context.get("tap")
    where = " ".join(str(v) for v in (context.get("backbone"), tap if tap not in (None, "pooled", "-") else None)
                     if v)
    where = ", ".join(w for w in (where, describe_points(points)) if w)
    message = (f"{probe} probe: the solver stopped at max_iter without converging for {len(points)} of {n_points} "
               f"grid points ({where}); 'converged' is false in those rows' params")
    return counted_warning(ConvergenceWarning, message, what=f"{probe} fit{{s}} stopped at max_iter", where=where,
                           count=len(points))


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` while :func:`console` is entered: one line, once, counted."""
    if isinstance(message, CountedWarning):
        _report(one_line(message), ("counted", message.what), message.where, message.count)
    else:
        say_warning(str(message))


def say_warning(text: str) -> None:
    """Print ``probe: warning: TEXT`` as one line, once, and count it for :func:`warning_summary` (for a warning
    worded by probe itself, e.g. a fine-tune at chance level; Python warnings reach the same place)."""
    text = one_line(text)
    _report(text, ("other", text), "", 1)


def _report(text: str, key: tuple[str, str], where: str, count: int) -> None:
    if _job and not where.startswith(_job):
        where = ", ".join(w for w in (_job, where) if w)
    with _lock:
        entry = _counts.setdefault(key, [0, key[1], []])
        entry[0] += count
        if where and where not in entry[2]:
            entry[2].append(where)
    shown = f"probe: warning: {text}"
    with _lock:
        if shown in _shown:
            return
        _shown.add(shown)
    emit(shown)


@contextlib.contextmanager
def job_label(label: str) -> Iterator[None]:
    """Name what the warnings counted while entered are about (e.g. the study job's backbone), so that the summary
    says ``test_vit, C = 1e5`` for a warning that only knew ``C = 1e5``. One job at a time (not per thread: a
    job's worker threads warn under its label)."""
    global _job
    previous, _job = _job, str(label)
    try:
        yield
    finally:
        _job = previous


def warning_summary() -> list[str]:
    """One line per kind of warning seen since :func:`console` was entered, e.g.
    ``1 logistic fit stopped at max_iter: test_vit, C = 1e5``; [] when there was none."""
    out = []
    with _lock:
        for (kind, _), (n, what, wheres) in _counts.items():
            if kind == "counted":
                listed = "; ".join(wheres[:6]) + ("; ..." if len(wheres) > 6 else "")
                out.append(f"{n} {what.format(s='' if n == 1 else 's')}" + (f": {listed}" if listed else ""))
            else:
                listed = ", ".join(wheres[:6]) + (", ..." if len(wheres) > 6 else "")
                times = f"{n} times" if n > 1 else ""
                out.append(what + (f" ({'; '.join(w for w in (times, listed) if w)})" if times or listed else ""))
    return out


def print_warning_summary(out=None) -> None:
    """Print :func:`warning_summary` under a ``warnings:`` heading to ``out`` (stdout); nothing when empty."""
    lines = warning_summary()
    if lines:
        out = out or sys.stdout
        print("warnings (each was printed once as it happened):", file=out)
        for line in lines:
            print(f"  {line}", file=out)


@contextlib.contextmanager
def console() -> Iterator[None]:
    """While entered (a CLI command): warnings print as one counted line each, once, and lines on stderr wait for an
    open stdout line to end. Restores Python's warning display and sys.stdout on exit."""
    global _tracker
    with warnings.catch_warnings():
        warnings.showwarning = _show
        warnings.filterwarnings("always", category=CountedWarning)  # every one is counted (printed once)
        previous = sys.stdout
        _tracker = sys.stdout = _LineTracker(previous)
        _counts.clear()
        _shown.clear()  # once per command (the CLI may run several in one process, as the tests do)
        try:
            yield
        finally:
            with _lock:
                waiting = list(_pending)
                _pending.clear()
                if waiting and _tracker.open:
                    previous.write("\n")
                sys.stdout, _tracker = previous, None
            for line in waiting:
                _write_line(line)
