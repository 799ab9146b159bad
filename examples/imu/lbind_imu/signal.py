"""Reading IMU recordings and shaping them for the encoder.

A recording is six channels, accelerometer x/y/z then gyroscope x/y/z (:data:`CHANNELS`), one row per time
step, with the time of each row either given (a first ``time`` column in seconds) or implied by a sample
rate. :func:`load_recording` reads it from a .npy or .csv file or an in-memory array with typed errors;
:func:`resample` puts it on a uniform grid at the encoder's rate; :func:`random_rotation` is the training
augmentation of a sensor worn at a slightly different angle.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lbcore.errors import InputError, check_media_file

CHANNELS = ("ax", "ay", "az", "gx", "gy", "gz")
# Header spellings accepted in CSV files, by canonical channel name (compared lower-case, spaces removed).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "time": ("time", "t", "timestamp", "time_s", "seconds"),
    "ax": ("ax", "acc_x", "accel_x", "accx", "acceleration_x"),
    "ay": ("ay", "acc_y", "accel_y", "accy", "acceleration_y"),
    "az": ("az", "acc_z", "accel_z", "accz", "acceleration_z"),
    "gx": ("gx", "gyro_x", "gyr_x", "gyrx", "angular_velocity_x"),
    "gy": ("gy", "gyro_y", "gyr_y", "gyry", "angular_velocity_y"),
    "gz": ("gz", "gyro_z", "gyr_z", "gyrz", "angular_velocity_z"),
}
LAYOUT = (
    "[T, 6] rows of ax, ay, az, gx, gy, gz at the input rate, or [T, 7] with the time in seconds first; "
    "as .npy, as .csv (a header naming the columns, or none), or as an array / (array, sample_rate)"
)
MIN_RATE, MAX_RATE = 1.0, 10000.0  # Hz: a rate outside this range means the time column is not in seconds


@dataclass(frozen=True)
class Recording:
    """Six channels on a time axis: ``values`` float64 [T, 6] and ``times`` float64 [T], seconds, increasing."""

    values: np.ndarray
    times: np.ndarray
    uniform: bool  # True when the times were implied by a sample rate rather than read from the input


def is_path(item: Any) -> bool:
    """True for a str or os.PathLike (read from disk); False for arrays and tensors."""
    return isinstance(item, (str, os.PathLike))


def load_recording(item: Any, input_rate: float) -> Recording:
    """A path, an array/tensor, or ``(array, sample_rate)`` -> a checked :class:`Recording`.

    Arrays and files without a time column are taken to be sampled at ``input_rate`` (or at the rate given
    with the array). Raises :class:`InputError` naming the file for anything that is not a finite 6-channel
    signal with at least two time steps.
    """
    if is_path(item):
        path = Path(item)
        table, columns = read_imu_file(path)
        return _recording(table, columns, input_rate, source=path)
    if isinstance(item, tuple):
        if len(item) != 2 or isinstance(item[1], bool) or not isinstance(item[1], numbers.Real):
            raise InputError(None, f"a tuple of {len(item)} item(s)", "(array [T, 6], sample_rate in Hz)")
        rate = float(item[1])
        if not MIN_RATE <= rate <= MAX_RATE:
            raise InputError(None, f"sample rate {rate:g} Hz", f"{MIN_RATE:g} to {MAX_RATE:g} Hz")
        table = _as_table(item[0])
        if table.shape[1] != len(CHANNELS):
            raise InputError(
                None, f"{table.shape[1]} columns with an explicit sample rate", "[T, 6] ax..gz (the rate replaces time)"
            )
        return _recording(table, None, rate, source=None)
    return _recording(_as_table(item), None, input_rate, source=None)


def _as_table(raw: Any, source: Path | None = None) -> np.ndarray:
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    arr = np.asarray(raw)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(source, f"unsupported value type {arr.dtype}", LAYOUT)
    if arr.ndim != 2:
        raise InputError(source, f"array of shape {tuple(arr.shape)}", LAYOUT)
    return arr.astype(np.float64)


def read_imu_file(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Read a .npy or .csv file: the numeric table [rows, columns] and, for a CSV with a header, the
    canonical name of each column (None where the header names a column we do not use)."""
    check_media_file(path, LAYOUT)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except ValueError as err:  # object arrays (which would need pickle) and malformed headers
            raise InputError(path, f"not a plain numeric .npy array ({err})", LAYOUT) from err
        except (OSError, EOFError) as err:
            raise InputError(path, f"truncated or unreadable .npy file ({err})", LAYOUT) from err
        return _as_table(raw, path), None
    if suffix == ".csv":
        return _read_csv(path)
    raise InputError(path, f"unsupported file type {suffix or '(no extension)'!r}", LAYOUT)


def _canonical(header: str) -> str | None:
    key = header.strip().lower().replace(" ", "").replace("-", "_")
    for name, aliases in COLUMN_ALIASES.items():
        if key in aliases:
            return name
    return None


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as err:
        raise InputError(path, f"not a UTF-8 text file ({err.reason})", LAYOUT) from err
    columns = None
    if rows and not _is_numeric(rows[0]):
        columns = [_canonical(cell) for cell in rows[0]]
        missing = [c for c in CHANNELS if c not in columns]
        if missing:
            raise InputError(
                path, f"CSV header {rows[0]} lacks the column(s) {', '.join(missing)}", f"columns {', '.join(CHANNELS)}"
            )
        rows = rows[1:]
    if not rows:
        raise InputError(path, "CSV file has no data rows", LAYOUT)
    width = len(columns) if columns is not None else len(rows[0])
    table = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(path, f"data row {i + 1} has {len(row)} columns, expected {width}", LAYOUT)
        try:
            table[i] = [float(cell) for cell in row]
        except ValueError as err:
            raise InputError(path, f"data row {i + 1} holds a non-numeric value ({err})", LAYOUT) from err
    return table, columns


def _is_numeric(row: Sequence[str]) -> bool:
    try:
        [float(cell) for cell in row]
    except ValueError:
        return False
    return True


def _recording(table: np.ndarray, columns: list[str] | None, rate: float, source: Path | None) -> Recording:
    """Pick the time and channel columns, check them and build the time axis."""
    if columns is not None:
        times = table[:, columns.index("time")] if "time" in columns else None
        values = table[:, [columns.index(c) for c in CHANNELS]]
    elif table.shape[1] == len(CHANNELS):
        times, values = None, table
    elif table.shape[1] == len(CHANNELS) + 1:
        times, values = table[:, 0], table[:, 1:]
    else:
        hint = "; it looks channel-major: transpose it" if table.shape[0] in (6, 7) else ""
        raise InputError(source, f"{table.shape[1]} columns (shape {tuple(table.shape)}){hint}", LAYOUT)
    if values.shape[0] == 0:
        raise InputError(source, "empty recording (0 time steps)", LAYOUT)
    if values.shape[0] < 2:
        raise InputError(source, "a single time step", "at least 2 time steps")
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            source,
            f"{int(bad.sum())} NaN or infinite value(s), first at time step {row} in channel {CHANNELS[col]}",
            "finite readings",
        )
    if times is None:
        return Recording(values, np.arange(values.shape[0]) / rate, uniform=True)
    steps = np.diff(times)
    if not np.isfinite(times).all() or (steps <= 0).any():
        where = int(np.argmax(~np.isfinite(steps) | (steps <= 0))) + 1
        raise InputError(source, f"the time column does not increase at time step {where}", "increasing seconds")
    implied = (times.size - 1) / (times[-1] - times[0])
    if not MIN_RATE <= implied <= MAX_RATE:
        raise InputError(
            source, f"the time column implies {implied:g} samples per second", "times in seconds (1 Hz to 10 kHz)"
        )
    return Recording(values, times - times[0], uniform=False)


def resample(rec: Recording, rate: float) -> np.ndarray:
    """The recording on a uniform grid of ``rate`` Hz starting at its first sample: float64 [T', 6].

    Timestamped recordings are first interpolated (linearly) onto an even grid at their own mean rate, which
    removes timestamp jitter. When downsampling by 1.5x or more, a centred moving average over about one output
    period (an odd number of input steps) follows, so content above the new Nyquist frequency is attenuated
    rather than folded down into the band the encoder sees. Then linear interpolation at the output grid. A
    uniform recording already at ``rate`` is returned unchanged.
    """
    values, times = rec.values, rec.times
    source_rate = (times.size - 1) / float(times[-1])
    if rec.uniform and math.isclose(source_rate, rate, rel_tol=1e-9):
        return values
    if not rec.uniform:
        even = np.arange(times.size) / source_rate
        values, times = _interp(values, times, even), even
    ratio = source_rate / rate
    if ratio >= 1.5:
        # An odd width keeps the average centred (no time shift); 3 taps null a 1.5x downsampling's Nyquist.
        values = _moving_average(values, max(3, math.floor(ratio) | 1))
    n = math.floor(float(times[-1]) * rate + 1e-9) + 1
    return _interp(values, times, np.arange(n) / rate)


def _interp(values: np.ndarray, times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of [T, C] sampled at ``times`` onto ``grid`` [T']: [T', C]."""
    return np.stack([np.interp(grid, times, values[:, c]) for c in range(values.shape[1])], axis=1)


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of odd ``width`` along time of [T, C]. The ends are extended by point reflection
    (2 * x[0] - x[k]), which keeps a straight-line trend straight up to the first and last samples."""
    half = width // 2
    padded = np.pad(values, ((half, half), (0, 0)), mode="reflect", reflect_type="odd")  # [T + width - 1, C]
    cumsum = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)  # [T + width, C], a leading row of zeros
    return (cumsum[width:] - cumsum[:-width]) / width  # [T, C]


def random_rotation(max_degrees: float) -> torch.Tensor:
    """A 3 x 3 rotation about a random axis by a random angle in [-max_degrees, max_degrees], drawn from
    torch's global generator (Rodrigues' formula)."""
    axis = torch.randn(3, dtype=torch.float64)
    axis = axis / axis.norm().clamp_min(1e-12)
    angle = math.radians(max_degrees) * (2.0 * float(torch.rand(())) - 1.0)
    k = torch.tensor(
        [[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]], dtype=torch.float64
    )  # cross-product matrix of the axis
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


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
