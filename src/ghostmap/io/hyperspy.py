"""HyperSpy / pyxem ``.hspy`` (HDF5) and ``.zspy`` (zarr) files, read straight from the tree.

A signal is ``/Experiments/<title>/data`` with one ``axis-<i>`` group per array axis
(attributes ``navigate``, ``name``, ``offset``, ``scale``, ``units``). HyperSpy stores
the navigation axes first, which for a 4-D STEM signal is ghostmap's
(scan_row, scan_col, det_row, det_col). HyperSpy itself is never imported.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened, listing, one_line, shape_text

logger = logging.getLogger(__name__)


def _signals(root) -> list[tuple[str, object]]:
    experiments = root.get("Experiments") if hasattr(root, "get") else None
    if experiments is None:
        return []
    found = []
    for title in experiments.keys():
        group = experiments[title]
        if hasattr(group, "keys") and "data" in group.keys():
            found.append((title, group))
    return found


def _attr(attrs, key, default=None):
    value = attrs.get(key, default)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.ravel()[0].item()
    return value


def _axes(group, ndim: int) -> list[dict]:
    axes = []
    for i in range(ndim):
        node = group.get(f"axis-{i}")
        attrs = node.attrs if node is not None else {}
        axes.append({
            "navigate": bool(_attr(attrs, "navigate", i < ndim - 2)),
            "name": str(_attr(attrs, "name", f"axis {i}")),
            "offset": float(_attr(attrs, "offset", 0.0) or 0.0),
            "scale": float(_attr(attrs, "scale", 1.0) or 1.0),
            "units": str(_attr(attrs, "units", "") or ""),
        })
    return axes


def open_hyperspy(path: Path, dataset: str | None = None) -> Opened:
    """The 4-D (or 3-D stack) signal of a ``.hspy``/``.zspy`` file, lazily.

    Parameters
    ----------
    path : Path
        The file (HDF5) or store (zarr).
    dataset : str, optional
        The signal's title under ``/Experiments`` when the file holds several.

    Returns
    -------
    Opened

    Example
    -------
    >>> open_hyperspy(Path("scan.hspy")).data.shape  # doctest: +SKIP
    (34, 206, 512, 512)
    """
    name = str(path)
    zspy = path.suffix.lower() == ".zspy"
    closers: list = []
    try:
        if zspy:
            from .zarrstore import open_zarr_node

            root, closers = open_zarr_node(path)
        else:
            from .hdf5 import open_hdf5_file

            root = open_hdf5_file(path)
            closers.append(root.close)
        signals = _signals(root)
        if dataset is not None:
            signals = [(t, g) for t, g in signals if t == dataset.strip("/").split("/")[-1]]
        shapes = [(f"/Experiments/{t}/data", tuple(g["data"].shape)) for t, g in signals]
        usable = [(t, g) for (t, g), (_, s) in zip(signals, shapes) if len(s) in (3, 4)]
        if len(usable) != 1:
            what = "no 4-D signal" if not usable else f"{len(usable)} signals"
            hint = "; choose one with --dataset TITLE" if usable else ""
            raise GhostmapError(f"{name} holds {what} under /Experiments ({listing(shapes)}){hint}")
        title, group = usable[0]
        data = group["data"]
        axes = _axes(group, len(data.shape))
        nav = [a["navigate"] for a in axes]
        if nav != sorted(nav, reverse=True):
            raise GhostmapError(f"{name}: the signal's axes are not navigation-first ({nav}); ghostmap cannot read it")
        kind = "HyperSpy .zspy (zarr)" if zspy else "HyperSpy .hspy (HDF5)"
        info = FormatInfo(kind, "zarr" if zspy else "h5py",
                          [(a["name"], a["offset"], a["scale"], a["units"]) for a in axes])
    except GhostmapError:
        for close in closers:
            close()
        raise
    except Exception as exc:  # noqa: BLE001 - h5py and zarr raise many types on a bad tree
        for close in closers:
            close()
        raise GhostmapError(f"{name} could not be read as a HyperSpy file ({one_line(exc)})") from exc
    if len(data.shape) == 3 and sum(nav) != 1:
        for close in closers:
            close()
        raise GhostmapError(f"{name}: a 3-D signal {shape_text(data.shape)} must have one navigation axis")
    return Opened(data, f"{name}:/Experiments/{title}/data", (path,), closers, None, info)
