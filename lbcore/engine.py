"""The contrastive step: forward, backward and optimiser step of every modality against its caption embeddings.

What one optimiser step does, per modality: take the step's ``grad_accum`` micro-batches of this process, encode
them, gather features and caption embeddings from every process, and take the symmetric InfoNCE loss of the
global batch with the modality's own learnable temperature. With ``grad_accum > 1`` the loss is still the loss of
the whole global batch: features of all micro-batches are first computed without gradients, the loss's gradient
with respect to them is taken once, and each micro-batch is then re-encoded with gradients and back-propagated
with its slice of that gradient (the "gradient cache" trick). N micro-batches of b therefore give the gradients
of one batch of N * b, negatives included. With ``local_loss``, each process builds only its own ``[b, N]``
logits both ways (:func:`lbcore.loss.local_contrastive_loss`); averaged over processes the loss and gradients
are the global loss's. Caption embeddings stay on the host: each micro-batch gathers only its rows (pinned,
copied without blocking), so device memory does not grow with the number of captions. Token masking draws from
a seed of (seed, step, modality, micro-batch, process), so the cached and the gradient pass mask alike and a
resumed run masks as an uninterrupted one did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from lbcore.data import Batch
from lbcore.errors import NonFiniteError
from lbcore.loss import contrastive_loss, gather_with_grad, local_contrastive_loss
from lbcore.samples import derive_seed

if TYPE_CHECKING:
    from lbcore.model import BindModel

log = logging.getLogger(__name__)

__all__ = ["CaptionRows", "ContrastiveEngine", "NonFiniteBudget", "StepResult", "gather_rows", "host_rows"]

CaptionRows = Any
"""Caption embeddings a batch's caption ids index: a :class:`lbcore.textstore.CaptionTable` (memory-mapped,
``gather(ids, pin_memory)``) or a tensor [C, E] (kept where it is given)."""


def host_rows(table: CaptionRows, ids: torch.Tensor, pin_memory: bool = False) -> torch.Tensor:
    """Rows ``ids`` [b] of ``table`` -> float32 [b, E], read where the table lives (pinned when asked and the
    table is on the host)."""
    if not isinstance(table, torch.Tensor):
        return table.gather(ids, pin_memory=pin_memory)
    rows = table.index_select(0, ids.to(table.device)).float()
    return rows.pin_memory() if pin_memory and rows.device.type == "cpu" else rows


def gather_rows(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every process's rows [n_r, E] in rank order -> [sum(n_r), E], differentiably.

    The all-gather needs equal shapes, so when a process has fewer rows (files skipped) every process pads to
    the largest count and the padding rows are dropped after the gather.
    """
    if len(sizes) <= 1:
        return x
    most = max(sizes)
    if min(sizes) == most:
        return gather_with_grad(x)
    padded = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])])  # [most, E]
    gathered = gather_with_grad(padded)  # [world * most, E]
    keep = torch.cat([torch.arange(r * most, r * most + n, device=x.device) for r, n in enumerate(sizes)])
    return gathered.index_select(0, keep)


@dataclass
class StepResult:
    """What one optimiser step measured."""

    losses: dict[str, float]  # per modality; NaN when the modality was skipped this step
    samples: dict[str, int]  # global samples per modality
    grad_norm: float | None = None
    lrs: dict[str, float] = field(default_factory=dict)  # the rate this step used (first group of each modality)
    skipped: list[str] = field(default_factory=list)  # modalities without samples this step (their loss is NaN)
    nonfinite: str | None = None  # why the update was dropped: a NaN / infinite loss or gradient norm

    def nonfinite_losses(self) -> list[str]:
        """The modalities whose loss this step is NaN or infinite (not counting those skipped for lack of data)."""
        return [n for n, v in self.losses.items() if n not in self.skipped and not math.isfinite(v)]


class NonFiniteBudget:
    """How many updates in a row may be dropped for a NaN / infinite loss or gradient norm (see
    :meth:`ContrastiveEngine.optimizer_step`) before the run stops with :class:`NonFiniteError`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.total = 0

    def record(self, result: StepResult, step: int, log_it: bool = True) -> None:
        """Count ``result`` (of optimiser step ``step``, 1-based); raise once more than ``limit`` in a row failed."""
        if result.nonfinite is None:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row > self.limit:
            raise NonFiniteError(
                f"step {step}: {result.nonfinite}; {self.in_a_row} step(s) in a row had a NaN or infinite loss or "
                f"gradient (train.max_nonfinite_steps: {self.limit}), so the run stops. Those steps did not update "
                "the weights; lower optim.lr, check the inputs for extreme values, or try mixed_precision: 'no'"
            )
        if log_it:
            log.warning(
                "step %d: %s; update skipped (%d in a row, at most %d)",
                step,
                result.nonfinite,
                self.in_a_row,
                self.limit,
            )


class ContrastiveEngine:
    """Forward, backward and optimiser step of the contrastive objective, for one or more modalities.

    ``model``'s encoders (and ``optimizer``) are prepared with ``accelerator`` (device placement, DDP across
    processes, mixed precision). ``text_tables[m]`` holds the caption embeddings of modality ``m``
    (:data:`CaptionRows`, left on the host); batches refer to them by caption id, so the anchor is never needed
    here. ``local_loss``: each process takes its share of the loss from ``[b, N]`` logits (see the module).
    """

    def __init__(
        self,
        accelerator: Any,
        model: BindModel,
        text_tables: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        seed: int = 0,
        max_grad_norm: float | None = None,
        local_loss: bool = False,
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.names = list(model.encoders)
        objects: list[Any] = [model.encoders[n] for n in self.names]
        if optimizer is not None:
            objects.append(optimizer)
        prepared = accelerator.prepare(*objects)
        prepared = list(prepared) if isinstance(prepared, (tuple, list)) else [prepared]
        self.encoders = dict(zip(self.names, prepared[: len(self.names)], strict=True))
        self.optimizer = prepared[-1] if optimizer is not None else None
        self.scheduler = scheduler
        model.logit_scales.to(accelerator.device)
        self.text_tables = dict(text_tables)  # never moved: a step copies only its batch's rows to the device
        self.pin = accelerator.device.type == "cuda"
        self.local_loss = local_loss
        self.seed = seed
        self.max_grad_norm = max_grad_norm
        self.world = accelerator.num_processes

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self) -> None:
        for enc in self.encoders.values():
            enc.train()

    def _sizes(self, local: int) -> list[int]:
        if self.world == 1:
            return [local]
        counts = self.accelerator.gather(torch.tensor([local], device=self.accelerator.device))
        return [int(c) for c in counts.tolist()]

    def _encode(self, name: str, x: torch.Tensor, seed: int) -> torch.Tensor:
        # Token masking draws from the global generator: seeding it per (step, micro-batch) makes the masks of
        # the cached and the gradient pass identical, and a resumed run draw the masks an uninterrupted one did.
        torch.manual_seed(seed)
        with self.accelerator.autocast():
            out = self.encoders[name](x)  # [b, E]
        return F.normalize(out.float(), dim=-1)

    def _texts(self, name: str, batch: Batch) -> torch.Tensor:
        rows = host_rows(self.text_tables[name], batch.caption_ids, pin_memory=self.pin)  # [b, E]
        return rows.to(self.accelerator.device, torch.float32, non_blocking=True)

    def _loss(self, name: str, feats: torch.Tensor, texts: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        scale = self.model.logit_scales[name].value
        if self.local_loss and self.world > 1:
            offset = sum(sizes[: self.accelerator.process_index])
            all_feats, all_texts = gather_rows(feats, sizes), gather_rows(texts, sizes)
            return local_contrastive_loss(feats, texts, all_feats, all_texts, offset, scale, self.world)
        return contrastive_loss(gather_rows(feats, sizes), gather_rows(texts, sizes), scale, gather=False)

    def _logged(self, loss: torch.Tensor) -> float:
        """The loss to report: a local loss is this process's share, so the mean over processes."""
        if self.local_loss and self.world > 1:
            return float(self.accelerator.reduce(loss.detach().clone(), reduction="mean"))
        return float(loss.detach())

    def _live_batches(
        self, micro: Mapping[str, Sequence[Batch]], name: str, step: int, result: StepResult
    ) -> tuple[list[Batch], list[int]]:
        """``name``'s non-empty micro-batches and every process's sample count, recorded in ``result``. When
        some process has nothing left of its batch (every file failed), all skip this modality once (no batches
        come back), since the collective ops of the loss need every process."""
        batches = [b for b in micro.get(name, ()) if len(b) > 0]
        sizes = self._sizes(sum(len(b) for b in batches))
        result.samples[name] = sum(sizes)
        if min(sizes) == 0:
            log.warning("step %d: %s skipped: a process has no loadable sample in its batch", step, name)
            result.losses[name] = float("nan")
            result.skipped.append(name)
            return [], sizes
        return batches, sizes

    def forward_backward(self, micro: Mapping[str, Sequence[Batch]], step: int) -> StepResult:
        """Accumulate the gradients of every modality's global-batch loss for the micro-batches of one step."""
        acc = self.accelerator
        result = StepResult({}, {})
        for m_index, name in enumerate(self.names):
            batches, sizes = self._live_batches(micro, name, step, result)
            if not batches:
                continue
            texts = [self._texts(name, b) for b in batches]  # [b, E] each, only this batch's rows
            inputs = [b.inputs.to(acc.device, non_blocking=True) for b in batches]
            seeds = [derive_seed(self.seed, step, m_index, j, acc.process_index) for j in range(len(inputs))]
            encoder = self.encoders[name]
            if len(inputs) == 1:
                loss = self._loss(name, self._encode(name, inputs[0], seeds[0]), texts[0], sizes)
                acc.backward(loss)
            else:
                with torch.no_grad():
                    cached = [self._encode(name, x, s) for x, s in zip(inputs, seeds, strict=True)]
                feats = torch.cat(cached).requires_grad_(True)  # [sum b, E]
                loss = self._loss(name, feats, torch.cat(texts), sizes)
                acc.backward(loss)  # -> d loss / d feats (scaled like the loss under fp16), and the scale's grad
                grads = feats.grad.split([c.shape[0] for c in cached])
                last = len(inputs) - 1
                for j, (x, s, g) in enumerate(zip(inputs, seeds, grads, strict=True)):
                    # DDP all-reduces on the last micro-batch only.
                    with acc.no_sync(encoder) if j < last else nullcontext():
                        self._encode(name, x, s).backward(g)
            result.losses[name] = self._logged(loss)
        return result

    def sync_gradients(self) -> None:
        """Average the temperatures' gradients over processes (encoders are averaged by DDP in backward).

        The temperatures live outside DDP; every process holds the gradient of the same global loss, so the
        mean only guards against round-off drift between processes.
        """
        if self.world == 1:
            return
        for scale in self.model.logit_scales.values():
            if scale.value.grad is not None:
                scale.value.grad = self.accelerator.reduce(scale.value.grad, reduction="mean")

    def optimizer_step(self, result: StepResult | None = None) -> float | None:
        """Synchronise the temperatures' gradients, clip, step, advance the schedule, clamp the temperatures.

        Non-finite guard: when a loss of ``result`` or the gradient norm is NaN or infinite, the gradients are
        dropped and neither the weights nor the schedule move (``result.nonfinite`` says why), so NaN never
        reaches the weights. Under fp16 the gradient scaler already skips such updates (and lowers its scale);
        there only a non-finite loss is reported, since overflowing gradients are part of its calibration.
        """
        if self.optimizer is None:
            raise RuntimeError("this engine was built without an optimizer")
        acc = self.accelerator
        self.sync_gradients()
        limit = self.max_grad_norm if self.max_grad_norm is not None else math.inf  # inf: measure, do not clip
        norm = float(acc.clip_grad_norm_(self.trainable_parameters(), limit))
        bad = result.nonfinite_losses() if result is not None else []
        scaled = getattr(acc, "scaler", None) is not None
        reason = None
        if bad:
            reason = "loss of " + ", ".join(f"{n} is {result.losses[n]}" for n in bad)  # type: ignore[union-attr]
        elif not math.isfinite(norm) and not scaled:
            reason = f"gradient norm is {norm} (modalities: {', '.join(self.names)})"
        if reason is not None and result is not None:
            result.nonfinite = reason
        if reason is None or scaled:  # the scaler drops non-finite updates itself and must see every step
            self.optimizer.step()
            if self.scheduler is not None and not acc.optimizer_step_was_skipped:
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for scale in self.model.logit_scales.values():
            scale.clamp_()
        return norm

    def step(self, micro: Mapping[str, Sequence[Batch]], step: int) -> StepResult:
        result = self.forward_backward(micro, step)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                result.lrs.setdefault(group["modality"], group["lr"])
        result.grad_norm = self.optimizer_step(result)
        return result
