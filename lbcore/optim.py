"""The optimiser and learning-rate schedule of a run: AdamW parameter groups and one warm-up + cosine factor.

Parameter groups follow LanguageBind: per modality, weight decay on the matrices only (not on 1-D parameters,
embeddings or temperatures), each modality at its own ``optim`` settings, times optional learning-rate
multipliers by parameter-name prefix. The schedule multiplies every group's own base rate by its modality's
warm-up + cosine factor, so per-group rates hold through the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lbcore.errors import ConfigError

if TYPE_CHECKING:
    from lbcore.model import BindModel

__all__ = [
    "NO_DECAY_SUFFIXES",
    "WarmupCosine",
    "build_optimizer",
    "build_scheduler",
    "parameter_groups",
    "scheduler_state",
]

NO_DECAY_SUFFIXES = ("_embedding", "logit_scale")  # class/position/temporal embeddings, temperatures


def _no_decay(local_name: str, param: torch.Tensor) -> bool:
    """LanguageBind's exclusions: 1-D parameters (norms, biases), embeddings (class, position), temperatures."""
    return param.ndim < 2 or local_name.endswith(NO_DECAY_SUFFIXES)


def parameter_groups(model: BindModel, lr_multipliers: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups: per modality, decayed / not decayed, times each learning-rate multiplier.

    Every group carries its own ``lr`` (modality lr x multiplier), ``weight_decay``, ``betas`` and ``eps`` plus
    ``name`` and ``modality`` keys. Only parameters that require gradients are included; each modality's logit
    scale joins its no-decay group.
    """
    multipliers = dict(lr_multipliers or {})
    used: set[str] = set()
    groups: dict[tuple[str, bool, float], dict[str, Any]] = {}
    for name, modality in model.modalities.items():
        optim = modality.config.optim
        named = [(local, p) for local, p in model.encoders[name].named_parameters() if p.requires_grad]
        named.append(("logit_scale", model.logit_scales[name].value))
        for local, param in named:
            qualified = f"{name}.{local}"
            matches = [k for k in multipliers if qualified.startswith(k)]
            key_used = max(matches, key=len) if matches else None
            mult = multipliers[key_used] if key_used is not None else 1.0
            if key_used is not None:
                used.add(key_used)
            decay = not _no_decay(local, param)
            key = (name, decay, mult)
            if key not in groups:
                suffix = "" if mult == 1.0 else f"/x{mult:g}"
                groups[key] = {
                    "params": [],
                    "param_names": [],
                    "lr": optim.lr * mult,
                    "weight_decay": optim.weight_decay if decay else 0.0,
                    "betas": tuple(optim.betas),
                    "eps": optim.eps,
                    "name": f"{name}/{'decay' if decay else 'no_decay'}{suffix}",
                    "modality": name,
                }
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(qualified)
    for key, fusion in getattr(model, "groups", {}).items():
        # A group trains at its first member's settings (and follows its schedule), without weight decay.
        optim = model.modalities[fusion.members[0]].config.optim
        params = [(f"group:{key}.{n}", p) for n, p in fusion.named_parameters() if p.requires_grad]
        groups[(f"group:{key}", False, 1.0)] = {
            "params": [p for _, p in params], "param_names": [n for n, _ in params], "lr": optim.lr,
            "weight_decay": 0.0, "betas": tuple(optim.betas), "eps": optim.eps, "name": f"group:{key}",
            "modality": fusion.members[0],
        }  # fmt: skip
    unused = sorted(set(multipliers) - used)
    if unused:
        raise ConfigError(
            f"train.lr_multipliers: {unused} match no trainable parameter (names look like 'audio.head.')"
        )
    return list(groups.values())


def build_optimizer(
    model: BindModel,
    lr_multipliers: Mapping[str, float] | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (per-group lr, weight decay, betas and eps).

    ``device``: where the parameters will train (the trainer builds the optimiser before accelerate moves
    the model; default: where the first trainable parameter is now). On CUDA the optimiser is torch's fused
    AdamW (one kernel for the whole update instead of several per parameter group); elsewhere torch's default
    implementation."""
    groups = parameter_groups(model, lr_multipliers)
    if device is None:
        device = next((p.device for g in groups for p in g["params"]), torch.device("cpu"))
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, fused=True) if fused else torch.optim.AdamW(groups)


@dataclass(frozen=True)
class WarmupCosine:
    """Learning-rate factor at scheduler step ``s``: (s + 1) / warmup during warm-up, then a cosine from 1 to 0
    reached at ``total`` steps."""

    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = self.total - self.warmup
        if span <= 0:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min((step - self.warmup) / span, 1.0)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, model: BindModel, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with one factor per group (its modality's warm-up, cosine over ``total_steps``): each group's
    rate is its own base rate times the factor, so per-group rates are never overwritten."""
    factors = [
        WarmupCosine(model.modalities[g["modality"]].config.optim.warmup_steps, total_steps)
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factors)


def scheduler_state(scheduler: torch.optim.lr_scheduler.LambdaLR) -> dict[str, Any]:
    """The scheduler's state for a checkpoint, without its factors (a resumed run rebuilds them from its config)."""
    state = scheduler.state_dict()
    state["lr_lambdas"] = [None] * len(state["lr_lambdas"])  # factors come from the current config, not the file
    return state
