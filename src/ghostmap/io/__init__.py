"""Readers for 4D-STEM files: one module per format family, and a registry choosing among them.

Every scan is seen with axes (scan_row, scan_col, det_row, det_col), whatever its file
format, and nothing reads more than the scan rows asked for.

============  ====================================  =========================
module        formats                               needs
============  ====================================  =========================
npy           ``.npy``                              NumPy
hdf5          ``.h5 .hdf5 .hdf .emd .nxs``          h5py, hdf5plugin
simplon       Dectris ``*_master.h5`` + data files  h5py, hdf5plugin
zarrstore     ``.zarr`` folders, ``.zip`` stores    zarr
hyperspy      ``.hspy`` / ``.zspy``                 h5py / zarr
gatan         ``.dm5`` + ``.raw, .raw_1, ...``      h5py
empad         EMPAD ``.xml`` + ``.raw``             NumPy
mrc           ``.mrc``                              mrcfile
rsciio        ``.dm3 .dm4 .mib .blo .tvips``        RosettaSciIO + dask (extra)
============  ====================================  =========================
"""

from .base import FlatFrames, FormatInfo, Scan, TimeSeries, rows_per_block
from .registry import (
    ALL_SUFFIXES,
    HDF5_SUFFIXES,
    HYPERSPY_SUFFIXES,
    RSCIIO_SUFFIXES,
    SUPPORTED,
    ZARR_SUFFIXES,
    as_scan,
    format_kind,
    open_scan,
    open_time_series,
    sniff,
    time_series_length,
)

__all__ = [
    "ALL_SUFFIXES", "HDF5_SUFFIXES", "HYPERSPY_SUFFIXES", "RSCIIO_SUFFIXES", "SUPPORTED", "ZARR_SUFFIXES",
    "FlatFrames", "FormatInfo", "Scan", "TimeSeries", "as_scan", "format_kind", "open_scan",
    "open_time_series", "rows_per_block", "sniff", "time_series_length",
]
