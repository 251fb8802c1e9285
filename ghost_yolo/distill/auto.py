"""What ``kd=auto`` resolves to, by the paired-seed evidence of ``benchmarks/bench_selfteach.py``.

One table, one row per kind of run that was measured: the arm ``kd=auto`` picks for it and the figures behind the
choice, quoted from ``benchmarks/results/selfteach.md`` (a test checks every quoted figure is still there, so a re-run
benchmark that changes them fails until this table follows). A run distils only where its row shows a gain whose 95 %
CI lies above 0; a kind of run without a row (a width that was not measured, lists, bit maps) trains without
distillation. Rows were measured with the frozen float self (``float_self=frozen``) as teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ("AUTO_KD_EVIDENCE", "AUTO_KD_WITH_TEACHER", "AutoKD", "Evidence", "hq_key", "resolve_auto_kd")

RESULTS = "benchmarks/results/selfteach.md"
AUTO_KD_WITH_TEACHER = "cls+dfl"  # kd=auto with teacher= (the user asked for distillation): the losses that measured best


@dataclass(frozen=True)
class Evidence:
    """One measured kind of run: ``kd`` is what auto picks; ``gain`` and ``ahead`` are quoted from ``section``."""

    runs: str  # the kind of run, as the log says it
    kd: str
    gain: str  # mean mAP50 difference against kd=none with its 95 % CI
    ahead: str  # seeds the arm was ahead in
    section: str  # the results file's section

    def why(self) -> str:
        """One line: the figures and where they come from."""
        verdict = "a gain with its 95 % CI above 0" if self.kd != "none" else "no gain with its 95 % CI above 0"
        return (f"{self.runs}: frozen float self with cls+dfl {self.gain} mAP50 vs none, ahead in {self.ahead} paired "
                f"seeds ({RESULTS}, '{self.section}'): {verdict}")


HQ_SPLIT = 4.0  # HQ runs are told apart by the average weight bits the search chose: <= 4, or above


def hq_key(avg_bits: float) -> str:
    """The evidence key of an HQ run with ``avg_bits`` average weight bits."""
    return "hq<=4" if avg_bits <= HQ_SPLIT else "hq>4"


# key: a fixed width (bits=N, or a checkpoint quantized at one width), or an HQ run by its average bits (hq_key)
AUTO_KD_EVIDENCE: dict[int | str, Evidence] = {
    4: Evidence("W4", "cls+dfl", "+0.94 [+0.3, +1.5]", "10 of 10", "Regime A, W4"),
    8: Evidence("W8", "cls+dfl", "+0.79 [+0.2, +1.4]", "3 of 3", "Regime A, W8"),
    "hq>4": Evidence("HQ above 4 average bits (4.85 measured)", "none", "+0.00 [-0.7, +0.7]", "4 of 10",
                     "Regime A, HQ"),
    "hq<=4": Evidence("HQ at 4 average bits or fewer (3.84 measured)", "cls+dfl", "+0.61 [+0.1, +1.1]", "7 of 8",
                      "Regime A, HQ4"),
}


class AutoKD(NamedTuple):
    """What ``kd=auto`` resolved to: the losses, why, and whether the HQ search's widths must settle it (``pending``:
    the losses are the candidates an HQ band would pick, ``settle`` decides once the average bits are known)."""

    kd: str
    why: str
    pending: bool = False


def resolve_auto_kd(width: int | None, searches: bool, teacher: bool, avg_bits: float | None = None) -> AutoKD:
    """``kd=auto`` for a run: by ``teacher=`` (the user asked for distillation), the fixed width's row, or the HQ band
    of ``avg_bits`` (None for an HQ run before its search: pending, with the losses a band could pick); ``none``
    where no row shows a gain."""
    if teacher:
        return AutoKD(AUTO_KD_WITH_TEACHER, f"teacher= was given: {AUTO_KD_WITH_TEACHER}, the losses that measured best")
    measured = ", ".join(r.runs for r in AUTO_KD_EVIDENCE.values())
    if searches and avg_bits is None:
        picks = sorted({r.kd for k, r in AUTO_KD_EVIDENCE.items() if str(k).startswith("hq") and r.kd != "none"})
        if not picks:
            return AutoKD("none", f"HQ: no band of average bits showed a gain (measured: {measured})")
        return AutoKD(picks[0], "HQ: decided once the search has chosen the widths, by their average bits "
                                f"(measured: {measured})", pending=True)
    key = hq_key(avg_bits) if searches else width
    row = AUTO_KD_EVIDENCE.get(key)
    if row is not None:
        return AutoKD(row.kd, row.why() + (f" (this run: {avg_bits:.2f} average bits)" if searches else ""))
    what = (f"HQ at {avg_bits:.2f} average bits" if searches else f"W{width}" if width is not None else
            "mixed widths (a list or bit map)")
    return AutoKD("none", f"{what}: no paired-seed evidence (measured: {measured})")
