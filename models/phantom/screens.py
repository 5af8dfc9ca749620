"""Screen captures: a dose report / exam summary rendered as a text image.

Real studies carry a Secondary Capture "Patient Protocol" page listing CTDIvol
and DLP per series; nodes must recognise and skip it. We draw it with a tiny
built-in 5x7 bitmap font so the phantom needs no imaging library and the
bytes stay deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# 5x7 glyphs, rows top to bottom, '#' = ink. Lower case is drawn as upper case.
_GLYPHS = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .###.",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "####. ....# ....# .###. ....# ....# ####.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "/": "....# ...#. ...#. ..#.. .#... .#... #....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    "^": "..#.. .#.#. #...# ..... ..... ..... .....",
    " ": "..... ..... ..... ..... ..... ..... .....",
}
_FONT = {
    ch: np.array([[c == "#" for c in row] for row in rows.split()], dtype=bool)
    for ch, rows in _GLYPHS.items()
}


def render_text(
    lines: Sequence[str],
    *,
    rows: int = 256,
    columns: int = 384,
    scale: int = 1,
    ink: int = 230,
    paper: int = 8,
) -> np.ndarray:
    """``lines`` drawn top-left on a ``rows`` x ``columns`` uint8 canvas; unknown
    characters and text past the edge are dropped."""
    canvas = np.full((rows, columns), paper, dtype=np.uint8)
    cw, ch = 6 * scale, 9 * scale
    for n, line in enumerate(lines):
        y = 6 + n * ch
        if y + 7 * scale > rows:
            break
        for m, char in enumerate(line.upper()):
            x = 6 + m * cw
            glyph = _FONT.get(char)
            if glyph is None or x + 5 * scale > columns:
                continue
            block = np.kron(glyph, np.ones((scale, scale), dtype=bool))
            canvas[y : y + block.shape[0], x : x + block.shape[1]][block] = ink
    return canvas


def dose_report_lines(
    patient_id: str, study_date: str, rows: Sequence[tuple[str, float, float]]
) -> list[str]:
    """Text of a CT dose page: one (series label, CTDIvol mGy, DLP mGy*cm) row per scan."""
    total = sum(dlp for _, _, dlp in rows)
    lines = [
        "PATIENT PROTOCOL - DOSE REPORT",
        f"PATIENT ID: {patient_id}   DATE: {study_date}",
        "",
        "SERIES            KV   CTDIVOL   DLP",
        "                       MGY       MGY*CM",
    ]
    for label, ctdi, dlp in rows:
        lines.append(f"{label[:16]:<16}  120  {ctdi:7.2f}  {dlp:8.1f}")
    lines += ["", f"TOTAL DLP: {total:.1f} MGY*CM", "PHANTOM - NOT FOR DIAGNOSIS"]
    return lines


def summary_lines(patient_id: str, study_date: str, series: Sequence[str]) -> list[str]:
    """Text of an MR exam summary page (the MR counterpart of the dose page)."""
    lines = ["EXAM SUMMARY", f"PATIENT ID: {patient_id}   DATE: {study_date}", ""]
    lines += [f"{n + 1:2d}  {label[:40]}" for n, label in enumerate(series)]
    lines += ["", "SAR: 0.9 W/KG", "PHANTOM - NOT FOR DIAGNOSIS"]
    return lines
