"""The two training signals, on rows of logits (one row per scored prediction: an example's class scores, or one
next-token distribution of a language model).

- AdaMerging: Shannon entropy of the merged model's predictions (temperature 1), mean over the task's rows.
- SAMerging: KL(p_teacher ‖ p_student) with both softmaxes at temperature τ (2 by default, no τ² factor), mean over
  the task's rows. Teacher distributions are computed once and kept as the top-k probabilities of each row plus
  the mass of the rest (one "tail" bucket), so a 32k-token vocabulary costs k + 1 numbers per position. The KL is
  then taken over those k + 1 buckets for both distributions: a true KL (zero exactly when the student matches the
  teacher on the buckets, a lower bound of the full KL). Renormalising the top-k instead would pull the student
  toward a truncated, sharper teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TeacherTargets:
    """A teacher's softened distribution over some rows: `probs[r, j]` is the probability of class `index[r, j]`
    (index None = all classes in order) and `tail[r]` the probability of every other class together."""

    probs: torch.Tensor
    index: torch.Tensor | None = None
    tail: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TeacherTargets:
        move = lambda t: None if t is None else t.to(device)
        return TeacherTargets(self.probs.to(device), move(self.index), move(self.tail))


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of softmax(logits) over the rows."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


@torch.no_grad()
def teacher_targets(logits: torch.Tensor, temperature: float = 2.0, top_k: int | None = None) -> TeacherTargets:
    """Soft targets from a teacher's logits; with `top_k` smaller than the class count, the k most likely classes
    of each row and the total probability of the others."""
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if top_k is None or top_k >= probs.shape[-1]:
        return TeacherTargets(probs)
    top, index = probs.topk(top_k, dim=-1)
    return TeacherTargets(top, index, (1.0 - top.sum(dim=-1)).clamp_min(0.0))


def kl_loss(student_logits: torch.Tensor, target: TeacherTargets, temperature: float = 2.0) -> torch.Tensor:
    """Mean over rows of KL(p_teacher ‖ p_student) at the given temperature (no τ² factor)."""
    logq = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p = target.probs
    if target.index is not None:
        logq = logq.gather(-1, target.index)
    kl = (p * (torch.log(p.clamp_min(1e-30)) - logq)).sum(dim=-1)
    if target.tail is not None:
        q_tail = (1.0 - logq.exp().sum(dim=-1)).clamp_min(1e-12)
        kl = kl + target.tail * (torch.log(target.tail.clamp_min(1e-30)) - torch.log(q_tail))
    return kl.mean()
