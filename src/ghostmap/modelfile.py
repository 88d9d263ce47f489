"""A model folder's description, read and checked without importing torch.

A model folder holds ``model.safetensors`` (the weights) and ``model.json`` (everything else,
with the weights' SHA-256), and usually ``model.onnx``, the same network as an ONNX graph
(its SHA-256 in the JSON too) that ``ghostmap predict`` runs on the CPU without torch. :meth:`ghostmap.model.Model.load` builds the network from both;
this module only reads the JSON, so ``ghostmap predict`` can learn how to bin the scan and
start reading it while torch is still loading.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import GhostmapError

__all__ = ["read_description", "read_reference"]

WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"  # the network as an ONNX graph, for ONNX Runtime (and tools such as Netron)
INT8_FILE = "model_int8.onnx"  # the same graph with its later stages in 8-bit integers (ghostmap.quantization)
INT8_AVX512_FILE = "model_int8_avx512.onnx"  # the same again, its first stage 16 wide (ghostmap.model.WideStem)
GRAPH_KEYS = {ONNX_FILE: "onnx_sha256", INT8_FILE: "onnx_int8_sha256", INT8_AVX512_FILE: "onnx_int8_avx512_sha256"}
REFERENCE_KEY = "preprocessing.reference"  # the reference pattern's entry in the weights file
META_FILE = "model.json"
FORMAT = "ghostmap-model"


def read_description(directory: str | Path) -> dict:
    """The ``model.json`` of a model folder, checked: both files present, valid JSON of a
    ghostmap model, and the weights file the one the JSON describes.

    Parameters
    ----------
    directory : str or Path
        A folder written by :meth:`ghostmap.model.Model.save`.

    Returns
    -------
    dict
        The description: classes, architecture, preprocessing, detector shape, metrics.

    Raises
    ------
    GhostmapError
        A missing folder or file, invalid JSON, or weights that do not belong to it.

    Example
    -------
    >>> read_description("no/such/model")
    Traceback (most recent call last):
    ...
    ghostmap.errors.GhostmapError: no model directory at no/such/model
    """
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    if not directory.is_dir():
        raise GhostmapError(f"no model directory at {directory}")
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise GhostmapError(f"{directory} is not a ghostmap model: {p.name} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GhostmapError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GhostmapError(f"{meta_path} is not a ghostmap model description")
    if meta.get("weights_sha256") and meta["weights_sha256"] != file_sha256(weights_path):
        raise GhostmapError(f"{weights_path} does not belong to {meta_path} (checksum differs); retrain or restore both")
    return meta


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_reference(directory: str | Path):
    """The preprocessing's reference pattern (h, w) float32 from a model folder's weights file,
    as a NumPy array (no torch), or None where the model has none.

    Raises
    ------
    GhostmapError
        A weights file that cannot be read.
    """
    import numpy as np
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(directory) / WEIGHTS_FILE), framework="np") as f:
            return np.asarray(f.get_tensor(REFERENCE_KEY), np.float32) if REFERENCE_KEY in f.keys() else None
    except (OSError, SafetensorError) as exc:
        raise GhostmapError(f"{Path(directory) / WEIGHTS_FILE} cannot be read: {exc}") from None
