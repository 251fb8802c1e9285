"""Tests for the 1-D k-means behind the HQ bit search: known cluster structure, exactness against brute force and a
naive Lloyd, edge cases (few unique values, constants, bad input), bit clipping, option validation and determinism.

Widths are chosen through the production search (``QuantRecipe(bits=hq).widths``, i.e. ``quant.search.hq_plan``) on a
model of 1x1 convs holding the test values, with the keep-first/keep-head policy off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ghost_yolo.quant import QuantRecipe
from ghost_yolo.quant.kmeans import DP_MAX, hq_distortions, kmeans_1d


# The production search on given values ---------------------------------------------------------------------------------
def hq_search(weights: dict[str, torch.Tensor], threshold: float = 0.1, bit_min: int = 2, bit_max: int = 8,
              progress: bool = False) -> dict[str, int]:
    """``{layer: bits}`` from ``QuantRecipe(bits=hq).widths`` on a model whose 1x1 convs hold ``weights`` (in order)."""
    model = nn.ModuleDict()
    for name, w in weights.items():
        conv = nn.Conv2d(1, w.numel(), 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.as_tensor(w).reshape(-1, 1, 1, 1))
        model[name] = conv
    recipe = QuantRecipe.from_args(bits="hq", hq_threshold=threshold, bit_min=bit_min, bit_max=bit_max,
                                   keep_first=False, keep_head=False)
    return recipe.widths(model, progress=progress)[0]


def choose_bits(values: torch.Tensor, **kwargs) -> int:
    """The production search's width for one layer holding ``values``."""
    return hq_search({"w": values}, **kwargs)["w"]


def distortion(values: torch.Tensor, bits: int) -> float:
    """HQ distortion of ``values`` at one width."""
    return hq_distortions({"w": values}, [bits])["w"][bits]


# Naive references -----------------------------------------------------------------------------------------------------
def optimal_inertia(x: np.ndarray, k: int) -> float:
    """Exact optimum by the textbook O(k n^2) dynamic programme over all split points of the sorted values."""
    x = np.sort(x.astype(np.float64))
    n = len(x)
    sse = np.full((n + 1, n + 1), np.inf)  # sse[m, i] = squared error of x[m:i] around its mean
    for m in range(n):
        for i in range(m + 1, n + 1):
            sse[m, i] = ((x[m:i] - x[m:i].mean()) ** 2).sum()
    d = sse[0].copy()
    for _ in range(k - 1):
        d = np.minimum(d, (d[:, None] + sse).min(0))  # allowing fewer clusters changes nothing for k <= n_unique
    return float(d[n])


def naive_lloyd(x: np.ndarray, k: int, inits: int = 5, iters: int = 100) -> float:
    """Best inertia of a few plain O(n k) Lloyd runs started from random data points (a multi-init reference)."""
    rng, best = np.random.default_rng(0), np.inf
    for _ in range(inits):
        c = rng.choice(np.unique(x), k, replace=False)
        for _ in range(iters):
            a = np.abs(x[:, None] - c[None]).argmin(1)
            c = np.array([x[a == j].mean() if (a == j).any() else c[j] for j in range(k)])
        best = min(best, float(((x - c[np.abs(x[:, None] - c[None]).argmin(1)]) ** 2).sum()))
    return best


def clusters(centres, n_per: int = 500, std: float = 1e-4, seed: int = 0) -> torch.Tensor:
    """Values drawn tightly around the given centres (shuffled, as a 4-D conv weight)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(centres).repeat_interleave(n_per) + std * torch.randn(len(centres) * n_per, generator=g)
    return x[torch.randperm(len(x), generator=g)].reshape(-1, 4, 1, 1)


# Known structure ------------------------------------------------------------------------------------------------------
def test_known_clusters_choose_their_bits():
    """4 tight clusters need 2 bits, 16 need 4 (d = noise variance * 1e6 = 0.01 once every cluster has a centre)."""
    four = clusters([-0.3, -0.1, 0.1, 0.3])
    sixteen = clusters(np.linspace(-0.5, 0.5, 16).tolist(), n_per=200)
    assert choose_bits(four, threshold=0.1) == 2
    assert choose_bits(sixteen, threshold=0.1) == 4
    d = hq_distortions({"four": four, "sixteen": sixteen})
    assert d["four"][2] == pytest.approx(0.01, rel=0.1)
    assert d["sixteen"][3] > 100 and d["sixteen"][4] == pytest.approx(0.01, rel=0.1)
    c, _ = kmeans_1d(four, 4)
    assert torch.allclose(c, torch.tensor([-0.3, -0.1, 0.1, 0.3], dtype=torch.float64), atol=1e-4)


def test_threshold_is_strict():
    """A width qualifies only when its distortion is strictly below the threshold."""
    x = clusters([-0.3, -0.1, 0.1, 0.3], std=1e-2)
    d2 = distortion(x, 2)
    assert choose_bits(x, threshold=float(np.nextafter(d2, np.inf))) == 2
    assert choose_bits(x, threshold=d2) > 2


def test_hq_search_order_and_distortion_table():
    """Per-layer bits in the input order; the table holds every width, and one width alone gives the same number."""
    w = {"b": clusters(np.linspace(-1, 1, 8).tolist(), n_per=300), "a": clusters([0.0, 1.0])}
    bits = hq_search(w, threshold=0.1)
    assert list(bits) == ["b", "a"] and bits == {"b": 3, "a": 2}
    assert hq_search(w, threshold=0.1, progress=True) == bits
    table = hq_distortions(w)
    assert list(table["b"]) == list(range(2, 9))
    for name, b in (("b", 2), ("b", 5), ("a", 3)):
        assert distortion(w[name], b) == table[name][b]


# Exactness ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_and_naive_lloyd(seed):
    """Never below the optimum; equal to it on small inputs (exact DP); within 5% of a multi-init naive Lloyd on
    inputs larger than DP_MAX unique values (batched Lloyd)."""
    rng = np.random.default_rng(seed)
    x = [rng.normal(size=60), rng.standard_t(2, size=60), rng.integers(0, 20, 80) / 7.0, rng.laplace(size=90)][seed]
    for k in (2, 3, 5, 8, 16):
        best = optimal_inertia(x, k)
        _, inertia = kmeans_1d(x, k)
        assert inertia == pytest.approx(best, rel=1e-9, abs=1e-12)
    big = rng.normal(size=DP_MAX + 500) * rng.choice([0.05, 1.0], DP_MAX + 500)  # a heavy-tailed mixture
    for k in (4, 16):
        _, inertia = kmeans_1d(big, k)
        assert inertia <= 1.05 * naive_lloyd(big, k)


def test_small_layers_batched_like_alone(monkeypatch):
    """Small layers share one DP batch (or several, DP_BATCH unique values each) and get what they get alone."""
    g = torch.Generator().manual_seed(2)
    w = {f"l{n}": torch.randn(n, generator=g) ** 3 for n in (40, 300, 700, 1500)}
    w["big"] = torch.randn(DP_MAX + 100, generator=g)
    alone = {n: hq_distortions({n: v})[n] for n, v in w.items()}
    for batch in (16384, 1000, 1):
        monkeypatch.setattr("ghost_yolo.quant.kmeans.DP_BATCH", batch)
        together = hq_distortions(w)
        assert list(together) == list(w)
        for n in w:
            assert together[n] == pytest.approx(alone[n], rel=1e-12, abs=1e-15)


def test_inertia_is_exact_for_the_returned_centres():
    """The inertia is the float64 sum of squared distances from every value to its nearest returned centre."""
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1)).half()  # fp16, many repeated values
    for k in (4, 64):
        c, inertia = kmeans_1d(x, k)
        assert len(c) == k and torch.all(c[1:] > c[:-1])
        ref = ((x.double()[:, None] - c[None]) ** 2).min(1).values.sum().item()
        assert inertia == pytest.approx(ref, rel=1e-12)


# Edge cases -----------------------------------------------------------------------------------------------------------
def test_few_unique_values_give_zero_inertia():
    """k >= unique values: every value is a centre, inertia exactly 0 (scikit-learn would refuse k > n)."""
    x = torch.tensor([0.5, -0.25, 0.5, 0.125, -0.25, 0.5])
    for k in (3, 4, 256):
        c, inertia = kmeans_1d(x, k)
        assert inertia == 0.0 and c.tolist() == [-0.25, 0.125, 0.5]
    assert choose_bits(x) == 2 and distortion(x, 8) == 0.0
    _, inertia = kmeans_1d(x, 2)
    assert inertia > 0


def test_constant_tensor():
    """One unique value: one centre, zero distortion at every width, bit_min chosen."""
    x = torch.full((3, 3, 3, 3), 0.7)
    c, inertia = kmeans_1d(x, 16)
    assert inertia == 0.0 and c.tolist() == [pytest.approx(0.7)]
    assert choose_bits(x) == 2 and choose_bits(x, bit_min=5) == 5
    assert hq_distortions({"c": x})["c"] == dict.fromkeys(range(2, 9), 0.0)


def test_bad_values_raise():
    """Empty, NaN and inf inputs and a bad k are rejected with a clear message."""
    with pytest.raises(ValueError, match="at least one value"):
        kmeans_1d(torch.empty(0), 4)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            kmeans_1d(torch.tensor([0.0, bad, 1.0]), 2)
    for k in (0, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            kmeans_1d(torch.randn(10), k)


# Options --------------------------------------------------------------------------------------------------------------
def test_bit_min_bit_max_clipping():
    """The natural choice is clipped into [bit_min, bit_max]; nothing reaching the threshold gives bit_max."""
    four = clusters([-0.3, -0.1, 0.1, 0.3])
    wide = torch.rand(4096, generator=torch.Generator().manual_seed(0))  # uniform on [0, 1): needs far more than 8 bits
    assert choose_bits(four) == 2 and choose_bits(four, bit_min=3) == 3
    assert choose_bits(wide) == 8 and choose_bits(wide, bit_max=5) == 5
    assert choose_bits(wide, threshold=1e9, bit_min=4) == 4
    assert hq_search({"four": four, "wide": wide}, bit_min=3, bit_max=6) == {"four": 3, "wide": 6}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 0}, "hq_threshold must be > 0, got 0"),
        ({"threshold": -0.5}, "hq_threshold must be > 0, got -0.5"),
        ({"threshold": float("nan")}, "hq_threshold must be > 0, got nan"),
        ({"bit_min": 1}, "bit_min must be an integer 2..8, got 1"),
        ({"bit_max": 9}, "bit_max must be an integer 2..8, got 9"),
        ({"bit_min": 2.5}, "bit_min must be an integer 2..8, got 2.5"),
        ({"bit_min": 6, "bit_max": 4}, "bit_min=6 is larger than bit_max=4"),
    ],
)
def test_bad_options_raise(kwargs, match):
    """Bad search options fail fast, naming the option, when the run's recipe is read (before any training)."""
    with pytest.raises(ValueError, match=match):
        choose_bits(torch.randn(64), **kwargs)


def test_deterministic_and_input_agnostic():
    """Same weights, same answers: repeated calls, numpy vs torch, any shape or dtype of the same values."""
    g = torch.Generator().manual_seed(3)
    w = {"small": torch.randn(16, 8, 3, 3, generator=g), "big": 0.02 * torch.randn(64, 64, 3, 3, generator=g)}
    d = hq_distortions(w)
    assert hq_distortions(w) == d and hq_search(w) == hq_search(w)
    assert hq_distortions({n: v.numpy().ravel() for n, v in w.items()}) == d
    assert hq_distortions({n: v.double().reshape(-1, 1) for n, v in w.items()}) == d
