"""Write small Gatan DigitalMicrograph (.dm3/.dm4) files for tests.

No package ships a 4-D DM file, so the tests write their own, following Gatan's
published layout:

* header: version (4 bytes, big-endian), root length (8 bytes in DM4, 4 in DM3),
  byte order of the tag data (4 bytes, 1 = little-endian);
* the root tag group: sorted flag, open flag, number of tags;
* each tag: kind (20 = group, 21 = data), name length (2 bytes) and name, then in DM4
  only the tag's size in bytes (8 bytes); a group continues with sorted, open and a
  tag count, a data tag with ``%%%%``, the length of its type description, the type
  description and the value. Counts and type descriptions are 8 bytes wide in DM4 and
  4 in DM3, big-endian; values are in the header's byte order.

The image lives in ``ImageList`` -> an unnamed group -> ``ImageData`` with ``Data``
(an array tag), ``DataType``, ``Dimensions`` (fastest-varying first) and
``Calibrations``; ``ImageTags/Meta Data`` says it is a diffraction image and, for the
newer GMS layout of 4-D STEM data, carries ``Data Order Swapped = 1``.

4-D STEM layouts (``scan`` is a NumPy array (scan_y, scan_x, det_y, det_x)):

* ``swapped=True`` (newer GMS): Dimensions [det_x, det_y, scan_x, scan_y]; each
  diffraction pattern is contiguous on disk, i.e. the bytes of ``scan`` as it is.
* ``swapped=False`` (older GMS, no tag): Dimensions [scan_x, scan_y, det_x, det_y];
  the scan is the fastest-varying, i.e. the bytes of ``scan.transpose(2, 3, 0, 1)``.
"""

from __future__ import annotations

import struct

import numpy as np

# DM simple types: (code, struct format); strings are arrays of type 4 (uint16 chars)
_INT32, _UINT16, _FLOAT32, _BOOL = (3, "i"), (4, "H"), (6, "f"), (8, "?")

# numpy dtype -> (ImageData.DataType, array element type code)
_IMAGE_TYPES = {
    np.dtype("int16"): (1, 2),
    np.dtype("float32"): (2, 6),
    np.dtype("uint8"): (6, 10),
    np.dtype("int32"): (7, 3),
    np.dtype("int8"): (9, 9),
    np.dtype("uint16"): (10, 4),
    np.dtype("uint32"): (11, 5),
    np.dtype("float64"): (12, 7),
}


class _Array:
    """A raw array tag value: element type code and the already-encoded bytes."""

    def __init__(self, eltype: int, length: int, payload: bytes):
        self.eltype, self.length, self.payload = eltype, length, payload


class _Writer:
    def __init__(self, version: int):
        self.version = version
        self.count = ">Q" if version == 4 else ">I"

    def n(self, value: int) -> bytes:
        return struct.pack(self.count, value)

    def group(self, items: list[tuple[str, object]]) -> bytes:
        body = b"\x00\x01" + self.n(len(items))  # not sorted, open
        for name, value in items:
            body += self.tag(name, value)
        return body

    def tag(self, name: str, value) -> bytes:
        raw_name = name.encode("latin-1")
        if isinstance(value, list):
            kind, content = 20, self.group(value)
        else:
            kind, content = 21, self.data(value)
        head = bytes([kind]) + struct.pack(">H", len(raw_name)) + raw_name
        if self.version == 4:
            head += struct.pack(">Q", len(content))
        return head + content

    def data(self, value) -> bytes:
        if isinstance(value, str):
            value = _Array(_UINT16[0], len(value), value.encode("utf-16-le"))
        if isinstance(value, _Array):
            info = [20, value.eltype, value.length]
            payload = value.payload
        else:
            (code, fmt), v = value
            info, payload = [code], struct.pack("<" + fmt, v)
        return b"%%%%" + self.n(len(info)) + b"".join(self.n(i) for i in info) + payload


def _calibration(origin: float, scale: float, units: str) -> list:
    return [("Origin", (_FLOAT32, origin)), ("Scale", (_FLOAT32, scale)), ("Units", units)]


def _image(array: np.ndarray, dims: list[int], meta: list, name: str) -> list:
    """The tag group of one image; ``array`` already holds the bytes in file order."""
    data_type, eltype = _IMAGE_TYPES[array.dtype]
    payload = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return [
        (
            "ImageData",
            [
                (
                    "Calibrations",
                    [
                        ("Brightness", _calibration(0.0, 1.0, "counts")),
                        ("Dimension", [("", _calibration(0.0, 1.0, "")) for _ in dims]),
                        ("DisplayCalibratedUnits", (_BOOL, True)),
                    ],
                ),
                ("Data", _Array(eltype, array.size, payload)),
                ("DataType", (_INT32, data_type)),
                ("Dimensions", [("", (_INT32, d)) for d in dims]),
                ("PixelDepth", (_INT32, array.dtype.itemsize)),
            ],
        ),
        ("ImageTags", [("Meta Data", meta)] if meta else []),
        ("Name", name),
        ("UniqueID", [(k, (_INT32, v)) for k, v in zip("ABCD", (1, 2, 3, 4))]),
    ]


def write_dm(path, scan: np.ndarray, *, swapped: bool = True, version: int = 4, thumbnail: bool = True):
    """Write a 4-D ``scan`` (scan_y, scan_x, det_y, det_x) as a GMS 4-D STEM file.

    ``swapped`` picks the newer (tagged, pattern-contiguous) or older (scan-fastest)
    layout, see the module docstring. A small 2-D thumbnail comes first, as in real files.
    """
    ny, nx, ky, kx = scan.shape
    meta = [("Format", "Diffraction image"), ("Acquisition Mode", "Parallel imaging")]
    if swapped:
        dims, stored = [kx, ky, nx, ny], scan
        meta.append(("Data Order Swapped", (_BOOL, True)))
    else:
        dims, stored = [nx, ny, kx, ky], scan.transpose(2, 3, 0, 1)
    return write_images(path, [(stored, dims, meta, "4D STEM")], version=version, thumbnail=thumbnail)


def write_image(path, image: np.ndarray, *, version: int = 4):
    """Write a plain N-D image (C-ordered NumPy array; DM lists its dimensions reversed)."""
    dims = list(image.shape[::-1])
    return write_images(path, [(image, dims, [("Format", "Image")], "image")], version=version)


def write_images(path, images, *, version: int = 4, thumbnail: bool = False):
    """Write ``(stored_array, dm_dimensions, meta_data_tags, name)`` images to one file."""
    writer = _Writer(version)
    image_list = []
    root_extra = []
    if thumbnail:
        thumb = np.zeros((8, 8), dtype=np.uint8)
        image_list.append(("", _image(thumb, [8, 8], [], "thumbnail")))
        root_extra.append(("Thumbnails", [("", [("ImageIndex", (_INT32, 0))])]))
    image_list += [("", _image(a, d, m, n)) for a, d, m, n in images]
    root = writer.group([("ImageList", image_list)] + root_extra)
    length = ">Q" if version == 4 else ">I"
    header = struct.pack(">i", version) + struct.pack(length, len(root)) + struct.pack(">i", 1)
    with open(path, "wb") as f:
        f.write(header + root + b"\x00" * 8)
    return path
