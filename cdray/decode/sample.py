"""Sampling continuations of a list of prompts in one call: the engine's entry for tests,
benchmarks and notebooks (the generate stage goes through its shared batch instead)."""
from __future__ import annotations

import torch

from cdray.common.special_tokens import EOS_ID, PAD_ID
from cdray.config import DecodingConfig
from cdray.decode.engine import Decoder


def generate(expert, amateur, prompts: list[list[int]], row_seeds: list[int], strategy: str,
             d: DecodingConfig, *, max_new_tokens: int, stop_at_eos: bool, eos_id: int = EOS_ID,
             pad_id: int = PAD_ID, batch_size: int = 64, device="cpu", dtype=torch.float32,
             amateur_dropout: float = 0.0, max_len: int | None = None, engine: str = "auto",
             refill: bool = True, attention: str = "auto", compile_layers: bool = False,
             kv_cache: str = "model"):
    """Sample one continuation per prompt (see cdray.decode.engine.Decoder.generate).

    Row j uses uniforms from seed row_seeds[j]. The HF models are read, not modified: the engine
    copies their weights (stacked when expert and amateur share a shape) into `dtype` on
    `device`; logits are upcast to fp32 before scoring. amateur_dropout = p > 0 runs the
    amateur with attention dropout p (a DROP-p amateur); the expert never drops. attention is
    one of cdray.decode.stacked.ATTENTION; compile_layers applies to its fast step; kv_cache is one of
    cdray.decode.stacked.KV_CACHE.
    """
    dec = Decoder(expert, amateur, strategy, d, device=device, dtype=dtype,
                  amateur_dropout=float(amateur_dropout), engine=engine, attention=attention,
                  compile_layers=compile_layers, kv_cache=kv_cache)
    return dec.generate(prompts, row_seeds, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                        eos_id=eos_id, pad_id=pad_id, batch_size=batch_size, max_len=max_len,
                        refill=refill)
