"""MRC files (``.mrc``): 4-D volume stacks, or 3-D frame stacks with ``--scan-shape``.

The header is parsed by ``mrcfile``; the data are then read with plain file reads at
the data offset, so nothing is mapped or read beyond the rows asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened, one_line

logger = logging.getLogger(__name__)


def open_mrc(path: Path) -> Opened:
    """An MRC file's data as a memory map at its data offset (read with file reads).

    Example
    -------
    >>> open_mrc(Path("scan.mrc")).data.shape  # doctest: +SKIP
    (34, 206, 512, 512)
    """
    import mrcfile

    name = str(path)
    try:
        with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
            shape, dtype = tuple(mrc.data.shape), mrc.data.dtype
            offset = int(mrc.data.offset)
            voxel = mrc.voxel_size
            calibrations = [(axis, 0.0, float(getattr(voxel, axis)), "Å") for axis in ("x", "y")
                            if float(getattr(voxel, axis)) not in (0.0, 1.0)]
    except Exception as exc:  # noqa: BLE001 - mrcfile raises ValueError, OSError, warnings-as-errors
        raise GhostmapError(f"{name} is not a readable MRC file ({one_line(exc)})") from exc
    data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return Opened(data, name, (path,), [], None, FormatInfo("MRC", "mrcfile header + file reads", calibrations))
