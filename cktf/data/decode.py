"""Decode image files into one uint8 NHWC array with a process pool (docs/algorithm.md §6).

Used once per split by the ImageFolder-style sources (CIFAR-10 JPEG tree, Tiny-ImageNet,
``imagefolder``); the result goes to the on-disk cache (:mod:`cktf.data.cache`). Grayscale and
palette images are converted to RGB; an image whose size differs from the target side is resized
(shorter side to ``side``, bilinear with antialiasing) and centre-cropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

#: below this many files the pool's start-up costs more than it saves
POOL_MIN_FILES = 2000
CHUNK = 500


def load_rgb(path: str | Path, side: int) -> np.ndarray:
    """One image as uint8 [side, side, 3] (RGB; resized + centre-cropped when its size differs)."""
    with Image.open(path) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")  # grayscale, palette, CMYK, RGBA
        w, h = im.size
        if (w, h) != (side, side):
            scale = side / min(w, h)
            nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
            left, top = (nw - side) // 2, (nh - side) // 2
            im = im.crop((left, top, left + side, top + side))
        return np.asarray(im, dtype=np.uint8)


def image_side(path: str | Path) -> int:
    """Shorter side of an image (reads only the header)."""
    with Image.open(path) as im:
        return min(im.size)


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, side = args
    out = np.empty((len(paths), side, side, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = load_rgb(p, side)
    return out


def decode_files(
    paths: Sequence[str | Path], side: int, desc: str = "decode", workers: int | None = None, progress: bool = True
) -> np.ndarray:
    """Decode ``paths`` (in order) into uint8 [N, side, side, 3].

    Args:
        paths: image files.
        side: output side; images of another size are resized and centre-cropped.
        desc: label of the tqdm bar.
        workers: processes; default ``os.cpu_count()`` (at most 8). Small lists are decoded in-process.
        progress: show a tqdm progress bar.
    """
    paths = [str(p) for p in paths]
    out = np.empty((len(paths), side, side, 3), dtype=np.uint8)
    chunks = [(paths[i : i + CHUNK], side) for i in range(0, len(paths), CHUNK)]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    # disable=None: no bar when stderr is not a terminal (a CI log gets no \r-redrawn lines)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=(not progress) or None, leave=False)
    try:
        if workers <= 1 or len(paths) < POOL_MIN_FILES:
            results = map(_decode_chunk, chunks)
            _fill(out, results, bar)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                _fill(out, pool.map(_decode_chunk, chunks), bar)
    finally:
        bar.close()
    return out


def _fill(out: np.ndarray, results, bar: tqdm) -> None:
    pos = 0
    for arr in results:
        out[pos : pos + len(arr)] = arr
        pos += len(arr)
        bar.update(len(arr))
