"""How a colour image finds its infrared partner and its label file.

Two conventions, chosen in the data YAML (``pairing:``):
- ``suffix``: both images in one folder, told apart by a suffix (VEDAI: ``00000000_co.png`` + ``00000000_ir.png``);
- ``folders``: parallel folders with equal file names (LLVIP: ``visible/190001.jpg`` + ``infrared/190001.jpg``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultralytics.data.utils import IMG_FORMATS, img2label_paths

PAIRING_KINDS = ("suffix", "folders")


@dataclass(frozen=True)
class Pairing:
    """A pairing convention with its names; all lookups of partners and labels go through it."""

    kind: str = "suffix"
    rgb_suffix: str = "_co"
    ir_suffix: str = "_ir"
    rgb_dir: str = "visible"
    ir_dir: str = "infrared"

    def __post_init__(self):
        """Refuse unknown conventions early, with the accepted names."""
        if self.kind not in PAIRING_KINDS:
            raise ValueError(f"unknown pairing '{self.kind}': use one of {', '.join(PAIRING_KINDS)}")

    @classmethod
    def from_config(cls, data: dict[str, Any], overrides: dict[str, Any] | None = None) -> Pairing | None:
        """Build from a data YAML dict (``pairing:``, suffix and folder names), CLI keys winning; None if unpaired."""
        kind = data.get("pairing")
        if not kind or kind == "none":
            return None
        names = {k: (overrides or {}).get(k) or data.get(k) for k in ("rgb_suffix", "ir_suffix", "rgb_dir", "ir_dir")}
        return cls(kind=kind, **{k: str(v) for k, v in names.items() if v})

    def _side(self, path: str | Path) -> str | None:
        """'rgb' or 'ir' by the folder nearest to the file (ancestors named alike do not count), folders only."""
        for part in reversed(Path(path).parts[:-1]):
            if part == self.rgb_dir:
                return "rgb"
            if part == self.ir_dir:
                return "ir"
        return None

    def is_colour(self, path: str | Path) -> bool:
        """Whether a path is the colour half of a pair under this convention."""
        if self.kind == "suffix":
            return Path(path).stem.endswith(self.rgb_suffix)
        return self._side(path) == "rgb"

    def is_ir(self, path: str | Path) -> bool:
        """Whether a path is the infrared half of a pair under this convention."""
        if self.kind == "suffix":
            return Path(path).stem.endswith(self.ir_suffix)
        return self._side(path) == "ir"

    @staticmethod
    def _swap_folder(path: Path, old: str, new: str) -> Path:
        """Replace the folder named ``old`` nearest to the file by ``new``."""
        parts = list(path.parts)
        i = len(parts) - 2 - parts[:-1][::-1].index(old)
        parts[i] = new
        return Path(*parts)

    @staticmethod
    def _existing(base: Path) -> Path:
        """``base`` if it exists, else the same name with any image extension that exists, else ``base``."""
        if base.exists():
            return base
        for ext in sorted(IMG_FORMATS):
            for e in (ext, ext.upper()):
                if (alt := base.with_suffix(f".{e}")).exists():
                    return alt
        return base

    def pair_id(self, colour: str | Path) -> str:
        """The name shared by both halves (VEDAI's ``00000000``), used for label files."""
        stem = Path(colour).stem
        return stem[: -len(self.rgb_suffix)] if self.kind == "suffix" and stem.endswith(self.rgb_suffix) else stem

    def partner(self, colour: str | Path) -> Path:
        """Path of the infrared partner; the colour extension first, then any image extension that exists."""
        p = Path(colour)
        if self.kind == "suffix":
            return self._existing(p.with_name(self.pair_id(p) + self.ir_suffix + p.suffix))
        return self._existing(self._swap_folder(p, self.rgb_dir, self.ir_dir))

    def colour_of(self, ir: str | Path) -> Path:
        """Path of the colour partner of an infrared image (any image extension that exists)."""
        p = Path(ir)
        if self.kind == "suffix":
            return self._existing(p.with_name(p.stem[: -len(self.ir_suffix)] + self.rgb_suffix + p.suffix))
        return self._existing(self._swap_folder(p, self.ir_dir, self.rgb_dir))

    def label_path(self, colour: str | Path) -> Path:
        """Label file of a pair: ``labels/<pair id>.txt`` (VEDAI) or Ultralytics' own derivation, whichever exists."""
        derived = Path(img2label_paths([str(colour)])[0])
        candidates = [derived.with_name(self.pair_id(colour) + ".txt"), derived]
        if self.kind == "folders":
            candidates.append(self._swap_folder(Path(colour).with_suffix(".txt"), self.rgb_dir, "labels"))
        return next((c for c in candidates if c.exists()), candidates[0])


def detect_pairing(files: list[Path], pairing: Pairing | None = None) -> Pairing:
    """Guess the convention of loose files (predict sources): suffix pairs if any name carries the colour suffix."""
    base = pairing or Pairing()
    suffix = Pairing("suffix", base.rgb_suffix, base.ir_suffix, base.rgb_dir, base.ir_dir)
    folders = Pairing("folders", base.rgb_suffix, base.ir_suffix, base.rgb_dir, base.ir_dir)
    if pairing is not None and any(pairing.is_colour(f) for f in files):
        return pairing
    if any(suffix.is_colour(f) or suffix.is_ir(f) for f in files):
        return suffix
    if any(folders.is_colour(f) for f in files):
        return folders
    return suffix
