"""How LoRA enters the forward: a per-batch context passed down the network, never stored in the modules.

The base projections are untouched. After each one (fused q|k|v, o, fused gate|up, down) the layer calls
`LayerLora.apply`, which adds, for every adapter in the batch and only on that adapter's token rows,
(dropout(x) @ A.T @ B.T) * scaling into the output slice of the module it targets. One forward can thus
serve base-model rows and rows of several adapters at once; training uses one group covering every row
whose A and B are trainable nn.Parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ember.lora.adapter import LoraAdapter, LoraWeights
from ember.lora.errors import LoraError
from ember.lora.targets import check_target_modules, module_shapes

Rows = slice | torch.Tensor | None


@dataclass(frozen=True)
class LoraGroup:
    """One adapter applied to some rows of the flattened batch."""

    weights: Mapping[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # (layer, module) -> (A, B)
    scaling: float
    rows: Rows  # the token rows this adapter owns: a slice, int64 indices [n], or None for every row
    dropout: float = 0.0  # probability on the LoRA input; only training contexts set it
    # Set for frozen (served) weights: its cached fused pairs need two matmuls per base projection.
    serving: LoraAdapter | None = None

    def deltas(
        self, layer: int, x: torch.Tensor, modules: tuple[str, ...], sizes: tuple[int, ...]
    ) -> list[tuple[int, torch.Tensor]]:
        """(output column offset, delta [n, width]) for this group's rows of x [T, in]; empty if no module of
        the projection is adapted in this layer."""
        xs = x if self.rows is None else x[self.rows]  # [n, in]
        if self.serving is not None:
            fused = self.serving.fused_pair(layer, modules, sizes)
            if fused is None:
                return []
            a, b = _as_dtype(fused, xs.dtype)
            return [(0, (xs @ a.t()) @ b.t())]  # [n, k*r] -> [n, sum(sizes)], scaling folded into b
        found = []
        offset = 0
        for module, size in zip(modules, sizes, strict=True):
            pair = self.weights.get((layer, module))
            if pair is not None:
                a, b = _as_dtype(pair, xs.dtype)
                h = F.dropout(xs, self.dropout, training=True) if self.dropout > 0 else xs
                found.append((offset, (h @ a.t()) @ b.t() * self.scaling))  # [n, r] -> [n, size]
            offset += size
        return found


def _as_dtype(
    pair: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = pair
    return (a, b) if a.dtype == dtype else (a.to(dtype), b.to(dtype))


@dataclass(frozen=True)
class LayerLora:
    """The groups of a LoraContext seen from one decoder layer."""

    layer_idx: int
    groups: tuple[LoraGroup, ...]

    def apply(
        self, y: torch.Tensor, x: torch.Tensor, modules: tuple[str, ...], sizes: tuple[int, ...]
    ) -> torch.Tensor:
        """y [T, sum(sizes)] = base projection of x [T, in], the outputs of `modules` (widths `sizes`) side by
        side; returns y plus every group's delta in its rows and output columns."""
        # Under autograd the deltas are summed out of place; in inference they go straight into y.
        out = torch.zeros_like(y) if torch.is_grad_enabled() else y
        touched = False
        for group in self.groups:
            for offset, delta in group.deltas(self.layer_idx, x, modules, sizes):
                columns = slice(offset, offset + delta.shape[-1])
                if group.rows is None:
                    out[:, columns] += delta
                else:
                    out[group.rows, columns] += delta
                touched = True
        if out is y or not touched:
            return y
        return y + out


@dataclass(frozen=True)
class LoraContext:
    """The adapters of one forward call and which token rows each one owns."""

    groups: tuple[LoraGroup, ...]

    def layer(self, layer_idx: int) -> LayerLora:
        return LayerLora(layer_idx, self.groups)

    @staticmethod
    def for_batch(spans: Sequence[tuple[LoraAdapter | None, int]]) -> LoraContext | None:
        """spans: (adapter or None for the base model, number of tokens) for each sequence, in batch order.
        None when no sequence uses an adapter, so a base-only batch runs exactly the base forward."""
        rows_by_adapter: dict[int, list[int]] = {}  # by identity: one group per adapter object
        adapters: dict[int, LoraAdapter] = {}
        start = 0
        for adapter, count in spans:
            if count < 0:
                raise ValueError(f"a span cannot have {count} tokens")
            if adapter is not None:
                adapters[id(adapter)] = adapter
                rows_by_adapter.setdefault(id(adapter), []).extend(range(start, start + count))
            start += count
        if not adapters:
            return None
        groups = []
        for ident, adapter in adapters.items():
            rows = rows_by_adapter[ident]
            if not rows or not adapter.weights:
                continue
            device = next(iter(adapter.weights.values()))[0].device
            rows_index = _compact_rows(rows, start, device)
            groups.append(LoraGroup(adapter.weights, adapter.scaling, rows_index, serving=adapter))
        if not groups:
            return None
        return LoraContext(tuple(groups))

    def select(self, rows: list[int], total: int) -> LoraContext | None:
        """The context of a sub-batch made of `rows` (ascending) of this context's batch of `total` rows, each
        group's rows renumbered into the sub-batch; None when no adapter row is among them."""
        position = {row: i for i, row in enumerate(rows)}
        groups = []
        for group in self.groups:
            owned = _row_list(group.rows, total)
            kept = [position[row] for row in owned if row in position]
            if kept:
                device = group.rows.device if isinstance(group.rows, torch.Tensor) else None
                groups.append(replace(group, rows=_compact_rows(kept, len(rows), device)))
        return LoraContext(tuple(groups)) if groups else None


def _row_list(rows: Rows, total: int) -> list[int]:
    if rows is None:
        return list(range(total))
    if isinstance(rows, slice):
        return list(range(*rows.indices(total)))
    return [int(row) for row in rows.tolist()]


def _compact_rows(rows: list[int], total: int, device: torch.device | None) -> Rows:
    """None for every row, a slice for one contiguous run (the common case: one request), else indices."""
    if len(rows) == total:
        return None
    if rows[-1] - rows[0] + 1 == len(rows):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, dtype=torch.int64, device=device)


class TrainableLora(nn.Module):
    """The trainable A/B pairs of one adapter for every layer and target module, in fp32.

    A starts kaiming-uniform (a=sqrt(5)) and B at zero, as PEFT initialises them, so the first forward equals
    the base model's. Pass `context()` to the model's forward; dropout is active while the module is in
    training mode (`train()` / `eval()`)."""

    def __init__(
        self,
        layers: int,
        shapes: Mapping[str, tuple[int, int]],
        rank: int,
        alpha: float,
        dropout: float,
        target_modules: tuple[str, ...],
        use_rslora: bool,
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.use_rslora = use_rslora
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for layer in range(layers):
            for module in target_modules:
                out_features, in_features = shapes[module]
                a = torch.empty(rank, in_features)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
                self.lora_A[_param_key(layer, module)] = nn.Parameter(a.to(device))
                self.lora_B[_param_key(layer, module)] = nn.Parameter(
                    torch.zeros(out_features, rank, device=device)
                )

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def pairs(self) -> LoraWeights:
        pairs: LoraWeights = {}
        for key, a in self.lora_A.items():
            layer, module = key.split("_", 1)
            pairs[(int(layer.removeprefix("layer")), module)] = (a, self.lora_B[key])
        return pairs

    def context(self) -> LoraContext:
        """Every row of the batch gets this adapter; gradients flow into lora_A / lora_B."""
        dropout = self.dropout if self.training else 0.0
        return LoraContext((LoraGroup(self.pairs(), self.scaling, None, dropout),))

    def to_adapter(self, name: str) -> LoraAdapter:
        """A detached fp32 CPU copy, ready for save_peft_adapter or the engine."""
        weights = {
            key: (a.detach().float().cpu().clone(), b.detach().float().cpu().clone())
            for key, (a, b) in self.pairs().items()
        }
        return LoraAdapter(name, self.rank, self.alpha, self.target_modules, weights, self.use_rslora)

    @torch.no_grad()
    def load_adapter(self, adapter: LoraAdapter) -> None:
        """Copy an adapter's weights in (resuming from a checkpoint); it must have this module's layout."""
        if (adapter.rank, adapter.target_modules) != (self.rank, self.target_modules):
            raise LoraError(
                f"adapter {adapter.name!r} has rank {adapter.rank} and modules {adapter.target_modules}, "
                f"expected rank {self.rank} and modules {self.target_modules}"
            )
        pairs = self.pairs()
        if set(adapter.weights) != set(pairs):
            raise LoraError(f"adapter {adapter.name!r} does not cover the same layers as this trainable LoRA")
        for key, (a, b) in adapter.weights.items():
            pairs[key][0].copy_(a)
            pairs[key][1].copy_(b)


def _param_key(layer: int, module: str) -> str:
    # nn.ParameterDict keys cannot contain dots
    return f"layer{layer}_{module}"


def attach_trainable_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    seed: int,
    *,
    use_rslora: bool = False,
) -> TrainableLora:
    """Freeze every base parameter of `model` (a DecoderModel) and create a TrainableLora for it.

    The model is not modified otherwise: call `model(ids, positions, attn, None, lora=lora.context())`."""
    if rank <= 0:
        raise LoraError(f"LoRA rank must be positive, got {rank}")
    if alpha <= 0:
        raise LoraError(f"LoRA alpha must be positive, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise LoraError(f"LoRA dropout must be in [0, 1), got {dropout}")
    try:
        modules = check_target_modules(list(target_modules))
    except ValueError as exc:
        raise LoraError(str(exc)) from exc
    config = getattr(model, "config", None)
    if config is None:
        raise LoraError("attach_trainable_lora needs a DecoderModel (a module with a ModelConfig `config`)")
    for param in model.parameters():
        param.requires_grad_(False)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    return TrainableLora(
        config.num_layers, module_shapes(config), rank, alpha, dropout, modules, use_rslora, device, generator
    )
