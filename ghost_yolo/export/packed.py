"""The packed ``.ghost`` checkpoint: a quantized model's weights bit-packed at their own widths.

This is the model's quantized size made physical: a 3-bit layer takes 3 bits per weight on disk. The file holds the
fused (BatchNorm-folded) inference model, so it is for val, predict and export, not for further training.

Layout (little-endian)::

    b"GHOSTPK1"                       magic
    uint32  header length H
    H bytes JSON header               format version, model YAML, class names, args, tensor table, CRC-32 of payload
    payload                           tensors back to back, each at the offset the table gives

Quantized conv weights are stored as unsigned level indices ``(code - lowest code) / stride`` at ``bits`` bits each
(LSB first), with their signed per-channel scales in fp32; every other tensor is stored raw (fp32 as trained, int64
and bool buffers as such).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from ultralytics.utils import LOGGER, colorstr

from .qdq import active_qconvs

__all__ = ("MAGIC", "load_packed", "pack_codes", "save_packed", "unpack_codes")

MAGIC = b"GHOSTPK1"
VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bool": torch.bool,
          "int32": torch.int32, "uint8": torch.uint8}


class PackedFormatError(ValueError):
    """A .ghost file that cannot be read: wrong magic, damaged header, checksum mismatch, unsupported content."""


def pack_codes(levels: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers below ``2**bits`` at ``bits`` bits each, least significant bit first."""
    levels = np.ascontiguousarray(levels, dtype=np.uint16).ravel()
    if levels.size and int(levels.max()) >= 1 << bits:
        raise PackedFormatError(f"a level index {int(levels.max())} does not fit in {bits} bits")
    planes = ((levels[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_codes``: ``count`` unsigned integers of ``bits`` bits each."""
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    return (planes.reshape(count, bits).astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(1)


def _fused_copy(model: nn.Module) -> nn.Module:
    """A fused (BN-folded), float32, CPU copy of ``model`` for packing."""
    from copy import deepcopy

    m = deepcopy(model).float().cpu().eval()
    return m.fuse(verbose=False) if hasattr(m, "fuse") else m


def save_packed(model: nn.Module, path: str | Path, names: dict | None = None, args: dict | None = None) -> Path:
    """Write ``model`` (a quantized ghost model, fused here) as a packed ``.ghost`` file; returns its path."""
    from ghost_yolo.quant.accounting import cost_totals, layer_costs

    fused = _fused_copy(model)
    layers = active_qconvs(fused)
    if not layers:
        raise ValueError("format=ghost packs quantized weights, but every layer of this model is float (32 bit): "
                         "train with bits=hq (or bits=4, ...) first, or export format=onnx")
    state = fused.state_dict()
    packed, skip, chunks, offset = [], set(), [], 0
    for name, conv in layers.items():
        lo, hi, stride = conv.weight_quant.code_grid()
        bits = conv.bits
        if (hi - lo) // stride >= 1 << bits or bits > 8:
            raise ValueError(f"layer {name}: {bits}-bit {conv.quantizer} codes {lo}..{hi} do not fit the packed format")
        codes, scale = conv.weight_codes()
        levels = ((codes - lo) / stride).round().to(torch.int64).numpy()
        blob = pack_codes(levels, bits)
        packed.append({"name": name, "bits": bits, "lowest": lo, "stride": stride, "shape": list(codes.shape),
                       "offset": offset, "nbytes": len(blob)})
        chunks.append(blob)
        offset += len(blob)
        state[f"{name}.fold_scale"] = scale.float()
        skip.add(f"{name}.weight")
        skip.add(f"{name}.weight_quant.log_scale")  # the folded weight no longer needs its float steps
    tensors = []
    for k, t in state.items():
        if k in skip:
            continue
        t = t.detach().cpu().contiguous()
        dtype = str(t.dtype).replace("torch.", "")
        if dtype not in DTYPES:
            raise ValueError(f"tensor {k} has dtype {dtype}, which the packed format does not store")
        blob = t.numpy().tobytes()
        tensors.append({"name": k, "dtype": dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(blob)})
        chunks.append(blob)
        offset += len(blob)
    payload = b"".join(chunks)
    yaml = dict(getattr(model, "yaml", {}))
    header = {"format": "ghost-packed", "version": VERSION, "yaml": yaml, "names": names or getattr(model, "names", {}),
              "args": {k: v for k, v in (args or {}).items() if isinstance(v, (str, int, float, bool, type(None)))},
              "packed": packed, "tensors": tensors, "crc32": zlib.crc32(payload)}
    raw = json.dumps(header, default=str).encode()
    path = Path(path)
    path.write_bytes(MAGIC + struct.pack("<I", len(raw)) + raw + payload)
    mb = path.stat().st_size / 1e6
    totals = cost_totals(model, layer_costs(model, 64))  # sizes do not depend on the image size
    LOGGER.info(f"{colorstr('ghost:')} packed {len(packed)} quantized convs -> {path} ({mb:.3f} MB; the method's "
                f"quantized size is {totals['size_mb']:.3f} MB, float {totals['float_mb']:.3f} MB)")
    return path


def read_header(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Header and payload of a ``.ghost`` file, checked (magic, header, checksum); clear errors otherwise."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise PackedFormatError(f"{path} is not a packed ghost checkpoint (its first bytes are not {MAGIC!r})")
    try:
        (n,) = struct.unpack_from("<I", data, len(MAGIC))
        header = json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + n])
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise PackedFormatError(f"{path} is corrupt: its header cannot be read ({e})") from e
    if header.get("format") != "ghost-packed" or header.get("version") != VERSION:
        raise PackedFormatError(f"{path}: unsupported packed format {header.get('format')} v{header.get('version')} "
                                f"(this ghost-yolo reads v{VERSION})")
    payload = data[len(MAGIC) + 4 + n :]
    if zlib.crc32(payload) != header.get("crc32"):
        raise PackedFormatError(f"{path} is corrupt: the weights' checksum does not match (truncated or damaged file)")
    return header, payload


def load_packed(path: str | Path) -> nn.Module:
    """Rebuild the fused inference model stored in a ``.ghost`` file (equal outputs to the model that was packed)."""
    from ghost_yolo.models.model import build_model, model_task

    header, payload = read_header(path)
    yaml = header["yaml"]
    model = build_model(yaml, ch=yaml.get("channels"), nc=yaml.get("nc"), verbose=False)  # detect or obb, from the head
    model.eval()
    model.fuse(verbose=False)
    layers = active_qconvs(model)
    state = {}
    for e in header["tensors"]:
        buf = payload[e["offset"] : e["offset"] + e["nbytes"]]
        state[e["name"]] = torch.from_numpy(np.frombuffer(buf, dtype=e["dtype"]).copy()).reshape(e["shape"])
    for e in header["packed"]:
        name = e["name"]
        if name not in layers or layers[name].bits != e["bits"]:
            raise PackedFormatError(f"{path}: layer {name} ({e['bits']} bit) does not match the model its YAML builds")
        count = int(np.prod(e["shape"]))
        levels = unpack_codes(payload[e["offset"] : e["offset"] + e["nbytes"]], e["bits"], count)
        codes = torch.from_numpy(levels.astype(np.float32) * e["stride"] + e["lowest"]).reshape(e["shape"])
        scale = state[f"{name}.fold_scale"]
        state[f"{name}.weight"] = codes * scale.view(-1, 1, 1, 1)
        conv = layers[name]
        if not conv.folded:  # bare convs (head predictions): frozen on their grid like the folded ones
            conv.register_buffer("fold_scale", scale.clone())
            conv.folded = True
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("weight_quant.log_scale")]
    if missing or unexpected:
        raise PackedFormatError(f"{path}: tensors do not match the model (missing {missing[:3]}, unexpected "
                                f"{unexpected[:3]})")
    for conv in layers.values():
        conv.weight.requires_grad_(False)
    model.names = {int(k): v for k, v in header["names"].items()}
    model.task = model_task(yaml)
    model.args = {**header["args"], "task": model.task}
    return model
