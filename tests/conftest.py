from __future__ import annotations

import torch

# Tests run tiny tensors, where a second OpenMP thread only adds synchronisation; and the in-process servers
# the tests start (engine thread, uvicorn, client) would otherwise compete with it for the two cores.
torch.set_num_threads(1)
