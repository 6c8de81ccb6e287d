"""Prints benchmark rows as one aligned table with ember/peer ratios."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    metric: str
    ember: float
    peers: dict[str, float | None] = field(default_factory=dict)
    lower_is_better: bool = False
    extra: str = ""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def print_table(rows: list[Row], peer_names: list[str], noted: list[Any]) -> None:
    header = ["metric", "ember"] + peer_names + [f"ember/{n.split()[0]}" for n in peer_names] + ["notes"]
    lines = [header]
    for row in rows:
        cells = [row.metric, _fmt(row.ember)]
        cells += [_fmt(row.peers.get(n)) for n in peer_names]
        for n in peer_names:
            peer = row.peers.get(n)
            if peer:
                ratio = peer / row.ember if row.lower_is_better else row.ember / peer
                cells.append(f"{ratio:.2f}x")
            else:
                cells.append("-")
        cells.append(row.extra)
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for peer in noted:
        print(f"note: {peer.name}: {peer.note}")
