"""Extractors by name, and media decoding spread over spawned worker processes.

Why a module of its own: audio and video decoders are native code (libsndfile,
FFmpeg inside PyAV and inside OpenCV) and one odd file can kill the process
that decodes it.  A dead worker must cost that one clip, not the corpus: each
worker notes the clip it is decoding in a marker file.  When the pool breaks,
the clips not yet decoded go on in a fresh pool, except those in flight at the
crash: each is decoded last, alone in a pool of one worker, and one that kills
that worker too is rejected with the reason CRASH_REASON.
"""
from __future__ import annotations

import concurrent.futures as cf
import importlib
import json
import logging
import math
import multiprocessing
import os
import tempfile
from typing import Any, Callable, Optional

from input_pipeline.features import registry

log = logging.getLogger(__name__)

_EXTRACTOR_MODULES = {"audio": "input_pipeline.features.audio",
                      "video": "input_pipeline.features.video",
                      "text": "input_pipeline.features.text"}
_TEXT_CACHE: dict[str, registry.Extractor] = {}
CRASH_REASON = "decoder crashed its worker process"


def make_extractor(name: str, modality: str, kwargs: dict) -> registry.Extractor:
    """Imports the module that registers `name`, then creates it.

    `name` is a built-in extractor of `modality`, or "package.module:name" for one
    registered by your own module (imported here, and so in every spawned worker).
    Text encoders are cached per process: a second run reuses the loaded, compiled model."""
    key = json.dumps([name, kwargs], sort_keys=True, default=str)
    if modality == "text" and key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    module, _, registered_name = name.rpartition(":")
    if registered_name not in registry.registered():
        importlib.import_module(module or _EXTRACTOR_MODULES[modality])
    ext = registry.create(registered_name, **kwargs)
    if ext.modality != modality:
        raise ValueError(f"extractor {name!r} is for {ext.modality!r}, not {modality!r}")
    if modality == "text":
        _TEXT_CACHE[key] = ext
    return ext


def extract_one(ext: registry.Extractor, path: str):
    """Result or ("error", reason); unexpected exceptions are a bad clip too, not a crash."""
    try:
        return ext.extract(path)
    except registry.MediaError as err:
        return ("error", err.reason)
    except Exception as err:  # noqa: BLE001 - a decoder bug on one odd file must not stop the corpus
        log.warning("extractor %s failed on %s: %r", type(ext).__name__, path, err)
        return ("error", f"extractor error ({type(err).__name__}: {err})")


# ----------------------------------------------------------------------------- in the workers
_WORKER_EXTRACTORS: dict[str, registry.Extractor] = {}
_WORKER_MARKER_DIR: list[str] = []


def _init_worker(specs: dict[str, tuple[str, dict]], marker_dir: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    _WORKER_MARKER_DIR[:] = [marker_dir]
    for modality, (name, kwargs) in specs.items():
        _WORKER_EXTRACTORS[modality] = make_extractor(name, modality, kwargs)


def _work(modality: str, paths: list[str]) -> list:
    ext = _WORKER_EXTRACTORS[modality]
    marker = os.path.join(_WORKER_MARKER_DIR[0], str(os.getpid()))
    out = []
    for p in paths:
        with open(marker, "w") as fh:  # what this process is decoding, should it die
            fh.write(json.dumps([modality, p]))
        out.append(extract_one(ext, p))
    os.remove(marker)
    return out


# ----------------------------------------------------------------------------- in the caller
def extract_media(paths_by_modality: dict[str, list[str]], specs: dict[str, tuple[str, dict]],
                  workers: int, chunk_size: int,
                  while_waiting: Optional[Callable[[], None]] = None,
                  local: Optional[dict[str, registry.Extractor]] = None,
                  on_done: Optional[Callable[[int], None]] = None) -> dict[str, dict[str, Any]]:
    """{modality: {path: features dict | ("error", reason)}}.

    workers <= 1: in this process (with the `local` extractors when given), where
    a crashing decoder takes the caller down; use workers >= 2 on untrusted media.
    `while_waiting` runs in this process while the workers decode (the text encoder).
    `on_done(n)` is told how many clips are decoded so far (a progress bar).
    """
    on_done = on_done or (lambda n: None)
    out: dict[str, dict[str, Any]] = {m: {} for m in paths_by_modality}
    if workers <= 1 or not any(paths_by_modality.values()):
        exts = {m: (local or {}).get(m) or make_extractor(specs[m][0], m, specs[m][1])
                for m in paths_by_modality}
        for m, paths in paths_by_modality.items():
            for p in paths:
                out[m][p] = extract_one(exts[m], p)
                on_done(sum(map(len, out.values())))
        if while_waiting:
            while_waiting()
        return out
    todo = {m: list(paths) for m, paths in paths_by_modality.items()}
    suspects: list[tuple[str, str]] = []
    while any(todo.values()):
        in_flight = _pool_pass(todo, specs, workers, chunk_size, out, while_waiting, on_done)
        while_waiting = None  # ran in the first pass
        if in_flight is None:
            break
        suspects += in_flight
        left = {m: [p for p in paths if p not in out[m] and (m, p) not in in_flight]
                for m, paths in todo.items()}
        if sum(map(len, left.values())) == sum(map(len, todo.values())):
            raise RuntimeError("media worker processes die before decoding anything (see their "
                               "stderr above: an extractor that fails to load?)")
        log.warning("a media worker process died; %d clips decoded, %d to go in a fresh pool; "
                    "in flight at the crash, retried alone later: %s", sum(map(len, out.values())),
                    sum(map(len, left.values())), ", ".join(p for _, p in in_flight))
        todo = left
    for m, p in suspects:  # alone in a pool of one: a crash now is this clip's own
        if _pool_pass({m: [p]}, specs, 1, 1, out, None) is not None:
            out[m][p] = ("error", CRASH_REASON)
            log.error("%s clip %s: %s; rejected", m, p, CRASH_REASON)
    return out


def _pool_pass(todo: dict[str, list[str]], specs: dict[str, tuple[str, dict]], workers: int,
               chunk_size: int, out: dict[str, dict[str, Any]],
               while_waiting: Optional[Callable[[], None]],
               on_done: Callable[[int], None] = lambda n: None) -> Optional[list[tuple[str, str]]]:
    """Decodes `todo` into `out`; None when every task finished, else the clips in flight
    in the workers when the pool broke (the one that killed its worker among them)."""
    with tempfile.TemporaryDirectory(prefix="merg_media_") as marker_dir:
        broken = _run_pool(todo, specs, workers, chunk_size, out, marker_dir, while_waiting, on_done)
        if not broken:
            return None
        in_flight = []
        for name in os.listdir(marker_dir):
            try:
                with open(os.path.join(marker_dir, name)) as fh:
                    m, p = json.loads(fh.read())
            except (OSError, ValueError):  # killed while writing its marker: between clips
                continue
            if p not in out.get(m, {}):
                in_flight.append((m, p))
        return in_flight


def _run_pool(todo: dict[str, list[str]], specs: dict[str, tuple[str, dict]], workers: int,
              chunk_size: int, out: dict[str, dict[str, Any]], marker_dir: str,
              while_waiting: Optional[Callable[[], None]], on_done: Callable[[int], None]) -> bool:
    """True when the pool broke (a worker died)."""
    ctx = multiprocessing.get_context("spawn")  # JAX in this process: never fork it
    pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=({m: specs[m] for m in todo}, marker_dir))
    chunks = []
    for m, paths in todo.items():
        size = max(1, min(chunk_size, math.ceil(len(paths) / (4 * workers))))
        chunks += [(m, paths[i:i + size]) for i in range(0, len(paths), size)]
    broken = False
    try:
        futures = {}
        for m, chunk in chunks:
            try:
                futures[pool.submit(_work, m, chunk)] = (m, chunk)
            except cf.process.BrokenProcessPool:  # a worker died already
                broken = True
                break
        if while_waiting:
            while_waiting()
        for fut in cf.as_completed(futures):
            m, chunk = futures[fut]
            try:
                results = fut.result()
            except cf.process.BrokenProcessPool:
                broken = True
                continue
            for p, res in zip(chunk, results, strict=True):
                out[m][p] = res
            on_done(sum(map(len, out.values())))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return broken
