"""Images grouped by pool and class: what the ``partition``, ``class`` and ``image`` players choose from.

In joint mode a design row picks its image through up to three coordinates, in this order:

- ``partition`` (with a second image pool): pool ``p = floor(u_p · P)`` (P = 2: ``images``,
  ``images_partition``);
- ``class``: class ``c = floor(u_c · C)`` among the C classes present (every class must be in every pool);
- ``image``: the ``floor(u_i · m)``-th of the m images of that pool and class (of the pool, or of all
  images, when the class player is absent).

The image player is thus nested in the class player: its index is the variance of images within
a class (the paper's class variable with the image drawn inside it), the class index the variance
between class means. Images are ordered by (pool, class, position in the set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from augsense.errors import AugsenseError


@dataclass(frozen=True)
class ImageStrata:
    """Image indices grouped by pool and class.

    n_images: images in the set; n_pools: P; classes: the C class keys (``label:3``, ``folder:cats``), or
    None when some image has no class; members: per pool p, per class c, the (m,) int64 image indices, in set order.
    """

    n_images: int
    n_pools: int
    classes: list[str] | None
    pool_of: np.ndarray
    class_of: np.ndarray | None

    @classmethod
    def from_images(cls, images: Any) -> "ImageStrata":
        """From an ImageSet: pools from ``images.pools``, classes from labels, else class folders."""
        n = len(images)
        pools = np.zeros(n, dtype=np.int64) if images.pools is None else images.pools.cpu().numpy().astype(np.int64)
        labels = images.labels.cpu().numpy() if images.labels is not None else np.full(n, -1)
        folders = images.folders if images.folders is not None else [""] * n
        keys = [f"label:{int(label)}" if label >= 0 else (f"folder:{folder}" if folder else None)
                for label, folder in zip(labels, folders)]
        if any(key is None for key in keys):
            return cls(n, int(pools.max()) + 1 if n else 1, None, pools, None)
        classes = sorted(set(keys), key=_natural)  # type: ignore[arg-type]
        lookup = {key: i for i, key in enumerate(classes)}
        return cls(n, int(pools.max()) + 1 if n else 1, classes, pools, np.array([lookup[k] for k in keys]))

    @classmethod
    def single(cls, n_images: int) -> "ImageStrata":
        """One pool, no classes: the image player alone."""
        return cls(int(n_images), 1, None, np.zeros(int(n_images), dtype=np.int64), None)

    def choose(self, u_pool: torch.Tensor | None, u_class: torch.Tensor | None, u_image: torch.Tensor) -> torch.Tensor:
        """The image of each row from its coordinates in [0, 1] (None: that player is absent). (r,) → (r,) int64."""
        rows = u_image.shape[0]
        if self.n_images < 1:
            raise AugsenseError("no images to choose from")
        if u_pool is not None and self.n_pools < 2:
            raise AugsenseError("the partition player needs two image pools (images and images_partition)")
        if u_class is not None and self.class_of is None:
            raise AugsenseError("the class player needs a class for every image: class folders, a ground-truth file, "
                                "or labels")
        n_pools = 1 if u_pool is None else self.n_pools
        n_classes = 1 if u_class is None else len(self.classes)  # type: ignore[arg-type]
        order, start, count = self._cells(u_pool is not None, u_class is not None)
        if bool((count == 0).any()):
            empty = int(torch.nonzero(count == 0)[0])
            what = f"class {self.classes[empty % n_classes]!r}" if u_class is not None else "a class"  # type: ignore[index]
            raise AugsenseError(f"pool {empty // n_classes} has no image of {what}: with the partition and class players "
                                "every class must be in both pools")
        p = _pick(u_pool, n_pools, rows)
        c = _pick(u_class, n_classes, rows)
        chosen = p * n_classes + c
        size = count[chosen]
        within = torch.minimum((u_image.double().cpu() * size).long(), size - 1)
        return order[start[chosen] + within]

    def _cells(self, by_pool: bool, by_class: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(order, start, count): images sorted by cell (pool × class), each cell's first position and size; cached."""
        cache = self.__dict__.setdefault("_tables", {})
        if (by_pool, by_class) not in cache:
            pool_key = self.pool_of if by_pool else np.zeros(self.n_images, dtype=np.int64)
            class_key = self.class_of if by_class else np.zeros(self.n_images, dtype=np.int64)
            n_classes = len(self.classes) if by_class else 1  # type: ignore[arg-type]
            cell = pool_key * n_classes + class_key  # type: ignore[operator]
            count = np.bincount(cell, minlength=(self.n_pools if by_pool else 1) * n_classes)
            start = np.concatenate([[0], np.cumsum(count)[:-1]])
            cache[(by_pool, by_class)] = (torch.from_numpy(np.argsort(cell, kind="stable")), torch.from_numpy(start),
                                          count)
        order, start, count = cache[(by_pool, by_class)]
        return order, start, torch.from_numpy(count) if isinstance(count, np.ndarray) else count


def _pick(u: torch.Tensor | None, k: int, rows: int) -> torch.Tensor:
    if u is None:
        return torch.zeros(rows, dtype=torch.long)
    return (u.double().cpu() * k).long().clamp_(0, k - 1)


def _natural(key: str) -> tuple[int, int, str]:
    """Labels in numeric order first, then folders by name."""
    kind, _, value = key.partition(":")
    return (0, int(value), "") if kind == "label" else (1, 0, value)
