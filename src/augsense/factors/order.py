"""The order factor: a unit coordinate u picks one of n! composition orders by its Lehmer code.

As in Kharyuk, Matveev & Oseledets (arXiv 2503.03283): code = floor(u · n!) (u = 1 maps to n! − 1) and
the code's factorial-base digits select, position by position, among the not yet used factors, in the
order of the base list. Code 0 is the base order itself.
"""

from __future__ import annotations

import math

import torch


def lehmer_codes(u: torch.Tensor, n: int) -> torch.Tensor:
    """Codes ``(m,)`` int64 in [0, n!) from ``u`` ``(m,)`` in [0, 1]."""
    total = math.factorial(n)
    codes = torch.floor(u.double() * total).long()
    return codes.clamp_(0, total - 1)


def permutations_from_codes(codes: torch.Tensor, n: int) -> torch.Tensor:
    """Permutations ``(m, n)`` int64 (positions → base-list indices) of Lehmer ``codes`` ``(m,)``."""
    m = codes.shape[0]
    remaining = torch.ones(m, n, dtype=torch.bool, device=codes.device)
    rest = codes.clone()
    out = torch.empty(m, n, dtype=torch.long, device=codes.device)
    for position in range(n):
        radix = math.factorial(n - 1 - position)
        digit = torch.div(rest, radix, rounding_mode="floor")
        rest = rest - digit * radix
        # index of the (digit+1)-th still available element
        rank = torch.cumsum(remaining.long(), dim=1)
        chosen = torch.argmax(((rank == digit.unsqueeze(1) + 1) & remaining).long(), dim=1)
        out[:, position] = chosen
        remaining[torch.arange(m, device=codes.device), chosen] = False
    return out


def codes_from_permutations(perms: torch.Tensor) -> torch.Tensor:
    """Inverse of ``permutations_from_codes``: Lehmer codes ``(m,)`` of permutations ``(m, n)``."""
    m, n = perms.shape
    codes = torch.zeros(m, dtype=torch.long, device=perms.device)
    for position in range(n):
        later = perms[:, position + 1:]
        smaller_later = (later < perms[:, position:position + 1]).sum(dim=1)
        codes += smaller_later * math.factorial(n - 1 - position)
    return codes
