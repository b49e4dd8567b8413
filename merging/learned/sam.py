"""Sharpness-Aware Minimization on the merging coefficients: the perturbation ε toward the worst nearby λ.

SAM (Foret et al.): ε = ρ · g / ‖g‖. Adaptive SAM (Kwon et al.): ε = ρ · T²g / ‖Tg‖ with T = |λ| + η, so the radius
scales with each coefficient; η (ASAM's 0.01) keeps coefficients that start at 0 from never being perturbed.
"""

from __future__ import annotations

import torch


def sam_perturbation(lam: torch.Tensor, grad: torch.Tensor, rho: float, *, adaptive: bool = True,
                     eta: float = 0.01) -> torch.Tensor:
    """ε for one SAM step; zero when the gradient is zero (nothing to climb)."""
    lam = lam.detach()
    scale = lam.abs() + eta if adaptive else torch.ones_like(lam)
    norm = (scale * grad).norm()
    if norm == 0:
        return torch.zeros_like(lam)
    return rho * scale * scale * grad / norm
