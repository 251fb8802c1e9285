"""Activation annealing (``act_anneal=N``): a ReLU model started from SiLU weights slides from SiLU to ReLU over the
first N float epochs, then trains, validates, checkpoints and exports with its own ReLU."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from conftest import EASY_RECIPE
from torch import nn
from ultralytics.nn.modules import Conv

from ghost_yolo import GhostYOLO
from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.nn.act_blend import ActBlend, blend_activations, set_blend, unblend


def _acts(model: nn.Module) -> list[nn.Module]:
    return [m.act for m in model.modules() if isinstance(m, Conv)]


def test_blend_slides_from_silu_to_the_models_activation():
    """At t=0 the blended ReLU model computes the SiLU model with the same weights, at t=1 the ReLU model, between
    them the linear blend; unblend puts plain ReLUs back and the model computes what it did before."""
    torch.manual_seed(0)
    relu = GhostDetectionModel("ghost-n-relu.yaml", ch=4, nc=8, verbose=False).eval()
    silu = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False).eval()
    silu.load_state_dict(relu.state_dict())
    x = torch.rand(1, 4, 64, 64)
    stem = lambda m: m.model[1](m.model[0](x))  # noqa: E731 (the first two conv blocks)
    with torch.no_grad():
        y_relu, y_silu = relu(x)[0], silu(x)[0]
        assert not torch.allclose(stem(relu), stem(silu), atol=1e-3)  # the two activations differ on these weights
        n = sum(isinstance(a, nn.ReLU) for a in _acts(relu))
        assert blend_activations(relu) == n > 50
        assert all(isinstance(a, (ActBlend, nn.Identity)) for a in _acts(relu))
        set_blend(relu, 0.0)
        torch.testing.assert_close(relu(x)[0], y_silu)
        torch.testing.assert_close(stem(relu), stem(silu))
        set_blend(relu, 7.0)  # clamped to 1
        torch.testing.assert_close(relu(x)[0], y_relu)
        y_stem = stem(relu)
        blend = next(a for a in _acts(relu) if isinstance(a, ActBlend))
        set_blend(relu, 0.25)
        v = torch.linspace(-3, 3, 13)
        torch.testing.assert_close(blend(v), 0.75 * nn.functional.silu(v) + 0.25 * v.clamp(min=0))
        assert unblend(relu) == n and not any(isinstance(a, ActBlend) for a in _acts(relu))
        assert sum(type(a) is nn.ReLU for a in _acts(relu)) == n
        torch.testing.assert_close(relu(x)[0], y_relu)
        torch.testing.assert_close(stem(relu), y_stem)
    assert blend_activations(silu) == 0  # SiLU already: nothing to slide from


def test_act_anneal_trains_from_silu_weights_and_ends_as_relu(trained, easy_yaml, tmp_path):
    """A float run with act_anneal=1 from the SiLU fixture's weights: the blend rises through the first epoch (model
    and EMA), the second epoch trains plain ReLU, and best.pt (chosen after the annealing) holds ReLU only."""
    seen: list[tuple[int, float | None, float | None]] = []

    def record(trainer):
        first = lambda m: next((a.t for a in _acts(m) if isinstance(a, ActBlend)), None)  # noqa: E731
        seen.append((trainer.epoch, first(trainer.model), first(trainer.ema.ema)))

    model = GhostYOLO("ghost-n-relu.yaml")
    model.add_callback("on_train_batch_end", record)
    model.train(data=str(easy_yaml), pretrained=str(trained / "weights" / "best.pt"), bits=32, epochs=2, act_anneal=1,
                project=str(tmp_path), name="a", plots=False, **EASY_RECIPE)
    first = [t for e, t, _ in seen if e == 0]
    assert first[0] == 0.0 and all(b > a for a, b in zip(first, first[1:])) and first[-1] < 1.0
    assert [t for e, _, t in seen if e == 0] == first  # the EMA validates the same blend
    assert [(t, te) for e, t, te in seen if e == 1] == [(None, None)] * len(first)  # plain ReLU in epoch 2
    ckpt = torch.load(tmp_path / "a" / "weights" / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "a" / "weights" / "last.pt", weights_only=False)["model"].state_dict()
    # best fitness restarted after the annealing: the last epoch, the only one after it, is the best
    assert all(torch.equal(v, last[k]) for k, v in ckpt["model"].state_dict().items())
    kinds = {type(m) for m in ckpt["model"].modules()}
    assert ActBlend not in kinds and nn.ReLU in kinds and nn.SiLU not in kinds


@pytest.mark.parametrize(("yaml", "keys", "message"), [
    ("ghost-n-relu.yaml", {"bits": 32, "epochs": 2, "act_anneal": 2}, "act_anneal=2 must be fewer than epochs=2"),
    ("ghost-n-relu.yaml", {"bits": 8, "epochs": 3, "fp_epochs": 1, "act_anneal": 2},
     "act_anneal=2 must be at most fp_epochs=1"),
    ("ghost-n.yaml", {"bits": 32, "epochs": 2, "act_anneal": 1}, "use SiLU already"),
])
def test_act_anneal_refuses_what_it_cannot_do(easy_yaml, tmp_path, yaml, keys, message):
    """Annealing that would not finish before quantization or the run's end, or a SiLU model, is refused by name,
    before any epoch runs."""
    with pytest.raises(ValueError, match=message):
        GhostYOLO(yaml).train(data=str(easy_yaml), project=str(tmp_path), name="x", plots=False, **keys)


def test_patience_is_held_off_while_annealing():
    """Fitness falls while SiLU turns into ReLU: Ultralytics' early stopping must not end the run then (a patience-6
    run stopped after 8 of 30 epochs, mid-way, before this), and both patience and best fitness restart when the
    model's own activations are back."""
    from types import SimpleNamespace

    from ultralytics.utils.torch_utils import EarlyStopping

    from ghost_yolo.engine.phases import advance_act_anneal

    m = GhostDetectionModel("ghost-n-relu.yaml", ch=4, nc=8, verbose=False)
    blend_activations(m)
    tr = SimpleNamespace(args=SimpleNamespace(act_anneal=3), model=m, ema=None, train_loader=[0] * 4,
                         stopper=EarlyStopping(patience=1), best_fitness=0.5)
    for epoch, fitness in enumerate((0.5, 0.3, 0.2)):  # falling for the whole annealing
        tr.epoch = epoch
        advance_act_anneal(tr, "on_train_epoch_start")
        advance_act_anneal(tr, "on_train_batch_start")
        assert next(a for a in _acts(m) if isinstance(a, ActBlend)).t == pytest.approx(epoch / 3)
        assert not tr.stopper(epoch + 1, fitness)
    tr.epoch = 3
    advance_act_anneal(tr, "on_train_epoch_start")
    assert not any(isinstance(a, ActBlend) for a in _acts(m)) and tr.best_fitness is None
    assert not tr.stopper(4, 0.25)  # counts from here: its first epoch is the best so far
    assert tr.stopper(5, 0.24)  # and patience works again after it
