"""Row chunks for multi-pass operations on the CPU: a few images at a time, so their temporaries stay in cache.

A batch of 128 images of 224×224 is 77 MB of float32 pixels; an operation of several whole-batch passes (a
separable blur: 14, sharpness: 7) streams each pass through main memory. Run a few images at a time, the
later passes read what the earlier ones left in cache (measured on 2 cores: the Gaussian blur ~4x, sharpness
~3x less CPU time). Chunks of a few images, not one: each op of a chunk is one parallel region of the
OpenMP team, and per-image regions cost more than they save on a shared, loaded machine. Elsewhere (CUDA)
the whole batch is one chunk.
"""

from __future__ import annotations

import torch

CACHE_CHUNK_BYTES = 4 << 20
"""Float pixels per chunk on the CPU (6 images of 3×224×224 float32): a chunk's temporaries fit in the cache."""


def row_chunks(images: torch.Tensor) -> list[slice]:
    """Slices of the rows of ``images`` ``(n, ...)`` to process one after another (results do not depend on them).

    On the CPU, as many rows as fit in ``CACHE_CHUNK_BYTES`` (at least one); on other devices all ``n``.
    """
    n = images.shape[0]
    if images.device.type != "cpu" or n == 0:
        return [slice(0, n)]
    per_row = max(1, images[0].numel() * images.element_size())
    step = max(1, CACHE_CHUNK_BYTES // per_row)
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]
