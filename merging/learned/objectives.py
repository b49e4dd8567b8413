"""The two training signals, on rows of logits (one row per scored prediction: an example's class scores, or one
next-token distribution of a language model).

- AdaMerging: Shannon entropy of the merged model's predictions (temperature 1), mean over the task's rows.
- SAMerging: KL(p_teacher ‖ p_student) with both softmaxes at temperature τ (2 by default, no τ² factor), mean over
  the task's rows. Teacher distributions are computed once and kept as the top-k probabilities of each row
  (renormalised), so a 32k-token vocabulary costs k numbers per position instead of 32k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TeacherTargets:
    """A teacher's softened distribution over some rows: `probs[r, j]` is the probability of class `index[r, j]`
    (index None = all classes in order)."""

    probs: torch.Tensor
    index: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TeacherTargets:
        return TeacherTargets(self.probs.to(device), None if self.index is None else self.index.to(device))


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of softmax(logits) over the rows."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


@torch.no_grad()
def teacher_targets(logits: torch.Tensor, temperature: float = 2.0, top_k: int | None = None) -> TeacherTargets:
    """Soft targets from a teacher's logits; with `top_k` smaller than the class count, only the k most likely
    classes of each row are kept and renormalised to sum to one."""
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_k is None or top_k >= probs.shape[-1]:
        return TeacherTargets(probs)
    top, index = probs.topk(top_k, dim=-1)
    return TeacherTargets(top / top.sum(dim=-1, keepdim=True), index)


def kl_loss(student_logits: torch.Tensor, target: TeacherTargets, temperature: float = 2.0) -> torch.Tensor:
    """Mean over rows of KL(p_teacher ‖ p_student) at the given temperature (no τ² factor)."""
    logq = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if target.index is not None:
        logq = logq.gather(-1, target.index)
    p = target.probs
    return (p * (torch.log(p.clamp_min(1e-30)) - logq)).sum(dim=-1).mean()
