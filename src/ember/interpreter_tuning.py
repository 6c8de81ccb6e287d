"""The interpreter's settings for a serving process, applied once everything is loaded: the garbage collector's
and the GIL's switch interval, both for the event loop's sake.

A full collection walks every tracked object while it holds the GIL, and the event loop (another thread) answers
nobody meanwhile. Two settings keep those walks rare and short:
- `gc.freeze()` puts what loading created (the model, the app: ~200k objects) out of the collector's sight for
  good; those objects live as long as the server.
- A full collection is considered after 100 collections of the middle generation instead of 10 (CPython still
  runs it only when objects promoted since the last one exceed a quarter of the old ones). A request of 100k
  chat messages creates ~500k objects: with the default, about a dozen full walks of a growing heap ran while it
  was read (/health p99 212 ms in `benchmarks/event_loop_latency.py`); with 100, at most one or two (87 ms, same
  loaded machine; 104 ms with the collector off altogether). Young collections are unchanged, so short-lived
  cycles are still freed at once; the oldest generation is swept every ~700k surviving allocations.

The event loop shares the GIL with the preparation threads (tokenizing, templating, parsing big bodies in
Python) and the engine thread. A thread that wants the GIL waits for the holder's switch interval (5 ms by
default) to run out, once per hand-over, and answering /health takes several. At 1 ms, /health's p99 while the
audit's bad inputs replay went 148 -> 85-91 ms on a loaded machine (two A/B pairs, same run); 0.5 ms was no
better. The compute threads lose little: torch and the native kernels let go of the GIL while they work.
"""

from __future__ import annotations

import gc
import sys

FULL_COLLECTION_EVERY = 100  # middle-generation collections between two full ones (CPython's default: 10)
SWITCH_INTERVAL_S = 0.001  # how long a thread keeps the GIL while another waits (CPython's default: 5 ms)


def tune_interpreter_for_serving() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
