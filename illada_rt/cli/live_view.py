"""A live terminal view of the canvas being unmasked, redrawn in place after every step."""
from __future__ import annotations

import shutil
from typing import List, TextIO

MASK_GLYPH = "\u2591"  # light shade: one per masked token


def render_canvas(codec, answer: List[int], mask_id: int) -> str:
    """Answer text with each masked token shown as MASK_GLYPH (runs of real tokens decoded together)."""
    parts, run = [], []
    for token in answer:
        if token == mask_id:
            if run:
                parts.append(codec.decode(run))
                run = []
            parts.append(MASK_GLYPH)
        else:
            run.append(token)
    if run:
        parts.append(codec.decode(run))
    return "".join(parts)


class LiveView:
    """Redraws prompt + canvas on a terminal; `finish` leaves the final text on screen."""

    def __init__(self, out: TextIO, prompt: str):
        self.out, self.prompt, self.lines = out, prompt, 0

    def _rows(self, text: str) -> int:
        width = max(shutil.get_terminal_size().columns, 1)
        return sum(max(1, -(-len(line) // width)) for line in text.split("\n"))

    def draw(self, text: str, status: str = ""):
        if self.lines:
            self.out.write(f"\r\033[{self.lines - 1}F\033[J" if self.lines > 1 else "\r\033[J")
        body = self.prompt + text + (f"\n{status}" if status else "")
        self.out.write(body)
        self.out.flush()
        self.lines = self._rows(body)

    def finish(self, text: str):
        self.draw(text)
        self.out.write("\n")
        self.out.flush()
