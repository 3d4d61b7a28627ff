"""cdray's Triton kernels compile for an H100 (sm_90) without one: every specialization the decode
step launches goes through Triton's whole pipeline to a cubin (triton ships ptxas), so a kernel the
CPU interpreter accepts but the GPU compiler rejects fails here, not on the device machine."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent

ATTENTION = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "ks_ptr": "*bf16",
             "vs_ptr": "*bf16", "len_ptr": "*i32", "o_ptr": "*bf16",
             **{name: "i64" for name in ("stride_qn", "stride_qh", "stride_kn", "stride_kh",
                                         "stride_kt", "stride_sn", "stride_sh", "stride_on",
                                         "stride_oh")},
             "qk_scale": "fp32"}
FP8_CACHE = {"k_ptr": "*fp8e4nv", "v_ptr": "*fp8e4nv"}


def specializations():
    """(label, kernel name, signature, constexprs) of what cdray launches on a bf16 model: GOOD's
    12 heads of 64 (one query head per kv head) and a grouped-query shape, each cache. (Also run
    with triton 3.6, the H100 machine's, on 2026-11-26: all compiled.)"""
    out = []
    for fp8 in (False, True):
        cache = {**ATTENTION, **(FP8_CACHE if fp8 else {})}
        for rep, one_row in ((1, False), (1, True), (4, False)):
            out.append((f"attention rep={rep} fp8={fp8} one_row={one_row}",
                        "decode_attention_kernel", cache,
                        dict(NKV=12 // rep, REP=rep, REP_P=16, HD=64, BLOCK_N=64, SCALED=fp8,
                             F32_DOT=False, FP16_DOT=fp8, ONE_ROW=one_row)))
        out.append((f"vector attention fp8={fp8}", "decode_attention_vector_kernel", cache,
                    dict(NKV=12, HD=64, BLOCK_N=64, SCALED=fp8)))
    out.append(("rms_norm", "rms_norm_kernel",
                {"x_ptr": "*bf16", "w_ptr": "*bf16", "o_ptr": "*bf16", "rows_per_member": "i32",
                 "H": "i32", "eps": "fp32"}, dict(BLOCK=1024)))
    out.append(("silu_mul", "silu_mul_kernel", {"gu_ptr": "*bf16", "o_ptr": "*bf16", "I": "i32"},
                dict(BLOCK=1024, SPLIT=0.0)))
    for fp8 in (False, True):
        scale = "*bf16" if fp8 else "*i64"  # without fp8 the engine passes positions, unread
        cache = "*fp8e4nv" if fp8 else "*bf16"
        out.append((f"rope_write fp8={fp8}", "rope_write_kernel",
                    {"qkv_ptr": "*bf16", "pos_ptr": "*i64", "inv_freq_ptr": "*fp32", "q_ptr": "*bf16",
                     "k_ptr": cache, "v_ptr": cache, "ks_ptr": scale, "vs_ptr": scale,
                     "rows_per_member": "i32", "T": "i32", "stride_qkv": "i64"},
                    dict(NH=12, NKV=12, HD=64, HEADS_P=64, FP8=fp8, PREROUND=False)))
    for logits in ("bf16", "fp32"):  # the triton step's own logits, and prefill's widened ones
        for mode, amateur in ((0, False), (1, False), (2, True)):
            out.append((f"cd_sample {logits} mode={mode}", "cd_sample_kernel",
                        {"zg_ptr": f"*{logits}", "za_ptr": f"*{logits}", "u_ptr": "*fp32",
                         "tok_ptr": "*i64", "head_ptr": "*i64", "nll_e_ptr": "*fp32",
                         "nll_a_ptr": "*fp32", "V": "i32", "stride_g": "i64", "stride_a": "i64",
                         "inv_t": "fp32", "alpha": "fp32", "lam": "fp32", "penalty": "fp32"},
                        dict(MODE=mode, AMATEUR=amateur, BLOCK=1024)))
    return out


def compile_all() -> None:
    """Compile every specialization for sm_90; print one line each (run without the interpreter)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cdray.decode import kernels as triton_kernels

    target = GPUTarget("cuda", 90, 32)
    for label, name, signature, constexprs in specializations():
        fn = getattr(triton_kernels, name)
        # as a launch specializes them: torch's allocations and the strides are multiples of 16
        # (not the fp8 scales', multiples of the cache length's 8), which lets the compiler
        # vectorize loads: the code that really runs
        aligned = {(fn.arg_names.index(arg),): [["tt.divisibility", 16]]
                   for arg, kind in signature.items()
                   if kind.startswith("*") or (arg.startswith("stride_")
                                               and arg not in ("stride_sn", "stride_sh"))}
        src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}},
                        constexprs=constexprs, attrs=aligned)
        kernel = triton.compile(src, target=target, options={"num_warps": 4, "num_stages": 3})
        assert kernel.asm.get("cubin"), label
        print(f"compiled {label}")


def test_every_kernel_compiles_for_an_h100():
    # the interpreter (conftest) replaces @triton.jit functions, which the compiler cannot take:
    # compile in a fresh process without it
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset
    run = subprocess.run([sys.executable, "-c",
                          "import tests.test_triton_compile as t; t.compile_all()"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("compiled ") == len(specializations())
