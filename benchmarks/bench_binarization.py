"""Binarization overhead: train-step and inference time of bvit and hybrid over the full-precision vit.

Same sizes, same data, same optimizer (MetaplasticAdam, meta 1.35, implementation auto as in training);
a train step is forward + cross-entropy + backward + optimizer step. Presets: the embedded default's tiny
ViT (8 px, patch 2, embed 64, depth 2, 4 heads, batch 100, 1 channel) and the seed's ViT (224 px, patch 16,
embed 768, depth 4, 12 heads; a batch of 8 to keep CPU time reasonable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import interleaved, report, table, training_threads

from metaplastic_vit.models import create_model
from metaplastic_vit.optim import MetaplasticAdam, param_groups

PRESETS = {
    "tiny": (dict(img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=64, depth=2, num_heads=4), 100, 30),
    "seed": (dict(img_size=224, in_chans=3, num_classes=200, patch_size=16, embed_dim=768, depth=4, num_heads=12),
             8, 3),
}
NETS = ("vit", "bvit", "hybrid")


def steps(arch: dict, batch: int) -> tuple[dict, dict]:
    """Per net: a train-step closure and an inference closure on one fixed batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, arch["in_chans"], arch["img_size"], arch["img_size"], generator=g)
    y = torch.randint(0, arch["num_classes"], (batch,), generator=g)
    train, infer = {}, {}
    for net in NETS:
        torch.manual_seed(0)
        model = create_model(net, **arch)
        training_threads(model)  # the same for every net: they have the same parameters
        opt = MetaplasticAdam(param_groups(model, 1.35, "all"), lr=1e-3, weight_decay=1e-7)

        def train_step(model=model, opt=opt) -> None:
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.inference_mode()
        def infer_step(model=model) -> None:
            model.eval()
            model(x)

        train[net], infer[net] = train_step, infer_step
    return train, infer


def main() -> None:
    rows = []
    for preset, (arch, batch, rounds) in PRESETS.items():
        train, infer = steps(arch, batch)
        t = interleaved(train, rounds)  # the warm-up step compiles the optimizer where auto does
        i = interleaved(infer, rounds)
        for net in NETS:
            rows.append([preset, net, batch, torch.get_num_threads(), 1e3 * t[net], t[net] / t["vit"], 1e3 * i[net],
                         i[net] / i["vit"]])
    report("Binarization overhead", [
        "Median of interleaved steps per net; x vit = time over the full-precision vit's. Goal: train step "
        "<= 1.2x vit.",
        table(["preset", "net", "batch", "threads", "train step ms", "x vit", "inference ms", "x vit"], rows)])


if __name__ == "__main__":
    main()
