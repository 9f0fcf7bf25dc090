"""Valhalla predicted (historical) speeds codec: 2016 five-minute speeds (km/h, Sunday 00:00 local first)
<-> 200 DCT-II coefficients as int16, big-endian, base64 (the `historical_speeds` CSV column).

Same constants and transform as Valhalla's baldr/predictedspeeds (compress_speed_buckets /
encode_compressed_speeds / decode_compressed_speeds / decompress_speed_bucket), vectorised over rows.
"""

from __future__ import annotations

import base64

import numpy as np

from schemas.bucketed_traversals import N_BUCKETS

COEFFICIENT_COUNT = 200
SPEED_NORMALIZATION = 0.031497039  # sqrt(2 / 2016), as Valhalla rounds it
ONE_OVER_SQRT2 = 0.707106781
ENCODED_LENGTH = 536  # base64 characters of 400 bytes
_COS = np.cos(np.pi / N_BUCKETS * (np.arange(N_BUCKETS)[:, None] + 0.5) * np.arange(COEFFICIENT_COUNT)[None, :])


def compress(speeds_kph: np.ndarray) -> np.ndarray:
    """(n, 2016) or (2016,) speeds -> int16 DCT-II coefficients (n, 200) / (200,), Valhalla scaling."""
    s = np.asarray(speeds_kph, dtype=np.float64)
    if s.shape[-1] != N_BUCKETS or not np.isfinite(s).all():
        raise ValueError(f"need {N_BUCKETS} finite speeds per row, got shape {s.shape}")
    c = s @ _COS
    c[..., 0] *= ONE_OVER_SQRT2
    return np.clip(np.round(SPEED_NORMALIZATION * c), -32768, 32767).astype(np.int16)


def decompress(coefficients: np.ndarray) -> np.ndarray:
    """int16 coefficients (n, 200) / (200,) -> speeds (n, 2016) / (2016,) by DCT-III, Valhalla scaling."""
    c = np.asarray(coefficients, dtype=np.float64).copy()
    c[..., 0] *= ONE_OVER_SQRT2
    return SPEED_NORMALIZATION * (c @ _COS.T)


def encode(coefficients: np.ndarray) -> str:
    """200 int16 coefficients -> base64 of their big-endian bytes (536 characters)."""
    c = np.asarray(coefficients)
    if c.shape != (COEFFICIENT_COUNT,):
        raise ValueError(f"need {COEFFICIENT_COUNT} coefficients, got shape {c.shape}")
    return base64.b64encode(c.astype(">i2").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    """base64 text -> 200 int16 coefficients; ValueError when it does not hold exactly 400 bytes."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 2 * COEFFICIENT_COUNT:
        raise ValueError(f"decoded speed string size expected={2 * COEFFICIENT_COUNT} actual={len(raw)}")
    return np.frombuffer(raw, dtype=">i2").astype(np.int16)
