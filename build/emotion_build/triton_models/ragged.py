"""What Triton's libtorch backend does for a ragged batch, done by hand for the Python-backend runner.

The Python backend hands `execute()` each request separately and never fills `batch_input`
tensors, so the runner builds the flat waveform and the accumulated ends itself and then calls the
identical TorchScript module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["concatenate", "split_rows"]


def concatenate(clips: Sequence[npt.NDArray[np.float32]]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """Flat samples and int32 end offsets, exactly as `BATCH_ACCUMULATED_ELEMENT_COUNT` describes them."""
    if not clips:
        raise ValueError("a batch needs at least one clip")
    flat = np.concatenate([np.asarray(clip, dtype=np.float32).reshape(-1) for clip in clips])
    ends = np.cumsum([np.asarray(clip).size for clip in clips]).astype(np.int32)
    return flat, ends


def split_rows(batch: npt.NDArray[np.float32], count: int) -> list[npt.NDArray[np.float32]]:
    """One [1, classes] row per request, the shape each response must carry."""
    if batch.shape[0] != count:
        raise ValueError(f"model returned {batch.shape[0]} rows for {count} requests")
    return [batch[i : i + 1] for i in range(count)]
