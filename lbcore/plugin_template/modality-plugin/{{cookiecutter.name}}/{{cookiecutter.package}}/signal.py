"""Reading and shaping 1-D multichannel signals: files or arrays -> [T, channels] -> [channels, window].

TODO(plugin): replace or extend the readers if your modality is stored differently (another file format, a
time column, a sample rate to resample from...). Keep the rule: every bad input raises
:class:`lbcore.errors.InputError` naming the file, what is wrong and what was expected.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lbcore.errors import InputError, check_media_file

FILE_FORMATS = ".npy (a [T, channels] array) or .csv (one row per time step, one column per channel, optional header)"


def is_path(item: Any) -> bool:
    """True for a str or os.PathLike (read from disk); False for arrays and tensors."""
    return isinstance(item, (str, os.PathLike))


def read_signal_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a .npy or .csv file into its raw array (not yet checked for shape or values)."""
    path = Path(path)
    check_media_file(path, FILE_FORMATS)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:  # numpy refuses object arrays without pickle, and reports bad headers so
            raise InputError(path, f"not a plain numeric .npy array ({err})", FILE_FORMATS) from err
        except (OSError, EOFError) as err:
            raise InputError(path, f"truncated or unreadable .npy file ({err})", FILE_FORMATS) from err
    if suffix == ".csv":
        return _read_csv(path)
    raise InputError(path, f"unsupported file type {suffix or '(no extension)'!r}", FILE_FORMATS)


def _read_csv(path: Path) -> np.ndarray:
    """Numeric CSV -> [rows, columns] float64; a first row that is not numeric is a header and is skipped."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if rows and not _is_numeric(rows[0]):
        rows = rows[1:]
    if not rows:
        raise InputError(path, "CSV file has no data rows", FILE_FORMATS)
    width = len(rows[0])
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(path, f"data row {i + 1} has {len(row)} columns, the first has {width}", FILE_FORMATS)
        try:
            values[i] = [float(cell) for cell in row]
        except ValueError as err:
            raise InputError(path, f"data row {i + 1} holds a non-numeric value ({err})", FILE_FORMATS) from err
    return values


def _is_numeric(row: Sequence[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


def check_signal(raw: Any, channels: int, source: str | os.PathLike[str] | None = None) -> np.ndarray:
    """A raw array -> float32 [T, channels], or :class:`InputError` for a wrong shape, no samples or NaN/inf.

    Arrays are time-major: one row per time step (like the CSV rows). A 1-D array is one channel.
    """
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    arr = np.asarray(raw)
    expected = f"a [T, {channels}] numeric array, one row per time step"
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(source, f"unsupported value type {arr.dtype}", expected)
    if np.iscomplexobj(arr):
        raise InputError(source, "complex values", expected)
    if arr.ndim == 1:
        arr = arr[:, None]  # [T] -> [T, 1]
    if arr.ndim != 2:
        raise InputError(source, f"array of shape {tuple(arr.shape)}", expected)
    if arr.shape[1] != channels:
        hint = "; it looks channel-major: transpose it" if arr.shape[0] == channels else ""
        raise InputError(source, f"{arr.shape[1]} channels (shape {tuple(arr.shape)}){hint}", expected)
    if arr.shape[0] == 0:
        raise InputError(source, "empty signal (0 time steps)", expected)
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            source, f"{int(bad.sum())} NaN or infinite value(s), first at time step {row}, channel {col}", expected
        )
    return out


def load_signal(item: Any, channels: int) -> np.ndarray:
    """A file path or an array/tensor -> float32 [T, channels], checked."""
    if is_path(item):
        return check_signal(read_signal_file(item), channels, source=item)
    return check_signal(item, channels)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel of a [channels, T] tensor."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1)
    return (x - m) / s


def fit_window(x: torch.Tensor, window: int, train: bool = False) -> torch.Tensor:
    """[channels, T] -> [channels, window]: a longer signal is cropped (centred at eval, at a random offset
    drawn from torch's global generator when ``train``); a shorter one is padded with zeros at the end."""
    length = x.shape[1]
    if length > window:
        start = int(torch.randint(0, length - window + 1, ())) if train else (length - window) // 2
        return x[:, start : start + window].contiguous()
    if length < window:
        return torch.nn.functional.pad(x, (0, window - length))
    return x
