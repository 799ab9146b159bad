"""Grouped modalities: the fused embedding of several modalities of one item, aligned with its caption.

VALOR's multimodal grouping alignment (MGA) trains vision-text, audio-text and audio+vision-text alignment at
once. Here any group of modalities can be aligned as one: ``train.groups: [[video, audio]]`` adds, beside each
member's own contrastive loss, the contrastive loss of the group's fused embedding against the captions, on the
rows that have every member (a paired manifest row may lack some).

Fusion of the members' unit embeddings ``f_1 .. f_M`` (:class:`GroupFusion`):

* ``mean``: ``normalize(sum_i f_i / M)``, no parameters (the baseline);
* ``learned`` (default): ``normalize(W sum_i softmax(a)_i f_i)`` with one learned weight ``a_i`` per member
  (initialised equal) and, with ``train.group_linear``, a linear map ``W`` [E, E] initialised to the identity.
  At initialisation it is exactly the mean fusion, so training starts from the baseline.

Each group has its own learned temperature. A checkpoint stores the groups in ``groups.safetensors`` (tensors
``<key>.<parameter>``, key ``video+audio``) and describes them in ``lbind.json``'s ``groups`` list
(``members``, ``fusion``, ``linear``, ``logit_scale``, ``file``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lbcore.errors import CheckpointError, ConfigError
from lbcore.loss import LOGIT_SCALE_INIT, LogitScale, contrastive_loss

__all__ = [
    "FUSIONS",
    "GROUPS_FILE",
    "GroupFusion",
    "GroupSet",
    "build_groups",
    "check_groups",
    "fused_features",
    "group_key",
    "group_loss",
    "load_group_state",
    "read_groups",
    "shared_rows",
    "write_groups",
]

GROUPS_FILE = "groups.safetensors"
FUSIONS = ("learned", "mean")


def group_key(members: Sequence[str]) -> str:
    """The name of a group: its members joined by '+' (``video+audio``)."""
    return "+".join(members)


class GroupFusion(nn.Module):
    """Fuses the unit embeddings of a group's members into one unit embedding (see the module docs)."""

    def __init__(
        self,
        members: Sequence[str],
        embed_dim: int,
        fusion: str = "learned",
        linear: bool = True,
        logit_scale: float = LOGIT_SCALE_INIT,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"group {group_key(members)}: unknown fusion {fusion!r}; expected one of {FUSIONS}")
        if len(set(members)) < 2 or len(set(members)) != len(members):
            raise ConfigError(f"group {list(members)}: expected two or more distinct modalities")
        self.members = tuple(members)
        self.embed_dim = int(embed_dim)
        self.fusion = fusion
        self.logit_scale = LogitScale(logit_scale)
        self.mix: nn.Parameter | None = None
        self.proj: nn.Linear | None = None
        if fusion == "learned":
            self.mix = nn.Parameter(torch.zeros(len(members)))  # softmax(0) = equal weights
            if linear:
                self.proj = nn.Linear(embed_dim, embed_dim, bias=False)
                with torch.no_grad():
                    self.proj.weight.copy_(torch.eye(embed_dim))

    @property
    def linear(self) -> bool:
        return self.proj is not None

    def member_weights(self) -> torch.Tensor:
        """The weight of each member in the fused sum [M] (equal for ``mean``)."""
        if self.mix is None:
            return torch.full((len(self.members),), 1.0 / len(self.members), device=self.logit_scale.value.device)
        return torch.softmax(self.mix, dim=0)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unit embeddings of the members, each [R, E] in member order, rows aligned -> fused unit embeddings [R, E]."""
        if len(features) != len(self.members):
            raise ValueError(
                f"group {group_key(self.members)}: expected {len(self.members)} inputs, got {len(features)}"
            )
        weights = self.member_weights().to(features[0].dtype)
        fused = sum(w * f for w, f in zip(weights, features, strict=True))
        if self.proj is not None:
            fused = self.proj(fused)
        return F.normalize(fused, dim=-1)

    def describe(self) -> dict[str, Any]:
        return {
            "members": list(self.members),
            "fusion": self.fusion,
            "linear": self.linear,
            "logit_scale": float(self.logit_scale.value.detach()),
        }


class GroupSet(nn.ModuleDict):
    """The groups of a model, by :func:`group_key` (empty for a model without groups)."""

    def fusion_for(self, members: Sequence[str]) -> GroupFusion | None:
        """The group with exactly these members (in any order), or None."""
        wanted = set(members)
        for fusion in self.values():
            if set(fusion.members) == wanted:
                return fusion  # type: ignore[return-value]
        return None


def check_groups(groups: Sequence[Sequence[str]], modalities: Sequence[str], where: str = "train.groups") -> None:
    """Raise :class:`ConfigError` unless every group has two or more distinct modalities of the run and no
    modality is in two groups (a group trains on one paired dataset, shared by its members)."""
    seen: dict[str, str] = {}
    for index, members in enumerate(groups):
        if len(set(members)) < 2 or len(set(members)) != len(members):
            raise ConfigError(f"{where}[{index}]: expected two or more distinct modalities, got {list(members)}")
        unknown = [m for m in members if m not in modalities]
        if unknown:
            raise ConfigError(
                f"{where}[{index}]: {', '.join(unknown)} not trained in this run (modalities: {', '.join(modalities)})"
            )
        for member in members:
            if member in seen:
                raise ConfigError(f"{where}: {member} is in two groups ({seen[member]} and {group_key(members)})")
            seen[member] = group_key(members)


def build_groups(
    groups: Sequence[Sequence[str]], embed_dim: int, fusion: str = "learned", linear: bool = True
) -> GroupSet:
    """A fresh :class:`GroupSet` with one :class:`GroupFusion` per group (equal weights, identity map)."""
    return GroupSet({group_key(g): GroupFusion(g, embed_dim, fusion, linear) for g in groups})


def shared_rows(indices: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Positions, in each member's rows, of the item ids every member has, in the first member's order.

    ``indices[i]`` [n_i]: the item (manifest row) id of each row of member ``i``. Returns one index tensor per
    member, all of the same length R, such that ``indices[i][out[i]]`` is the same id sequence for every ``i``.
    """
    where = [{int(v): p for p, v in enumerate(ids.tolist())} for ids in indices]
    common = [int(v) for v in indices[0].tolist() if all(int(v) in w for w in where[1:])]
    device = indices[0].device
    return [torch.tensor([w[v] for v in common], dtype=torch.long, device=device) for w in where]


def group_loss(
    fusion: GroupFusion, features: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], texts: torch.Tensor
) -> torch.Tensor | None:
    """The contrastive loss of the group's fused embedding against the captions, over the rows that have every
    member; None when fewer than two such rows (no negative to contrast with).

    ``features[i]`` [n_i, E]: member ``i``'s unit embeddings; ``indices[i]`` [n_i]: their item ids; ``texts``
    [n_0, E]: the caption embedding of each row of the first member (a row's caption is shared by its members).
    """
    positions = shared_rows(indices)
    if positions[0].numel() < 2:
        return None
    fused = fusion([f.index_select(0, p) for f, p in zip(features, positions, strict=True)])
    return contrastive_loss(fused, texts.index_select(0, positions[0]), fusion.logit_scale.value, gather=False)


@torch.no_grad()
def fused_features(
    groups: GroupSet, members: Sequence[str], features: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The group embeddings [N, E] of aligned member features (rows = items) and what fused them: the trained
    fusion of exactly these members when ``groups`` has one, else the parameter-free mean."""
    fusion = groups.fusion_for(members)
    embed_dim = next(iter(features.values())).shape[-1]
    trained = fusion is not None
    if fusion is None:
        fusion = GroupFusion(members, embed_dim, "mean")
    device = fusion.logit_scale.value.device
    fused = fusion([F.normalize(features[m].float().to(device), dim=-1) for m in fusion.members])
    weights = dict(zip(fusion.members, fusion.member_weights().tolist(), strict=True))
    info = {"members": list(members), "fusion": fusion.fusion, "trained": trained, "member_weights": weights}
    return fused, info


# ------------------------------------------------------------------------------------------- saving
def write_groups(directory: Path, groups: GroupSet) -> list[dict[str, Any]]:
    """Write ``groups.safetensors`` into ``directory``; return the ``lbind.json`` ``groups`` entries."""
    state = {
        f"{key}.{name}": t.detach().to("cpu").contiguous().clone()
        for key, g in groups.items()
        for name, t in g.state_dict().items()
    }
    save_file(state, str(directory / GROUPS_FILE), metadata={"format": "pt", "groups": ",".join(groups)})
    return [{**g.describe(), "key": key, "file": GROUPS_FILE} for key, g in groups.items()]  # type: ignore[operator]


def _entry(spec: Any, where: str) -> tuple[list[str], str, bool]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("members"), list):
        raise CheckpointError(f"{where}: expected {{members, fusion, linear, logit_scale, file}}")
    fusion = spec.get("fusion", "mean")
    if fusion not in FUSIONS:
        raise CheckpointError(f"{where}.fusion: {fusion!r}; expected one of {FUSIONS}")
    return [str(m) for m in spec["members"]], fusion, bool(spec.get("linear", False))


def read_groups(directory: Path, specs: Any, embed_dim: int) -> GroupSet:
    """The groups a checkpoint describes (``lbind.json``'s ``groups`` list), weights from its safetensors."""
    where = f"{directory / 'lbind.json'}: groups"
    if not isinstance(specs, list):
        raise CheckpointError(f"{where}: expected a list of groups")
    groups = GroupSet()
    for index, spec in enumerate(specs):
        members, fusion, linear = _entry(spec, f"{where}[{index}]")
        groups[group_key(members)] = GroupFusion(members, embed_dim, fusion, linear)
    files = {str(s.get("file", GROUPS_FILE)) for s in specs}
    for file in files:
        load_group_state(groups, directory / file)
    return groups


def load_group_state(groups: GroupSet, path: Path) -> None:
    """Load the tensors of ``path`` (a ``groups.safetensors``) into ``groups``; every tensor must fit."""
    if not len(groups):
        return
    try:
        state = load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: cannot read the group fusion weights: {err}") from err
    for key, fusion in groups.items():
        own = {n[len(key) + 1 :]: t for n, t in state.items() if n.startswith(key + ".")}
        result = fusion.load_state_dict(own, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{path}: group {key} does not fit its description: missing {result.missing_keys or 'none'}, "
                f"unexpected {result.unexpected_keys or 'none'}"
            )
