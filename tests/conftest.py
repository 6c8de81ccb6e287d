from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:
    from ember.models.loader import LoadedModel

# Every engine a test builds (and every `ember serve` it starts) checks its KV bookkeeping, and that nothing is
# left held, each time it runs out of work.
os.environ.setdefault("EMBER_DEBUG_INVARIANTS", "1")

# Tests run tiny tensors, where a second OpenMP thread only adds synchronisation; and the in-process servers
# the tests start (engine thread, uvicorn, client) would otherwise compete with it for the two cores.
torch.set_num_threads(1)


def _kernels_required() -> bool:
    """`make test` sets EMBER_REQUIRE_KERNELS=1 where a C++ compiler exists: a kernel that did not build is then
    a failure, not a skip. A plain `pytest` on a machine without a compiler still skips (the torch fallback)."""
    return os.environ.get("EMBER_REQUIRE_KERNELS") == "1"


@pytest.fixture
def native_kernels() -> None:
    """For tests of the native extension: skip without it, unless the build was required."""
    from ember import kernels

    if kernels.available():
        return
    if _kernels_required():
        pytest.fail("EMBER_REQUIRE_KERNELS=1 but ember.kernels._quant_kernels is not built or does not load")
    pytest.skip("the native kernels are not built (no C++ compiler at install time)")


@pytest.fixture
def fused_decode_kernels(native_kernels: None) -> None:
    """For tests of the fused AVX2 decode step: skip on a CPU without AVX2, fail if it should run here."""
    from ember.kernels import decode_step, simd_level

    if decode_step.available():
        return
    if simd_level() != "avx2":
        pytest.skip(f"the fused decode step needs AVX2; this CPU runs the {simd_level()} kernels")
    pytest.fail("the CPU has AVX2 but the fused decode step does not load (a stale or mismatched build)")


@pytest.fixture(scope="session")
def smollm_tokenizer() -> Any:
    """The default model's tokenizer as transformers reads it from the GGUF (the test-time reference). One for
    the session: reading the GGUF's vocabulary takes transformers ~10 s, and a tokenizer is never mutated."""
    from transformers import AutoTokenizer

    from ember.models.default_model import default_gguf_path

    folder, name = os.path.split(default_gguf_path())
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="session")
def smollm_hf_model() -> torch.nn.Module:
    """The default model as transformers loads it from the GGUF, fp32 and in eval mode (the reference the
    engine's greedy tokens are checked against). One for the session: the load takes ~15 s. Tests only run it;
    one that changes it (PEFT wraps its layers in place) works on a copy.deepcopy."""
    from transformers import AutoModelForCausalLM

    from ember.models.default_model import default_gguf_path

    folder, name = os.path.split(default_gguf_path())
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def smollm_fp32_model() -> LoadedModel:
    """The default model as ember loads it in fp32 (LoadConfig(weight_format="fp32")), the exact reference path.
    One for the session: the load dequantizes every weight (10-20 s on a loaded machine) and four files used to
    repeat it. Engines built on it keep their KV caches and adapters to themselves; nothing changes the network."""
    from ember.models.loader import LoadConfig, load_model

    return load_model(LoadConfig(weight_format="fp32"))


@pytest.fixture(scope="session")
def smollm_served_model() -> LoadedModel:
    """The default model as `ember serve` loads it (LoadConfig(): packed GGUF blocks on the kernels). One for the
    session, shared by the servers and engines built on it, which only read it (as with `tiny_llama`)."""
    from ember.models.loader import LoadConfig, load_model

    return load_model(LoadConfig())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shuffle",
        type=int,
        default=None,
        metavar="SEED",
        help="run the test modules, and the tests within each module, in an order shuffled by SEED: a test that "
        "passes only after another one fails here (module-scoped fixtures stay shared within a module)",
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.getoption("--shuffle")
    return None if seed is None else f"test order shuffled with --shuffle {seed}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seed = config.getoption("--shuffle")
    if seed is None:
        return
    rng = random.Random(seed)
    by_module: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_module.setdefault(str(item.path), []).append(item)
    modules = list(by_module.values())
    rng.shuffle(modules)
    for module in modules:
        rng.shuffle(module)
    items[:] = [item for module in modules for item in module]
