"""Thermo Fisher EMPAD scans: an ``.xml`` file naming a ``.raw`` file of frames.

Each frame on disk is 130 x 128 little-endian float32: 128 rows of the detector, then two
rows of metadata, which are dropped. The scan shape comes from the XML (``pix_x`` /
``pix_y``) or the raw file's name (``scan_x256_y256.raw``); otherwise from ``--scan-shape``.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened, frame_range, one_line

logger = logging.getLogger(__name__)

DETECTOR = (128, 128)
RAW_ROWS = 130  # two metadata rows follow each 128 x 128 frame
DTYPE = np.dtype("<f4")


class EmpadFrames:
    """The frames of an EMPAD ``.raw`` file, (frame, 128, 128), read with plain file reads.

    Example
    -------
    >>> EmpadFrames(Path("scan_x4_y4.raw")).shape  # doctest: +SKIP
    (16, 128, 128)
    """

    def __init__(self, raw: Path):
        self.raw = raw
        self.frame_bytes = RAW_ROWS * DETECTOR[1] * DTYPE.itemsize
        n, extra = divmod(raw.stat().st_size, self.frame_bytes)
        if extra:
            raise GhostmapError(
                f"{raw} holds {raw.stat().st_size} bytes, not a whole number of {self.frame_bytes}-byte "
                "EMPAD frames (130 x 128 float32): truncated?"
            )
        self.shape, self.dtype, self.ndim = (n, *DETECTOR), DTYPE, 3

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        frames = key[0]
        if not isinstance(frames, slice):
            return self[(slice(frames, frames + 1), *key[1:])][0]
        start, stop = frame_range(frames, self.shape[0], "EMPAD")
        raw = np.empty((stop - start, RAW_ROWS, DETECTOR[1]), dtype=DTYPE)
        with open(self.raw, "rb") as f:
            f.seek(start * self.frame_bytes)
            if f.readinto(memoryview(raw.reshape(-1).view(np.uint8))) != raw.nbytes:
                raise GhostmapError(f"{self.raw} is truncated")
        return raw[:, : DETECTOR[0], :][(slice(None), *key[1:])]


def read_empad_xml(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """(raw file, scan shape or None) named by an EMPAD ``.xml``."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise GhostmapError(f"{path} is not a readable EMPAD .xml file ({one_line(exc)})") from exc
    node = root.find("raw_file")
    name = node.get("filename") if node is not None else None
    if not name:
        raise GhostmapError(f"{path} names no raw file (<raw_file filename=...>): not an EMPAD .xml file")
    raw = path.parent / Path(name).name
    shape = None
    pix_x, pix_y = root.findtext("pix_x"), root.findtext("pix_y")
    if pix_x and pix_y and pix_x.strip().isdigit() and pix_y.strip().isdigit():
        shape = (int(pix_y), int(pix_x))
    elif match := re.match(r"scan_x(\d+)_y(\d+)", raw.stem):
        shape = (int(match.group(2)), int(match.group(1)))
    return raw, shape


def open_empad(path: Path) -> Opened:
    """An EMPAD scan as a lazy 3-D frame stack with the scan shape its ``.xml`` records.

    Example
    -------
    >>> open_empad(Path("scan.xml")).scan_shape  # doctest: +SKIP
    (256, 256)
    """
    raw, shape = read_empad_xml(path)
    if not raw.exists():
        raise GhostmapError(f"{path} names {raw.name}, which is missing beside it")
    frames = EmpadFrames(raw)
    return Opened(frames, str(raw), (path, raw), [], shape, FormatInfo("EMPAD .xml + .raw", "ghostmap.io.empad"))
