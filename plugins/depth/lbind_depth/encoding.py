"""Depth encodings: how a file or array stores depth, and its decoding to metres.

Datasets store depth differently, and nothing in a 16-bit PNG says which way, so the encoding is a config
choice (``DepthConfig.encoding``), never a guess:

- ``mm_png``: uint16 millimetres, 0 = no reading (NYU-D as LanguageBind reads it, Kinect v2, ...).
- ``sunrgbd``: SUN RGB-D's uint16 PNGs, millimetres rotated by 3 bits: mm = ((v >> 3) | (v << 13)) & 0xFFFF.
- ``tum``: TUM RGB-D's uint16 PNGs, metres x 5000.
- ``metres_npy``: float metres in a ``.npy`` file (loaded with ``allow_pickle=False``); in memory, any real array.
- ``nyu_disparity``: raw Kinect v1 disparity of the NYU Depth v2 raw dumps: metres = 351.3 / (1092.5 - raw).
  Their ``.pgm`` files are little-endian although the header's maxval 65535 promises big-endian bytes.

Pixels without a reading decode to 0 m (and non-finite or negative values in float input likewise), so the
preprocessor's clip to ``min_depth`` treats them as LanguageBind does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from lbcore.errors import InputError
from lbcore.image import read_image

DepthEncoding = Literal["mm_png", "sunrgbd", "tum", "metres_npy", "nyu_disparity"]
ENCODINGS: tuple[str, ...] = get_args(DepthEncoding)

# Kinect v1 disparity -> metres (the constants of the NYU Depth v2 toolbox).
NYU_DISPARITY_NUMERATOR = 351.3
NYU_DISPARITY_OFFSET = 1092.5

_EXPECTED = {
    "mm_png": "a 16-bit single-channel image of millimetres (depth encoding 'mm_png')",
    "sunrgbd": "a 16-bit single-channel SUN RGB-D depth image (depth encoding 'sunrgbd')",
    "tum": "a 16-bit single-channel TUM depth image of metres x 5000 (depth encoding 'tum')",
    "nyu_disparity": "a 16-bit single-channel raw NYU Kinect disparity map (depth encoding 'nyu_disparity')",
    "metres_npy": "a .npy file holding one H x W float array of metres (depth encoding 'metres_npy')",
}


def read_depth_file(path: str | os.PathLike[str], encoding: DepthEncoding) -> np.ndarray:
    """The stored values of a depth file, undecoded (``decode_depth`` turns them into metres)."""
    path = Path(path)
    if encoding == "metres_npy":
        return _read_npy(path)
    if encoding == "nyu_disparity" and path.suffix.lower() == ".pgm":
        return _read_little_endian_pgm(path)
    try:
        return read_image(path)
    except InputError as err:  # same problem, but say what a depth file of this encoding should be
        raise InputError(path, err.problem, _EXPECTED[encoding]) from err


def decode_depth(raw: np.ndarray, encoding: DepthEncoding, source: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Stored values -> float32 metres [H, W]; 0 where the sensor had no reading. ``source`` names the file."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown depth encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
    arr = _single_channel(np.asarray(raw), encoding, source)
    if encoding == "metres_npy":
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(source, f"depth array of type {arr.dtype}", _EXPECTED[encoding])
        metres = arr.astype(np.float32)
    else:
        value = _sixteen_bit(arr, encoding, source).astype(np.uint32)  # uint32 so the shifts below cannot wrap
        if encoding == "mm_png":
            metres = value.astype(np.float32) / 1000.0
        elif encoding == "sunrgbd":
            metres = (((value >> 3) | (value << 13)) & 0xFFFF).astype(np.float32) / 1000.0
        elif encoding == "tum":
            metres = value.astype(np.float32) / 5000.0
        else:  # nyu_disparity
            with np.errstate(divide="ignore"):
                metres = (NYU_DISPARITY_NUMERATOR / (NYU_DISPARITY_OFFSET - value.astype(np.float64))).astype(
                    np.float32
                )
    # No reading: non-finite or non-positive (disparities past 1092.5, including Kinect's 2047) -> 0 m.
    metres[~(np.isfinite(metres) & (metres > 0))] = 0.0
    return metres


def _single_channel(arr: np.ndarray, encoding: str, source: str | os.PathLike[str] | None) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]  # [H, W, 1] -> [H, W]
    if arr.ndim != 2:
        channels = f" with {arr.shape[2]} channels" if arr.ndim == 3 else ""
        raise InputError(source, f"{_bits(arr)} image{channels} (shape {tuple(arr.shape)})", _EXPECTED[encoding])
    if arr.size == 0:
        raise InputError(source, f"depth map with no pixels (shape {tuple(arr.shape)})", _EXPECTED[encoding])
    return arr


def _sixteen_bit(arr: np.ndarray, encoding: str, source: str | os.PathLike[str] | None) -> np.ndarray:
    """Integer encodings need 16-bit data: 8 bits cannot hold millimetres, floats mean another encoding."""
    if arr.dtype == np.uint16:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        raise InputError(
            source,
            f"float depth values given for the integer encoding {encoding!r}; for float metres set "
            "encoding 'metres_npy'",
            _EXPECTED[encoding],
        )
    if arr.dtype.itemsize > 1 and np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16)
        raise InputError(source, f"integer depth values span {lo}..{hi}, beyond 16 bits", _EXPECTED[encoding])
    raise InputError(source, f"{_bits(arr)} single-channel image", _EXPECTED[encoding])


def _bits(arr: np.ndarray) -> str:
    return f"{arr.dtype.itemsize * 8}-bit" if arr.dtype != np.bool_ else "1-bit"


def _read_npy(path: Path) -> np.ndarray:
    expected = _EXPECTED["metres_npy"]
    if not path.is_file():
        raise InputError(path, "file not found", expected)
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)", expected)
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as err:
        # numpy says "Cannot load file containing pickled data" or that the header/data is malformed.
        raise InputError(path, f"not a plain .npy array ({err})", expected) from err
    except (OSError, EOFError) as err:
        raise InputError(path, f"truncated or unreadable .npy file ({err})", expected) from err
    if not isinstance(data, np.ndarray):
        data.close()
        raise InputError(path, "an .npz archive of several arrays", expected)
    return data


def _read_little_endian_pgm(path: Path) -> np.ndarray:
    """A binary (P5) PGM whose 16-bit samples are little-endian, whatever its header says."""
    expected = _EXPECTED["nyu_disparity"] + " as a binary P5 .pgm"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read file: {err.strerror or err}", expected) from err
    if not data:
        raise InputError(path, "empty file (0 bytes)", expected)
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:  # magic, width, height, maxval; '#' starts a comment up to the end of the line
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.find(b"\n", pos)
            pos = len(data) if pos < 0 else pos
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise InputError(path, "PGM header ends early", expected)
        fields.append(data[start:pos])
    pos += 1  # exactly one whitespace byte separates the header from the samples
    if fields[0] != b"P5":
        raise InputError(path, f"not a binary PGM (magic {fields[0][:8]!r})", expected)
    try:
        width, height, maxval = (int(f) for f in fields[1:])
    except ValueError as err:
        raise InputError(path, f"malformed PGM header {b' '.join(fields)!r}", expected) from err
    if maxval < 256:
        raise InputError(path, f"8-bit PGM (maxval {maxval})", expected)
    need = width * height * 2
    if len(data) - pos < need:
        raise InputError(path, f"truncated: {len(data) - pos} of {need} sample bytes present", expected)
    return np.frombuffer(data, dtype="<u2", count=width * height, offset=pos).reshape(height, width).astype(np.uint16)
