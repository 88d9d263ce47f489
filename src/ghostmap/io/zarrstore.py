"""zarr stores (a ``.zarr`` folder or a zipped ``.zip`` store), v2 or v3."""

from __future__ import annotations

import logging
from pathlib import Path

from ghostmap.errors import GhostmapError

from .base import FormatInfo, Opened, one_line, pick_dataset

logger = logging.getLogger(__name__)


def is_zarr(path: Path) -> bool:
    """Whether a folder holds zarr metadata (v3 ``zarr.json`` or v2 ``.zarray``/``.zgroup``)."""
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zarray", ".zgroup"))


def zarr_arrays(group, prefix: str = "") -> list[tuple[str, tuple]]:
    """``(path, shape)`` of every array in a zarr group, recursively."""
    found = []
    for key, array in group.arrays():
        found.append((f"{prefix}/{key}", tuple(array.shape)))
    for key, sub in group.groups():
        found.extend(zarr_arrays(sub, f"{prefix}/{key}"))
    return found


def open_zarr_node(path: Path):
    """(root node, closers) of a zarr store; raises what zarr raises."""
    import zarr

    closers = []
    if path.suffix.lower() == ".zip":
        from zarr.storage import ZipStore

        store = ZipStore(str(path), mode="r")
        closers.append(store.close)
        try:
            return zarr.open(store, mode="r"), closers
        except BaseException:
            store.close()
            raise
    return zarr.open(str(path), mode="r"), closers


def open_zarr(path: Path, dataset: str | None = None, ndim: int = 4, fmt: str = "zarr") -> Opened:
    """The chosen array of a zarr store, opened lazily.

    Parameters
    ----------
    path : Path
        The store (folder or zip).
    dataset : str, optional
        Array path inside a group; otherwise the single ``ndim``-D array.
    ndim : int
        4 for a scan (a lone 3-D stack is accepted too), 5 for a time series.
    fmt : str
        Format name shown by ``ghostmap info``.

    Returns
    -------
    Opened

    Example
    -------
    >>> open_zarr(Path("scan.zarr")).data.shape  # doctest: +SKIP
    (34, 206, 512, 512)
    """
    name = str(path)
    closers: list = []
    try:
        node, closers = open_zarr_node(path)
        if hasattr(node, "arrays"):  # a group
            chosen = pick_dataset(name, zarr_arrays(node), dataset, ndim)
            data = node[chosen.lstrip("/")]
            source = f"{name}:{chosen}"
        else:
            if dataset is not None:
                raise GhostmapError(f"{name} holds a single array, so it has no dataset '{dataset}'")
            data, source = node, name
    except GhostmapError:
        for close in closers:
            close()
        raise
    except Exception as exc:  # zarr raises many types for a store it cannot parse
        for close in closers:
            close()
        raise GhostmapError(f"{name} is not a readable zarr store ({one_line(exc)})") from exc
    return Opened(data, source, (path,), closers, None, FormatInfo(fmt, "zarr"))


def zarr_series_length(path: Path, dataset: str | None) -> int | None:
    """Time steps if the store holds one 5-D array (or ``dataset`` is 5-D), else None."""
    from .hdf5 import series_length_of

    node, closers = open_zarr_node(path)
    try:
        arrays = zarr_arrays(node) if hasattr(node, "arrays") else [("/", tuple(node.shape))]
    finally:
        for close in closers:
            close()
    return series_length_of(arrays, dataset)


def settle_pending_reads(timeout: float = 60.0) -> None:
    """Let every chunk read still running on zarr's I/O event loop finish, collecting its error.

    When one chunk of a zarr v3 read fails, ``asyncio.gather`` raises at once and leaves
    the reads of the other chunks running on zarr's background loop. If the process then
    exits, each of them prints "Task was destroyed but it is pending!" (or "Task exception
    was never retrieved") on stderr. Waiting for them here, after a failed read, keeps a
    corrupt-chunk error to the one line ghostmap prints. Nothing is done if zarr's loop is
    not running.

    Example
    -------
    >>> settle_pending_reads()  # after catching a failed zarr read
    """
    import asyncio
    import sys

    sync = sys.modules.get("zarr.core.sync")
    loops = getattr(sync, "loop", None)
    loop = loops[0] if isinstance(loops, list) and loops else None
    if loop is None or not loop.is_running() or loop.is_closed():
        return

    async def drain():
        me = asyncio.current_task()
        while pending := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout)
    except Exception as exc:  # noqa: BLE001 - best effort: the read error itself is what matters
        logger.debug("zarr reads did not settle: %s", exc)
