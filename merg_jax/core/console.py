"""What a person sees while a CLI runs: progress and warnings on the terminal, the rest in a file.

Libraries (Orbax, absl, jax/XLA, grain, tensorflow_datasets) log freely at INFO:
`make demo` printed ~700 lines, ~400 of them Orbax's.  `setup` sends every record
at INFO and above to `<log_dir>/<name>.log` and only WARNING and above to stderr
(INFO too with --verbosity=1).  `Progress` is one live bar per stage or split on a
terminal, and one plain line every N steps elsewhere (CI logs, pipes, pytest),
where carriage-return bars would be noise.

core is the bottom layer: nothing here imports another merg_jax package.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Mapping, TextIO

# Progress lines go to the log file through this logger; the console shows them as
# the bar (or plain line) itself, so the console handler drops its records.
PROGRESS_LOGGER = "merg_jax.progress"
# INFO chatter of these loggers stays in the file even with --verbosity=1: JAX probes
# for a TPU on every start and logs "Unable to initialize backend 'tpu'" when there is none.
FILE_ONLY_INFO = ("jax._src.xla_bridge",)
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"

_log = logging.getLogger(PROGRESS_LOGGER)
_live_bars: set["Progress"] = set()


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == PROGRESS_LOGGER:
            return False
        return not (record.levelno < logging.WARNING and record.name.startswith(FILE_ONLY_INFO))


class _ConsoleHandler(logging.StreamHandler):
    """stderr; while a bar is live, a message is written above it instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _live_bars:
            return super().emit(record)
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_merg_console", False)


def setup(log_dir: str | None, verbosity: int = 0, name: str = "run") -> str | None:
    """Routes logging for a CLI run; returns the log file's path (None without `log_dir`).

    verbosity is absl's --verbosity: 0 (its default once flags are parsed) shows
    warnings and errors on stderr, 1 adds INFO, 2 and above DEBUG (file too).
    Safe to call twice: the handlers of an earlier call are replaced.
    """
    # TensorFlow's C++ logs (tensorflow_datasets imports it where installed) bypass Python logging.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    root = logging.getLogger()
    try:  # absl's handler writes to stderr in its own format: it would duplicate every line
        from absl import logging as absl_logging
        absl_handler = absl_logging.get_absl_handler()
        logging.getLogger("absl").setLevel(logging.NOTSET)  # inherit the root's level below
    except ImportError:
        absl_handler = None
    for h in list(root.handlers):
        std = isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout)
        if h is absl_handler or _ours(h) or (std and type(h) is logging.StreamHandler):
            root.removeHandler(h)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)

    console = _ConsoleHandler(sys.stderr)
    console.setLevel(logging.WARNING if verbosity < 1 else logging.INFO if verbosity == 1 else logging.DEBUG)
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    console.addFilter(_ConsoleFilter())
    console._merg_console = True
    root.addHandler(console)
    if not log_dir:
        return None
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"{name}.log")
    file = logging.FileHandler(path, encoding="utf-8")  # appends: a resumed run continues the file
    file.setFormatter(logging.Formatter(FILE_FORMAT))
    file._merg_console = True
    root.addHandler(file)
    logging.getLogger(__name__).info("%s started: %s", name, " ".join(sys.argv))
    return path


def _fmt(scalars: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items())


class Progress:
    """One stage's or split's progress: a live bar on a terminal, else a plain line every `every`.

    Positions are absolute (`update(n)`), so a resumed stage starts at `start` and
    its rate and ETA count only this run's steps.  Every plain line also goes to the
    log file (on a terminal too, at the same interval), so the file keeps the record.
    every=0 prints only forced lines (the end).  `enabled=False` (non-main hosts) is silent.
    """

    def __init__(self, desc: str, total: int, *, start: int = 0, every: int = 1, unit: str = "step",
                 bar_keys: tuple[str, ...] | None = None, stream: TextIO | None = None,
                 live: bool | None = None, enabled: bool = True):
        self.desc, self.total, self.start, self.every, self.unit = desc, int(total), int(start), int(every), unit
        self.bar_keys = bar_keys
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.total > 0  # nothing to do: no empty 0/0 bar
        self.t0 = time.perf_counter()
        self.n = self._printed = self.start
        self._bar = None
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)())
        if self.enabled and live:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, initial=self.start, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=True, mininterval=0.2)
            _live_bars.add(self)

    def due(self, n: int) -> bool:
        """Whether position n crosses the next `every` boundary (a line is printed there)."""
        return bool(self.every) and n // self.every > self._printed // self.every

    def update(self, n: int, scalars: Mapping[str, Any] | None = None, *, force: bool = False) -> None:
        """Moves to position n; `scalars` (loss, tokens_per_s, ...) are shown next to it."""
        scalars = scalars or {}
        if not self.enabled:
            self._printed = n if force or self.due(n) else self._printed
            self.n = n
            return
        if self._bar is not None:
            shown = scalars if self.bar_keys is None else {k: scalars[k] for k in self.bar_keys if k in scalars}
            if shown:
                self._bar.set_postfix_str(_fmt(shown), refresh=False)
            self._bar.update(n - self._bar.n)  # redraws at most every mininterval
        if force or self.due(n) or (n >= self.total > self.n):
            text = self.line(n, scalars)
            _log.info(text)
            if self._bar is None:
                print(text, file=self.stream, flush=True)
            self._printed = n
        self.n = n

    def line(self, n: int, scalars: Mapping[str, Any] | None = None) -> str:
        """'[desc] step 3/500 (0.6%) loss=1.234 elapsed 3s ETA 497s'."""
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(n - self.start, 1) * max(self.total - n, 0)
        body = _fmt(scalars or {})
        return (f"[{self.desc}] {self.unit} {n}/{self.total} ({100 * n / max(self.total, 1):.1f}%) "
                + (body + " " if body else "") + f"elapsed {elapsed:.0f}s ETA {eta:.0f}s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            _live_bars.discard(self)
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
