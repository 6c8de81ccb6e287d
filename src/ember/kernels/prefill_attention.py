"""Causal attention of prefill chunks over the paged KV cache on the native kernels
(csrc/quant_kernels/prefill_attention*.cpp): query tiles x key tiles with an online softmax, the cache's rows read
in their stored dtype (fp32, fp16, bf16, q8_0), each key/value tile shared by the query heads of its group.

`NativePrefillAttention` is what the attention backend holds when the kernels can serve; which instruction set
it runs (AVX2, or AVX-512 where the CPU has it) is fixed when it is made."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.kernels.kernel_isa import requested_isa
from ember.kernels.quant_matmul import ISA_IDS, native_module
from ember.models.kv_cache_format import format_of_cache

# Fastest first. "avx512_vnni" is the family id of kernel_isa.h: this kernel uses its AVX-512 F registers only.
PREFILL_ISAS = ("avx512_vnni", "avx2")


def prefill_isas_here() -> tuple[str, ...]:
    """The instruction sets the prefill attention kernel runs on this CPU and build, fastest first."""
    return tuple(isa for isa in PREFILL_ISAS if isa in ISA_IDS)


def default_prefill_isa() -> str | None:
    """The fastest set here, or the one EMBER_KERNEL_ISA names (so an AVX2-only machine can be measured on an
    AVX-512 one); None when the kernels cannot serve (no extension, no AVX2, or EMBER_KERNEL_ISA=scalar)."""
    here = prefill_isas_here()
    requested = requested_isa()
    if requested == "auto":
        return here[0] if here else None
    return requested if requested in here else None


@dataclass(frozen=True)
class NativePrefillAttention:
    """The native prefill attention on one instruction set."""

    isa: str

    def __post_init__(self) -> None:
        if self.isa not in prefill_isas_here():
            raise ValueError(
                f"prefill attention on {self.isa!r} does not run here; it runs on {', '.join(prefill_isas_here())}"
            )

    @staticmethod
    def when_available() -> NativePrefillAttention | None:
        isa = default_prefill_isa()
        return None if isa is None else NativePrefillAttention(isa)

    def serves(self, q: torch.Tensor, key_cache: torch.Tensor) -> bool:
        """Whether these queries and this cache are of the kind the kernel reads (fp32 CPU queries, a contiguous
        CPU cache, head_dim a multiple of 8); otherwise the torch reference attends."""
        return (
            q.dtype == torch.float32
            and q.is_cpu
            and key_cache.is_cpu
            and key_cache.is_contiguous()
            and q.shape[2] % 8 == 0
        )

    def attend(
        self,
        q: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        block_tables: torch.Tensor,
        query_starts: list[int],
        query_lens: list[int],
        context_lens: list[int],
        scale: float,
        out: torch.Tensor,
        num_threads: int | None = None,
    ) -> None:
        """Rows query_starts[i] .. + query_lens[i] of out [T, Hq, D] = causal attention of the same rows of q
        [T, Hq, D] (sequence i's last query_lens[i] positions of context_lens[i]) over the cache, whose slots of
        those positions already hold the chunk's keys and values. block_tables [S, max_blocks] int64."""
        num_tokens, num_heads, head_dim = q.shape
        num_seqs = len(query_lens)
        if not (len(query_starts) == num_seqs == len(context_lens) == block_tables.shape[0]):
            raise ValueError(
                "query_starts, query_lens, context_lens and block_tables need one entry per sequence"
            )
        if any(s < 0 or s + n > num_tokens for s, n in zip(query_starts, query_lens, strict=True)):
            raise ValueError(f"a sequence's rows fall outside the {num_tokens} query rows")
        if out.shape != q.shape or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 tensor of q's shape {tuple(q.shape)}")
        if value_cache.shape != key_cache.shape or value_cache.dtype != key_cache.dtype:
            raise ValueError("the key and value caches differ in shape or dtype")
        if not value_cache.is_contiguous():
            raise ValueError("the value cache must be contiguous")
        kv_format = format_of_cache(key_cache)
        if key_cache.shape[3] != kv_format.row_width(head_dim):
            raise ValueError(
                f"the cache's rows are {key_cache.shape[3]} wide, not those of head_dim {head_dim}"
            )
        q = q.contiguous()
        tables = block_tables.to(torch.int64).contiguous()
        index = torch.tensor([query_starts, query_lens, context_lens], dtype=torch.int64)  # [3, S]
        threads = torch.get_num_threads() if num_threads is None else num_threads
        # The extension checks the counts, lengths and every block id it will read against the cache.
        native_module().prefill_attention(
            ISA_IDS[self.isa],
            (
                q.data_ptr(),
                out.data_ptr(),
                key_cache.data_ptr(),
                value_cache.data_ptr(),
                key_cache.shape[0],
                tables.data_ptr(),
                tables.shape[1],
                index[0].data_ptr(),
                index[1].data_ptr(),
                index[2].data_ptr(),
            ),
            (
                num_seqs,
                num_heads,
                key_cache.shape[2],
                head_dim,
                key_cache.shape[1],
                kv_format.native_id,
                scale,
            ),
            threads,
        )
