import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaplastic_vit.binarize import (
    BinaryConv2d,
    BinaryLinear,
    binarize_model,
    binary_modules,
    has_binary_input,
    sign_activation,
    sign_weight,
)
from metaplastic_vit.errors import UserError


def test_weight_ste_passes_gradient_unchanged():
    w = torch.tensor([-2.0, -0.5, 0.3, 3.0], requires_grad=True)
    upstream = torch.tensor([1.0, -2.0, 3.0, -4.0])
    out = sign_weight(w)
    assert torch.equal(out, torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    out.backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_activation_ste_clips_gradient_outside_unit_interval():
    x = torch.tensor([-1.5, -1.0, -0.2, 0.7, 1.0, 2.0], requires_grad=True)
    sign_activation(x).backward(torch.full_like(x, 3.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 3.0, 3.0, 3.0, 3.0, 0.0]))


@pytest.mark.parametrize("scale", ["none", "fan_in", "mean_abs"])
def test_binary_linear_uses_sign_of_hidden_weight(scale):
    torch.manual_seed(0)
    layer = BinaryLinear(6, 4, scale=scale)
    x = torch.randn(3, 6)
    expected = F.linear(x, layer.weight.sign())
    if scale == "fan_in":
        expected = expected / 6**0.5
    elif scale == "mean_abs":
        expected = expected * layer.weight.abs().mean(1)
    torch.testing.assert_close(layer(x), expected + layer.bias)
    # the parameter is the hidden weight itself: no .org attribute, no data swapping
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert not hasattr(layer, "org")


def test_binary_conv_uses_sign_of_hidden_weight():
    torch.manual_seed(0)
    layer = BinaryConv2d(2, 3, 3, padding=1, scale="mean_abs")
    x = torch.randn(1, 2, 5, 5)
    alpha = layer.weight.abs().flatten(1).mean(1).view(1, -1, 1, 1)
    expected = F.conv2d(x, layer.weight.sign(), padding=1) * alpha + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_unknown_scale_is_a_clear_error():
    with pytest.raises(UserError, match="unknown binary scale 'bogus'.*none, fan_in, mean_abs"):
        BinaryLinear(2, 2, scale="bogus")


def _net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_binarize_model_converts_in_place_and_keeps_hidden_weights():
    torch.manual_seed(0)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weight = net[2].weight
    out = binarize_model(net, binary_weights=["2"], binary_inputs=["2"])
    assert out is net
    assert isinstance(net[2], BinaryLinear) and type(net[0]) is nn.Linear
    assert net[2].weight is weight  # the same Parameter: an optimizer built before still updates it
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # state dict keys unchanged
    assert has_binary_input(net[2]) and not has_binary_input(net[0])
    assert list(binary_modules(net)) == ["2"]
    x = torch.randn(5, 4)
    hidden = F.relu(net[0](x))
    torch.testing.assert_close(net(x), F.linear(hidden.sign(), weight.sign()) / 8**0.5 + net[2].bias)


def test_binarize_model_pattern_matching_nothing_is_an_error():
    with pytest.raises(UserError, match="binary_weights pattern 'blocks.*.fc9' matches no module"):
        binarize_model(_net(), binary_weights=["blocks.*.fc9"])
    with pytest.raises(UserError, match="binary_inputs pattern 'nope' matches no module"):
        binarize_model(_net(), binary_inputs=["nope"])


def test_binarize_model_refuses_non_linear_weights():
    with pytest.raises(UserError, match="cannot binarize the weights of a ReLU"):
        binarize_model(_net(), binary_weights=["1"])


def test_binarizing_input_twice_applies_sign_once():
    net = _net()
    binarize_model(net, binary_inputs=["2"])
    binarize_model(net, binary_inputs=["2"])
    layer = net[2]  # a Linear binarizes its own input, visibly, without a hook
    assert isinstance(layer, BinaryLinear) and layer.binary_input and not layer.binary_weight
    assert not layer._forward_pre_hooks and "binary_input=True" in repr(layer)
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), F.linear(x.sign(), layer.weight, layer.bias))
    outer = nn.Sequential(_net())
    binarize_model(outer, binary_inputs=["0"])  # any other module gets a forward pre-hook
    binarize_model(outer, binary_inputs=["0"])
    assert len(outer[0]._forward_pre_hooks) == 1


def test_the_activation_ste_keeps_a_one_byte_mask_not_the_input():
    x = torch.randn(5, 3, requires_grad=True)
    (saved,) = sign_activation(x).grad_fn.saved_tensors
    assert saved.element_size() == 1 and torch.equal(saved.bool(), x.detach().abs() <= 1)


def test_per_sample_gradients_through_the_activation_ste_are_exact_and_batched(recwarn):
    # EWC's Fisher takes per-sample gradients with torch.func; no op may fall back to a slow per-sample loop
    x = torch.randn(6, 5) * 1.5
    w = torch.randn(5)

    def loss(w, xi):
        return (sign_activation(xi * w) * torch.arange(5.0)).sum()

    batched = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, x)
    looped = torch.stack([torch.func.grad(loss)(w, xi) for xi in x])
    assert torch.equal(batched, looped) and batched.abs().sum() > 0
    assert not [warning for warning in recwarn if "performance drop" in str(warning.message)]


def test_the_scale_is_folded_into_the_binary_weight():
    torch.manual_seed(0)
    layer = BinaryLinear(16, 4)  # fan_in 16: the scale 1/4 is a power of two, exact either way
    x = torch.randn(3, 16, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, F.linear(x, layer.weight.sign()) / 4 + layer.bias)
    out.sum().backward()
    assert torch.equal(layer.weight.grad, torch.ones(3, 4).t() @ x.detach() / 4)
    assert torch.equal(layer.bias.grad, torch.full((4,), 3.0))  # the bias, added in place, still learns
