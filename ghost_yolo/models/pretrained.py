"""Seed a model's first layer from pretrained weights made for other input bands (RGB weights into RGB+IR or IR models).

Ultralytics' ``load`` copies every tensor of matching shape; a first conv with more inputs gets the colour filters and
keeps random IR filters, and a dual-stream stem gets nothing. Here the first layer is seeded by a *band mixing*: the
target's filter for band ``t`` is ``sum_s M[s, t] * W_s`` over the source's filters ``W_s``, where

- a band both have is copied (``M[s, t] = 1``), a band the source lacks gets the mean of the source's filters
  (``1 / S`` from each), a source band the target lacks is spread evenly over the target's bands (``1 / T`` to each);
- every row of ``M`` is then scaled to sum to 1, so on a *grey* input (every band equal, ``x_t = g``) the target
  computes ``sum_t V_t g = sum_s W_s (sum_t M[s, t]) g = sum_s W_s g``: the pretrained stem's response, exactly.

For colour weights (R, G, B) into an R, G, B, IR model, the colour filters are copied and IR gets their mean: the column
sums are 4/3 per source band, so every filter is scaled by 3/4, ``V_c = 3/4 W_c``, ``V_IR = 3/4 mean_c(W_c)``. Into an
IR-only model ``V_IR = sum_c W_c`` (Ultralytics' own rule for a 1-channel model).

A dual-stream stem (``DualStreamStem``) is seeded branch by branch from one pretrained conv: the colour stem takes the
first filters, the IR stem the rest (with their BatchNorm), each mixed to the bands it sees, so the concatenated streams
are the pretrained stem's output channels in the pretrained order, which the next (pretrained) layer expects. The
streams' attention masks start uniform (``x * 1.5``, the stem filters divided by 1.5) and the SE gate at 0.5 (the next
conv's filters doubled when it is pretrained), so the seeded stem and the next layer reproduce the pretrained ones on a
grey input.

A mid-fusion model (branches starting with a ``BandConv``) is seeded layer by layer (``seed_branches``): each branch
from the pretrained backbone's first layers (its first conv mixed to the branch's bands as above, so the IR branch's
first filters are the sum of the colour ones; a thinner branch takes the leading channels of every tensor, a start
point rather than the pretrained response), and the layers after the branches from the pretrained ones that follow its
backbone, in order. The fusion convs read the branches' concatenation, colour first: they get the pretrained filters
for the colour channels and zero for the IR ones, so the seeded model computes exactly what the pretrained model does
on the colour bands, and training lets the IR branch in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ghost_yolo.nn.fusion import BandConv, DualStreamStem

__all__ = ("BANDS", "band_mixing", "describe_mixing", "mid_branches", "seed_branches", "seed_first_layer")

BANDS: dict[int, tuple[str, ...]] = {4: ("R", "G", "B", "IR"), 3: ("R", "G", "B"), 1: ("IR",)}  # ghost's channel order
ATTENTION_GAIN = 1.5  # ModalityAttention with a zero mask: x + x * sigmoid(0)
SE_GAIN = 0.5  # SqueezeExcite with a zero excitation: x * sigmoid(0)


def band_mixing(src: Sequence[str], dst: Sequence[str]) -> torch.Tensor:
    """``S x T`` matrix taking source filters to target filters; rows sum to 1 (a grey input keeps its response)."""
    m = torch.zeros(len(src), len(dst))
    for t, band in enumerate(dst):
        if band in src:
            m[src.index(band), t] = 1.0
        else:  # a band the source never saw: the mean of its filters
            m[:, t] = 1.0 / len(src)
    for s, band in enumerate(src):
        if band not in dst:  # a band the target does not have: spread over the target's bands
            m[s] += 1.0 / len(dst)
    return m / m.sum(1, keepdim=True)


def describe_mixing(m: torch.Tensor, src: Sequence[str], dst: Sequence[str]) -> str:
    """Short words for a mixing: ``R,G,B copied x0.75, IR = 0.75 x mean(R,G,B)``."""
    copies, rest = {}, []
    for t, band in enumerate(dst):
        col = m[:, t]
        nz = col.nonzero().flatten().tolist()
        if len(nz) == 1 and src[nz[0]] == band:
            copies.setdefault(round(float(col[nz[0]]), 4), []).append(band)
        elif len(nz) == len(src) > 1 and torch.allclose(col, col[0].expand_as(col)):
            rest.append(f"{band} = {float(col[0]) * len(src):.3g} x mean({','.join(src)})")
        elif len(nz) == 1:
            rest.append(f"{band} = {float(col[nz[0]]):.3g} x {src[nz[0]]}")
        else:
            rest.append(f"{band} = " + " + ".join(f"{float(col[s]):.3g} x {src[s]}" for s in nz))
    words = [f"{','.join(b)} copied" + (f" x{c:.3g}" if c != 1 else "") for c, b in copies.items()]
    return ", ".join(words + rest)


def _first_conv(module: nn.Module) -> tuple[nn.Conv2d, nn.Module | None] | None:
    """The conv (and its BatchNorm) of a plain first layer, None for other blocks."""
    conv = getattr(module, "conv", None)
    return (conv, getattr(module, "bn", None)) if isinstance(conv, nn.Conv2d) else None


@torch.no_grad()
def _load_bn(bn: nn.Module | None, src_bn: nn.Module | None, rows: slice) -> None:
    """Copy rows of a BatchNorm's parameters and statistics (both sets of a switchable BatchNorm)."""
    if bn is None or src_bn is None:
        return
    bn.load_state_dict({k: v[rows] if v.ndim else v for k, v in src_bn.state_dict().items()}, strict=False)
    if hasattr(bn, "sync_float"):
        bn.sync_float()


def _only_reader_of_stem(model: nn.Module) -> bool:
    """Whether layer 1 is the only layer that reads the stem's output (so scaling its filters compensates the stem)."""
    def sources(i: int, f: int | list[int]) -> set[int]:
        return {i + j if j < 0 else j for j in (f if isinstance(f, list) else [f])}

    return sources(1, model.model[1].f) == {0} and all(0 not in sources(i, m.f) for i, m in enumerate(model.model)
                                                        if i > 1)


def _spec(conv: nn.Conv2d) -> str:
    """Kernel, stride and filter count of a conv, as the mismatch message shows them."""
    return f"kernel {tuple(conv.kernel_size)}, stride {tuple(conv.stride)}, {conv.out_channels} filters"


def seed_first_layer(model: nn.Module, source: nn.Module) -> tuple[str, str] | None:
    """Seed ``model``'s first layer from ``source``'s first conv when their input bands differ (in place).

    Args:
        model: The target detection model (its ``model[0]`` is a ``Conv`` or a ``DualStreamStem``).
        source: The pretrained detection model (float, as Ultralytics' ``load`` leaves it).

    Returns:
        None when Ultralytics' copy already did the job (same bands and shapes) or there is no first conv to read;
        else ``(level, message)``, level ``"info"`` (what was seeded and how) or ``"warning"`` (could not seed).
    """
    if mid_branches(model):
        return seed_branches(model, source)
    src = _first_conv(getattr(source, "model", [None])[0])
    dst = model.model[0]
    if src is None:
        return None
    w, src_bn = src[0].weight.detach().float(), src[1]
    src_bands = BANDS.get(w.shape[1])
    dual = isinstance(dst, DualStreamStem)
    if dual:
        n_rgb = dst.rgb.conv.out_channels
        branches = [(dst.rgb, slice(0, n_rgb)), (dst.ir, slice(n_rgb, w.shape[0]))]
        bands = BANDS[4]
        branch_bands = [bands[: -dst.c_ir], bands[-dst.c_ir :]]
    elif (own := _first_conv(dst)) is not None:
        if own[0].weight.shape == w.shape:
            return None  # same bands and shape: Ultralytics copied it
        branches, branch_bands = [(dst, slice(0, w.shape[0]))], [BANDS.get(own[0].in_channels)]
    else:
        return None
    convs = [b.conv for b, _ in branches]
    fits = (sum(c.out_channels for c in convs) == w.shape[0]
            and all(c.kernel_size == src[0].kernel_size and c.stride == src[0].stride for c in convs))
    target = "dual-stream stem" if dual else f"{convs[0].in_channels}-channel first conv"
    if not fits:
        have = " + ".join(_spec(c) for c in convs)
        kept = ("Ultralytics' copy of the overlapping filters" if not dual and convs[0].kernel_size == src[0].kernel_size
                else "its random initialisation")
        return ("warning", f"pretrained first conv ({_spec(src[0])}) cannot seed this model's {target} ({have}): it "
                f"keeps {kept}; the layers that match still transfer. Use a model with the same first conv, or no "
                "pretrained weights")
    if src_bands is None or any(b is None for b in branch_bands):
        return None  # band layout unknown (neither 1, 3 nor 4 channels): Ultralytics' partial copy stays
    gain = ATTENTION_GAIN if dual else 1.0
    words = []
    with torch.no_grad():
        for (branch, rows), b_bands, name in zip(branches, branch_bands, ("colour stem", "IR stem")):
            m = band_mixing(src_bands, b_bands).to(w)
            branch.conv.weight.copy_(torch.einsum("oshw,st->othw", w[rows], m) / gain)
            _load_bn(branch.bn, src_bn, rows)
            what = describe_mixing(m, src_bands, b_bands)
            words.append(f"{name} <- filters {rows.start}-{rows.stop - 1}: {what}" if dual else what)
        if dual:
            for att in (dst.rgb_att, dst.ir_att):
                att.mask.weight.zero_(), att.mask.bias.zero_()
            dst.se.fc2.weight.zero_(), dst.se.fc2.bias.zero_()
            nxt, src_nxt = (_first_conv(m.model[1]) if len(m.model) > 1 else None for m in (model, source))
            doubled = (nxt is not None and src_nxt is not None and nxt[0].weight.shape == src_nxt[0].weight.shape
                       and _only_reader_of_stem(model))  # layer 1 was transferred and reads only the stem
            if doubled:
                nxt[0].weight.mul_(1 / SE_GAIN)
            words.append(f"attention masks uniform (stem filters /{ATTENTION_GAIN:g}), SE gate {SE_GAIN:g}"
                         + (f" (layer 1 filters x{1 / SE_GAIN:g})" if doubled else ""))
    src_name = f"{w.shape[1]}-channel {','.join(src_bands)}"
    return ("info", f"seeded the {target} ({','.join(BANDS[4] if dual else branch_bands[0])}) from the pretrained "
            f"{src_name} first conv: {'; '.join(words)}; a grey input keeps the pretrained response")


def mid_branches(model: nn.Module) -> list[list[int]]:
    """Layer indices of each branch of a mid-fusion model: a ``BandConv`` and the layers that follow it in sequence
    (``from -1``); empty for other models."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential):
        return []
    branches = []
    for i, m in enumerate(layers):
        if isinstance(m, BandConv):
            branches.append([i])
        elif branches and branches[-1][-1] == i - 1 and m.f == -1:
            branches[-1].append(i)
    return branches


@torch.no_grad()
def _transfer(dst: nn.Module, src: nn.Module, mode: str) -> tuple[int, int]:
    """Copy ``src``'s tensors into ``dst`` by name: equal shapes as they are; ``slice`` (a thinner branch): the leading
    channels of every dimension; ``pad`` (after the fusion): a conv with more input channels gets the pretrained filters
    on its leading inputs and zero on the rest. Returns (tensors transferred, tensors of ``dst``)."""
    src_sd, done = src.state_dict(), 0
    dst_sd = dst.state_dict()
    for k, t in dst_sd.items():
        v = src_sd.get(k)
        if v is None or v.ndim != t.ndim:
            continue
        if not t.is_floating_point():  # integer buffers (num_batches_tracked) as they are
            if v.shape == t.shape:
                t.copy_(v)
                done += 1
            continue
        v = v.to(t)
        if v.shape == t.shape:
            t.copy_(v)
        elif mode == "slice" and all(a <= b for a, b in zip(t.shape, v.shape)):
            t.copy_(v[tuple(slice(0, n) for n in t.shape)])
        elif (mode == "pad" and t.ndim == 4 and t.shape[0] == v.shape[0] and t.shape[2:] == v.shape[2:]
              and t.shape[1] > v.shape[1]):
            t.zero_()
            t[:, : v.shape[1]] = v
        else:
            continue
        done += 1
    for m in dst.modules():
        if hasattr(m, "sync_float"):  # a switchable BatchNorm's float set follows its quantized one
            m.sync_float()
    return done, len(dst_sd)


def seed_branches(model: nn.Module, source: nn.Module) -> tuple[str, str] | None:
    """Seed a mid-fusion model (in place) from a single-backbone pretrained model (RGB weights, or any ghost
    early-fusion model): each branch from the source's first layers, the layers after the branches from its next ones.

    Returns None when the source is itself a mid-fusion model (Ultralytics' copy did the job) or has no first conv;
    else ``(level, message)`` as ``seed_first_layer``.
    """
    layers, src_layers = model.model, getattr(source, "model", None)
    if not isinstance(src_layers, nn.Sequential) or mid_branches(source) or _first_conv(src_layers[0]) is None:
        return None
    w = _first_conv(src_layers[0])[0].weight.detach().float()
    src_bands = BANDS.get(w.shape[1])
    branches = mid_branches(model)
    depth = max(len(b) for b in branches)  # the longest branch is the pretrained backbone; the others stop earlier
    if src_bands is None or len(src_layers) <= depth:
        return ("warning", f"pretrained model ({w.shape[1]}-channel first conv, {len(src_layers)} layers) cannot seed "
                "this mid-fusion model's branches; the layers that match by name still transfer")
    kinds = [type(m).__name__ for m in src_layers[:depth]]
    words, kept = [], []
    for b in branches:
        mods = [layers[i] for i in b]
        if [type(m).__name__ for m in mods[1:]] != kinds[1 : len(b)]:
            return ("warning", f"pretrained backbone ({', '.join(kinds)}) does not match the branch of layers "
                    f"{b[0]}-{b[-1]}: the mid-fusion branches keep their initialisation")
        first, src_first = mods[0], src_layers[0]
        thin = first.conv.out_channels < w.shape[0]
        bands = BANDS[4][first.band_slice]
        with torch.no_grad():
            m = band_mixing(src_bands, bands).to(w)
            first.conv.weight.copy_(torch.einsum("oshw,st->othw", w[: first.conv.out_channels], m))
            _load_bn(first.bn, src_first.bn, slice(0, first.conv.out_channels))
        for dst, src in zip(mods[1:], src_layers[1 : len(b)]):
            _transfer(dst, src, "slice")
        words.append(f"{first.bands} branch (layers {b[0]}-{b[-1]}) <- layers 0-{len(b) - 1}"
                     f"{', width-sliced' if thin else ''} (first conv: {describe_mixing(m, src_bands, bands)})")
    post = [m for m in layers[max(b[-1] for b in branches) + 1 :] if sum(p.numel() for p in m.parameters())]
    src_post = [m for m in src_layers[depth:] if sum(p.numel() for p in m.parameters())]
    n_done = 0
    for dst, src in zip(post, src_post):
        if type(dst) is not type(src):
            kept.append(f"layer {dst.i} ({type(dst).__name__}, pretrained {type(src).__name__})")
            break
        done, total = _transfer(dst, src, "pad")
        n_done += done == total
        if done < total:
            kept.append(f"layer {dst.i} ({done} of {total} tensors)")
    src_name = f"{w.shape[1]}-channel {','.join(src_bands)}"
    msg = (f"seeded the mid-fusion model from the pretrained {src_name} model: {'; '.join(words)}; "
           f"{n_done} of {len(post)} layers after the branches <- layers {depth}+ (fusion inputs from IR start at "
           "zero)")
    if kept:  # e.g. a head with another class count: Ultralytics keeps those layers' initialisation too
        return ("info", f"{msg}; kept their initialisation where shapes differ: {', '.join(kept)}")
    same = "on its colour bands" if src_bands == BANDS[3] else "on a grey input"
    return ("info", f"{msg}; {same} the seeded model answers as the pretrained one")
