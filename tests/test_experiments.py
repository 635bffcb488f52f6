"""The blog and tutorial experiments against independent eager-autograd loops (no custom Function)."""

import dataclasses
import math

import pytest
import torch

from customgrad.errors import UsageError
from customgrad.experiments import EXPERIMENTS, explain_blog_fit, get_experiment, run_experiment
from customgrad.library import P2Handwritten
from reference import assert_matches_reference


def eager_blog_losses(seed: int, steps: int, learning_rate: float) -> list[float]:
    """The blog's program, fixed, with P2 written in plain torch ops."""
    x = torch.linspace(-math.pi, math.pi, 2000, dtype=torch.float32)
    y = torch.tan(x)
    torch.manual_seed(seed)
    a, b, c, d = (torch.randn((), dtype=torch.float32, requires_grad=True) for _ in range(4))
    losses = []
    for _ in range(steps):
        u = c * x + d
        loss = (a + b * (u**2 + 2 * u) - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            for p in (a, b, c, d):
                p -= learning_rate * p.grad
                p.grad = None
    return losses


def test_blog_run_matches_an_independent_eager_loop():
    run = run_experiment(EXPERIMENTS["blog"], seed=0)
    expected = eager_blog_losses(seed=0, steps=2000, learning_rate=1e-6)
    assert len(run.losses) == 2000
    assert [t for t, _ in run.logged] == list(range(99, 2000, 100))
    assert_matches_reference(torch.tensor(run.losses), torch.tensor(expected), rtol=1e-5, what="loss history")
    # the numbers the issue measured independently with seed 0
    assert abs(run.logged[0][1] - 3994944) < 2
    assert abs(run.logged[-1][1] - 3993725) < 2


def test_blog_run_with_the_handwritten_p2_gives_the_same_trajectory():
    generated = run_experiment(EXPERIMENTS["blog"], seed=3, steps=300)
    experiment = EXPERIMENTS["blog"]
    handwritten_model = lambda p, x: p["a"] + p["b"] * P2Handwritten.apply(p["c"] * x + p["d"])  # noqa: E731
    handwritten = run_experiment(dataclasses.replace(experiment, model=handwritten_model), seed=3, steps=300)
    assert_matches_reference(
        torch.tensor(generated.losses),
        torch.tensor(handwritten.losses),
        rtol=1e-6,
        what="loss history, generated vs hand-written P2",
    )


def test_tutorial_run_reaches_the_tutorial_loss():
    run = run_experiment(EXPERIMENTS["tutorial"])
    x = torch.linspace(-math.pi, math.pi, 2000)
    a, b, c, d = (torch.tensor(v, requires_grad=True) for v in (0.0, -1.0, 0.0, 0.3))
    for _ in range(2000):
        u = c + d * x
        loss = (a + b * 0.5 * (5 * u**3 - 3 * u) - torch.sin(x)).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            for p in (a, b, c, d):
                p -= 5e-6 * p.grad
                p.grad = None
    assert_matches_reference(torch.tensor(run.losses[-1]), loss.detach(), rtol=1e-4, what="final loss")
    assert 8.9 < run.losses[-1] < 9.0


def test_explanation_states_the_pole_share_computed_from_the_data():
    x, y = EXPERIMENTS["blog"].data()
    text = explain_blog_fit(x, y)
    share = float((y.double().abs().topk(2).values ** 2).sum() / (y.double() ** 2).sum())
    assert f"{100 * share:.0f}%" in text and "81%" in text
    assert "1.5700105" in text and "1272.6" in text


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": -1}, "steps"),
        ({"learning_rate": float("nan")}, "learning rate"),
        ({"learning_rate": -1.0}, "learning rate"),
    ],
)
def test_bad_settings_are_rejected_with_the_setting_named(options, fragment):
    with pytest.raises(UsageError, match=fragment):
        run_experiment(EXPERIMENTS["blog"], **options)


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(UsageError, match="blog, tutorial"):
        get_experiment("nope")
