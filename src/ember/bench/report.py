"""Prints benchmark rows as one aligned table with ember/peer ratios, and the figures through HTTP next to ember's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    metric: str
    ember: float | None  # engine-only; None for rows measured through HTTP alone (long context, arrivals)
    peers: dict[str, float | None] = field(default_factory=dict)
    lower_is_better: bool = False
    extra: str = ""
    http: float | None = None  # the same workload through `ember serve`'s HTTP API

    def http_speed(self) -> float | None:
        """HTTP speed relative to the engine alone: 0.90 is 10% slower (for latencies, engine ms / HTTP ms)."""
        if not self.http or not self.ember:
            return None
        return self.ember / self.http if self.lower_is_better else self.http / self.ember


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def ember_over_peer(row: Row, peer_name: str, through_http: bool) -> float | None:
    """ember's speed over the peer's (>1: ember is faster; for latencies, peer ms / ember ms). A peer measured
    through HTTP is compared with ember through HTTP, an in-process one with the engine alone."""
    ours = row.http if through_http else row.ember
    peer = row.peers.get(peer_name)
    if not ours or not peer:
        return None
    return peer / ours if row.lower_is_better else ours / peer


def print_aligned(lines: Sequence[Sequence[str]]) -> None:
    """Prints a header line, a rule under it, then the other lines, each column as wide as its widest cell."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_table(
    rows: list[Row],
    peer_names: list[str],
    noted: list[Any],
    footnotes: tuple[str, ...] = (),
    http_peers: frozenset[str] = frozenset(),
) -> None:
    with_http = any(row.http is not None for row in rows)
    http_header = ["ember http", "http/ember"] if with_http else []
    header = ["metric", "ember", *http_header] + peer_names + [f"ember/{n.split()[0]}" for n in peer_names]
    header.append("notes")
    lines = [header]
    for row in rows:
        cells = [row.metric, _fmt(row.ember)]
        if with_http:
            speed = row.http_speed()
            cells += [_fmt(row.http), "-" if speed is None else f"{speed:.2f}x"]
        cells += [_fmt(row.peers.get(n)) for n in peer_names]
        for n in peer_names:
            ratio = ember_over_peer(row, n, n in http_peers)
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        cells.append(row.extra)
        lines.append(cells)
    print_aligned(lines)
    for peer in noted:
        print(f"note: {peer.name}: {peer.note}")
    for note in footnotes:
        print(f"note: {note}")
