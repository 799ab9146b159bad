"""LoRA adapters on an encoder: inject them (peft), count parameters, and move adapter weights in and out.

:func:`apply_lora` freezes an encoder except its LoRA adapters and the configured trained extras. The other
functions read and write adapter weights without peft's save/load: :func:`adapter_state` takes the LoRA factors
(``<module>.lora_A.weight`` [r, in], ``<module>.lora_B.weight`` [out, r]) plus the trained extras,
:func:`merge_adapter` merges them into base weights as ``W += scaling * B @ A``, and
:func:`export_encoder_state` gives full weights with the adapters merged in (see :mod:`lbcore.checkpoint` for
where these tensors are stored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lbcore.config import ModalityConfig
from lbcore.errors import CheckpointError, ConfigError

__all__ = [
    "LORA_A",
    "LORA_B",
    "adapter_state",
    "apply_lora",
    "base_encoder_state",
    "export_encoder_state",
    "lora_layers",
    "merge_adapter",
    "parameter_counts",
    "split_extras",
]

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"  # adapter tensor suffixes in adapter files


def apply_lora(encoder: nn.Module, config: ModalityConfig, where: str = "") -> dict[str, int]:
    """Freeze the encoder except LoRA adapters (peft, the config's rank / alpha / targets) and the
    ``lora.trainable_extras`` prefixes; rank 0 leaves every parameter trainable. Returns parameter counts."""
    lora = config.lora
    if lora.rank > 0:
        # deferred: peft imports transformers (seconds); only LoRA runs need it
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model  # deferred: as above

        peft_cfg = PeftLoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.targets),
            bias="none",
        )
        try:
            inject_adapter_in_model(peft_cfg, encoder)
        except ValueError as err:
            raise ConfigError(f"{where}lora.targets: {err}") from err
        names = [n for n, _ in encoder.named_parameters()]
        unmatched = [e for e in lora.trainable_extras if not any(n.startswith(e) for n in names)]
        if unmatched:
            tops = sorted({n.split(".")[0] + "." for n in names})
            raise ConfigError(
                f"{where}lora.trainable_extras: {unmatched} match no encoder parameter (names start with "
                f"{', '.join(tops)})"
            )
        for name, p in encoder.named_parameters():
            p.requires_grad_(".lora_" in name or any(name.startswith(e) for e in lora.trainable_extras))
    else:
        encoder.requires_grad_(True)
    return parameter_counts(encoder)


def parameter_counts(encoder: nn.Module) -> dict[str, int]:
    """Total, trainable and LoRA-adapter parameter counts."""
    params = list(encoder.named_parameters())
    return {
        "total": sum(p.numel() for _, p in params),
        "trainable": sum(p.numel() for _, p in params if p.requires_grad),
        "lora": sum(p.numel() for n, p in params if ".lora_" in n),
    }


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers inside ``module``, by module name (empty without peft adapters)."""
    try:
        from peft.tuners.lora import LoraLayer  # deferred: as above
    except ImportError:  # peft missing: nothing can have been injected
        return {}
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def base_encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's own tensors in the plain encoder's names, LoRA adapters left out (not merged): with peft
    adapters injected, the weights they apply to. Live tensors, not copies."""
    state: dict[str, torch.Tensor] = {}
    for key, value in encoder.state_dict(keep_vars=True).items():
        if ".lora_" in key:
            continue  # adapter weights (lora_A / lora_B / DoRA magnitudes)
        state[key.replace(".base_layer.", ".")] = value.detach()
    return state


@torch.no_grad()
def export_encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Full encoder weights in the plain encoder's names, LoRA merged in (W + alpha/r * B @ A); CPU copies.

    The live encoder is not modified (no merge/unmerge round trip that would change its bits).
    """
    layers = lora_layers(encoder)
    state = base_encoder_state(encoder)
    for name, layer in layers.items():
        weight_key = f"{name}.weight"
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                delta = layer.get_delta_weight(adapter)  # [out, in], already scaled by alpha / r
                state[weight_key] = state[weight_key] + delta.to(state[weight_key].dtype)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def split_extras(keys: Sequence[str] | Mapping[str, object], prefixes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Plain encoder tensor names -> (trained extras: names starting with one of ``prefixes``, the rest)."""
    extras = [k for k in keys if any(k.startswith(p) for p in prefixes)]
    chosen = set(extras)
    return extras, [k for k in keys if k not in chosen]


def adapter_state(encoder: nn.Module, trainable_extras: Sequence[str]) -> tuple[dict[str, torch.Tensor], float]:
    """What an adapter-only checkpoint stores of a peft-adapted encoder, and the scale to merge it with.

    Returns (tensors, scaling): ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight`` [out, r] for
    every LoRA layer, plus every plain tensor whose name starts with one of ``trainable_extras``; live tensors
    (the caller copies). Raises :class:`CheckpointError` when the encoder has no LoRA adapters, several active
    adapters per layer, DoRA, transposed (fan-in-fan-out) weights or per-layer scales: none of those can be
    merged back by ``W += scaling * B @ A``.
    """
    layers = lora_layers(encoder)
    if not layers:
        raise CheckpointError("the encoder has no LoRA adapters to save (are they merged already?)")
    tensors: dict[str, torch.Tensor] = {}
    scalings: set[float] = set()
    for name, layer in layers.items():
        adapters = [a for a in layer.active_adapters if a in layer.lora_A]
        if len(adapters) != 1:
            raise CheckpointError(f"{name}: expected one active LoRA adapter, found {adapters or 'none'}")
        adapter = adapters[0]
        if getattr(layer, "use_dora", {}).get(adapter) or getattr(layer, "fan_in_fan_out", False):
            raise CheckpointError(f"{name}: DoRA or fan-in-fan-out LoRA layers cannot be saved as an adapter")
        if not isinstance(layer.lora_A[adapter], nn.Linear) or not isinstance(layer.lora_B[adapter], nn.Linear):
            raise CheckpointError(f"{name}: only LoRA on linear layers can be saved as an adapter")
        tensors[name + LORA_A] = layer.lora_A[adapter].weight.detach()  # [r, in]
        tensors[name + LORA_B] = layer.lora_B[adapter].weight.detach()  # [out, r]
        scalings.add(float(layer.scaling[adapter]))
    if len(scalings) != 1:
        raise CheckpointError(f"LoRA layers use different scales {sorted(scalings)}; expected one alpha / rank")
    base = base_encoder_state(encoder)
    extras, _ = split_extras(list(base), trainable_extras)
    tensors.update({k: base[k] for k in extras})
    return tensors, scalings.pop()


@torch.no_grad()
def merge_adapter(
    base: Mapping[str, torch.Tensor], adapter: Mapping[str, torch.Tensor], scaling: float, source: str
) -> dict[str, torch.Tensor]:
    """Full encoder weights from base weights and an adapter file's tensors (see :func:`adapter_state`).

    Every LoRA pair merges into its module's weight as ``W + (B @ A) * scaling`` (the same operations as
    peft's merge, so the result equals a full export of the adapted encoder); every other adapter tensor (the
    trained extras) replaces the base tensor of that name. ``source`` names the file in errors, which list
    unpaired factors, unknown names and shape mismatches.
    """
    state = dict(base)
    problems: list[str] = []
    modules = sorted({k[: -len(LORA_A)] for k in adapter if k.endswith(LORA_A)})
    unpaired = sorted(
        {k for k in adapter if k.endswith(LORA_B) and k[: -len(LORA_B)] not in modules}
        | {m + LORA_A for m in modules if m + LORA_B not in adapter}
    )
    if unpaired:
        problems.append(f"LoRA factors without their pair: {', '.join(unpaired)}")
    for module in modules:
        if module + LORA_B not in adapter:
            continue
        a, b = adapter[module + LORA_A], adapter[module + LORA_B]  # [r, in], [out, r]
        weight = state.get(f"{module}.weight")
        if weight is None:
            problems.append(f"{module}: no such linear layer in the encoder")
        elif a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != weight.shape:
            problems.append(
                f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit its weight "
                f"{tuple(weight.shape)}"
            )
        else:
            delta = (b.to(weight.device) @ a.to(weight.device)) * scaling  # [out, in]
            state[f"{module}.weight"] = weight + delta.to(weight.dtype)
    for key, value in adapter.items():
        if key.endswith((LORA_A, LORA_B)):
            continue
        if key not in state:
            problems.append(f"{key}: not an encoder tensor")
        elif state[key].shape != value.shape:
            problems.append(f"{key}: shape {tuple(value.shape)}, the encoder's is {tuple(state[key].shape)}")
        else:
            state[key] = value.to(device=state[key].device, dtype=state[key].dtype)
    if problems:
        raise CheckpointError(f"{source}: the adapter does not fit the encoder: " + "; ".join(problems))
    return state
