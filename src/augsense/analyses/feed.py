"""What feeds the run loop's forward passes: image batches on the device, the memory layout, the batches of blocks.

- :class:`ImageFeed`: float batches in [0, 1] from the decoded uint8 images. On CUDA the uint8 images
  are copied to the device once when they fit (a quarter of the free device memory), so a batch is a
  gather on the device; otherwise each batch is gathered on the host into pinned memory and copied
  without blocking. On the CPU a batch is gathered from the (possibly memory-mapped) pixels.
- :func:`channels_last`: convolutional models run channels-last (NHWC) inside the run loop, as the
  bare-forward floor's faster layout; each parameter's own layout is restored afterwards.
- :func:`group_of`: which design blocks share one forward pass. A block is small (at least 32
  blocks per design, for the intervals), so the loop forwards up to ``batch_size`` evaluations of
  consecutive blocks at once. Groups are fixed by a block's position in the rank's sequence, so a
  resumed run forwards exactly the batches the uninterrupted run did (float32 convolutions round
  differently in other batch compositions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

#: the share of free device memory the uint8 images may take to stay resident on a CUDA device
RESIDENT_FRACTION = 0.25


class ImageFeed:
    """Float image batches (k, 3, S, S) in [0, 1] on ``device`` from an ImageSet's uint8 pixels.

    Attributes:
        resident: the (n, 3, S, S) uint8 pixels on the device, or None (host gather per batch).
    """

    def __init__(self, images, device: torch.device, *, resident_fraction: float = RESIDENT_FRACTION) -> None:
        self.images = images
        self.device = torch.device(device)
        self.resident: torch.Tensor | None = None
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            pixels = images.pixels
            if pixels.numel() * pixels.element_size() <= resident_fraction * free:
                self.resident = torch.as_tensor(pixels).to(self.device)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` (k,) int64 on any device → (k, 3, S, S) float32 in [0, 1] on the feed's device."""
        if self.resident is not None:
            return self.resident[index.to(self.device)].float().div_(255.0)
        if self.device.type == "cuda":
            host = self.images.pixels[index.cpu()]
            return host.pin_memory().to(self.device, non_blocking=True).float().div_(255.0)
        return self.images.batch(index, self.device)


def to_device(array, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A host array (numpy or tensor) on ``device`` in ``dtype``; pinned and non-blocking on CUDA."""
    tensor = torch.as_tensor(array)
    if torch.device(device).type == "cuda":
        return tensor.to(dtype).pin_memory().to(device, non_blocking=True)
    return tensor.to(device=device, dtype=dtype)


#: channels-last pays off for convolutions over many channels; a model whose convolutions all read fewer
#: stays NCHW (toy and planted networks: there the layout only adds copies, and it changes float rounding)
MIN_CHANNELS_LAST_INPUTS = 16


def is_convolutional(module: nn.Module) -> bool:
    """True when the model has a 2-D convolution over at least 16 input channels (channels-last helps)."""
    return any(isinstance(m, nn.Conv2d) and m.in_channels >= MIN_CHANNELS_LAST_INPUTS for m in module.modules())


@contextlib.contextmanager
def channels_last(module: nn.Module, enabled: bool = True) -> Iterator[torch.memory_format]:
    """Run ``module`` channels-last inside the block when it is convolutional; yields the input format.

    On exit every 4-D/5-D parameter and buffer gets back the tensor it had before, in its own layout (a
    model that was partly or wholly channels-last stays so), holding the current values.
    """
    if not (enabled and is_convolutional(module)):
        yield torch.contiguous_format
        return
    before = _layouts(module)
    module.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        _restore_layouts(before)


def _layouts(module: nn.Module) -> list[tuple[nn.Module, str, bool, torch.Tensor]]:
    """(owner, name, is_parameter, tensor) of every 4-D/5-D parameter and buffer: what ``Module.to(memory_format)``
    may replace."""
    found = []
    for owner in module.modules():
        for name, tensor in owner.named_parameters(recurse=False):
            if tensor.dim() in (4, 5):
                found.append((owner, name, True, tensor.data))
        for name, tensor in owner.named_buffers(recurse=False):
            if tensor is not None and tensor.dim() in (4, 5):
                found.append((owner, name, False, tensor))
    return found


def _restore_layouts(before: list[tuple[nn.Module, str, bool, torch.Tensor]]) -> None:
    """Put back the tensors recorded by :func:`_layouts`, with the values the module holds now."""
    with torch.no_grad():
        for owner, name, is_parameter, original in before:
            current = getattr(owner, name)
            if current is None or (current.data_ptr() == original.data_ptr() and current.stride() == original.stride()):
                continue
            if current.shape == original.shape:
                original.copy_(current.detach())
            if is_parameter:
                current.data = original
            else:
                owner._buffers[name] = original


def group_of(blocks: range, per_batch: int, k: int) -> range:
    """The blocks forwarded together with block ``k`` of this rank's ``blocks`` (see the module docstring)."""
    per_batch = max(1, int(per_batch))
    start = (blocks.index(k) // per_batch) * per_batch
    return blocks[start:start + per_batch]
