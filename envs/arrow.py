"""Arrow fixed-size-list columns <-> numpy: how the datasets store state vectors and actions.

offline_data/ writes them (``fixed_list``) and everything that reads a dataset back (``to_numpy_2d``), the
forward model's data windows included, uses the same two functions. Imports nothing of gridrl.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """(N, K) array -> Arrow fixed-size-list array of K float32 values per row."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def to_numpy_2d(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """Arrow fixed-size-list column -> (N, width) numpy array (no copy per row)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
