"""The factor concept: one parametrised augmentation, applied to a batch with one parameter row per sample.

A factor is one *player* of the sensitivity analysis. It owns ``n_coords`` unit-cube coordinates of a
design row: one per parameter, then one on/off *switch* coordinate when it has one. Drawing parameters
(``parameters_from_unit``) is separate from applying them (``apply``), as in torchvision's transforms v2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from augsense.errors import AugsenseError

BatchedOp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``fn(images (n,3,H,W) float in [0,1], params (n,P)) -> images (n,3,H,W)``."""

_BOUND_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Parameter:
    """One named parameter of a factor, drawn uniformly in ``[low, high]`` (uniformly in log if ``log``).

    ``unit`` documents the parameter's meaning: ``"px@224"`` is pixels of a 224×224 image, scaled to the
    image size at apply time (H/224 vertically, W/224 horizontally); ``"frac_H"``/``"frac_W"`` are
    fractions of the image height/width; ``"deg"`` degrees; ``"turn"`` fractions of a full turn.
    ``domain`` is the widest range the operation accepts; ``with_bounds`` may narrow or move the
    bounds inside it. It defaults to ``(low, high)``.
    """

    name: str
    low: float
    high: float
    unit: str = ""
    log: bool = False
    domain: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise AugsenseError(f"parameter name {self.name!r} must be a Python identifier, e.g. 'sigma'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise AugsenseError(
                f"parameter {self.name!r}: bounds ({self.low}, {self.high}) must be finite with low <= high"
            )
        if self.log and self.low <= 0:
            raise AugsenseError(f"parameter {self.name!r} is log-uniform: its low bound must be > 0, got {self.low}")
        if self.domain is None:
            object.__setattr__(self, "domain", (float(self.low), float(self.high)))
        lo, hi = self.valid_domain
        if self.low < lo or self.high > hi:
            raise AugsenseError(
                f"parameter {self.name!r}: bounds ({self.low}, {self.high}) lie outside its domain [{lo}, {hi}]"
            )

    @property
    def valid_domain(self) -> tuple[float, float]:
        """The widest ``(low, high)`` the operation accepts."""
        assert self.domain is not None
        return self.domain

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Map unit-cube coordinates ``u`` (any shape, in [0, 1]) to parameter values (same shape)."""
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return torch.exp(lo + u * (hi - lo))
        return self.low + u * (self.high - self.low)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "low": self.low, "high": self.high, "unit": self.unit, "log": self.log}


@dataclass(frozen=True)
class Factor:
    """A named augmentation with bounded parameters and a batched operation.

    ``fn(images, params)`` takes images ``(n, 3, H, W)`` float in [0, 1] and params ``(n, P)`` (one row
    per sample, in the order of ``parameters``) and returns augmented images ``(n, 3, H, W)``.
    Parameterless factors (grayscale, hflip, sharpness) are on/off: ``switch`` is always True for them.
    A sample is augmented when its switch coordinate ``u_switch <= p``. The switch coordinate is the last
    of the factor's ``n_coords`` coordinates.
    """

    name: str
    parameters: tuple[Parameter, ...]
    fn: BatchedOp = field(repr=False, compare=False)
    switch: bool = False
    p: float = 0.5
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise AugsenseError(f"factor name {self.name!r} must be a Python identifier, e.g. 'my_blur'")
        if not callable(self.fn):
            raise AugsenseError(f"factor {self.name!r}: fn must be a callable fn(images, params) -> images")
        object.__setattr__(self, "parameters", tuple(self.parameters))
        for parameter in self.parameters:
            if not isinstance(parameter, Parameter):
                raise AugsenseError(f"factor {self.name!r}: parameters must be Parameter objects, got {parameter!r}")
        names = [parameter.name for parameter in self.parameters]
        if len(set(names)) != len(names):
            raise AugsenseError(f"factor {self.name!r}: parameter names {names} must be distinct")
        if not self.parameters:
            object.__setattr__(self, "switch", True)
        if not 0.0 <= self.p <= 1.0:
            raise AugsenseError(f"factor {self.name!r}: on-probability p={self.p} must lie in [0, 1]")

    @property
    def n_coords(self) -> int:
        """Unit-cube coordinates this factor owns: one per parameter, plus one for the switch."""
        return len(self.parameters) + int(self.switch)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(parameter.name for parameter in self.parameters)

    def with_bounds(self, **bounds: tuple[float, float]) -> Factor:
        """A copy with the named parameters' ``(low, high)`` replaced; must lie inside each parameter's domain."""
        by_name = {parameter.name: parameter for parameter in self.parameters}
        unknown = sorted(set(bounds) - set(by_name))
        if unknown:
            raise AugsenseError(
                f"factor {self.name!r} has no parameter(s) {unknown}; its parameters are {list(by_name) or 'none'}"
            )
        new = []
        for parameter in self.parameters:
            if parameter.name not in bounds:
                new.append(parameter)
                continue
            value = bounds[parameter.name]
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise AugsenseError(
                    f"bounds for {self.name}.{parameter.name} must be a pair (low, high), got {value!r}"
                ) from None
            lo, hi = parameter.valid_domain
            if not (lo <= low <= high <= hi):
                raise AugsenseError(
                    f"bounds ({low}, {high}) for {self.name}.{parameter.name} must satisfy "
                    f"{lo} <= low <= high <= {hi} ({parameter.unit or 'no unit'})"
                )
            new.append(replace(parameter, low=low, high=high))
        return replace(self, parameters=tuple(new))

    def with_switch(self, p: float = 0.5) -> Factor:
        """A copy with an on/off coordinate: a sample is augmented when ``u_switch <= p``."""
        return replace(self, switch=True, p=float(p))

    def parameters_from_unit(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``u`` ``(n, n_coords)`` in [0, 1] to ``params`` ``(n, P)`` in the factor's units and ``active`` ``(n,)`` bool."""
        u = _check_unit(u, self.n_coords, f"factor {self.name!r}")
        n_params = len(self.parameters)
        if n_params:
            params = torch.stack([p.from_unit(u[:, i]) for i, p in enumerate(self.parameters)], dim=1)
        else:
            params = u.new_zeros((u.shape[0], 0))
        if self.switch:
            active = u[:, n_params] <= self.p
        else:
            active = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
        return params, active

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Apply to every sample: images ``(n, 3, H, W)`` float in [0, 1], params ``(n, P)`` within bounds."""
        check_images(images, f"factor {self.name!r}")
        params = self.check_params(params, images)
        return self.apply_unchecked(images, params)

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Augment the samples whose switch is on with the parameters of ``u`` ``(n, n_coords)``; others pass unchanged."""
        check_images(images, f"factor {self.name!r}")
        if not isinstance(u, torch.Tensor):
            u = torch.as_tensor(u, dtype=torch.float64)
        if u.ndim != 2 or u.shape[0] != images.shape[0]:
            raise AugsenseError(
                f"factor {self.name!r}: u must have shape ({images.shape[0]}, {self.n_coords}) "
                f"(one row per image), got {tuple(u.shape)}"
            )
        return self.apply_unit(images, u)

    def apply_unit(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Like ``__call__`` without re-checking the images (for callers that already did)."""
        params, active = self.parameters_from_unit(u.to(images.device))
        params = params.to(images.dtype)
        if not self.switch:
            return self.apply_unchecked(images, params)
        index = torch.nonzero(active).squeeze(1)
        n_active = int(index.numel())
        if n_active == images.shape[0]:
            return self.apply_unchecked(images, params)
        if n_active == 0:
            return images
        # index_put = index_copy (distinct rows), ~1.4x faster on the CPU
        return images.index_put((index,), self.apply_unchecked(images.index_select(0, index), params[index]))

    def check_params(self, params: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Validate ``params`` ``(n, P)`` against the batch and the bounds; return it on the images' device and dtype."""
        where = f"factor {self.name!r}"
        n_params = len(self.parameters)
        if not isinstance(params, torch.Tensor):
            params = torch.as_tensor(params, dtype=images.dtype)
        if params.ndim == 1 and n_params == 1:
            params = params.unsqueeze(1)
        if params.ndim != 2 or params.shape != (images.shape[0], n_params):
            raise AugsenseError(
                f"{where}: params must have shape ({images.shape[0]}, {n_params}) "
                f"(one row per image, columns {list(self.parameter_names)}), got {tuple(params.shape)}"
            )
        if not params.is_floating_point():
            params = params.to(images.dtype)
        params = params.to(device=images.device, dtype=images.dtype)
        if n_params and images.shape[0]:
            if not bool(torch.isfinite(params).all()):
                raise AugsenseError(f"{where}: params contain NaN or infinity")
            lows = torch.tensor([p.low for p in self.parameters], dtype=torch.float64)
            highs = torch.tensor([p.high for p in self.parameters], dtype=torch.float64)
            mins, maxs = params.double().aminmax(dim=0)
            tol = _BOUND_TOLERANCE * (1.0 + torch.maximum(lows.abs(), highs.abs()))
            bad = (mins.cpu() < lows - tol) | (maxs.cpu() > highs + tol)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                p = self.parameters[i]
                raise AugsenseError(
                    f"{where}: parameter {p.name!r} has values in [{float(mins[i]):.6g}, {float(maxs[i]):.6g}] "
                    f"outside its bounds [{p.low:.6g}, {p.high:.6g}] {p.unit}; widen them with "
                    f"with_bounds({p.name}=(low, high)) within {p.valid_domain}"
                )
        return params

    def apply_unchecked(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``fn(images, params)`` for callers that validated both already; checks only the output shape."""
        out = self.fn(images, params)
        if not isinstance(out, torch.Tensor) or out.shape != images.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise AugsenseError(
                f"factor {self.name!r}: its function returned {got}; it must return a tensor of the input's "
                f"shape {tuple(images.shape)}"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parameters": [parameter.to_dict() for parameter in self.parameters],
            "switch": self.switch,
            "p": self.p,
        }


def make_factor(
    name: str,
    parameters: Sequence[Parameter | tuple[str, float, float]],
    fn: BatchedOp,
    *,
    switch: bool = False,
    p: float = 0.5,
    description: str = "",
) -> Factor:
    """A user-defined factor from a batched ``fn(images (n,3,H,W), params (n,P)) -> images (n,3,H,W)``.

    ``parameters`` are ``Parameter`` objects or ``(name, low, high)`` triples; an empty list makes an
    on/off factor. ``fn`` must treat every row of ``params`` as that sample's own parameters.
    """
    built = tuple(
        parameter if isinstance(parameter, Parameter) else Parameter(*parameter) for parameter in parameters
    )
    return Factor(name=name, parameters=built, fn=fn, switch=switch, p=p, description=description)


def check_images(images: torch.Tensor, where: str = "augsense") -> None:
    """Raise AugsenseError unless ``images`` is a float tensor of shape ``(n, 3, H, W)``."""
    if not isinstance(images, torch.Tensor):
        raise AugsenseError(f"{where}: images must be a torch.Tensor (n, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        hint = " (add a batch dimension with images.unsqueeze(0))" if images.ndim == 3 else ""
        raise AugsenseError(f"{where}: images must have shape (n, 3, H, W), got {tuple(images.shape)}{hint}")
    if images.shape[1] != 3:
        raise AugsenseError(
            f"{where}: images must have 3 (RGB) channels in dimension 1, got {images.shape[1]}"
            " (replicate a gray image with images.expand(-1, 3, -1, -1))"
        )
    if not images.is_floating_point():
        raise AugsenseError(
            f"{where}: images must be floating point in [0, 1], got {images.dtype}"
            " (convert uint8 images with images.float() / 255)"
        )
    if images.shape[2] < 3 or images.shape[3] < 3:
        raise AugsenseError(f"{where}: images must be at least 3×3 pixels, got {tuple(images.shape[2:])}")


def _check_unit(u: torch.Tensor, n_coords: int, where: str) -> torch.Tensor:
    if not isinstance(u, torch.Tensor):
        u = torch.as_tensor(u, dtype=torch.float64)
    if u.ndim != 2 or u.shape[1] != n_coords:
        raise AugsenseError(f"{where}: u must have shape (n, {n_coords}), got {tuple(u.shape)}")
    if not u.is_floating_point():
        raise AugsenseError(f"{where}: u must be a floating point tensor in [0, 1], got {u.dtype}")
    if u.numel() and not bool(((u >= 0) & (u <= 1)).all()):
        raise AugsenseError(f"{where}: unit-cube coordinates u must lie in [0, 1]")
    return u
