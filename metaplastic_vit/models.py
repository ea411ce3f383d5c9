"""One registry of every named net: timm ViTs binarized by name-pattern policies, and the paper's MLPs.

Each named net is a `NetSpec` (family, binarization policy, per-task modules) held as data, so a new
variant is a registry entry plus a YAML file in conf/net/, not new code. Module names stay timm's
(``blocks.<i>.attn.qkv``, ``blocks.<i>.mlp.fc1``, ``head``...), so state dicts stay timm-compatible.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

import torch
from torch import nn

from .binarize import BinaryScale, SignActivation, binarize_model
from .errors import UserError


@dataclass(frozen=True)
class NetSpec:
    """A named net: family ("vit" or "mlp"), binarization policy and the modules kept once per task.

    `binary_weights`: modules (Linear/Conv2d) computing with sign(W_h); `binary_inputs`: modules whose input
    is binarized (straight-through sign); both fnmatch patterns over `named_modules()` names. `per_task`:
    modules whose parameters and buffers are kept once per task (used only by a task-aware test).
    `norm`: the normalisation, "layer" (per sample: no statistics kept; timm's ViT) or "batch" (running
    statistics; the paper's MLP; in a ViT per channel over all tokens, `TokenBatchNorm`); `norm_affine`:
    whether the norms learn a scale and shift; `frozen`: parameters (fnmatch patterns over
    `named_parameters()` names, e.g. ``pos_embed``) kept at their initial values.
    """

    name: str
    family: str
    binary_weights: tuple[str, ...] = ()
    binary_inputs: tuple[str, ...] = ()
    scale: BinaryScale = BinaryScale.fan_in
    per_task: tuple[str, ...] = ()
    norm: str = "layer"
    norm_affine: bool = True
    frozen: tuple[str, ...] = ()
    summary: str = ""


# The attention's input (norm1's output) feeds only its qkv projection, so "blocks.*.attn.qkv" binarizes it.
_BVIT_WEIGHTS = ("blocks.*.mlp.fc1", "blocks.*.mlp.fc2", "head")
_BVIT_INPUTS = ("blocks.*.attn.qkv", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2", "head")
_ATTN_WEIGHTS = ("blocks.*.attn.qkv", "blocks.*.attn.proj", *_BVIT_WEIGHTS)
_ATTN_INPUTS = ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2", "head")
_FULL_WEIGHTS = ("patch_embed.proj", *_ATTN_WEIGHTS)
_VIT_NORMS = ("blocks.*.norm1", "blocks.*.norm2", "norm")
_WALK_WEIGHTS = ("embed", "blocks.*.fc*", "head")
_WALK_INPUTS = ("blocks.*.fc*", "head")
_WALK_NORMS = ("norm*", "blocks.*.norm")

MODELS: dict[str, NetSpec] = {spec.name: spec for spec in (
    NetSpec("vit", "vit", summary="full-precision timm ViT (the seed's vit)"),
    # The seed's binarized ViT and hybrid: a module's "binary input" is the sign of what feeds it, so "norm1
    # output is sign" reads as "attn.qkv has a binary input".
    NetSpec("bvit", "vit", _BVIT_WEIGHTS, _BVIT_INPUTS, summary="the seed's bvit: binary MLP and head"),
    NetSpec("hybrid", "vit", ("blocks.*.mlp.fc1",), ("blocks.*.attn.qkv", "blocks.*.mlp.fc1", "head"),
            summary="the seed's hybrid: binary fc1 only"),
    NetSpec("bvit_ln", "vit", _BVIT_WEIGHTS, _BVIT_INPUTS, per_task=_VIT_NORMS,
            summary="bvit with per-task LayerNorms"),
    NetSpec("bvit_attn", "vit", _ATTN_WEIGHTS, _ATTN_INPUTS, summary="bvit with binary attention projections"),
    NetSpec("bvit_full", "vit", _FULL_WEIGHTS, _ATTN_INPUTS,
            summary="every linear map binary (patch embedding, attention, MLP, head)"),
    NetSpec("bvit_full_ln", "vit", _FULL_WEIGHTS, _ATTN_INPUTS, per_task=_VIT_NORMS,
            summary="bvit_full with per-task LayerNorms"),
    # The paper's networks: binary fully connected layers each followed by BatchNorm and a sign activation
    # (real pixels into the first layer); the full-precision twin uses ReLU. BatchNorm kept per task.
    NetSpec("bnn", "mlp", ("fc*",), scale=BinaryScale.none, per_task=("bn*",), norm="batch",
            summary="the paper's binarized MLP with BatchNorm"),
    NetSpec("dnn", "mlp", scale=BinaryScale.none, per_task=("bn*",), norm="batch",
            summary="bnn's full-precision twin (ReLU)"),
    NetSpec("bnn_ln", "mlp", ("fc*",), scale=BinaryScale.none, per_task=("norm*",),
            summary="bnn with LayerNorm instead of BatchNorm: no statistics carry or lose a task"),
    # The walk from bnn_ln to bvit_full, one component at a time (TokenMLP: one token, no attention; the
    # structure of each step is in its conf/net file): residual connections, then pre-norm placement, then the
    # ViT's width, two-layer blocks and 1/sqrt(fan_in) scale, then GELU where the ViT has it; bvit_full adds
    # tokens and attention.
    *(NetSpec(name, "walk", _WALK_WEIGHTS, _WALK_INPUTS, scale=scale, per_task=_WALK_NORMS, summary=summary)
      for name, scale, summary in (
          ("walk_resid", BinaryScale.none, "bnn_ln with residual connections (post-norm)"),
          ("walk_prenorm", BinaryScale.none, "walk_resid with the ViT's pre-norm placement"),
          ("walk_vitwidth", BinaryScale.fan_in, "walk_prenorm at the ViT's width and blocks, 1/sqrt(fan_in) scale"),
          ("walk_gelu", BinaryScale.fan_in, "walk_vitwidth with GELU inside the blocks, as the ViT's MLP"))),
)}

class Norm(StrEnum):
    """A net's normalisation: per sample (LayerNorm) or with running statistics (BatchNorm)."""

    layer = "layer"
    batch = "batch"


VIT_ARCH = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "proj_bias", "class_token")
MLP_ARCH = ("hidden", "transductive_bn")
WALK_ARCH = ("embed_dim", "depth", "mlp_ratio", "residual", "prenorm", "gelu")
ARCH_KEYS = {"vit": VIT_ARCH, "mlp": MLP_ARCH, "walk": WALK_ARCH}


class MLP(nn.Module):
    """Flatten -> [Linear -> norm -> activation] * hidden -> Linear -> norm.

    Layers are named fc1..fcN and bn1..bnN (BatchNorm) as in the paper's code, or norm1..normN (LayerNorm).
    `activation` is "relu" for the full-precision net and "sign" (straight-through) for the binarized one.
    BatchNorm tests with running statistics; `transductive_bn` makes it normalise every test batch with that
    batch's own statistics (the paper's code since 2023), which lets a batch drawn from one task carry its
    identity. LayerNorm normalises each sample on its own: no statistics are kept at all.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (1024, 1024),
                 activation: str = "relu", transductive_bn: bool = False, norm: str = "batch") -> None:
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        self.num_layers = len(sizes) - 1
        self.norm_prefix = "norm" if norm == "layer" else "bn"
        for i in range(self.num_layers):
            self.add_module(f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
            self.add_module(f"{self.norm_prefix}{i + 1}",
                            nn.LayerNorm(sizes[i + 1]) if norm == "layer"
                            else nn.BatchNorm1d(sizes[i + 1], track_running_stats=not transductive_bn))
        self.act = SignActivation() if activation == "sign" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.flatten(1)
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"{self.norm_prefix}{i}")(getattr(self, f"fc{i}")(x))
            if i < self.num_layers:
                x = self.act(x)
        return x


class _WalkBlock(nn.Module):
    """One block of TokenMLP: a linear map `fc`, or the ViT's MLP `fc1` -> (GELU) -> `fc2`; and its `norm`."""

    def __init__(self, dim: int, hidden: int | None, gelu: bool) -> None:
        super().__init__()
        if hidden is None:
            self.fc = nn.Linear(dim, dim)
        else:
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU() if gelu else nn.Identity()
            self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        """The block's linear map(s), without the norm."""
        return self.fc(x) if hasattr(self, "fc") else self.fc2(self.act(self.fc1(x)))


class TokenMLP(nn.Module):
    """A ViT reduced to one token per image and no attention: the steps of the walk from bnn_ln to bvit_full.

    `embed` maps the flattened image to `embed_dim`; `depth` blocks follow (`_WalkBlock`: one map, or the ViT's
    MLP of `mlp_ratio` times the width); `head` maps to the classes. Post-norm (the paper's MLP): after each map
    x <- norm(x + map(x)) with `residual`, norm(map(x)) without, the embedding and the head normalised too
    (`norm0`, `norm`), so that without residuals this is bnn_ln. Pre-norm (the ViT): x <- x + map(norm(x)), and
    the head reads norm(x). Which maps are binary and which inputs are signs is the net's policy, as in a ViT.
    """

    def __init__(self, in_features: int, num_classes: int, embed_dim: int = 1024, depth: int = 1,
                 mlp_ratio: float | None = None, residual: bool = True, prenorm: bool = False,
                 gelu: bool = False) -> None:
        super().__init__()
        hidden = None if mlp_ratio is None else int(embed_dim * mlp_ratio)
        self.residual, self.prenorm = residual, prenorm
        self.embed = nn.Linear(in_features, embed_dim)
        if not prenorm:
            self.norm0 = nn.LayerNorm(embed_dim)
        self.blocks = nn.ModuleList(_WalkBlock(embed_dim, hidden, gelu) for _ in range(depth))
        self.head = nn.Linear(embed_dim, num_classes)
        self.norm = nn.LayerNorm(embed_dim if prenorm else num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.embed(x.flatten(1))
        if self.prenorm:
            for block in self.blocks:
                x = x + block.map(block.norm(x))
            return self.head(self.norm(x))
        x = self.norm0(x)
        for block in self.blocks:
            x = block.norm(x + block.map(x) if self.residual else block.map(x))
        return self.norm(self.head(x))


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over tokens: each of the (B, N, C) input's C channels normalised with statistics over all B*N
    tokens (running statistics at test), a drop-in for a ViT's LayerNorm(C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether the model normalises with each batch's own statistics even when testing (transductive)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats for m in model.modules())


def _build_vit(img_size: int, in_chans: int, num_classes: int, patch_size: int = 16, embed_dim: int = 768,
               depth: int = 4, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
               proj_bias: bool = True, class_token: bool = True, norm: str = "layer",
               norm_affine: bool = True) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    if img_size % patch_size:  # the image size may come from the data: the one arch rule the schema cannot check
        raise UserError(f"patch_size {patch_size} does not divide img_size {img_size}; "
                        f"choose a patch size among {[p for p in range(1, img_size + 1) if img_size % p == 0]}")
    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                             qkv_bias=qkv_bias, proj_bias=proj_bias, class_token=class_token,
                             global_pool="token" if class_token else "avg", pos_embed="learn",
                             norm_layer=partial(nn.LayerNorm, eps=1e-6, elementwise_affine=norm_affine)
                             if norm == "layer" else partial(TokenBatchNorm, affine=norm_affine))


def _build_mlp(spec: NetSpec, img_size: int, in_chans: int, num_classes: int, hidden: Sequence[int] = (1024, 1024),
               transductive_bn: bool = False) -> nn.Module:
    if transductive_bn and spec.norm != "batch":
        raise UserError(f"net {spec.name!r} has no BatchNorm: transductive_bn does not apply")
    return MLP(in_chans * img_size * img_size, num_classes, hidden=tuple(hidden),
               activation="sign" if spec.binary_weights else "relu", transductive_bn=transductive_bn,
               norm=spec.norm)


def _build_walk(img_size: int, in_chans: int, num_classes: int, **arch: object) -> nn.Module:
    return TokenMLP(in_chans * img_size * img_size, num_classes, **arch)


def resolve_spec(name: str, binary_weights: Sequence[str] | None = None, binary_inputs: Sequence[str] | None = None,
                 binary_scale: BinaryScale | str | None = None, per_task: Sequence[str] | None = None,
                 norm: str | None = None, norm_affine: bool | None = None,
                 frozen: Sequence[str] | None = None) -> NetSpec:
    """The registry's spec of net `name` with the given policy fields replaced (None keeps the registry's); the
    config's schema has checked the name and the values."""
    spec = MODELS[name]
    changes: dict[str, object] = {k: tuple(v) for k, v in (
        ("binary_weights", binary_weights), ("binary_inputs", binary_inputs), ("per_task", per_task),
        ("frozen", frozen)) if v is not None}
    if binary_scale is not None:
        changes["scale"] = BinaryScale(binary_scale)
    if norm is not None:
        changes["norm"] = norm
    if norm_affine is not None:
        changes["norm_affine"] = norm_affine
    return dataclasses.replace(spec, **changes)


def create_model(name: str, *, num_classes: int, img_size: int, in_chans: int,
                 binary_weights: Sequence[str] | None = None, binary_inputs: Sequence[str] | None = None,
                 binary_scale: BinaryScale | str | None = None, per_task: Sequence[str] | None = None,
                 norm: str | None = None, norm_affine: bool | None = None, frozen: Sequence[str] | None = None,
                 **arch: object) -> nn.Module:
    """Build net `name` (see MODELS) mapping images (B, in_chans, img_size, img_size) to `num_classes` logits.

    `binary_weights`, `binary_inputs`, `binary_scale`, `per_task`, `norm`, `norm_affine` and `frozen` replace the
    registry's policy (a variant without code); `arch` holds the family's size keys (VIT_ARCH or MLP_ARCH).
    The returned model carries its resolved spec as `model.net_spec`.
    """
    spec = resolve_spec(name, binary_weights, binary_inputs, binary_scale, per_task, norm, norm_affine, frozen)
    allowed = ARCH_KEYS[spec.family]
    unknown = sorted(set(arch) - set(allowed))
    if unknown:
        raise UserError(f"unknown arch keys {unknown} for net {name!r}; allowed: {', '.join(allowed)}")
    if spec.family == "vit":
        model = _build_vit(img_size, in_chans, num_classes, norm=spec.norm, norm_affine=spec.norm_affine, **arch)
    elif spec.family == "walk":
        if spec.norm != "layer" or not spec.norm_affine:
            raise UserError(f"net {name!r} is a walk step: its norms are LayerNorms with a scale and shift")
        model = _build_walk(img_size, in_chans, num_classes, **arch)
    else:
        if not spec.norm_affine:
            raise UserError(f"net {name!r} is an MLP: norm_affine applies to ViT norms only")
        model = _build_mlp(spec, img_size, in_chans, num_classes, **arch)
    model = binarize_model(model, spec.binary_weights, spec.binary_inputs, scale=spec.scale)
    names = [n for n, _ in model.named_parameters()]
    for pattern in spec.frozen:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise UserError(f"frozen pattern {pattern!r} matches no parameter; names look like: "
                            f"{', '.join(names[:6])}, ...")
        for n in hits:
            model.get_parameter(n).requires_grad_(False)
    model.net_spec = spec
    return model
