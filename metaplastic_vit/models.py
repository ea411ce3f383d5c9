"""Model factory: timm ViTs binarized by name-pattern policies, and the paper's MLP (bnn / dnn).

Each named model is a family builder plus a binarization policy held as data (module-name patterns),
so a new variant is a new pair of pattern lists, not new code. Module names stay timm's
(``blocks.<i>.attn.qkv``, ``blocks.<i>.mlp.fc1``, ``head``...), so state dicts stay timm-compatible.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .binarize import SignActivation, binarize_model
from .errors import UserError


@dataclass(frozen=True)
class Policy:
    """Which modules get binary weights and which get binarized inputs (fnmatch patterns)."""

    binary_weights: tuple[str, ...] = ()
    binary_inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its family ("vit" or "mlp"), binarization policy and default output scale."""

    family: str
    policy: Policy
    scale: str


# The seed's three ViT variants (ALGORITHM.md section 4). A module's "binary input" is the sign of what
# feeds it, so "norm1 output is sign" reads as "attn has a binary input", and so on.
MODELS: dict[str, ModelSpec] = {
    "vit": ModelSpec("vit", Policy(), "fan_in"),
    "bvit": ModelSpec("vit", Policy(
        binary_weights=("blocks.*.mlp.fc1", "blocks.*.mlp.fc2", "head"),
        binary_inputs=("blocks.*.attn", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2", "head")), "fan_in"),
    "hybrid": ModelSpec("vit", Policy(
        binary_weights=("blocks.*.mlp.fc1",),
        binary_inputs=("blocks.*.attn", "blocks.*.mlp.fc1", "head")), "fan_in"),
    # The paper's networks: binary fully connected layers each followed by BatchNorm and a sign
    # activation (real pixels into the first layer); the full-precision twin uses ReLU.
    "bnn": ModelSpec("mlp", Policy(binary_weights=("fc*",)), "none"),
    "dnn": ModelSpec("mlp", Policy(), "none"),
}


class MLP(nn.Module):
    """Flatten -> [Linear -> BatchNorm1d -> activation] * hidden -> Linear -> BatchNorm1d.

    Layers are named fc1..fcN and bn1..bnN as in the paper's code. `activation` is "relu" for the
    full-precision net and "sign" (straight-through) for the binarized one.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (1024, 1024),
                 activation: str = "relu", bn_running_stats: bool = False) -> None:
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        self.num_layers = len(sizes) - 1
        for i in range(self.num_layers):
            self.add_module(f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
            self.add_module(f"bn{i + 1}", nn.BatchNorm1d(sizes[i + 1], track_running_stats=bn_running_stats))
        acts = {"relu": nn.ReLU, "sign": SignActivation}
        if activation not in acts:
            raise UserError(f"unknown activation {activation!r}; choose one of {', '.join(acts)}")
        self.act = acts[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.flatten(1)
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"fc{i}")(x))
            if i < self.num_layers:
                x = self.act(x)
        return x


def _build_vit(img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, patch_size: int = 16,
               embed_dim: int = 768, depth: int = 4, num_heads: int = 12, mlp_ratio: float = 4.0,
               qkv_bias: bool = True) -> nn.Module:
    if img_size % patch_size:
        raise UserError(f"patch_size {patch_size} does not divide img_size {img_size}; "
                        f"choose a patch size among {[p for p in range(1, img_size + 1) if img_size % p == 0]}")
    if embed_dim % num_heads:
        raise UserError(f"num_heads {num_heads} does not divide embed_dim {embed_dim}")
    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                             qkv_bias=qkv_bias, class_token=True, global_pool="token", pos_embed="learn")


def _build_mlp(binarized: bool, img_size: int = 28, in_chans: int = 1, num_classes: int = 10,
               hidden: Sequence[int] = (1024, 1024), bn_running_stats: bool = False) -> nn.Module:
    return MLP(in_chans * img_size * img_size, num_classes, hidden=tuple(hidden),
               activation="sign" if binarized else "relu", bn_running_stats=bn_running_stats)


def create_model(name: str, *, binary_weights: Sequence[str] | None = None,
                 binary_inputs: Sequence[str] | None = None, binary_scale: str | None = None, **arch) -> nn.Module:
    """Build model `name` mapping images (B, C, H, W) to logits.

    `name` picks the family and default policy (see MODELS); `binary_weights` / `binary_inputs` replace
    the policy's pattern lists (define a new variant without code), `binary_scale` the output scale of
    binary layers ("none", "fan_in", "mean_abs"). `arch` holds the family's size keys: img_size, in_chans,
    num_classes, and patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias (vit) or hidden (mlp).
    """
    if name not in MODELS:
        raise UserError(f"unknown net {name!r}; choose one of {', '.join(MODELS)}")
    spec = MODELS[name]
    weights = spec.policy.binary_weights if binary_weights is None else tuple(binary_weights)
    inputs = spec.policy.binary_inputs if binary_inputs is None else tuple(binary_inputs)
    if spec.family == "vit":
        allowed = {"img_size", "in_chans", "num_classes", "patch_size", "embed_dim", "depth", "num_heads",
                   "mlp_ratio", "qkv_bias"}
    else:
        allowed = {"img_size", "in_chans", "num_classes", "hidden", "bn_running_stats"}
    unknown = sorted(set(arch) - allowed)
    if unknown:
        raise UserError(f"unknown arch keys {unknown} for net {name!r}; allowed: {', '.join(sorted(allowed))}")
    if spec.family == "vit":
        model = _build_vit(**arch)
    else:
        model = _build_mlp(binarized=bool(weights), **arch)
    return binarize_model(model, weights, inputs, scale=binary_scale or spec.scale)


class TaskLocalState:
    """Parameters and buffers kept once per task (the paper's per-task BatchNorm), saved and restored.

    `patterns` are fnmatch globs on module names (e.g. ``bn*`` or ``blocks.*.norm*``); the state of the
    matched modules is snapshotted at the end of each task and swapped in to test that task.
    """

    def __init__(self, model: nn.Module, patterns: Sequence[str]) -> None:
        self.model = model
        self.modules = {n: m for n, m in model.named_modules()
                        if n and any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        if patterns and not self.modules:
            raise UserError(f"per_task patterns {list(patterns)} match no module of the model")
        self.saved: list[dict[str, dict[str, torch.Tensor]]] = []

    def snapshot(self) -> dict[str, dict[str, torch.Tensor]]:
        """A detached copy of the current per-task state."""
        return {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in self.modules.items()}

    def load(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Copy `state` into the model in place (parameters keep their identity for the optimizer)."""
        for n, m in self.modules.items():
            m.load_state_dict(state[n])

    def save_task(self, task: int) -> None:
        """Store the current state as task `task`'s copy."""
        if task < len(self.saved):
            self.saved[task] = self.snapshot()
        else:
            self.saved.append(self.snapshot())
