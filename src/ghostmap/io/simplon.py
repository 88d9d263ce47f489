"""Dectris SIMPLON / NeXus (NXmx) master files (ARINA, EIGER, QUADRO, PILATUS4).

A master file ``NAME_master.h5`` holds metadata and, under ``/entry/data``, external
links ``data_000001``, ``data_000002``, ... to data files, each a 3-D frame stack
(frame, det_row, det_col) usually compressed with bitshuffle + LZ4 (decoded by the
filters ``hdf5plugin`` registers). The frames of all links, in link order, are the
scan's patterns in raster order; the scan shape is not in the file, so it comes from
``--scan-shape``.
"""

from __future__ import annotations

import bisect
import logging
import re
from pathlib import Path

import h5py
import numpy as np

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened, frame_range, one_line, shape_text
from .hdf5 import open_hdf5_file

logger = logging.getLogger(__name__)

_LINK = re.compile(r"data_\d{6}$")


def is_simplon_master(file: h5py.File) -> bool:
    """Whether an open HDF5 file is a Dectris master: ``/entry/data/data_NNNNNN`` links."""
    group = file.get("/entry/data", getlink=False) if "/entry/data" in file else None
    if not isinstance(group, h5py.Group):
        return False
    return any(_LINK.match(k) for k in group.keys())


class SimplonFrames:
    """The frames of all ``data_NNNNNN`` stacks of a master file, read lazily as one stack.

    Parameters
    ----------
    stacks : list of h5py.Dataset
        The 3-D stacks in link order.

    Example
    -------
    >>> frames = SimplonFrames([f["/entry/data/data_000001"]])  # doctest: +SKIP
    >>> frames[0:4].shape  # doctest: +SKIP
    (4, 192, 192)
    """

    def __init__(self, stacks: list):
        self.stacks = stacks
        self.starts = [0]
        for stack in stacks:
            self.starts.append(self.starts[-1] + int(stack.shape[0]))
        self.shape = (self.starts[-1], *tuple(int(n) for n in stacks[0].shape[1:]))
        self.dtype = stacks[0].dtype
        self.ndim = 3

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        frames = key[0]
        if not isinstance(frames, slice):
            return self[(slice(frames, frames + 1), *key[1:])][0]
        start, stop = frame_range(frames, self.shape[0], "Dectris")
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        at = start
        while at < stop:
            k = bisect.bisect_right(self.starts, at) - 1
            end = min(stop, self.starts[k + 1])
            out[at - start : end - start] = self.stacks[k][at - self.starts[k] : end - self.starts[k]]
            at = end
        return out[(slice(None), *key[1:])]


def open_simplon(path: Path, file: h5py.File | None = None) -> Opened:
    """A Dectris master file's frames, lazily, across its ``data_NNNNNN`` links in order.

    Parameters
    ----------
    path : Path
        The ``*_master.h5`` file.
    file : h5py.File, optional
        The master, already open (it is then owned by the result).

    Returns
    -------
    Opened
        A 3-D :class:`SimplonFrames` (no recorded scan shape) and the files it reads.

    Example
    -------
    >>> open_simplon(Path("test_00_master.h5")).data.shape  # doctest: +SKIP
    (16, 192, 192)
    """
    name = str(path)
    file = file or open_hdf5_file(path)
    try:
        group = file["/entry/data"]
        links = sorted(k for k in group.keys() if _LINK.match(k))
        stacks, files = [], [path]
        for key in links:
            link = group.get(key, getlink=True)
            target = path.parent / link.filename if isinstance(link, h5py.ExternalLink) else path
            if isinstance(link, h5py.ExternalLink) and not target.exists():
                raise GhostmapError(f"{name} links {key} to {link.filename}, which is missing beside it")
            try:
                stack = group[key]
            except (KeyError, OSError) as exc:
                raise GhostmapError(f"{name}: {key} cannot be opened in {target.name} ({one_line(exc)})") from exc
            if len(stack.shape) != 3:
                raise GhostmapError(f"{name}: {key} has shape {shape_text(stack.shape)}, not a 3-D frame stack")
            if stacks and (stack.shape[1:] != stacks[0].shape[1:] or stack.dtype != stacks[0].dtype):
                raise GhostmapError(f"{name}: {key} has frames {shape_text(stack.shape[1:])} {stack.dtype}, unlike "
                                    f"data_000001's {shape_text(stacks[0].shape[1:])} {stacks[0].dtype}")
            stacks.append(stack)
            if target != path:
                files.append(target)
        info = FormatInfo("Dectris SIMPLON/NeXus master", f"h5py + hdf5plugin ({len(stacks)} data files)",
                          _detector_calibrations(file))
    except GhostmapError:
        file.close()
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        file.close()
        raise GhostmapError(f"{name} could not be read as a Dectris master file ({one_line(exc)})") from exc
    return Opened(SimplonFrames(stacks), f"{name}:/entry/data", tuple(files), [file.close], None, info)


def _detector_calibrations(file: h5py.File) -> list[tuple[str, float, float, str]]:
    """The detector pixel size, as (axis, origin, scale, units), if the master records it."""
    found = []
    for axis, key in (("det_row", "y_pixel_size"), ("det_col", "x_pixel_size")):
        node = file.get(f"/entry/instrument/detector/{key}")
        if isinstance(node, h5py.Dataset) and node.shape == ():
            units = node.attrs.get("units", "m")
            units = units.decode() if isinstance(units, bytes) else str(units)
            found.append((axis, 0.0, float(node[()]), units))
    return found
