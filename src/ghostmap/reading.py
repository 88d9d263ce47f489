"""Open 4D-STEM scans lazily and read them in blocks of scan rows (compatibility module).

The readers now live in :mod:`ghostmap.io` (one module per format family and a registry
choosing among them), the analysis functions in :mod:`ghostmap.analysis` and the preview
figure in :mod:`ghostmap.outputs`. Everything that used to be imported from here still is.
"""

from __future__ import annotations

from ghostmap.analysis import (
    bright_field_mask,
    describe,
    max_pattern,
    mean_and_max_pattern,
    mean_pattern,
    virtual_image,
)
from ghostmap.io.base import AXES, SERIES_AXES, FlatFrames, FormatInfo, Scan, TimeSeries, rows_per_block
from ghostmap.io.registry import (
    ALL_SUFFIXES,
    HDF5_SUFFIXES,
    HYPERSPY_SUFFIXES,
    RSCIIO_SUFFIXES,
    SUPPORTED,
    ZARR_SUFFIXES,
    as_scan,
    open_scan,
    open_time_series,
    time_series_length,
)

__all__ = [
    "Scan",
    "open_scan",
    "TimeSeries",
    "open_time_series",
    "time_series_length",
    "as_scan",
    "rows_per_block",
    "mean_pattern",
    "max_pattern",
    "mean_and_max_pattern",
    "virtual_image",
    "bright_field_mask",
    "describe",
    "save_preview",  # noqa: F822 -- provided lazily by __getattr__ below
    "FlatFrames",
    "FormatInfo",
    "AXES",
    "SERIES_AXES",
    "ALL_SUFFIXES",
    "HDF5_SUFFIXES",
    "HYPERSPY_SUFFIXES",
    "RSCIIO_SUFFIXES",
    "SUPPORTED",
    "ZARR_SUFFIXES",
]


def __getattr__(name: str):
    # save_preview lives in outputs, which imports matplotlib and the model code: only on demand
    if name == "save_preview":
        from ghostmap.outputs import save_preview

        return save_preview
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
