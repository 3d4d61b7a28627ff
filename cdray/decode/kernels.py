"""cdray's Triton kernels (imported on first use by cdray.decode.attention and cdray.decode.fused,
which own their launch; importing this module imports triton)."""
import triton
import triton.language as tl


@triton.jit
def decode_attention_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, len_ptr, o_ptr,
                            stride_qn, stride_qh, stride_kn, stride_kh, stride_kt,
                            stride_sn, stride_sh, stride_on, stride_oh, qk_scale,
                            NKV: tl.constexpr, REP: tl.constexpr, REP_P: tl.constexpr,
                            HD: tl.constexpr, BLOCK_N: tl.constexpr, SCALED: tl.constexpr,
                            F32_DOT: tl.constexpr, FP16_DOT: tl.constexpr,
                            ONE_ROW: tl.constexpr):
    # one program per (row, kv head): its REP query heads (padded to REP_P >= 16 rows, the
    # smallest matrix-unit tile) against the row's keys [0, length) in blocks of BLOCK_N,
    # online softmax, in a fixed order. An fp8 cache's per-key scales multiply the scores
    # and the probabilities, so the products themselves run on the raw e4m3 values
    # (exact in bf16)
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: a large cache passes 2^31 elements
    n = pid // NKV
    h = pid % NKV
    length = tl.load(len_ptr + n)
    r = tl.arange(0, REP_P)
    d = tl.arange(0, HD)
    heads = h * REP + r
    q = tl.load(q_ptr + n * stride_qn + heads[:, None] * stride_qh + d[None, :],
                mask=(r < REP)[:, None], other=0.0)
    # the products' operand type: the model's, or fp16 for an fp8 cache of a bf16 model (e4m3
    # widens to fp16 in one instruction, to bf16 in several; queries and probabilities lose
    # nothing in fp16's range, and keep more bits)
    # (normalized by their largest magnitude: fp16 has no room past 65504)
    if FP16_DOT:
        q_scale = tl.maximum(tl.max(tl.max(tl.abs(q.to(tl.float32)), axis=1), axis=0), 1e-30)
        qd = (q.to(tl.float32) / q_scale).to(tl.float16)
        qk_scale = qk_scale * q_scale
    else:
        qd = q
    k_row = k_ptr + n * stride_kn + h * stride_kh
    v_row = v_ptr + n * stride_kn + h * stride_kh
    m = tl.full([REP_P], float("-inf"), tl.float32)
    l_sum = tl.zeros([REP_P], tl.float32)
    acc = tl.zeros([REP_P, HD], tl.float32)
    for start in range(0, length, BLOCK_N):
        t = start + tl.arange(0, BLOCK_N)
        valid = t < length
        k = tl.load(k_row + t[:, None] * stride_kt + d[None, :], mask=valid[:, None], other=0.0)
        k = k.to(qd.dtype)
        if F32_DOT:
            s = tl.dot(qd.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(qd, tl.trans(k))
        if ONE_ROW:
            # one query head per kv head: the padding rows of q are zeros, so their scores are
            # exactly 0 and the rows' sum is the first row; the softmax then runs on that row
            # alone (one row of exponentials, not 16), and its bits are the padded softmax's row 0
            s = tl.sum(s, axis=0)[None, :]
        if SCALED:
            ks = tl.load(ks_ptr + n * stride_sn + h * stride_sh + t, mask=valid, other=0.0)
            s = s * ks.to(tl.float32)[None, :]
        s = tl.where(valid[None, :], s * qk_scale, float("-inf"))  # log2 units
        m_new = tl.maximum(m, tl.max(s, axis=1))  # ONE_ROW: every entry the first row's
        alpha = tl.exp2(m - m_new)
        if ONE_ROW:
            p = tl.exp2(s - tl.max(m_new, axis=0))
        else:
            p = tl.exp2(s - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        block_scale = 1.0
        if SCALED:
            # the values' scales go into the probabilities, relative to the block's largest so
            # that p * scale stays in [0, 1] whatever the values' magnitude (fp16 would lose
            # small products to its subnormals); that largest scale multiplies the tile after
            vs = tl.load(vs_ptr + n * stride_sn + h * stride_sh + t, mask=valid, other=0.0)
            vs = vs.to(tl.float32)
            block_scale = tl.maximum(tl.max(vs, axis=0), 1e-30)
            p = p * (vs / block_scale)[None, :]
        v = tl.load(v_row + t[:, None] * stride_kt + d[None, :], mask=valid[:, None], other=0.0)
        if ONE_ROW:
            p = tl.where(r[:, None] == 0, p, 0.0)  # back to the product's 16 rows
        p = p.to(qd.dtype)
        v = v.to(qd.dtype)
        if F32_DOT:
            pv = tl.dot(p.to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p, v)
        acc = acc * alpha[:, None] + pv * block_scale
        m = m_new
    out = acc / l_sum[:, None]
    tl.store(o_ptr + n * stride_on + heads[:, None] * stride_oh + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(r < REP)[:, None])


@triton.jit
def decode_attention_vector_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, len_ptr, o_ptr,
                                   stride_qn, stride_qh, stride_kn, stride_kh, stride_kt,
                                   stride_sn, stride_sh, stride_on, stride_oh, qk_scale,
                                   NKV: tl.constexpr, HD: tl.constexpr, BLOCK_N: tl.constexpr,
                                   SCALED: tl.constexpr):
    # decode_attention_kernel for one query head per kv head, on the vector units: no padding
    # to a 16-row tile, fp32 products, the same fixed order per row. The output accumulates per
    # key slot of the tile ([BLOCK_N, HD], rescaled with the running max) and is summed over the
    # slots once at the end: no reduction across threads per tile for the values' side
    pid = tl.program_id(0).to(tl.int64)
    n = pid // NKV
    h = pid % NKV
    length = tl.load(len_ptr + n)
    d = tl.arange(0, HD)
    q = tl.load(q_ptr + n * stride_qn + h * stride_qh + d).to(tl.float32) * qk_scale
    k_row = k_ptr + n * stride_kn + h * stride_kh
    v_row = v_ptr + n * stride_kn + h * stride_kh
    m = float("-inf")
    l_sum = 0.0
    acc = tl.zeros([BLOCK_N, HD], tl.float32)
    for start in range(0, length, BLOCK_N):
        t = start + tl.arange(0, BLOCK_N)
        valid = t < length
        k = tl.load(k_row + t[:, None] * stride_kt + d[None, :], mask=valid[:, None], other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        if SCALED:
            s = s * tl.load(ks_ptr + n * stride_sn + h * stride_sh + t, mask=valid,
                            other=0.0).to(tl.float32)
        s = tl.where(valid, s, float("-inf"))  # log2 units
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new)
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        if SCALED:
            p = p * tl.load(vs_ptr + n * stride_sn + h * stride_sh + t, mask=valid,
                            other=0.0).to(tl.float32)
        v = tl.load(v_row + t[:, None] * stride_kt + d[None, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha + p[:, None] * v.to(tl.float32)
        m = m_new
    out = tl.sum(acc, axis=0) / l_sum
    tl.store(o_ptr + n * stride_on + h * stride_oh + d, out.to(o_ptr.dtype.element_ty))


@triton.jit
def rms_norm_kernel(x_ptr, w_ptr, o_ptr, rows_per_member, H, eps,
                    BLOCK: tl.constexpr):
    # o = w * bf16(x * rsqrt(mean(x^2) + eps)) for one row; w is the row's member's weight
    n = tl.program_id(0).to(tl.int64)
    g = n // rows_per_member
    c = tl.arange(0, BLOCK)
    ok = c < H
    x = tl.load(x_ptr + n * H + c, mask=ok, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    y = (x * r).to(o_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + g * H + c, mask=ok, other=0.0).to(tl.float32)
    tl.store(o_ptr + n * H + c, (w * y).to(o_ptr.dtype.element_ty), mask=ok)


@triton.jit
def silu_mul_kernel(gu_ptr, o_ptr, I, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
    # o = bf16(bf16(silu(gate)) * up) for one row [gate | up] of the fused gate/up projection,
    # rounded as torch's silu(gate) * up rounds (SPLIT > 0: pre-rounded for the interpreter)
    n = tl.program_id(0).to(tl.int64)
    for start in range(0, I, BLOCK):
        c = start + tl.arange(0, BLOCK)
        ok = c < I
        gate = tl.load(gu_ptr + n * 2 * I + c, mask=ok, other=0.0).to(tl.float32)
        up = tl.load(gu_ptr + n * 2 * I + I + c, mask=ok, other=0.0).to(tl.float32)
        act = gate / (1.0 + tl.exp(-gate))
        if SPLIT > 0:
            act = round_bits(act, SPLIT)
        act = act.to(o_ptr.dtype.element_ty).to(tl.float32) * up
        if SPLIT > 0:
            act = round_bits(act, SPLIT)
        tl.store(o_ptr + n * I + c, act.to(o_ptr.dtype.element_ty), mask=ok)


@triton.jit
def round_bits(x, SPLIT: tl.constexpr):
    # x rounded to nearest even at (24 - log2(SPLIT - 1)) significant bits, in plain fp32
    # arithmetic (Veltkamp's split; exact without fused multiply-adds, as in the interpreter)
    c = x * SPLIT
    return c - (c - x)


@triton.jit
def rope_write_kernel(qkv_ptr, pos_ptr, inv_freq_ptr, q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr,
                      rows_per_member, T, stride_qkv, NH: tl.constexpr, NKV: tl.constexpr,
                      HD: tl.constexpr, HEADS_P: tl.constexpr, FP8: tl.constexpr,
                      PREROUND: tl.constexpr):
    # one program per row of the fused projection output [NH query | NKV key | NKV value heads]:
    # queries and keys rotated, queries to q, keys and values to the cache at the row's position
    # (as e4m3 values with a bf16 scale per head when FP8, decode_attention.quantize)
    n = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + n % rows_per_member)
    j = tl.arange(0, HEADS_P)[:, None]
    d = tl.arange(0, HD)[None, :]
    half: tl.constexpr = HD // 2
    ok = (j < NH + 2 * NKV) & (d < HD)
    row = qkv_ptr + n * stride_qkv + j * HD
    x = tl.load(row + d, mask=ok, other=0.0).to(tl.float32)
    partner = tl.load(row + (d + half) % HD, mask=ok, other=0.0).to(tl.float32)
    rotated = tl.where(d < half, -partner, partner)
    freq = pos.to(tl.float32) * tl.load(inv_freq_ptr + d % half)
    # cos and sin rounded to the model's dtype, as the eager step's tables are
    cos = tl.cos(freq).to(q_ptr.dtype.element_ty).to(tl.float32)
    sin = tl.sin(freq).to(q_ptr.dtype.element_ty).to(tl.float32)
    y = tl.where(j < NH + NKV, x * cos + rotated * sin, x).to(q_ptr.dtype.element_ty)
    tl.store(q_ptr + (n * NH + j) * HD + d, y, mask=(j < NH) & ok)
    is_k = (j >= NH) & (j < NH + NKV) & ok
    is_v = (j >= NH + NKV) & ok
    slot = (n * NKV + tl.where(j < NH + NKV, j - NH, j - NH - NKV)) * T + pos  # [HEADS_P, 1]
    if FP8:
        yf = y.to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(yf), axis=1) / 448.0, 7.888609052210118e-31)[:, None]
        if PREROUND:  # the interpreter's own casts round wrongly (see decode_fused)
            scale = round_bits(scale, 65537.0)
        scale = scale.to(tl.bfloat16).to(tl.float32)
        yq = tl.minimum(tl.maximum(yf / scale, -448.0), 448.0)
        if PREROUND:
            yq = round_bits(yq, 1048577.0)
        tl.store(k_ptr + slot * HD + d, yq.to(k_ptr.dtype.element_ty), mask=is_k)
        tl.store(v_ptr + slot * HD + d, yq.to(v_ptr.dtype.element_ty), mask=is_v)
        first = d == 0  # one lane per head stores its scale
        tl.store(ks_ptr + slot + d * 0, scale.to(ks_ptr.dtype.element_ty), mask=is_k & first)
        tl.store(vs_ptr + slot + d * 0, scale.to(vs_ptr.dtype.element_ty), mask=is_v & first)
    else:
        tl.store(k_ptr + slot * HD + d, y, mask=is_k)
        tl.store(v_ptr + slot * HD + d, y, mask=is_v)


@triton.jit
def cd_score(g_row, a_row, idx, ok, log_zg, log_za, inv_t, alpha, lam, penalty, mg,
             MODE: tl.constexpr, AMATEUR: tl.constexpr):
    # (score, head) of one block of a row's logits: MODE 0 no_contrast, 1 no_contrast_vhead,
    # 2 contrastive
    # logits may be the model's bf16 (the triton step's): widened exactly, as .float() would
    zg = tl.load(g_row + idx, mask=ok, other=0.0).to(tl.float32)
    za = zg
    if AMATEUR:
        za = tl.load(a_row + idx, mask=ok, other=0.0).to(tl.float32)
    head = tl.exp(zg * inv_t - mg) > alpha  # pG(x) > alpha * max pG
    log_pg = zg * inv_t - log_zg
    if MODE == 0:
        score = zg * inv_t
    elif MODE == 1:
        score = tl.where(head, log_pg, penalty)
    else:
        score = tl.where(head, log_pg - lam * (za * inv_t - log_za), penalty)
    return score, head


@triton.jit
def block_mass(g_row, a_row, idx, V, log_zg, log_za, inv_t, alpha, lam, penalty, mg, top,
               MODE: tl.constexpr, AMATEUR: tl.constexpr):
    # exp(score - top) of one block of a row: its unnormalized sampling probabilities
    ok = idx < V
    score, _ = cd_score(g_row, a_row, idx, ok, log_zg, log_za, inv_t, alpha, lam, penalty, mg,
                        MODE, AMATEUR)
    return tl.where(ok, tl.exp(score - top), 0.0)


@triton.jit
def exp_sums(row_ptr, idx, ok, inv_t, m, s, r, sr):
    # running max and sum of exp (online softmax) of a block of z / T (m, s) and of z (r, sr)
    z = tl.load(row_ptr + idx, mask=ok, other=float("-inf")).to(tl.float32)
    m_new = tl.maximum(m, tl.max(z * inv_t, axis=0))
    s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z * inv_t - m_new), axis=0)
    r_new = tl.maximum(r, tl.max(z, axis=0))
    sr = sr * tl.exp(r - r_new) + tl.sum(tl.exp(z - r_new), axis=0)
    return m_new, s, r_new, sr


@triton.jit
def cd_sample_kernel(zg_ptr, za_ptr, u_ptr, tok_ptr, head_ptr, nll_e_ptr, nll_a_ptr, V,
                     stride_g, stride_a, inv_t, alpha, lam, penalty, MODE: tl.constexpr,
                     AMATEUR: tl.constexpr, BLOCK: tl.constexpr):
    # one program per row: the step's scores, sampler and telemetry in four passes over the
    # vocabulary (cdray.decode.scores: step_scores, sample_inverse_cdf, _nll), in a fixed order
    row = tl.program_id(0).to(tl.int64)
    g_row = zg_ptr + row * stride_g
    a_row = za_ptr + row * stride_a
    offs = tl.arange(0, BLOCK)
    low = -3.0e38  # a finite start: exp(low - m) is 0, never nan
    mg, sg, ma, sa = low, 0.0, low, 0.0  # max and sum of exp, of z / T
    rg, srg, ra, sra = low, 0.0, low, 0.0  # the same at T = 1 (the NLLs)
    for start in range(0, V, BLOCK):
        idx = start + offs
        ok = idx < V
        mg, sg, rg, srg = exp_sums(g_row, idx, ok, inv_t, mg, sg, rg, srg)
        if AMATEUR:
            ma, sa, ra, sra = exp_sums(a_row, idx, ok, inv_t, ma, sa, ra, sra)
    log_zg = mg + tl.log(sg)
    log_za = 0.0
    if AMATEUR:
        log_za = ma + tl.log(sa)
    top = low  # pass 2: the largest score, and |V_head|
    n_head = 0
    for start in range(0, V, BLOCK):
        idx = start + offs
        ok = idx < V
        score, head = cd_score(g_row, a_row, idx, ok, log_zg, log_za, inv_t, alpha, lam, penalty,
                               mg, MODE, AMATEUR)
        top = tl.maximum(top, tl.max(tl.where(ok, score, float("-inf")), axis=0))
        n_head += tl.sum((head & ok).to(tl.int32), axis=0)
    total = 0.0  # pass 3: the unnormalized cdf's end, as pass 4 accumulates it
    for start in range(0, V, BLOCK):
        e = block_mass(g_row, a_row, start + offs, V, log_zg, log_za, inv_t, alpha, lam, penalty,
                       mg, top, MODE, AMATEUR)
        total = tl.max(total + tl.cumsum(e, axis=0), axis=0)
    target = tl.load(u_ptr + row) * total
    tok = V  # pass 4: the first index whose cdf passes target (strictly), else the last with mass
    last = -1
    carry = 0.0
    for start in range(0, V, BLOCK):
        idx = start + offs
        ok = idx < V
        e = block_mass(g_row, a_row, idx, V, log_zg, log_za, inv_t, alpha, lam, penalty,
                       mg, top, MODE, AMATEUR)
        cdf = carry + tl.cumsum(e, axis=0)
        tok = tl.minimum(tok, tl.min(tl.where(ok & (cdf > target), idx, V), axis=0))
        last = tl.maximum(last, tl.max(tl.where(ok & (e > 0), idx, -1), axis=0))
        carry = tl.max(cdf, axis=0)
    tok = tl.where(tok >= V, tl.maximum(last, 0), tok)
    tl.store(tok_ptr + row, tok.to(tl.int64))
    tl.store(head_ptr + row, n_head.to(tl.int64))
    tl.store(nll_e_ptr + row, rg + tl.log(srg) - tl.load(g_row + tok).to(tl.float32))
    if AMATEUR:
        tl.store(nll_a_ptr + row, ra + tl.log(sra) - tl.load(a_row + tok).to(tl.float32))
