"""What ``kd=auto`` resolves to, by the paired-seed evidence of ``benchmarks/bench_selfteach.py``.

One table, one row per kind of run that was measured: the arm ``kd=auto`` picks for it and the figures behind the
choice, quoted from ``benchmarks/results/selfteach.md`` (a test checks every quoted figure is still there, so a re-run
benchmark that changes them fails until this table follows). A run distils only where its row shows a gain whose 95 %
CI lies above 0; a kind of run without a row (a width that was not measured, lists, bit maps) trains without
distillation. Rows were measured with the frozen float self (``float_self=frozen``) as teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("AUTO_KD_EVIDENCE", "AUTO_KD_WITH_TEACHER", "Evidence", "resolve_auto_kd")

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


# key: a fixed width (bits=N, or a checkpoint quantized at one width) or "hq" (the HQ search)
AUTO_KD_EVIDENCE: dict[int | str, Evidence] = {
    4: Evidence("W4", "cls+dfl", "+0.94 [+0.3, +1.5]", "10 of 10", "Regime A, W4"),
    8: Evidence("W8", "cls+dfl", "+0.79 [+0.2, +1.4]", "3 of 3", "Regime A, W8"),
    "hq": Evidence("HQ (4.85 average bits)", "none", "+0.00 [-0.7, +0.7]", "4 of 10", "Regime A, HQ"),
}


def resolve_auto_kd(width: int | None, searches: bool, teacher: bool) -> tuple[str, str]:
    """``(losses, why)`` for ``kd=auto``: by ``teacher=`` (the user asked for distillation), the HQ search's row, or the
    fixed width's row; ``none`` where no row shows a gain."""
    if teacher:
        return AUTO_KD_WITH_TEACHER, f"teacher= was given: {AUTO_KD_WITH_TEACHER}, the losses that measured best"
    row = AUTO_KD_EVIDENCE.get("hq" if searches else width)
    if row is not None:
        return row.kd, row.why()
    what = f"W{width}" if width is not None else "mixed widths (a list or bit map)"
    return "none", f"{what}: no paired-seed evidence (measured: {', '.join(r.runs for r in AUTO_KD_EVIDENCE.values())})"
