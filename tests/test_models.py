import pytest
import torch
import torch.nn.functional as F

from metaplastic_vit.binarize import BinaryLinear
from metaplastic_vit.errors import UserError
from metaplastic_vit.models import MODELS, TokenBatchNorm, create_model

TINY = dict(img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=32, depth=2, num_heads=4)

# The seed's variants: (input binarized?, weight binarized?) per layer.
LAYER_MAP = {
    "vit": {"attn.qkv": (False, False), "attn.proj": (False, False), "mlp.fc1": (False, False),
            "mlp.fc2": (False, False), "head": (False, False)},
    "bvit": {"attn.qkv": (True, False), "attn.proj": (False, False), "mlp.fc1": (True, True),
             "mlp.fc2": (True, True), "head": (True, True)},
    "hybrid": {"attn.qkv": (True, False), "attn.proj": (False, False), "mlp.fc1": (True, True),
               "mlp.fc2": (False, False), "head": (True, False)},
}
# what feeds each layer, before any binarization
FEEDS = {"attn.qkv": "norm1", "mlp.fc1": "norm2", "mlp.fc2": "mlp.act", "head": "norm"}


def _capture(model, x):
    """Record every module's input and output in one forward pass."""
    seen = {}

    def hook(name):
        def fn(module, args, out):
            seen[name] = (args[0].detach(), out.detach())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("net", ["vit", "bvit", "hybrid"])
def test_every_layer_matches_the_functional_computation(net):
    torch.manual_seed(0)
    model = create_model(net, **TINY).eval()
    seen = _capture(model, torch.randn(3, 1, 8, 8))
    for layer, (bin_in, bin_w) in LAYER_MAP[net].items():
        for name in ([f"blocks.{i}.{layer}" for i in range(TINY["depth"])] if layer != "head" else ["head"]):
            module = model.get_submodule(name)
            x_in, out = seen[name]
            if layer in FEEDS:  # the layer receives what feeds it, and binarizes it itself where the table says so
                feed = seen[name[: -len(layer)] + FEEDS[layer]][1]
                if layer == "head":
                    feed = feed[:, 0]  # the class token
                torch.testing.assert_close(x_in, feed, msg=f"{net} {name} input")
            assert getattr(module, "binary_input", False) == bin_in, f"{net} {name}"
            x_used = x_in.sign() if bin_in else x_in
            w = module.weight.sign() if bin_w else module.weight
            expected = F.linear(x_used, w)
            if bin_w:
                expected = expected / module.weight.shape[1] ** 0.5
            expected = expected + module.bias
            torch.testing.assert_close(out, expected, msg=f"{net} {name} output")
            assert getattr(module, "binary_weight", False) == bin_w


def test_vit_has_no_binary_part():
    model = create_model("vit", **TINY)
    assert not any(isinstance(m, BinaryLinear) for m in model.modules())
    assert not any(getattr(m, "binary_input", False) for m in model.modules())


def test_all_blocks_run():
    """The seed's forward skipped the last block; every block must take part."""
    model = create_model("bvit", **{**TINY, "depth": 4})
    seen = _capture(model, torch.randn(2, 1, 8, 8))
    assert all(f"blocks.{i}" in seen for i in range(4))


def test_state_dict_keys_are_timms():
    from timm.models.vision_transformer import VisionTransformer

    ours = create_model("bvit", **TINY).state_dict()
    timm_model = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                                   num_heads=4)
    assert list(ours) == list(timm_model.state_dict())
    timm_model.load_state_dict(ours)


def test_new_variant_from_patterns_only():
    model = create_model("vit", binary_weights=["blocks.*.attn.qkv", "blocks.*.attn.proj"],
                         binary_inputs=["blocks.*.attn.proj"], **TINY)
    assert isinstance(model.blocks[1].attn.qkv, BinaryLinear)
    assert isinstance(model.blocks[0].attn.proj, BinaryLinear)
    assert not isinstance(model.blocks[0].mlp.fc1, BinaryLinear)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_what_only_the_model_can_check_is_a_clear_error():
    """Sizes that depend on the data, and keys of another family (the config's values are checked by its schema)."""
    with pytest.raises(UserError, match="patch_size 3 does not divide img_size 8"):
        create_model("vit", **{**TINY, "patch_size": 3})
    with pytest.raises(UserError, match="unknown arch keys \\['embed_dim'\\] for net 'bnn'"):
        create_model("bnn", img_size=8, in_chans=1, num_classes=10, embed_dim=3)


def test_mlp_nets():
    torch.manual_seed(0)
    bnn = create_model("bnn", img_size=8, in_chans=1, num_classes=10, hidden=[16, 16])
    dnn = create_model("dnn", img_size=8, in_chans=1, num_classes=10, hidden=[16, 16])
    assert [type(bnn.get_submodule(f"fc{i}")) for i in (1, 2, 3)] == [BinaryLinear] * 3
    assert bnn.fc1.scale == "none"
    assert not any(isinstance(m, BinaryLinear) for m in dnn.modules())
    x = torch.randn(5, 1, 8, 8)
    h = F.batch_norm(F.linear(x.flatten(1), bnn.fc1.weight.sign()) + bnn.fc1.bias, None, None,
                     bnn.bn1.weight, bnn.bn1.bias, training=True)
    h = F.batch_norm(F.linear(h.sign(), bnn.fc2.weight.sign()) + bnn.fc2.bias, None, None,
                     bnn.bn2.weight, bnn.bn2.bias, training=True)
    h = F.batch_norm(F.linear(h.sign(), bnn.fc3.weight.sign()) + bnn.fc3.bias, None, None,
                     bnn.bn3.weight, bnn.bn3.bias, training=True)
    torch.testing.assert_close(bnn(x), h)
    # at test, BatchNorm uses running statistics: a sample's output does not depend on its batch
    bnn.eval()
    torch.testing.assert_close(bnn(x[:1]), bnn(x)[:1])
    transductive = create_model("bnn", img_size=8, in_chans=1, num_classes=10, hidden=[16, 16],
                                transductive_bn=True).eval()
    assert not torch.allclose(transductive(x[:2]), transductive(x)[:2])


def test_every_config_net_is_in_the_registry_and_builds():
    from pathlib import Path

    names = {p.stem for p in (Path(__file__).parents[1] / "conf" / "net").glob("*.yaml")}
    assert names == set(MODELS)
    for name, spec in MODELS.items():
        kw = {"vit": TINY, "mlp": dict(img_size=8, in_chans=1, num_classes=10, hidden=[16]),
              "walk": dict(img_size=8, in_chans=1, num_classes=10, embed_dim=16)}[spec.family]
        model = create_model(name, **kw)
        assert model.net_spec == spec and model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_policy_overrides_replace_the_registry_entry():
    model = create_model("bvit", per_task=["norm"], binary_scale="mean_abs", **TINY)
    assert model.net_spec.per_task == ("norm",) and model.head.scale == "mean_abs"
    assert model.net_spec.binary_weights == MODELS["bvit"].binary_weights


def test_bnn_ln_normalises_each_sample_on_its_own():
    torch.manual_seed(0)
    net = create_model("bnn_ln", img_size=8, in_chans=1, num_classes=10, hidden=[16, 16])
    assert [type(net.get_submodule(f"fc{i}")) for i in (1, 2, 3)] == [BinaryLinear] * 3
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
    x = torch.randn(5, 1, 8, 8)
    h = x.flatten(1)
    for i in (1, 2, 3):
        fc, norm = net.get_submodule(f"fc{i}"), net.get_submodule(f"norm{i}")
        h = F.layer_norm(F.linear(h, fc.weight.sign()) + fc.bias, (fc.out_features,), norm.weight, norm.bias)
        h = h.sign() if i < 3 else h
    torch.testing.assert_close(net(x), h)
    torch.testing.assert_close(net(x[:1]), net(x)[:1])  # in training mode too: no batch statistics
    with pytest.raises(UserError, match="has no BatchNorm"):
        create_model("bnn_ln", img_size=8, in_chans=1, num_classes=10, transductive_bn=True)


def test_vit_without_class_token_or_projection_biases():
    model = create_model("bvit_full", class_token=False, proj_bias=False, qkv_bias=False, **TINY)
    assert model.cls_token is None and model.global_pool == "avg"
    assert model.blocks[0].attn.proj.bias is None and model.blocks[0].mlp.fc1.bias is None
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_vit_with_running_statistics_normalisation():
    torch.manual_seed(0)
    model = create_model("bvit_full", norm="batch", **TINY)
    norms = [model.blocks[0].norm1, model.blocks[0].norm2, model.blocks[1].norm1, model.norm]
    assert all(isinstance(m, TokenBatchNorm) for m in norms)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    tokens = torch.randn(3, 17, 32)
    norm = model.blocks[0].norm1
    out = norm(tokens)  # training: each channel over all 3 * 17 tokens, and the running statistics move
    flat = tokens.reshape(-1, 32)
    expected = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + norm.eps)
    torch.testing.assert_close(out, expected.reshape(3, 17, 32))
    torch.testing.assert_close(norm.running_mean, 0.1 * flat.mean(0))
    model.eval()  # testing: running statistics, so one sample's logits do not depend on its batch
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(model(x[:1]), model(x)[:1])
    assert create_model("bvit_full", norm="batch", norm_affine=False, **TINY).norm.weight is None


def _walk(name, **arch):
    from conftest import config

    net = config(f"net={name}").net
    kw = {k: net[k] for k in ("embed_dim", "depth", "mlp_ratio", "residual", "prenorm", "gelu")}
    return create_model(name, img_size=8, in_chans=1, num_classes=10, **{**kw, **arch})


def test_the_walk_starts_at_bnn_ln_and_changes_one_component_per_step():
    from conftest import config

    torch.manual_seed(0)
    mlp = create_model("bnn_ln", img_size=8, in_chans=1, num_classes=10, hidden=[24, 24]).eval()
    plain = _walk("walk_resid", embed_dim=24, residual=False).eval()  # walk_resid without its residuals
    names = {"fc1": "embed", "norm1": "norm0", "fc2": "blocks.0.fc", "norm2": "blocks.0.norm", "fc3": "head",
             "norm3": "norm"}
    plain.load_state_dict({f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in mlp.state_dict().items()})
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(plain(x), mlp(x))
    nets = {n: config(f"net={n}").net for n in ("walk_resid", "walk_prenorm", "walk_vitwidth", "walk_gelu")}

    def changed(a, b):
        return {k for k in nets[a] if k != "name" and nets[a][k] != nets[b][k]}

    assert changed("walk_resid", "walk_prenorm") == {"prenorm"}
    assert changed("walk_prenorm", "walk_vitwidth") == {"embed_dim", "depth", "mlp_ratio"}
    assert (MODELS["walk_prenorm"].scale, MODELS["walk_vitwidth"].scale) == ("none", "fan_in")
    assert changed("walk_vitwidth", "walk_gelu") == {"gelu"}
    assert nets["walk_resid"].embed_dim == 1024 and nets["walk_resid"].mlp_ratio is None  # bnn_ln's width


def test_a_pre_norm_walk_step_computes_what_a_vit_block_does_without_attention():
    torch.manual_seed(0)
    net = _walk("walk_gelu", embed_dim=16).eval()
    x = torch.randn(3, 1, 8, 8)
    h = net.embed(x.flatten(1))
    for block in net.blocks:
        inner = F.gelu(F.linear(torch.sign(block.norm(h)), torch.sign(block.fc1.weight) / 4, block.fc1.bias))
        h = h + F.linear(torch.sign(inner), torch.sign(block.fc2.weight) / 8, block.fc2.bias)
    expected = F.linear(torch.sign(net.norm(h)), torch.sign(net.head.weight) / 4, net.head.bias)
    torch.testing.assert_close(net(x), expected)
    assert isinstance(net.embed, BinaryLinear) and not net.embed.binary_input  # real pixels in, as a patch embedding
