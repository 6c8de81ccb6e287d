"""Rotary position embeddings with Hugging Face Llama semantics (NeoX style: the two halves of a head rotate
together, `rotate_half`), plus the Llama-3 and linear frequency scalings."""

from __future__ import annotations

import math

import torch

from ember.models.config import RopeScaling

SUPPORTED_ROPE_TYPES = ("llama3", "linear")
_MIN_CACHED_POSITIONS = 4096


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """[head_dim // 2] fp32 inverse frequencies, computed exactly as transformers does so logits match."""
    if head_dim % 2 != 0:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # [D/2]
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "llama3":
        return _llama3_scaled(inv_freq, scaling)
    raise ValueError(
        f"unsupported rope scaling type {scaling.rope_type!r}; ember supports {', '.join(SUPPORTED_ROPE_TYPES)}"
    )


def _llama3_scaled(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated smoothly."""
    if scaling.high_freq_factor <= scaling.low_freq_factor:
        raise ValueError(
            f"llama3 rope scaling needs high_freq_factor > low_freq_factor, "
            f"got {scaling.high_freq_factor} and {scaling.low_freq_factor}"
        )
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq  # [D/2]
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding:
    """cos/sin tables per position, computed once and extended only when a longer position arrives.

    The tables are plain fp32 tensors rather than module buffers on purpose: moving the network to bf16 must not
    round the angles, and one table serves every layer.
    """

    def __init__(
        self, head_dim: int, max_position_embeddings: int, theta: float, scaling: RopeScaling | None
    ):
        self.head_dim = head_dim
        self.inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)  # [D/2]
        self._cos = torch.empty(0, head_dim)  # [P, D]
        self._sin = torch.empty(0, head_dim)  # [P, D]
        self._build(min(max_position_embeddings, _MIN_CACHED_POSITIONS), torch.device("cpu"))

    def _build(self, num_positions: int, device: torch.device) -> None:
        positions = torch.arange(num_positions, dtype=torch.float32, device=device)  # [P]
        freqs = positions[:, None] * self.inv_freq.to(device)[None, :]  # [P, D/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [P, D]
        self._cos = angles.cos()
        self._sin = angles.sin()

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for the given positions: two [T, D] tensors in `dtype` on the positions' device."""
        if positions.numel() == 0:
            empty = torch.empty(0, self.head_dim, dtype=dtype, device=positions.device)
            return empty, empty
        if int(positions.min()) < 0:
            raise ValueError("positions must be non-negative")
        needed = int(positions.max()) + 1
        if needed > self._cos.shape[0] or self._cos.device != positions.device:
            capacity = max(self._cos.shape[0], 1 << (needed - 1).bit_length())
            self._build(capacity, positions.device)
        return self._cos[positions].to(dtype), self._sin[positions].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D] and k [T, Hkv, D] rotated by per-token cos/sin [T, D]."""
    cos = cos.unsqueeze(1)  # [T, 1, D]
    sin = sin.unsqueeze(1)  # [T, 1, D]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
