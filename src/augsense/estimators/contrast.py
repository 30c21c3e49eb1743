"""Treatment–control contrast: each augmentation alone versus the original image, per unit.

A *pair* is (output on an augmented image, output on the same clean image). The pipeline feeds
batches of pairs; several parameter draws per image simply repeat the clean row.

Streaming part (always, float64, mergeable): count, mean and M2 of the paired differences
(Welford 1962; pairwise merge of Chan, Golub & LeVeque 1979), sums of treated and control outputs.
From them: mean difference, SD of differences, the standardised paired effect size Cohen's
d_z = mean / SD (Cohen 1988, §2.3.5) with a large-sample normal CI (SE² = 1/n + d_z²/(2n),
Hedges & Olkin 1985, ch. 5), and the paired t-test.

Rank part (only when ``keep_differences``): the paired differences themselves, float32, bounded by
``max_pairs``. From them: Wilcoxon's signed-rank test (Wilcoxon 1945) with zero differences split
half to each side (``zero_method="zsplit"``) and the tie-corrected normal approximation — the same
numbers as ``scipy.stats.wilcoxon(d, zero_method="zsplit", method="asymptotic")`` — and the
matched-pairs rank-biserial correlation r = (R+ − R−)/(R+ + R−) (Kerby 2014, *Compr. Psychol.*
3:11.IT.3.1) on the same zsplit ranks. Per-unit maps (every channel × position) are too large to
keep differences for; they get the moment-based statistics only.

Point-biserial part (always, float64, mergeable): the within-group M2 of the treated and of the
control outputs (Chan et al. merge). From them the point-biserial correlation between group
membership (0 control, 1 treated) and the output — the paper's ``compute_point_biserial_corrcoef``
and ``scipy.stats.pointbiserialr`` on the pooled two groups — with a Fisher-z interval
(tanh(atanh r ± z/√(N − 3)), treating the groups as independent, as the paper did). The control
group is the *distinct* clean outputs: with k draws per image, ``compute(control_repeats=k)``
divides the repeated control rows back out.

Caveat: pairs sharing a clean image are not independent; p-values treat every pair as one
observation, as the paper did. Use one draw per image for strictly valid tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.stats
import torch
from numpy.typing import NDArray

from augsense.errors import AugsenseError
from augsense.estimators.fdr import benjamini_yekutieli

__all__ = [
    "ContrastAccumulator",
    "ContrastResult",
    "SignedRankResult",
    "contrast_fdr",
    "signed_rank_test",
]

_DEFAULT_DIFFERENCE_BYTES = 256 * 2**20
"""Memory allowed for kept differences when ``max_pairs`` is not given (float32)."""

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class SignedRankResult:
    """Wilcoxon signed-rank test per output (zsplit zeros, tie-corrected normal approximation).

    All arrays have shape (m,). ``statistic`` = min(R+, R−) as scipy reports it for the two-sided
    test; ``z`` = (R+ − n(n+1)/4) / SE is signed (positive: treated above control).
    """

    r_plus: FloatArray
    r_minus: FloatArray
    statistic: FloatArray
    z: FloatArray
    p_value: FloatArray
    rank_biserial: FloatArray


def signed_rank_test(differences: NDArray[np.floating] | torch.Tensor) -> SignedRankResult:
    """Two-sided Wilcoxon signed-rank test and rank-biserial correlation for every column.

    Args:
        differences: (n_pairs, m) paired differences treated − control, finite.

    Returns:
        :class:`SignedRankResult` with (m,) arrays. Vectorised over m: one sort of the (m, n)
        absolute differences gives average ranks and tie sizes for all columns at once.
    """
    if isinstance(differences, torch.Tensor):
        differences = differences.detach().cpu().numpy()
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise AugsenseError(
            f"differences must have shape (n_pairs, m) with n_pairs ≥ 1, got {d.shape}."
        )
    if not np.isfinite(d).all():
        raise AugsenseError("differences contain NaN or inf; the signed-rank test needs finite values.")
    n, m = d.shape
    rows = np.ascontiguousarray(d.T)  # (m, n): sort along the contiguous axis
    order = np.argsort(np.abs(rows), axis=1)  # tied groups get average ranks: order within is moot
    signed = np.take_along_axis(rows, order, axis=1)
    magnitude = np.abs(signed)
    # tie groups of equal |d| within each column: group id per sorted position
    starts_group = np.ones((m, n), dtype=bool)
    starts_group[:, 1:] = magnitude[:, 1:] != magnitude[:, :-1]
    group = np.cumsum(starts_group, axis=1) - 1  # (m, n) in 0..g-1
    flat = group + (np.arange(m) * n)[:, None]
    sizes = np.bincount(flat.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
    first = np.cumsum(sizes, axis=1) - sizes  # 0-based start of each group
    average_rank = first + (sizes + 1.0) / 2.0  # 1-based average rank of each group
    ranks = np.take_along_axis(average_rank, group, axis=1)
    half_zero = 0.5 * np.sum(ranks * (signed == 0), axis=1)
    r_plus = np.sum(ranks * (signed > 0), axis=1) + half_zero
    r_minus = np.sum(ranks * (signed < 0), axis=1) + half_zero
    expected = n * (n + 1) / 4.0
    tie_correction = np.sum(sizes**3 - sizes, axis=1)
    variance = (n * (n + 1) * (2 * n + 1) - tie_correction / 2.0) / 24.0
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(variance)
        z = np.where(se > 0, (r_plus - expected) / np.where(se > 0, se, 1.0), np.nan)
    p_value = 2.0 * scipy.stats.norm.sf(np.abs(z))
    rank_biserial = (r_plus - r_minus) / (n * (n + 1) / 2.0)
    return SignedRankResult(
        r_plus=r_plus,
        r_minus=r_minus,
        statistic=np.minimum(r_plus, r_minus),
        z=z,
        p_value=p_value,
        rank_biserial=rank_biserial,
    )


@dataclass(frozen=True)
class ContrastResult:
    """Per-output contrast statistics; every array has shape (m,).

    Rank-based fields are all-NaN when the accumulator did not keep differences
    (``has_rank_statistics`` is then False). ``zero_variance`` flags outputs whose differences
    are all equal: their effect size, t and p_t are NaN, never ±inf.
    """

    n_pairs: int
    mean_treated: FloatArray
    mean_control: FloatArray
    mean_difference: FloatArray
    sd: FloatArray
    effect_size: FloatArray
    effect_size_ci_low: FloatArray
    effect_size_ci_high: FloatArray
    t: FloatArray
    p_t: FloatArray
    wilcoxon_statistic: FloatArray
    wilcoxon_z: FloatArray
    p_wilcoxon: FloatArray
    rank_biserial: FloatArray
    zero_variance: NDArray[np.bool_]
    has_rank_statistics: bool
    confidence: float
    point_biserial: FloatArray | None = None
    point_biserial_ci_low: FloatArray | None = None
    point_biserial_ci_high: FloatArray | None = None

    @property
    def n_outputs(self) -> int:
        return int(self.mean_difference.shape[0])

    def to_dataframe(self, output_names: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per output: ``unit`` (name or index), ``n_pairs`` and every statistic."""
        if output_names is not None and len(output_names) != self.n_outputs:
            raise AugsenseError(
                f"got {len(output_names)} output names for {self.n_outputs} outputs; "
                "pass one name per output or None for indices."
            )
        columns: dict[str, Any] = {
            "unit": list(output_names) if output_names is not None else np.arange(self.n_outputs),
            "n_pairs": np.full(self.n_outputs, self.n_pairs),
        }
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                columns[field.name] = value
        return pd.DataFrame(columns)


class ContrastAccumulator:
    """Streaming, mergeable paired contrast (treated − control) for m outputs.

    Args:
        n_outputs: m, the number of outputs (units) per sample.
        keep_differences: keep the (n_pairs, m) float32 differences for the Wilcoxon test and the
            rank-biserial correlation. Set False for per-unit maps: moment statistics only.
        max_pairs: refuse to keep more pairs than this; default: as many as fit in 256 MiB.
        device: where the float64 sums live (kept differences always go to host memory).
    """

    def __init__(
        self,
        n_outputs: int,
        *,
        keep_differences: bool = True,
        max_pairs: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(n_outputs, int) or n_outputs < 1:
            raise AugsenseError(f"n_outputs must be a positive integer, got {n_outputs!r}.")
        if max_pairs is not None and max_pairs < 1:
            raise AugsenseError(f"max_pairs must be a positive integer or None, got {max_pairs}.")
        self.n_outputs = n_outputs
        self.keep_differences = keep_differences
        self.max_pairs = (
            max_pairs if max_pairs is not None else max(1, _DEFAULT_DIFFERENCE_BYTES // (4 * n_outputs))
        )
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.count = 0
        self._mean = torch.zeros(n_outputs, dtype=torch.float64, device=self.device)
        self._m2 = torch.zeros(n_outputs, dtype=torch.float64, device=self.device)
        self._sum_treated = torch.zeros(n_outputs, dtype=torch.float64, device=self.device)
        self._sum_control = torch.zeros(n_outputs, dtype=torch.float64, device=self.device)
        self._m2_treated = torch.zeros(n_outputs, dtype=torch.float64, device=self.device)
        self._m2_control = torch.zeros(n_outputs, dtype=torch.float64, device=self.device)
        self._differences: list[torch.Tensor] = []

    # -- streaming --------------------------------------------------------------------------
    def update(self, treated: torch.Tensor, control: torch.Tensor) -> None:
        """Add a batch of pairs.

        Args:
            treated: (n, m) outputs on augmented images.
            control: (n, m) outputs on the matching clean images (row j pairs with row j).
        """
        if not isinstance(treated, torch.Tensor) or not isinstance(control, torch.Tensor):
            raise AugsenseError("treated and control must be torch tensors of shape (n, m).")
        if treated.shape != control.shape or treated.ndim != 2 or treated.shape[1] != self.n_outputs:
            raise AugsenseError(
                f"treated and control must both have shape (n, {self.n_outputs}); got "
                f"{tuple(treated.shape)} and {tuple(control.shape)}. Flatten units to one axis and "
                "repeat each clean row once per parameter draw."
            )
        n = treated.shape[0]
        if n == 0:
            return
        treated64 = treated.detach().to(self.device, torch.float64)
        control64 = control.detach().to(self.device, torch.float64)
        difference = treated64 - control64
        if not bool(torch.isfinite(difference).all()):
            raise AugsenseError(
                "treated or control contains NaN or inf; check the model and the augmentation "
                "parameters (contrast statistics need finite outputs)."
            )
        if self.keep_differences:
            self._check_capacity(self.count + n)
            self._differences.append(difference.to("cpu", torch.float32))
        batch_mean = difference.mean(dim=0)
        batch_m2 = ((difference - batch_mean) ** 2).sum(dim=0)
        self._combine_groups(n, treated64.sum(dim=0), control64.sum(dim=0),
                             ((treated64 - treated64.mean(dim=0)) ** 2).sum(dim=0),
                             ((control64 - control64.mean(dim=0)) ** 2).sum(dim=0))
        self._combine(n, batch_mean, batch_m2)

    def merge(self, other: ContrastAccumulator) -> ContrastAccumulator:
        """Fold ``other`` (another shard, batch range or process) into this one; returns self."""
        if not isinstance(other, ContrastAccumulator):
            raise AugsenseError(f"can only merge a ContrastAccumulator, got {type(other).__name__}.")
        if other.n_outputs != self.n_outputs or other.keep_differences != self.keep_differences:
            raise AugsenseError(
                "cannot merge contrast accumulators with different settings: "
                f"n_outputs {self.n_outputs} vs {other.n_outputs}, keep_differences "
                f"{self.keep_differences} vs {other.keep_differences}."
            )
        if other.count == 0:
            return self
        if self.keep_differences:
            self._check_capacity(self.count + other.count)
            self._differences.extend(d.clone() for d in other._differences)
        self._combine_groups(other.count, other._sum_treated.to(self.device), other._sum_control.to(self.device),
                             other._m2_treated.to(self.device), other._m2_control.to(self.device))
        self._combine(other.count, other._mean.to(self.device), other._m2.to(self.device))
        return self

    def _combine_groups(self, n_b: int, sum_treated: torch.Tensor, sum_control: torch.Tensor,
                        m2_treated: torch.Tensor, m2_control: torch.Tensor) -> None:
        """Chan et al. update of the treated and control M2 and sums; call before :meth:`_combine`."""
        n_a, total = self.count, self.count + n_b
        for sums, m2, batch_sum, batch_m2 in ((self._sum_treated, self._m2_treated, sum_treated, m2_treated),
                                              (self._sum_control, self._m2_control, sum_control, m2_control)):
            if n_a:
                delta = batch_sum / n_b - sums / n_a
                m2 += batch_m2 + delta**2 * (n_a * n_b / total)
            else:
                m2 += batch_m2
            sums += batch_sum

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan, Golub & LeVeque (1979) pairwise update of count, mean and M2."""
        n_a = self.count
        total = n_a + n_b
        delta = mean_b - self._mean
        self._mean += delta * (n_b / total)
        self._m2 += m2_b + delta**2 * (n_a * n_b / total)
        self.count = total

    def _check_capacity(self, n_pairs: int) -> None:
        if n_pairs > self.max_pairs:
            raise AugsenseError(
                f"keeping paired differences for {n_pairs} pairs × {self.n_outputs} outputs exceeds "
                f"max_pairs={self.max_pairs}. Raise max_pairs (memory: 4 bytes per pair and "
                "output), use fewer images or draws, or pass keep_differences=False for "
                "moment-based statistics only (no Wilcoxon test, no rank-biserial correlation)."
            )

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume or merge: settings, count, float64 moments, differences."""
        differences = (
            torch.cat(self._differences)
            if self._differences
            else torch.zeros(0, self.n_outputs, dtype=torch.float32)
        )
        return {
            "n_outputs": self.n_outputs,
            "keep_differences": self.keep_differences,
            "max_pairs": self.max_pairs,
            "count": self.count,
            "mean": self._mean.cpu().clone(),
            "m2": self._m2.cpu().clone(),
            "sum_treated": self._sum_treated.cpu().clone(),
            "sum_control": self._sum_control.cpu().clone(),
            "m2_treated": self._m2_treated.cpu().clone(),
            "m2_control": self._m2_control.cpu().clone(),
            "differences": differences,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; settings must match this accumulator's."""
        expected = {"n_outputs", "keep_differences", "max_pairs", "count", "mean", "m2",
                    "sum_treated", "sum_control", "differences"}
        missing = expected - set(state)
        if missing:
            raise AugsenseError(f"contrast state is missing {sorted(missing)}; was it saved by ContrastAccumulator?")
        if state["n_outputs"] != self.n_outputs or state["keep_differences"] != self.keep_differences:
            raise AugsenseError(
                f"contrast state has n_outputs={state['n_outputs']}, keep_differences="
                f"{state['keep_differences']}; this accumulator has {self.n_outputs}, "
                f"{self.keep_differences}. Construct it with the saved settings."
            )
        count = int(state["count"])
        differences = state["differences"]
        if self.keep_differences and tuple(differences.shape) != (count, self.n_outputs):
            raise AugsenseError(
                f"contrast state is inconsistent: {count} pairs but differences of shape "
                f"{tuple(differences.shape)}."
            )
        self.max_pairs = int(state["max_pairs"])
        self.count = count
        self._mean = state["mean"].to(self.device, torch.float64).clone()
        self._m2 = state["m2"].to(self.device, torch.float64).clone()
        self._sum_treated = state["sum_treated"].to(self.device, torch.float64).clone()
        self._sum_control = state["sum_control"].to(self.device, torch.float64).clone()
        nan = torch.full((self.n_outputs,), float("nan"), dtype=torch.float64)  # states saved before these moments
        self._m2_treated = state.get("m2_treated", nan).to(self.device, torch.float64).clone()
        self._m2_control = state.get("m2_control", nan).to(self.device, torch.float64).clone()
        self._differences = [differences.to("cpu", torch.float32).clone()] if count and self.keep_differences else []

    # -- results ----------------------------------------------------------------------------
    def differences(self) -> torch.Tensor:
        """The kept (n_pairs, m) float32 differences treated − control."""
        if not self.keep_differences:
            raise AugsenseError("this accumulator was built with keep_differences=False; no differences kept.")
        if not self._differences:
            return torch.zeros(0, self.n_outputs, dtype=torch.float32)
        if len(self._differences) > 1:
            self._differences = [torch.cat(self._differences)]
        return self._differences[0]

    def compute(self, confidence: float = 0.95, control_repeats: int = 1) -> ContrastResult:
        """Statistics per output; ``confidence`` sets the effect-size and point-biserial intervals' level.

        ``control_repeats``: how often each clean row was repeated (parameter draws per image); the
        point-biserial control group is the count / control_repeats distinct clean outputs.
        """
        if self.count == 0:
            raise AugsenseError("no pairs accumulated yet; call update(treated, control) first.")
        if not 0.0 < confidence < 1.0:
            raise AugsenseError(f"confidence must lie in (0, 1), got {confidence}.")
        if not isinstance(control_repeats, int) or control_repeats < 1 or self.count % control_repeats:
            raise AugsenseError(f"control_repeats must be a positive integer dividing the {self.count} pairs, "
                                f"got {control_repeats!r}.")
        n = self.count
        mean = self._mean.cpu().numpy().copy()
        m2 = np.maximum(self._m2.cpu().numpy(), 0.0)
        sd = np.sqrt(m2 / (n - 1)) if n > 1 else np.full(self.n_outputs, np.nan)
        zero_variance = (sd == 0) | (sd <= 1e-12 * np.abs(mean))
        usable = ~zero_variance & np.isfinite(sd)
        safe_sd = np.where(usable, sd, 1.0)
        effect = np.where(usable, mean / safe_sd, np.nan)
        t = effect * np.sqrt(n)
        p_t = np.where(usable, 2.0 * scipy.stats.t.sf(np.abs(t), df=max(n - 1, 1)), np.nan)
        half_width = scipy.stats.norm.ppf(0.5 + confidence / 2.0) * np.sqrt(1.0 / n + effect**2 / (2.0 * n))
        nan = np.full(self.n_outputs, np.nan)
        if self.keep_differences:
            ranks = signed_rank_test(self.differences())
            rank_fields = (ranks.statistic, ranks.z, ranks.p_value, ranks.rank_biserial)
        else:
            rank_fields = (nan, nan.copy(), nan.copy(), nan.copy())
        return ContrastResult(
            n_pairs=n,
            mean_treated=self._sum_treated.cpu().numpy() / n,
            mean_control=self._sum_control.cpu().numpy() / n,
            mean_difference=mean,
            sd=sd,
            effect_size=effect,
            effect_size_ci_low=effect - half_width,
            effect_size_ci_high=effect + half_width,
            t=t,
            p_t=p_t,
            wilcoxon_statistic=rank_fields[0],
            wilcoxon_z=rank_fields[1],
            p_wilcoxon=rank_fields[2],
            rank_biserial=rank_fields[3],
            zero_variance=zero_variance,
            has_rank_statistics=self.keep_differences,
            confidence=confidence,
            **dict(zip(("point_biserial", "point_biserial_ci_low", "point_biserial_ci_high"),
                       self._point_biserial(confidence, control_repeats))),
        )

    def _point_biserial(self, confidence: float, control_repeats: int) -> tuple[FloatArray, FloatArray, FloatArray]:
        """r_pb = (m1 − m0)·√(p0 p1) / s over the pooled groups (s: population SD), and its Fisher-z interval."""
        n1, n0 = float(self.count), float(self.count // control_repeats)
        total = n0 + n1
        m1 = self._sum_treated.cpu().numpy() / n1
        m0 = self._sum_control.cpu().numpy() / self.count
        pooled = (self._m2_treated.cpu().numpy() + self._m2_control.cpu().numpy() / control_repeats
                  + (m1 - m0) ** 2 * n0 * n1 / total)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(pooled > 0, (m1 - m0) * np.sqrt(n0 * n1) / np.sqrt(total * np.where(pooled > 0, pooled, 1.0)),
                         np.nan)
            r = np.clip(r, -1.0, 1.0)
            half = scipy.stats.norm.ppf(0.5 + confidence / 2.0) / np.sqrt(total - 3.0) if total > 3 else np.inf
            z = np.arctanh(r)
        return r, np.tanh(z - half), np.tanh(z + half)


def contrast_fdr(
    results: Mapping[str, ContrastResult],
    *,
    alpha: float = 0.05,
    test: Literal["auto", "wilcoxon", "t"] = "auto",
    output_names: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One tidy table over all layers with Benjamini–Yekutieli q-values across all their units.

    Args:
        results: layer name → :class:`ContrastResult` (one augmentation).
        alpha: false discovery rate.
        test: which p-value enters the FDR step: ``"wilcoxon"``, ``"t"``, or ``"auto"`` (Wilcoxon
            where the layer kept differences, t-test where it did not).
        output_names: optional layer → unit names.

    Returns:
        DataFrame with ``layer``, ``unit``, every statistic, ``test``, ``p_value``, ``q_value`` and
        ``significant`` (q ≤ alpha); NaN p-values (zero-variance units) are never significant.
    """
    if not results:
        raise AugsenseError("no contrast results given; pass a mapping layer → ContrastResult.")
    if test not in ("auto", "wilcoxon", "t"):
        raise AugsenseError(f"test must be 'auto', 'wilcoxon' or 't', got {test!r}.")
    tables = []
    for layer, result in results.items():
        names = output_names.get(layer) if output_names is not None else None
        table = result.to_dataframe(names)
        use_wilcoxon = test == "wilcoxon" or (test == "auto" and result.has_rank_statistics)
        if use_wilcoxon and not result.has_rank_statistics:
            raise AugsenseError(
                f"layer {layer!r} kept no paired differences, so it has no Wilcoxon p-values; "
                "use test='auto' or test='t'."
            )
        table.insert(0, "layer", layer)
        table["test"] = "wilcoxon" if use_wilcoxon else "t"
        table["p_value"] = table["p_wilcoxon"] if use_wilcoxon else table["p_t"]
        tables.append(table)
    combined = pd.concat(tables, ignore_index=True)
    reject, q = benjamini_yekutieli(combined["p_value"].to_numpy(dtype=np.float64), alpha)
    combined["q_value"] = q
    combined["significant"] = reject
    return combined
