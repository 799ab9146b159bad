"""The contrastive step with grouped modalities: each modality's own loss plus each group's fused-embedding loss.

One optimiser step minimises ``sum_m L_m + group_weight * sum_g L_g``, where ``L_m`` is modality ``m``'s
global-batch loss (as in :class:`~lbcore.engine.ContrastiveEngine`) and ``L_g`` the loss of group ``g``'s fused
embedding (:func:`lbcore.grouping.group_loss`) on the rows of the global batch that have every member. The
members' features are shared by both losses, so the whole objective is back-propagated at once: directly with
one micro-batch per modality, and with ``grad_accum > 1`` through the gradient cache (features of every
micro-batch without gradients, the objective's gradient with respect to them, then each micro-batch re-encoded
and back-propagated with its slice). Group fusions and temperatures live outside DDP: their gradients are
averaged over processes like the modalities' temperatures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from lbcore.data import Batch
from lbcore.engine import ContrastiveEngine, StepResult, gather_rows
from lbcore.grouping import group_loss
from lbcore.samples import derive_seed

__all__ = ["GroupedEngine", "engine_for"]


@dataclass
class _Part:
    """One modality's share of a step: its micro-batches' inputs, mask seeds, caption embeddings and row ids."""

    inputs: list[torch.Tensor]
    seeds: list[int]
    texts: torch.Tensor  # [n, E]
    ids: torch.Tensor  # [n] manifest row ids
    sizes: list[int]  # rows per process


class GroupedEngine(ContrastiveEngine):
    """:class:`ContrastiveEngine` plus the losses of ``model.groups`` (see the module docs)."""

    def __init__(self, *args: Any, group_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group_weight = group_weight
        self.model.groups.to(self.accelerator.device)

    def _parts(self, micro: Mapping[str, Sequence[Batch]], step: int, result: StepResult) -> dict[str, _Part]:
        acc = self.accelerator
        parts = {}
        for m_index, name in enumerate(self.names):
            batches, sizes = self._live_batches(micro, name, step, result)
            if not batches:
                continue
            parts[name] = _Part(
                [b.inputs.to(acc.device, non_blocking=True) for b in batches],
                [derive_seed(self.seed, step, m_index, j, acc.process_index) for j in range(len(batches))],
                torch.cat([self._texts(name, b) for b in batches]),  # [n, E], gathered from the host table
                torch.cat([b.indices for b in batches]).to(acc.device),
                sizes,
            )
        return parts

    def _features(self, parts: Mapping[str, _Part], direct: bool) -> dict[str, torch.Tensor]:
        """Each modality's unit features [n, E]: with gradients (direct), or cached leaves that collect them."""
        feats = {}
        for name, p in parts.items():
            if direct:
                feats[name] = self._encode(name, p.inputs[0], p.seeds[0])
            else:
                with torch.no_grad():
                    cached = [self._encode(name, x, s) for x, s in zip(p.inputs, p.seeds, strict=True)]
                feats[name] = torch.cat(cached).requires_grad_(True)
        return feats

    def _group_losses(
        self, parts: Mapping[str, _Part], feats: Mapping[str, torch.Tensor], result: StepResult
    ) -> list[torch.Tensor]:
        losses = []
        for key, fusion in self.model.groups.items():
            members = fusion.members
            loss = None
            if all(m in parts for m in members):
                gathered = [gather_rows(feats[m], parts[m].sizes) for m in members]
                ids = [gather_rows(parts[m].ids.double()[:, None], parts[m].sizes)[:, 0].long() for m in members]
                texts = gather_rows(parts[members[0]].texts, parts[members[0]].sizes)
                loss = group_loss(fusion, gathered, ids, texts)
            result.losses[key] = float("nan") if loss is None else float(loss.detach())
            if loss is not None:
                losses.append(loss)
        return losses

    def forward_backward(self, micro: Mapping[str, Sequence[Batch]], step: int) -> StepResult:
        """Accumulate the gradients of the modalities' and groups' global-batch losses for one step."""
        acc = self.accelerator
        result = StepResult({}, {})
        parts = self._parts(micro, step, result)
        if not parts:
            return result
        direct = all(len(p.inputs) == 1 for p in parts.values())
        feats = self._features(parts, direct)
        total = []
        for name, p in parts.items():
            loss = self._loss(name, feats[name], p.texts, p.sizes)
            result.losses[name] = float(loss.detach())
            total.append(loss)
        total += [self.group_weight * g for g in self._group_losses(parts, feats, result)]
        acc.backward(torch.stack(total).sum())
        if not direct:
            for name, p in parts.items():
                grads = feats[name].grad.split([x.shape[0] for x in p.inputs])
                last = len(p.inputs) - 1
                for j, (x, s, g) in enumerate(zip(p.inputs, p.seeds, grads, strict=True)):
                    with acc.no_sync(self.encoders[name]) if j < last else nullcontext():
                        self._encode(name, x, s).backward(g)
        return result

    def sync_gradients(self) -> None:
        """Also average the group fusions' and temperatures' gradients over processes."""
        super().sync_gradients()
        if self.world == 1:
            return
        for param in self.model.groups.parameters():
            if param.grad is not None:
                param.grad = self.accelerator.reduce(param.grad, reduction="mean")

    def optimizer_step(self, result: StepResult | None = None) -> float | None:
        norm = super().optimizer_step(result)
        for fusion in self.model.groups.values():
            fusion.logit_scale.clamp_()
        return norm


def engine_for(groups: Sequence[Sequence[str]], group_weight: float = 1.0) -> Any:
    """The engine class of a run: :class:`GroupedEngine` (with its group weight) when it has groups."""
    return partial(GroupedEngine, group_weight=group_weight) if groups else ContrastiveEngine
