"""1-D k-means for GHOST's HQ bit search (method.md §3): the fewest bits whose 2**b-level codebook fits a layer.

For each conv layer and b = 2, 3, ..., 8, cluster all weight values into k = 2**b centres; the distortion
d = inertia / n * 1e6 is the scaled mean squared distance to the nearest centre. The layer gets the first b with
d < threshold (8 if none), clipped to [bit_min, bit_max] (``pick_bits``). This module gives the distortions
(``hq_distortions``); the search over a model, with the keep policy, is ``quant.search.hq_plan``.

In 1-D, clusters are runs of the sorted values, so everything works on the sorted unique values, their counts and
prefix sums (float64): a Lloyd step costs O(k log n) (``searchsorted`` for the boundaries, prefix-sum differences for
the means), not O(n k), and all k of a layer run in one batch. When clusters hold only a few values (small layers),
Lloyd stalls in poor local optima (about 2x scikit-learn's k-means++ inertia at k = 256 on 512-weight layers), so
up to ``DP_MAX`` unique values an exact dynamic programme finds the optimal clustering instead; monotone split points
keep it cheap at those sizes, and the small layers of a model go through it together. Deterministic, CPU and NumPy
only (small-array NumPy calls cost a fraction of torch's per-op overhead, which dominates here); no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

__all__ = ("check_search_args", "hq_distortions", "kmeans_1d", "pick_bits")

Values = torch.Tensor | np.ndarray  # any shape; flattened
Prepared = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # unique values, counts, prefix sums S0, S1
DP_MAX = 2048  # exact DP up to this many unique values; Lloyd above (>= 8 values per cluster at k = 256)
DP_BATCH = 16384  # unique values of the layers solved in one DP batch (the split table is 257 x this int32 at k 256)


def _prepare(values: Values) -> Prepared:
    """Sort once: unique values u, counts, and prefix sums S0 (counts), S1 (sums) that every k reuses."""
    if isinstance(values, torch.Tensor):  # sort in float32 where that is exact (2x faster), then work in float64
        values = values.detach().cpu()
        values = (values.float() if values.dtype in (torch.float16, torch.bfloat16, torch.float32) else values.double())
    x = np.asarray(values)
    x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
    if x.size == 0:
        raise ValueError("k-means needs at least one value, got an empty tensor")
    u, cnt = np.unique(x.ravel(), return_counts=True)  # sorted
    if not (np.isfinite(u[0]) and np.isfinite(u[-1])):  # NaN sorts last, +-inf at the ends
        raise ValueError("k-means values must be finite (got NaN or inf)")
    u, cnt = u.astype(np.float64), cnt.astype(np.float64)
    return u, cnt, np.concatenate(([0.0], np.cumsum(cnt))), np.concatenate(([0.0], np.cumsum(cnt * u)))


def _init(u: np.ndarray, s0: np.ndarray, k: int) -> np.ndarray:
    """Start centres at the quantiles of density**(1/3), the asymptotically optimal spacing for squared error.

    The density comes from equal-count bins: a bin of q values and width w holds q**(1/3) * w**(2/3) of it. Plain
    equal-count quantiles crowd the centres into the bulk, and 50 Lloyd steps do not spread them out again (up to
    1.17x scikit-learn's inertia at k = 256 on a trained model's large layers, against 0.97x from this start).
    """
    n = s0[-1]
    p = np.round(np.linspace(0, n - 1, int(min(n - 1, 8 * k)) + 1))  # positions in the sorted (expanded) values
    e = u[np.searchsorted(s0[1:], p, side="right")]
    g = np.concatenate(([0.0], np.cumsum(np.diff(p) ** (1 / 3) * np.diff(e) ** (2 / 3))))
    return np.interp((np.arange(k) + 0.5) / k * g[-1], g, e)


def _lloyd(u: np.ndarray, s0: np.ndarray, s1: np.ndarray, ks: list[int], iters: int, tol: float) -> list[np.ndarray]:
    """Lloyd for several k at once: one concatenated centre vector, boundaries reset at every segment start/end."""
    c = np.concatenate([_init(u, s0, k) for k in ks])
    ends = np.cumsum(ks)
    first, last, nu = ends - np.asarray(ks), ends - 1, len(u)
    for _ in range(iters):
        e = np.searchsorted(u, (c[1:] + c[:-1]) / 2)  # cluster i = u[lo:hi], split at the midpoints of the centres
        lo, hi = np.concatenate(([0], e)), np.concatenate((e, [nu]))
        lo[first], hi[last] = 0, nu
        cnt = s0[hi] - s0[lo]
        new = np.where(cnt > 0, (s1[hi] - s1[lo]) / np.maximum(cnt, 1), c)  # an empty cluster keeps its centre
        shift, c = np.abs(new - c).max(), new
        if shift <= tol:
            break
    return np.split(c, ends[:-1])


def _dp(preps: list[Prepared], kmaxs: list[int]) -> list[np.ndarray]:
    """Exact 1-D k-means for every k <= kmax, for several layers in one row loop; per layer opt[j, i] = start of the
    last of j clusters of u[:i].

    D_j(i) = min_m D_{j-1}(m) + SSE(u[m:i]). The split is monotone (Monge costs): opt_{j-1}(i) <= opt_j(i) <=
    opt_j(i + 1), so row j scans m in [opt_{j-1}(i), i), and where that band is wide it first solves every B-th i
    and then brackets the others between their neighbours. The layers are laid end to end in one index space (the
    bounds stay valid across layers), so NumPy's per-call overhead is paid once per row for all of them. Data are
    centred per layer to keep SSE = S2 - S1**2 / S0 exact.
    """
    size = [len(u) + 1 for u, *_ in preps]
    off = np.cumsum([0, *size])
    s0, s1, s2 = (np.concatenate(a) for a in zip(*[_moments(u, cnt) for u, cnt, *_ in preps]))
    base, top, pos = np.repeat(off[:-1], size), np.repeat(kmaxs, size), np.arange(off[-1]) - np.repeat(off[:-1], size)
    d = s2 - s1**2 / np.maximum(s0, 1)  # row 1
    opt = np.zeros((max(kmaxs) + 1, off[-1]), np.int32)
    opt[1] = base

    def scan(r, lo, hi):  # best split m in [lo, hi] for each end r, flattened into one ragged batch
        n = hi - lo + 1
        start = np.cumsum(n) - n
        m = np.arange(start[-1] + n[-1]) - np.repeat(start - lo, n)
        v = (d - s2)[m] - (np.repeat(s1[r], n) - s1[m]) ** 2 / (np.repeat(s0[r], n) - s0[m])  # SSE - S2[r]
        best = np.minimum.reduceat(v, start)
        arg = np.minimum.reduceat(np.where(v == np.repeat(best, n), m, len(d)), start)  # leftmost argmin
        return best + s2[r], arg

    for j in range(2, len(opt)):
        r = np.flatnonzero((pos >= j) & (top >= j))
        lo, hi = np.maximum(opt[j - 1, r], base[r] + j - 1), r - 1
        band = (hi - lo).mean()
        if band > 16:
            b = int(band**0.5)
            c = np.minimum(np.arange(0, len(r) + b - 1, b), len(r) - 1)
            g = np.arange(len(r)) // b
            oc = scan(r[c], lo[c], hi[c])[1]
            lo, hi = np.maximum(lo, oc[g]), np.minimum(hi, oc[np.minimum(g + 1, len(c) - 1)])
            hi = np.maximum(hi, lo)  # guard against float ties breaking monotonicity
        d[r], opt[j, r] = scan(r, lo, hi)
    return [opt[: k + 1, a:b] - a for k, a, b in zip(kmaxs, off[:-1], off[1:])]


def _moments(u: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prefix sums of counts, values and squares, about the mean so that small clusters' SSE keeps its digits."""
    w = u - (cnt * u).sum() / cnt.sum()
    return tuple(np.concatenate(([0.0], np.cumsum(cnt * w**p))) for p in (0, 1, 2))


def _solve(preps: list[Prepared], ks: list[int], iters: int = 50, tol: float = 0.0) -> list[list[tuple]]:
    """(sorted centres, exact inertia) for each layer and each k.

    The method depends only on the number of unique values (exact DP up to ``DP_MAX``, batched Lloyd above), so the
    result at one k does not depend on which other k or layers are solved with it: ``distortion``, ``choose_bits``
    and ``hq_distortions`` agree.
    """
    out = [{} for _ in preps]
    dp = [i for i, (u, *_) in enumerate(preps) if min(ks) < len(u) <= DP_MAX]
    if dp:
        kmaxs = [max(k for k in ks if k < len(preps[i][0])) for i in dp]
        for i, opt in zip(dp, _dp([preps[i] for i in dp], kmaxs)):
            u, _, s0, s1 = preps[i]
            for k in {k for k in ks if k < len(u)}:  # walk the splits back from the end
                cuts = [len(u)]
                for j in range(k, 0, -1):
                    cuts.append(opt[j, cuts[-1]])
                lo, hi = np.array(cuts[:0:-1]), np.array(cuts[-2::-1])
                out[i][k] = (s1[hi] - s1[lo]) / (s0[hi] - s0[lo])
    for i, (u, _, s0, s1) in enumerate(preps):
        if todo := sorted({k for k in ks if k < len(u)} - out[i].keys()):
            out[i].update(zip(todo, _lloyd(u, s0, s1, todo, iters, tol)))
    res = []
    for (u, cnt, *_), found in zip(preps, out):
        cs = [found.get(k, u) for k in ks]  # k >= n_unique: every value is a centre
        # nearest centre for every value (sorted: split at the midpoints), exact inertia in float64
        res.append([(c, float((cnt * (u - c[np.searchsorted((c[1:] + c[:-1]) / 2, u)]) ** 2).sum())) for c in cs])
    return res


def kmeans_1d(values: Values, k: int, iters: int = 50, tol: float = 0.0) -> tuple[torch.Tensor, float]:
    """Cluster scalar values into k centres; returns (sorted float64 centres, inertia = sum of squared distances).

    Fewer than k centres come back when there are fewer than k unique values (then every value is a centre, inertia
    0). ``iters``/``tol`` bound the Lloyd steps (stop when no centre moves more than ``tol``); the exact DP used when
    clusters are small ignores them.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    c, inertia = _solve([_prepare(values)], [int(k)], iters, tol)[0][0]
    return torch.from_numpy(c.copy()), inertia


def _table(weights: dict[str, Values], bits: Iterable[int], iters: int = 50, tol: float = 0.0,
           progress: bool = False) -> dict[str, dict[int, float]]:
    """Distortion of every layer at every width; each layer is sorted ONCE and all its k are solved in one batch.

    Small layers wait and go through the DP together, ``DP_BATCH`` unique values at a time.
    """
    bits = list(bits)
    if not bits or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 0 for b in bits):
        raise ValueError(f"bits must be non-negative integers, got {bits}")
    ks, out, wait = [2**b for b in bits], {}, {}

    def solve(layers: dict[str, Prepared]) -> None:
        for (name, p), res in zip(layers.items(), _solve(list(layers.values()), ks, iters, tol)):
            out[name] = {b: inertia / p[2][-1] * 1e6 for b, (_, inertia) in zip(bits, res)}

    items = weights.items()
    if progress:
        from ultralytics.utils import TQDM

        items = TQDM(items, desc="HQ bit search", total=len(weights))
    for name, w in items:
        p = _prepare(w)
        if len(p[0]) > DP_MAX:
            solve({name: p})
            continue
        wait[name] = p
        if sum(len(q[0]) for q in wait.values()) >= DP_BATCH:
            solve(wait)
            wait = {}
    solve(wait)
    return {name: out[name] for name in weights}


def check_search_args(threshold: float, bit_min: int, bit_max: int) -> None:
    """Reject options that would make the search meaningless, naming the offending option."""
    try:
        ok = float(threshold) > 0  # False for NaN
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"hq_threshold must be > 0, got {threshold}")
    for name, v in (("bit_min", bit_min), ("bit_max", bit_max)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 2 <= v <= 8:
            raise ValueError(f"{name} must be an integer 2..8, got {v!r}")
    if bit_min > bit_max:
        raise ValueError(f"bit_min={bit_min} is larger than bit_max={bit_max}")


def pick_bits(d: dict[int, float], threshold: float, bit_min: int, bit_max: int) -> int:
    """First b with d < threshold (8 if none), clipped to [bit_min, bit_max]."""
    b = next((b for b in sorted(d) if d[b] < threshold), 8)
    return min(max(b, bit_min), bit_max)


def hq_distortions(weights: dict[str, Values], bits: Iterable[int] = range(2, 9),
                   progress: bool = False) -> dict[str, dict[int, float]]:
    """Distortion d at every width in ``bits`` for every layer (the table shown to users, and the benchmark)."""
    return _table(weights, bits, progress=progress)
