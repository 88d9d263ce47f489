"""Formats read through RosettaSciIO's lazy (dask) readers: Gatan ``.dm3``/``.dm4``,
Quantum Detectors Merlin ``.mib``, NanoMegas ``.blo`` and TVIPS ``.tvips``.

RosettaSciIO (GPL-3) and dask are an optional extra, imported only on this code path.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from pathlib import Path

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened, one_line, shape_text

logger = logging.getLogger(__name__)

_MODULES = {
    ".dm3": ("digitalmicrograph", "Gatan DigitalMicrograph"),
    ".dm4": ("digitalmicrograph", "Gatan DigitalMicrograph"),
    ".mib": ("quantumdetector", "Quantum Detectors Merlin MIB"),
    ".blo": ("blockfile", "NanoMegas blockfile"),
    ".tvips": ("tvips", "TVIPS"),
}


def rsciio_reader(suffix: str):
    """RosettaSciIO's ``file_reader`` for ``suffix``, imported only now (it is GPL, optional)."""
    try:
        import dask.array  # noqa: F401  (the lazy readers return dask arrays)

        module = importlib.import_module(f"rsciio.{_MODULES[suffix][0]}")
    except ImportError as exc:
        missing = f" (missing {exc.name})" if exc.name not in (None, "rsciio", "dask") else ""
        raise GhostmapError(
            f"reading {suffix} files needs the optional RosettaSciIO reader{missing}: "
            "pip install 'ghostmap[formats]'"
        ) from exc
    return module.file_reader


def open_rsciio(path: Path, suffix: str, scan_shape: tuple[int, int] | None = None) -> Opened:
    """A scan in a RosettaSciIO format, as a lazy dask array (4-D, or 3-D frames for TVIPS).

    Example
    -------
    >>> open_rsciio(Path("scan.dm4"), ".dm4").data.shape  # doctest: +SKIP
    (34, 206, 512, 512)
    """
    name = str(path)
    files: tuple[Path, ...] = (path,)
    if suffix == ".mib":
        check_mib_header(path)
    file_reader = rsciio_reader(suffix)
    recorded, signal = None, None
    try:
        if suffix == ".mib":
            data, files = _open_mib(file_reader, path, scan_shape)
        elif suffix == ".blo":
            signal = file_reader(name, lazy=True)[0]
            data = nav_first(signal)
        elif suffix == ".tvips":
            signal = file_reader(name, lazy=True)[0]
            data = _tvips_frames(signal)
        else:
            signal, data = _dm_scan_data(file_reader(name, lazy=True), name)
    except GhostmapError:
        raise
    except Exception as exc:  # the readers raise anything from struct.error to KeyError
        raise GhostmapError(f"{name} could not be read as a {suffix} file ({one_line(exc)})") from exc
    info = FormatInfo(_MODULES[suffix][1], f"rsciio.{_MODULES[suffix][0]} (lazy)", axes_calibrations(signal))
    return Opened(data, name, files, [], recorded, info)


def nav_first(signal: dict, swap: bool = False):
    """Put RosettaSciIO's navigation axes first and signal axes last.

    ``swap`` exchanges the two roles, for files whose reader labels them backwards.
    """
    data, axes = signal["data"], signal["axes"]
    nav = [a["index_in_array"] for a in axes if a["navigate"]]
    sig = [a["index_in_array"] for a in axes if not a["navigate"]]
    if swap:
        nav, sig = sig, nav
    order = tuple(nav + sig)
    if len(nav) == 2 and len(sig) == 2 and order != (0, 1, 2, 3):
        data = data.transpose(order)
    return data


def dm_order_swapped(signal: dict) -> bool | None:
    """The image's ``Meta Data.Data Order Swapped`` tag, or None if it has none."""
    image = signal.get("original_metadata", {}).get("ImageList", {}).get("TagGroup0", {})
    value = image.get("ImageTags", {}).get("Meta Data", {}).get("Data Order Swapped")
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _dm_scan_data(signals: list[dict], name: str):
    """Pick the 4-D image of a DM file and order it (scan_row, scan_col, det_row, det_col).

    GMS writes 4-D STEM data in two layouts, both read by RosettaSciIO as the reversed
    DM dimension list. Files tagged ``Data Order Swapped = 1`` (newer GMS) list the
    detector axes first, so NumPy sees (scan_y, scan_x, det_y, det_x) as RosettaSciIO
    labels it. Untagged files (older GMS, the DM default) list the scan axes first, so
    NumPy sees (det_y, det_x, scan_y, scan_x) while RosettaSciIO still calls the last
    two axes the signal; there the roles must be swapped.
    """
    four_d = [s for s in signals if len(s["data"].shape) == 4]
    if len(four_d) != 1:
        shapes = ", ".join(shape_text(s["data"].shape) for s in signals) or "none"
        what = "no 4-D image" if not four_d else f"{len(four_d)} 4-D images"
        raise GhostmapError(f"{name} holds {what} (images there: {shapes}); ghostmap needs one 4-D scan")
    signal = four_d[0]
    return signal, nav_first(signal, swap=not dm_order_swapped(signal))


def axes_calibrations(signal: dict | None) -> list[tuple[str, float, float, str]]:
    """(name, offset, scale, units) of each RosettaSciIO axis that carries a calibration."""
    found = []
    for axis in (signal or {}).get("axes", []):
        units = str(axis.get("units") or "")
        scale, offset = float(axis.get("scale", 1.0) or 1.0), float(axis.get("offset", 0.0) or 0.0)
        if units and units != "<undefined>" or scale != 1.0 or offset != 0.0:
            found.append((str(axis.get("name") or f"axis {axis.get('index_in_array')}"), offset, scale, units))
    return found


def _tvips_frames(signal: dict):
    """TVIPS frames as (frame, det_row, det_col), or the 4-D scan if the reader found one."""
    data = signal["data"]
    if data.ndim == 4:
        return nav_first(signal)
    if data.ndim == 3:
        return data
    raise GhostmapError(f"the TVIPS file holds {data.ndim}-D data {shape_text(data.shape)}; ghostmap needs frames")


def read_mib_header(path: Path) -> list[str]:
    """The comma-separated fields of the first frame header of a ``.mib`` file."""
    with open(path, "rb") as f:
        head = f.read(768)
    if not head.startswith(b"MQ1"):
        raise GhostmapError(f"{path} is not a Merlin .mib file (no MQ1 frame header)")
    return head.decode("ascii", "replace").split(",")


def check_mib_header(path: Path) -> None:
    """Refuse RAW-mode MIB in one line naming the Merlin setting that writes decoded frames."""
    fields = read_mib_header(path)
    dtype = fields[6].strip() if len(fields) > 6 else ""
    if dtype.upper().startswith("R"):
        raise GhostmapError(
            f"{path} holds RAW (undecoded, data type {dtype}) Merlin frames, which ghostmap cannot decode; "
            "set the Merlin file format to 'binary' (not 'raw binary') so that it writes decoded frames"
        )


def _open_mib(file_reader, path: Path, scan_shape: tuple[int, int] | None):
    hdr = path.with_suffix(".hdr")
    n_frames = _mib_frame_count(path)
    recorded = _hdr_frame_count(hdr)
    if recorded is not None and n_frames and n_frames < recorded:
        raise GhostmapError(f"{path} is truncated: it holds {n_frames} whole frames, {hdr.name} says {recorded}")
    if scan_shape is not None and n_frames and math.prod(scan_shape) != n_frames:  # rsciio would read a part
        raise GhostmapError(
            f"{path} holds {n_frames} frames, not the {scan_shape[0]} x {scan_shape[1]} given with --scan-shape"
        )
    nav = None if scan_shape is None else (int(scan_shape[1]), int(scan_shape[0]))  # rsciio wants (x, y)
    try:
        data = nav_first(file_reader(str(path), lazy=True, navigation_shape=nav)[0])
    except ValueError as exc:
        if scan_shape is not None:
            raise GhostmapError(
                f"{path} holds {_mib_frame_count(path)} frames, not the {scan_shape[0]} x {scan_shape[1]} "
                "given with --scan-shape"
            ) from exc
        raise
    if scan_shape is not None and data.ndim == 3 and data.shape[0] == math.prod(scan_shape):
        data = data.reshape(tuple(scan_shape) + data.shape[1:])  # rsciio squeezes a 1-wide scan
    if scan_shape is None and (data.ndim != 4 or (data.shape[1] == 1 and data.shape[0] > 1)):
        where = f"no {hdr.name} beside it" if not hdr.exists() else f"{hdr.name} records no scan shape"
        raise GhostmapError(
            f"could not determine the scan shape of {path} ({where}); give it with --scan-shape ROWSxCOLS "
            f"({_mib_frame_count(path)} frames)"
        )
    return data, ((path, hdr) if hdr.exists() else (path,))


def _hdr_frame_count(hdr: Path) -> int | None:
    """'Frames in Acquisition (Number)' from a Merlin .hdr, if it is there."""
    try:
        text = hdr.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"Frames in Acquisition \(Number\):\s*(\d+)", text)
    return int(match.group(1)) if match else None


def _mib_frame_count(path: Path) -> int:
    """Frames in a .mib file, from its size and the first frame header."""
    fields = read_mib_header(path)
    try:
        header_bytes = int(fields[2])
        rows, cols = int(fields[5]), int(fields[4])
        itemsize = {"U01": 1, "U08": 1, "U16": 2, "U32": 4, "U64": 8}.get(fields[6].strip(), 2)
    except (IndexError, ValueError):
        return 0
    frame = header_bytes + rows * cols * itemsize
    return path.stat().st_size // frame
