"""The README's key tables quote cfg/default.yaml, the one place defaults live: a default changed there and not in the
README (or typed into the README by hand) fails here."""

from __future__ import annotations

from pathlib import Path

import yaml

from ghost_yolo.cfg import ghost_defaults

README = Path(__file__).parents[1] / "README.md"


def key_table_defaults() -> dict[str, str]:
    """``{key: default cell}`` of every README table with a 'key' and a 'default' column, for ghost keys."""
    out, columns = {}, None
    for line in README.read_text().splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "key" and "default" in cells:
            columns = cells
            continue
        if columns and cells[0].startswith("`") and len(cells) == len(columns):
            key = cells[0].strip("`")
            if key in ghost_defaults():
                out[key] = cells[columns.index("default")]
    return out


def test_readme_key_tables_quote_the_shipped_defaults():
    """Each literal default in a README key table (one `value` in the cell) equals cfg/default.yaml's."""
    table = key_table_defaults()
    literal = {k: v.strip("`") for k, v in table.items() if v.count("`") == 2 and v.startswith("`") and v.endswith("`")}
    assert len(literal) >= 10, f"the README's key tables were not found (parsed {sorted(table)})"
    wrong = {k: (v, ghost_defaults()[k]) for k, v in literal.items() if yaml.safe_load(v) != ghost_defaults()[k]}
    assert not wrong, f"README defaults differ from cfg/default.yaml (README, default.yaml): {wrong}"


def test_empty_defaults_are_not_given_a_value():
    """A key whose shipped default is empty has no literal default in the README (its cell says what empty means)."""
    table = key_table_defaults()
    typed = {k: v for k, v in table.items() if ghost_defaults()[k] is None and v.count("`") == 2 and v.startswith("`")
             and v.endswith("`")}
    assert not typed, f"README gives a value to keys that default to empty: {typed}"
