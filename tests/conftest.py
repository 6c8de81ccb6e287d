from __future__ import annotations

import os

import torch

# Every engine a test builds (and every `ember serve` it starts) checks its KV bookkeeping, and that nothing is
# left held, each time it runs out of work.
os.environ.setdefault("EMBER_DEBUG_INVARIANTS", "1")

# Tests run tiny tensors, where a second OpenMP thread only adds synchronisation; and the in-process servers
# the tests start (engine thread, uvicorn, client) would otherwise compete with it for the two cores.
torch.set_num_threads(1)
