"""Sentence-transformers pooling: from an encoder's token states to one vector per input, and its
`1_Pooling/config.json` read strictly (an unknown mode is refused rather than pooled another way)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.models.errors import ModelLoadError

# In the order sentence-transformers concatenates them when a config turns on more than one.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
_CONFIG_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class Pooling:
    modes: tuple[str, ...] = ("mean",)

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in POOLING_MODES]
        if not self.modes or unknown:
            raise ValueError(f"pooling modes must be some of {', '.join(POOLING_MODES)}, got {self.modes}")

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, H], mask [B, T] (True on real tokens, padding at the end) -> [B, H * len(modes)]."""
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        counts = weights.sum(dim=1).clamp(min=1e-9)  # [B, 1]
        summed = (hidden * weights).sum(dim=1)  # [B, H]
        parts = []
        for mode in POOLING_MODES:
            if mode not in self.modes:
                continue
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(hidden.masked_fill(~mask.unsqueeze(-1), -1e9).max(dim=1).values)
            elif mode == "mean":
                parts.append(summed / counts)
            elif mode == "mean_sqrt_len":
                parts.append(summed / counts.sqrt())
            elif mode == "weightedmean":
                positions = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype, device=hidden.device)
                position_weights = weights * positions[None, :, None]  # [B, T, 1]
                parts.append((hidden * position_weights).sum(dim=1) / position_weights.sum(dim=1))
            else:  # lasttoken
                last = mask.sum(dim=1) - 1  # [B]
                parts.append(hidden[torch.arange(hidden.shape[0]), last])
        return torch.cat(parts, dim=-1)


def read_pooling(folder: Path) -> Pooling:
    """The Pooling a sentence-transformers `*_Pooling/config.json` folder describes."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(str(path), f"cannot read the pooling config: {error}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(str(path), "the pooling config must be a JSON object")
    modes = tuple(mode for key, mode in _CONFIG_KEYS.items() if raw.get(key) is True)
    if not modes:
        raise ModelLoadError(
            str(path), f"no pooling mode is turned on (expected one of {', '.join(_CONFIG_KEYS)})"
        )
    ordered = tuple(m for m in POOLING_MODES if m in modes)
    return Pooling(ordered)
