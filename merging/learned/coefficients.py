"""Task vectors and the linear merge θ(λ) = θ0 + Σ_t λ[t, l] · τ_t^l that learned coefficients parameterise.

θ is linear in λ, so ∂L/∂λ[t, l] = ⟨∂L/∂θ^l, τ_t^l⟩: one ordinary forward/backward of the materialised model gives
the gradient of every coefficient, with no autograd graph through the merge and one model copy on the device.
Task vectors stay where they fit: on the device, or on the CPU (pinned) and streamed one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from merging.errors import CompatibilityError, MergeLabError

Granularity = Literal["layer", "task"]


def shared_tensor_names(base: Mapping[str, torch.Tensor], experts: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    """Names present in the base and in every expert with the same shape, in the base's order: the tensors that
    have a task vector. Everything else (per-task heads) is never merged."""
    return [
        name for name, w in base.items()
        if all(name in e and tuple(e[name].shape) == tuple(w.shape) for e in experts)
    ]


class TaskVectors:
    """θ0 and τ_1..τ_T for the shared tensors, in float32 (or `dtype`), laid out per tensor as a (T, numel) block
    so that the merge and the coefficient gradient are one matrix product each.

    `storage` is where θ0 and the τ blocks live: the compute device when they fit, otherwise the CPU (pinned when
    the device is CUDA) and each block is copied to the device when used.
    """

    def __init__(
        self,
        base: Mapping[str, torch.Tensor],
        experts: Sequence[Mapping[str, torch.Tensor]],
        names: Sequence[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        storage: Literal["auto", "device", "cpu"] = "auto",
    ) -> None:
        if not experts:
            raise MergeLabError("learned merging needs at least one expert besides the base: add --expert NAME=DIR")
        self.names = list(names) if names is not None else shared_tensor_names(base, experts)
        if not self.names:
            raise CompatibilityError(
                "the base and the experts share no tensor of the same name and shape: check that they are fine-tunes "
                "of the same base model"
            )
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_tasks = len(experts)
        self.shapes = {n: tuple(base[n].shape) for n in self.names}
        on_device = self._fits_on_device(base) if storage == "auto" else storage == "device"
        self.storage = self.device if on_device else torch.device("cpu")
        pin = self.device.type == "cuda" and self.storage.type == "cpu"
        self.base: dict[str, torch.Tensor] = {}
        self.blocks: dict[str, torch.Tensor] = {}
        for n in self.names:
            # A copy: the base tensors may be the very parameters that materialize() overwrites.
            b = base[n].detach().to(dtype=dtype, copy=True).reshape(-1)
            block = torch.stack([e[n].detach().to(dtype).reshape(-1) - b for e in experts])
            self.base[n] = b.cpu().pin_memory() if pin else b.to(self.storage)
            self.blocks[n] = block.cpu().pin_memory() if pin else block.to(self.storage)

    @property
    def num_tensors(self) -> int:
        return len(self.names)

    def _fits_on_device(self, base: Mapping[str, torch.Tensor]) -> bool:
        if self.device.type != "cuda":
            return True
        need = sum(base[n].numel() for n in self.names) * (self.num_tasks + 1) * torch.finfo(self.dtype).bits // 8
        free, _ = torch.cuda.mem_get_info(self.device)
        return need < 0.5 * free  # leave room for the model, activations and the gradient

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def full(self, lam: torch.Tensor) -> torch.Tensor:
        """λ as a (T, P) matrix: a task-wise λ of shape (T,) applies one coefficient to every tensor."""
        lam = lam.detach().to(self.dtype)
        if lam.dim() == 1:
            return lam[:, None].expand(self.num_tasks, self.num_tensors)
        return lam

    @torch.no_grad()
    def tensor_norms(self) -> torch.Tensor:
        """‖τ_t^l‖ (Frobenius) per task and tensor, (T, P) on the device."""
        return torch.stack([self._on_device(self.blocks[n]).norm(dim=1) for n in self.names], dim=1)

    def init_coefficients(self, value: float, granularity: Granularity = "layer") -> torch.Tensor:
        if granularity not in ("layer", "task"):
            raise MergeLabError(f"granularity must be 'layer' or 'task', not {granularity!r}")
        shape = (self.num_tasks, self.num_tensors) if granularity == "layer" else (self.num_tasks,)
        return torch.full(shape, float(value), dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def materialize(self, lam: torch.Tensor, into: Mapping[str, torch.Tensor]) -> None:
        """Write θ(λ) into the tensors of `into` (the model's parameters, on the device) in place."""
        lam = self._on_device(self.full(lam))
        for j, n in enumerate(self.names):
            merged = self._on_device(self.base[n]) + lam[:, j] @ self._on_device(self.blocks[n])
            into[n].copy_(merged.view(self.shapes[n]))

    def merged(self, lam: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ(λ) as new CPU tensors (for saving and for checking a recipe)."""
        out = {n: torch.empty(self.shapes[n], dtype=self.dtype, device=self.device) for n in self.names}
        self.materialize(lam, out)
        return {n: t.cpu() for n, t in out.items()}

    @torch.no_grad()
    def coefficient_grad(self, grads: Mapping[str, torch.Tensor | None], granularity: Granularity) -> torch.Tensor:
        """∂L/∂λ from ∂L/∂θ: ⟨G_l, τ_t^l⟩ per task and tensor, summed over tensors for task-wise λ.
        A tensor the loss did not reach (grad None) contributes zero."""
        g = torch.zeros(self.num_tasks, self.num_tensors, dtype=self.dtype, device=self.device)
        for j, n in enumerate(self.names):
            grad = grads.get(n)
            if grad is not None:
                g[:, j] = self._on_device(self.blocks[n]) @ grad.detach().reshape(-1).to(self.dtype)
        return g if granularity == "layer" else g.sum(dim=1)
