"""LoraManager: registration, on-demand loading, LRU eviction, reference counts and their errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from lora_helpers import random_adapter, small_config

from ember.lora.adapter import save_peft_adapter
from ember.lora.errors import LoraError
from ember.lora.manager import LoraManager

CONFIG = small_config()


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for i, name in enumerate(["a", "b", "c"]):
        path = tmp_path / name
        save_peft_adapter(random_adapter(CONFIG, name, seed=i), str(path), "tiny-llama")
        paths[name] = str(path)
    return paths


def loaded(manager: LoraManager) -> dict[str, bool]:
    return {info.name: info.loaded for info in manager.list_adapters()}


def test_register_loads_and_lists(folders: dict[str, str]) -> None:
    manager = LoraManager(2, CONFIG, device="cpu", dtype=torch.float64)
    info = manager.register("a", folders["a"])
    assert (info.name, info.path, info.rank, info.loaded, info.active_requests) == (
        "a",
        folders["a"],
        4,
        True,
        0,
    )
    assert "a" in manager and "b" not in manager
    adapter = manager.get("a")
    assert adapter.name == "a"
    assert all(t.dtype == torch.float64 for pair in adapter.weights.values() for t in pair)


def test_least_recently_used_idle_adapter_is_evicted_and_reloaded_on_demand(folders: dict[str, str]) -> None:
    manager = LoraManager(2, CONFIG)
    manager.register("a", folders["a"])
    manager.register("b", folders["b"])
    manager.get("a")  # b is now the least recently used
    manager.register("c", folders["c"])
    assert loaded(manager) == {"a": True, "b": False, "c": True}
    reloaded = manager.get("b")
    assert loaded(manager) == {"a": False, "b": True, "c": True}
    expected = random_adapter(CONFIG, "b", seed=1)
    assert torch.equal(reloaded.weights[(1, "down_proj")][1], expected.weights[(1, "down_proj")][1])


def test_adapters_in_use_are_never_evicted(folders: dict[str, str]) -> None:
    manager = LoraManager(1, CONFIG)
    manager.register("a", folders["a"])
    key_a = manager.acquire("a")
    manager.register("b", folders["b"])  # a is pinned and b was just used: the limit is exceeded for now
    assert loaded(manager) == {"a": True, "b": True}
    key_b = manager.acquire("b")
    assert manager.num_loaded == 2  # both pinned: the limit gives way rather than breaking a request
    assert manager.adapter_for_key(key_a).name == "a" and manager.adapter_for_key(key_b).name == "b"
    assert {i.name: i.active_requests for i in manager.list_adapters()} == {"a": 1, "b": 1}
    manager.release(key_a)
    assert loaded(manager) == {"a": False, "b": True}
    with pytest.raises(LoraError, match="not loaded"):
        manager.adapter_for_key(key_a)
    manager.release(key_b)
    with pytest.raises(LoraError, match="not acquired"):
        manager.release(key_b)


def test_reference_counts_per_request(folders: dict[str, str]) -> None:
    manager = LoraManager(4, CONFIG)
    manager.register("a", folders["a"])
    keys = [manager.acquire("a") for _ in range(3)]
    assert len(set(keys)) == 1
    with pytest.raises(LoraError, match="in use by 3 running request"):
        manager.unregister("a")
    for key in keys:
        manager.release(key)
    manager.unregister("a")
    assert "a" not in manager and manager.num_loaded == 0


def test_each_registration_gets_a_new_cache_key(folders: dict[str, str]) -> None:
    """The prefix cache is keyed on it: a re-registered name must not reuse the old adapter's KV."""
    manager = LoraManager(2, CONFIG)
    manager.register("a", folders["a"])
    first = manager.acquire("a")
    manager.release(first)
    manager.unregister("a")
    manager.register("a", folders["b"])
    assert manager.acquire("a") != first


def test_in_memory_adapters_stay_loaded(folders: dict[str, str]) -> None:
    manager = LoraManager(1, CONFIG)
    manager.register("mem", random_adapter(CONFIG, "original-name", seed=5))
    manager.register("a", folders["a"])
    manager.register("b", folders["b"])
    assert loaded(manager) == {"mem": True, "a": False, "b": True}
    assert manager.get("mem").name == "mem"
    assert manager.list_adapters()[0].path is None


def test_registry_errors(folders: dict[str, str], tmp_path: Path) -> None:
    manager = LoraManager(2, CONFIG)
    manager.register("a", folders["a"])
    with pytest.raises(LoraError, match="'a' is already registered"):
        manager.register("a", folders["b"])
    with pytest.raises(LoraError, match=r"unknown LoRA adapter 'zzz' \(registered: a\)"):
        manager.get("zzz")
    with pytest.raises(LoraError, match="unknown LoRA adapter 'zzz'"):
        manager.acquire("zzz")
    with pytest.raises(LoraError, match="unknown LoRA adapter 'zzz'"):
        manager.unregister("zzz")
    with pytest.raises(LoraError, match="non-empty name"):
        manager.register("", folders["b"])
    with pytest.raises(LoraError, match="no such adapter folder"):
        manager.register("missing", str(tmp_path / "missing"))
    with pytest.raises(LoraError, match="only 2 layers"):
        manager.register("deep", random_adapter(small_config(num_layers=3), "deep", seed=1))
    assert [info.name for info in manager.list_adapters()] == ["a"]  # failed registrations leave nothing
    with pytest.raises(ValueError, match="max_loaded must be at least 1"):
        LoraManager(0, CONFIG)


def test_adapter_whose_folder_vanished_fails_on_reload(folders: dict[str, str]) -> None:
    manager = LoraManager(1, CONFIG)
    manager.register("a", folders["a"])
    manager.register("b", folders["b"])
    shutil.rmtree(folders["a"])
    with pytest.raises(LoraError, match="no such adapter folder"):
        manager.acquire("a")
    assert {i.name: i.active_requests for i in manager.list_adapters()} == {"a": 0, "b": 0}
