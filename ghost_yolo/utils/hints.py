"""Ultralytics' ``yolo ...`` command hints, printed as the ``ghost ...`` commands that work for ghost models.

Ultralytics closes some of its messages with a command to run next: the exporter's ``Predict: yolo predict task=detect
model=best.onnx imgsz=...`` and ``Validate: yolo val ...`` lines, the trainer's ``'yolo train resume
model=path/to/last.pt'``, the ``imgsz`` check's ``'yolo export imgsz=640,480'``. For a ghost model those ``yolo``
commands fail (the stock ``yolo`` entrypoint builds a 3-channel ``YOLO`` model and knows neither ghost's keys nor its
paired sources), while the same command under ``ghost`` works. The text of these hints is fixed inside Ultralytics, so
instead of copying Ultralytics' functions to change one word, a ``logging.Filter`` on Ultralytics' logger rewrites
``yolo <mode>`` at the start of a command (modes ghost has: train, val, predict, export; ``yolo detect train`` too)
to ``ghost <mode>`` as each record is emitted.

One addition: a ``predict`` command that ends its line without ``source=`` (the exporter's ``Predict:`` line) gets
``source=FOLDER_OF_PAIRS``, as in ghost's own hints: ``yolo predict`` falls back to Ultralytics' sample images when no
source is given, which are not colour + IR pairs, so ``ghost predict`` asks for a source and the hint says so.

What is left alone: file names (``yolo11n.pt``, ``yolo26n.onnx``: only the command word before a mode changes),
commands ghost has no equivalent of (``yolo settings``, ``yolo cfg``, ``yolo checks``, ``yolo login``), and hints that
recommend an *official Ultralytics model* (a checkpoint that is not a ghost model cannot be loaded, and Ultralytics
suggests trying its own models with its own command).

Where it applies: the ``ghost`` command runs inside ``ghost_hints()`` (its log lines and the one-line errors it prints
for Ultralytics' exceptions, such as the resume hint); ``GhostExporter`` does too, so ``GhostYOLO(...).export(...)``
in Python prints the same working commands. The filter is removed on leaving the block: plain ``YOLO`` in the same
process keeps its ``yolo`` hints, and exceptions raised to Python callers keep Ultralytics' text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER_NAME = "ultralytics"
GHOST_MODES = ("train", "val", "predict", "export")
# 'yolo' as a command word: start of text, or after whitespace, a quote or a backtick; then an optional task word and
# one of ghost's modes as a whole word. 'yolo11n.pt', 'runs/yolo/...' and 'yolo settings' do not match.
HINT = re.compile(r"(?<![\w./\\-])yolo(?=\s+(?:detect\s+)?(?:" + "|".join(GHOST_MODES) + r")\b)")
# A hint right after these words points at Ultralytics' own models: it stays a 'yolo' command.
OFFICIAL = re.compile(r"official Ultralytics model,?\s*(?:i\.e\.|e\.g\.)?\s*['\"`]?$")
# A whole-line 'ghost predict ...' command (not a quoted example inside a sentence) with no source=
PREDICT_LINE = re.compile(r"^(?P<cmd>(?:.*\s)?ghost\s+(?:detect\s+)?predict\b[^'\"`\n]*?)(?P<tail>[ \t]*)$", re.M)
SOURCE = "source=FOLDER_OF_PAIRS"


def ghost_commands(text: str) -> str:
    """``text`` with its ``yolo <mode> ...`` command hints as ``ghost <mode> ...``."""
    if "yolo" not in text:
        return text
    new = HINT.sub(lambda m: m.group(0) if OFFICIAL.search(text, 0, m.start()) else "ghost", text)
    if new == text:  # no yolo command here: leave the text (and any ghost command already in it) as it is
        return text
    return PREDICT_LINE.sub(lambda m: m.group(0) if "source=" in m["cmd"] else f"{m['cmd']} {SOURCE}{m['tail']}", new)


class GhostHints(logging.Filter):
    """Rewrites ``yolo <mode>`` command hints in Ultralytics' log records to ``ghost <mode>`` (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message in place; always keep the record."""
        msg = record.getMessage() if record.args else record.msg
        if isinstance(msg, str) and "yolo" in msg:
            new = ghost_commands(msg)
            if new != msg:
                record.msg, record.args = new, None
        return True


def _installed(logger: logging.Logger) -> GhostHints | None:
    """The hints filter already on ``logger``, if any."""
    return next((f for f in logger.filters if isinstance(f, GhostHints)), None)


@contextmanager
def ghost_hints() -> Iterator[None]:
    """Rewrite hints inside the ``with`` block only (and keep a filter that was already installed)."""
    logger = logging.getLogger(LOGGER_NAME)
    added = None if _installed(logger) else GhostHints()
    if added:
        logger.addFilter(added)
    try:
        yield
    finally:
        if added:
            logger.removeFilter(added)
