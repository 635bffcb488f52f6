"""customgrad.Layer: a formula with learnable parameters as an nn.Module.

Reference: the same activation written in eager torch ops (`EagerSwish`, also the benchmark's
baseline), differentiated by ordinary autograd in float64.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import customgrad
from customgrad import Layer, UsageError
from reference import assert_matches_reference

SWISH = "x*sigmoid(b*x)"


class EagerSwish(torch.nn.Module):
    """x * sigmoid(b x) in torch ops, with a learnable ``b`` of ``shape``: what a user would write by hand."""

    def __init__(self, shape, dtype=None):
        super().__init__()
        self.b = torch.nn.Parameter(torch.ones(shape, dtype=dtype))

    def forward(self, x):
        return x * torch.sigmoid(self.b * x)


def swish_pair(shape, x_shape, seed=0, backend="auto"):
    """A Layer and its eager twin with the same random ``b``, and an input of ``x_shape`` (float64)."""
    generator = torch.Generator().manual_seed(seed)
    b = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
    layer = Layer(SWISH, params={"b": shape}, init={"b": b}, backend=backend, dtype=torch.float64)
    eager = EagerSwish(shape, dtype=torch.float64)
    with torch.no_grad():
        eager.b.copy_(b)
    x = (3 * torch.randn(x_shape, generator=generator, dtype=torch.float64)).requires_grad_()
    return layer, eager, x


def assert_same_as_eager(layer, eager, x, what, rtol=1e-12):
    got = layer(x)
    got_x, got_b = torch.autograd.grad(got.square().sum(), [x, layer.b])
    want = eager(x)
    want_x, want_b = torch.autograd.grad(want.square().sum(), [x, eager.b])
    assert_matches_reference(got, want, rtol=rtol, atol=1e-300, what=f"{what} value")
    assert_matches_reference(got_x, want_x, rtol=rtol, atol=1e-14, what=f"{what} d/dx")
    # b's gradient is a sum over the batch: relative to the sum of its terms' magnitudes (it may cancel)
    b_full = eager.b.detach().expand(x.shape).clone().requires_grad_()
    terms = torch.autograd.grad((x.detach() * torch.sigmoid(b_full * x.detach())).square().sum(), b_full)[0]
    scale = float(terms.abs().sum_to_size(eager.b.shape).max())
    assert_matches_reference(got_b, want_b, rtol=rtol, atol=rtol * scale, what=f"{what} d/db")


@pytest.mark.parametrize(
    ("shape", "x_shape", "backend"),
    [
        ((300,), (64, 300), "auto"),  # 19200 elements: the fused cpu kernel, b's gradient summed in its loop
        ((300,), (64, 300), "eager"),
        ((5, 1, 1), (2, 5, 3, 4), "auto"),  # one b per channel of NCHW
        ((), (7,), "auto"),  # one number
    ],
    ids=["per-feature-fused", "per-feature-eager", "per-channel", "scalar"],
)
def test_values_and_gradients_match_the_eager_activation(shape, x_shape, backend):
    layer, eager, x = swish_pair(shape, x_shape, backend=backend)
    assert_same_as_eager(layer, eager, x, f"b{shape} on x{x_shape}")


@pytest.mark.gpu
def test_cuda_layer_runs_triton_and_matches_the_eager_activation():
    layer, eager, x = swish_pair((300,), (64, 300))
    x = x.detach().cuda().requires_grad_()
    assert_same_as_eager(layer.cuda(), eager.cuda(), x, "cuda", rtol=1e-10)


def test_several_inputs_in_a_chosen_order_and_initializers():
    layer = Layer(
        "a*exp(-(t - m)**2/(2*s**2)) + c*u",
        params={"a": 3, "m": 3, "s": (), "c": 1},
        init={"a": torch.tensor([1.0, 2.0, 3.0]), "m": torch.nn.init.zeros_, "s": 0.5},
        inputs=["u", "t"],
        dtype=torch.float64,
    )
    assert layer.input_names == ("u", "t")
    u = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(2, 3)
    t = torch.linspace(0, 2, 6, dtype=torch.float64).reshape(2, 3)
    want = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) * torch.exp(-(t**2) / 0.5) + u
    assert_matches_reference(layer(u, t), want, rtol=1e-14, what="gaussian layer")
    assert {name: tuple(p.shape) for name, p in layer.named_parameters()} == {
        "a": (3,),
        "m": (3,),
        "s": (),
        "c": (1,),
    }


def test_repr_shows_the_formula_and_the_parameter_shapes():
    layer = Layer(SWISH, params={"b": (4, 1)})
    assert repr(layer) == "Layer('x*sigmoid(b*x)', params {b: (4, 1)}, inputs (x))"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"params": {"c": 3}}, "'c', which formula 'x\\*sigmoid\\(b\\*x\\)' does not use"),
        ({"params": {"b": 3, "x": 3}}, "every name .* is a parameter"),
        ({"params": {"b": -1}}, "params\\['b'\\] must be a shape"),
        ({"params": {"b": 3}, "init": {"q": 1.0}}, "init names 'q'"),
        ({"params": {"b": 3}, "init": torch.ones(2)}, "does not broadcast to the parameter's"),
        ({"params": {"b": 3}, "inputs": ["y"]}, "inputs must order"),
        ({"params": []}, "params must be a dict"),
    ],
)
def test_wrong_arguments_are_refused_with_the_fix(arguments, message):
    with pytest.raises(UsageError, match=message):
        Layer(SWISH, **arguments)


def test_a_parameter_named_like_a_module_attribute_is_refused():
    with pytest.raises(UsageError, match="'training' is taken by an attribute"):
        Layer("x*training", params={"training": 3})


def test_calling_with_the_wrong_number_of_inputs_names_them():
    with pytest.raises(UsageError, match=r"takes 1 input \(x\), got 2"):
        Layer(SWISH, params={"b": 3})(torch.ones(3), torch.ones(3))


def test_torch_save_and_deepcopy_keep_the_layer():
    layer, eager, x = swish_pair((6,), (4, 6), seed=2)
    buffer = io.BytesIO()
    torch.save(torch.nn.Sequential(layer), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)[0]
    assert_same_as_eager(loaded, eager, x, "torch.load")
    assert_same_as_eager(copy.deepcopy(layer), eager, x, "deepcopy")
    state = Layer(SWISH, params={"b": 6}, dtype=torch.float64)
    state.load_state_dict(layer.state_dict())  # the usual way: parameters only
    assert_same_as_eager(state, eager, x, "state_dict")


@pytest.mark.slow
def test_compiles_with_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    layer, eager, x = swish_pair((6,), (4, 6), seed=3)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert_same_as_eager(compiled, eager, x, "compiled")


def readme_training(activation, steps):
    """The README's example: a small regression model with a learnable activation, trained by Adam."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), activation, torch.nn.Linear(16, 1)).double()
    x = torch.randn(256, 4, dtype=torch.float64)
    y = torch.sin(x).sum(1, keepdim=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses


def test_training_follows_the_eager_activation_step_for_step():
    layer_model, layer_losses = readme_training(customgrad.Layer(SWISH, params={"b": 16}), 30)
    eager_model, eager_losses = readme_training(EagerSwish(16), 30)
    assert layer_losses[-1] < 0.5 * layer_losses[0]
    assert_matches_reference(torch.tensor(layer_losses), torch.tensor(eager_losses), rtol=1e-10, what="losses")
    assert_matches_reference(layer_model[1].b, eager_model[1].b, rtol=1e-9, what="trained b")
