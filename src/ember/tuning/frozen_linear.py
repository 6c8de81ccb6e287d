"""The frozen base projections of a network being LoRA-trained: nothing of their weights kept for backward, and
their matmuls in the precision the trainer chose.

torch's linear under autograd keeps its weight for the input gradient. When that weight is a temporary (decoded
from GGML blocks, or cast to bf16) every layer's decoded matrix then stays alive until backward. Here a custom
autograd Function keeps nothing: backward decodes the weight again and computes grad_x = grad_y @ W; the weight
itself never gets a gradient.

Where the weights live (`freeze_base_linears`):
- fp32 matmuls: GGML blocks stay packed and are decoded per call, in forward and again in backward (exact: the
  same values as the fp32 model, a fraction of its memory); dense fp32 weights are used as they are.
- bf16 matmuls (CPUs with native bf16: AVX512-BF16 or AMX, where they run ~4x fp32): one bf16 copy of each
  matrix, decoded once. Inputs are rounded to bf16 for the matmul and results come back as fp32, so the
  residual stream, norms, attention, the LoRA path and the loss stay fp32.
- The output matrix (lm_head) is always fp32, one dense copy (the loss users read comes from it); a tied packed
  embedding keeps looking its rows up in the packed blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ember.models.linear import ConcatLinear, is_packed
from ember.models.quant.packed_linear import PackedLinear
from ember.models.quant.packed_weight import PackedWeight
from ember.tuning.trainer_config import BASE_MATMUL_DTYPES


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo: there bf16 GEMMs are fast; elsewhere they are 10-100x slower
    than fp32 (no native bf16 on AVX2-only CPUs)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False
    return False


def resolve_base_matmul_dtype(requested: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs and on CPUs with native bf16, else fp32."""
    if requested not in BASE_MATMUL_DTYPES:
        raise ValueError(
            f"base_matmul_dtype must be one of {', '.join(BASE_MATMUL_DTYPES)}, got {requested!r}"
        )
    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        return torch.bfloat16
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return torch.bfloat16 if native else torch.float32


class _FrozenMatmul(torch.autograd.Function):
    """x [T, in] -> x @ W.T [T, out] fp32; saves no tensor, backward asks the layer for W again."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: FrozenLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer.matmul(x)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor, None]:
        weight = ctx.layer.matrix()  # [out, in]
        grad_x = grad_y.to(weight.dtype) @ weight  # [T, out] @ [out, in] -> [T, in]
        return grad_x.float(), None


class FrozenLinear(nn.Module):
    """y = x @ W.T + b for a weight that never trains: W kept as packed GGML blocks decoded per call (fp32 only,
    when `keep_packed` and every part is packed) or as one dense matrix in `dtype`."""

    def __init__(
        self,
        parts: list[torch.Tensor | PackedWeight],
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        keep_packed: bool = True,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.in_features = int(parts[0].shape[1])
        self.out_features = sum(int(p.shape[0]) for p in parts)
        self.packed_parts: list[PackedWeight] | None = None
        self.dense: torch.Tensor | None = None
        if keep_packed and dtype == torch.float32 and all(is_packed(p) for p in parts):
            self.packed_parts = list(parts)  # type: ignore[arg-type]
        else:
            decoded = [_decoded(p, dtype) for p in parts]
            self.dense = decoded[0] if len(decoded) == 1 else torch.cat(decoded)
        self.bias = None if bias is None else bias.detach().float()

    def matrix(self) -> torch.Tensor:
        """W [out, in] in self.dtype (decoded now when the layer keeps packed blocks)."""
        if self.dense is not None:
            return self.dense
        assert self.packed_parts is not None
        decoded = [p.dequantize() for p in self.packed_parts]
        return decoded[0] if len(decoded) == 1 else torch.cat(decoded)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.matrix()
        return (x.to(weight.dtype) @ weight.t()).float()  # [T, in] @ [in, out] -> [T, out] fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [T, in]
        if torch.is_grad_enabled() and flat.requires_grad:
            y = _FrozenMatmul.apply(flat, self)
        else:
            y = self.matmul(flat)
        if self.bias is not None:
            y = y + self.bias
        if x.dim() == 2:
            # not a view: the LoRA Function adds to y in place, which autograd would copy for a view
            return y
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        held = "packed" if self.packed_parts is not None else str(self.dtype).removeprefix("torch.")
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={held}"


def _decoded(part: torch.Tensor | PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    dense = part.dequantize() if is_packed(part) else part.detach()  # type: ignore[union-attr]
    return dense.to(dtype)


def _weight_parts(module: nn.Module) -> tuple[list[torch.Tensor | PackedWeight], torch.Tensor | None]:
    """The weight matrices (row blocks, in output order) and the bias of a base projection module."""
    if isinstance(module, nn.Linear):
        return [module.weight], module.bias
    if isinstance(module, PackedLinear):
        return [module.weight], module.bias
    if isinstance(module, ConcatLinear):
        parts: list[torch.Tensor | PackedWeight] = []
        biases: list[torch.Tensor] = []
        for part in module.parts:
            weights, bias = _weight_parts(part)
            parts += weights
            if bias is not None:
                biases.append(bias)
        if biases and len(biases) != len(module.parts):
            raise ValueError("a projection with a bias on only some of its parts cannot be frozen")
        return parts, torch.cat(biases) if biases else None
    raise TypeError(f"cannot freeze a base projection of type {type(module).__name__}")


def freeze_base_linears(network: nn.Module, dtype: torch.dtype) -> None:
    """Replace every decoder layer's projections (q|k|v, o, gate|up, down) by FrozenLinear in `dtype`, and a
    packed lm_head by one dense fp32 copy. The network serves training from then on (its modules changed)."""
    for layer in network.layers:  # type: ignore[union-attr]
        attn, mlp = layer.self_attn, layer.mlp
        for owner, name in ((attn, "qkv_proj"), (attn, "o_proj"), (mlp, "gate_up_proj"), (mlp, "down_proj")):
            module = getattr(owner, name)
            if isinstance(module, FrozenLinear):
                continue
            parts, bias = _weight_parts(module)
            setattr(owner, name, FrozenLinear(parts, bias, dtype))
    lm_head = network.lm_head
    if not isinstance(lm_head, nn.Linear | FrozenLinear):
        parts, bias = _weight_parts(lm_head)
        # one decoded fp32 copy, not a decode per loss chunk
        network.lm_head = FrozenLinear(parts, bias, torch.float32, keep_packed=False)
