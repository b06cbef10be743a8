"""The Triton kernels of ``prefix_attention``.

``prefix_attention_kernel``: one program per (variant x example, query head, query block), for long
suffixes. ``packed_prefix_attention_kernel``: one program per (variants x example, key/value head),
for short suffixes (a few tokens: the late positions of a by-position sweep), whose programs would
otherwise be mostly padding. Its query rows are (variant v, position i, query head hh of the
key/value group), v major: the GROUP query heads that read one key/value head share every key block
they load, and VARS variants of one example share the prefix blocks. Row r: v = r // (S * GROUP),
i = (r // GROUP) % S, hh = r % GROUP. The suffix keys of the packed variants form one row of
columns c = v' * S + j, visible to row (v, i) when v' = v and j <= i; a non-finite value in one
variant's suffix v stays in that variant's rows (as it would in its own forward).
"""
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _keys(q, k, v, visible, m, l, acc, scale, IEEE: tl.constexpr):
    """One block of keys k, v [BLOCK_N, DH]: the online-softmax update of the running max m, the
    running sum l and the unnormalised output acc, over the (query, key) pairs marked visible."""
    s = tl.where(visible, _dot(q, tl.trans(k), IEEE) * scale, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m - m_new)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return m_new, l * alpha + tl.sum(p, 1), acc


@triton.jit
def _prefix_keys(q, KP, VP, b, g, P, skp0, skp1, skp2, svp0, svp1, svp2, m, l, acc, scale,
                 DH: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    """The cached prefix of example b, key/value head g, block by block: every key visible to every row."""
    e = tl.arange(0, DH)
    j = tl.arange(0, BLOCK_N)
    for start in range(0, P, BLOCK_N):
        jj = start + j
        inside = (jj < P)[:, None]
        k = tl.load(KP + b * skp0 + jj[:, None] * skp1 + g * skp2 + e[None, :], mask=inside, other=0.0)
        v = tl.load(VP + b * svp0 + jj[:, None] * svp1 + g * svp2 + e[None, :], mask=inside, other=0.0)
        m, l, acc = _keys(q, k, v, (jj < P)[None, :], m, l, acc, scale, IEEE)
    return m, l, acc


@triton.jit
def prefix_attention_kernel(Q, K, V, KP, VP, Z, B, S, P, GROUP, scale,
                            sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, skp0, skp1, skp2, svp0, svp1, svp2,
                            DH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    # Offsets across variants and examples are int64 (nb, b: N * B * S * heads * dh passes 2^31 in a
    # large sweep); those inside one example (i * sq1, jj * skp1: below S x one row of q/k/v) stay int32.
    nb = tl.program_id(0).to(tl.int64)  # variant * B + example
    h = tl.program_id(1)
    H = tl.num_programs(1)
    b = nb % B
    g = h // GROUP  # the key/value head of query head h
    i = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows (suffix positions)
    j = tl.arange(0, BLOCK_N)
    e = tl.arange(0, DH)
    q = tl.load(Q + nb * sq0 + i[:, None] * sq1 + h * sq2 + e[None, :], mask=(i < S)[:, None], other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DH], tl.float32)
    m, l, acc = _prefix_keys(q, KP, VP, b, g, P, skp0, skp1, skp2, svp0, svp1, svp2, m, l, acc, scale,
                             DH, BLOCK_N, IEEE)
    last = tl.minimum(S, (tl.program_id(2) + 1) * BLOCK_M)
    for start in range(0, last, BLOCK_N):  # the variant's own suffix: causal
        jj = start + j
        inside = (jj < S)[:, None]
        k = tl.load(K + nb * sk0 + jj[:, None] * sk1 + g * sk2 + e[None, :], mask=inside, other=0.0)
        v = tl.load(V + nb * sv0 + jj[:, None] * sv1 + g * sv2 + e[None, :], mask=inside, other=0.0)
        m, l, acc = _keys(q, k, v, (jj[None, :] <= i[:, None]) & (jj < S)[None, :], m, l, acc, scale, IEEE)
    z = acc / l[:, None]
    tl.store(Z + nb * S * H * DH + i[:, None] * (H * DH) + h * DH + e[None, :], z.to(Z.dtype.element_ty),
             mask=(i < S)[:, None])


@triton.jit
def packed_prefix_attention_kernel(Q, K, V, KP, VP, Z, N, B, S, P, GROUP, VARS, scale,
                                   sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, skp0, skp1, skp2, svp0, svp1, svp2,
                                   DH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                   IEEE: tl.constexpr):
    # One program: VARS variants of example b, key/value head g, all their VARS x S x GROUP query rows
    # in one block (BLOCK_M >= that). Offsets across variants and examples are int64 (nb, b: N * B *
    # S * heads * dh, or B * P * heads * dh, pass 2^31 in a large sweep); those inside one example
    # (i * sq1, jj * skp1: below S or P x one row of q/k/v) stay int32.
    n0 = (tl.program_id(0) // B).to(tl.int64) * VARS  # the first variant of this program
    b = (tl.program_id(0) % B).to(tl.int64)  # the example
    g = tl.program_id(1)  # the key/value head
    H = tl.num_programs(1) * GROUP
    per_variant = S * GROUP
    r = tl.arange(0, BLOCK_M)
    v_row = r // per_variant
    i = (r // GROUP) % S
    h = g * GROUP + r % GROUP
    nb = (n0 + v_row) * B + b
    valid = (r < VARS * per_variant) & (n0 + v_row < N)  # padding rows: past the packing or past N
    e = tl.arange(0, DH)
    q = tl.load(Q + nb[:, None] * sq0 + i[:, None] * sq1 + h[:, None] * sq2 + e[None, :],
                mask=valid[:, None], other=0.0)
    # A finite start of the running max (fp32's lowest is -3.4e38): a padding row that sees no key
    # (there is no prefix, and no variant of its own) keeps p = 0 and l = 0 instead of computing
    # inf - inf, and is not stored. A real row sees at least its own key 0, which sets m.
    m = tl.full([BLOCK_M], -3e38, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DH], tl.float32)
    j = tl.arange(0, BLOCK_N)
    m, l, acc = _prefix_keys(q, KP, VP, b, g, P, skp0, skp1, skp2, svp0, svp1, svp2, m, l, acc, scale,
                             DH, BLOCK_N, IEEE)
    # The suffixes of the packed variants: columns c = v' * S + j, visible to row (v, i) when v' = v
    # and j <= i.
    for start in range(0, VARS * S, BLOCK_N):
        c = start + j
        v_col = c // S
        jj = c % S
        nbc = (n0 + v_col) * B + b
        inside = (c < VARS * S) & (n0 + v_col < N)
        k = tl.load(K + nbc[:, None] * sk0 + jj[:, None] * sk1 + g * sk2 + e[None, :], mask=inside[:, None], other=0.0)
        v = tl.load(V + nbc[:, None] * sv0 + jj[:, None] * sv1 + g * sv2 + e[None, :], mask=inside[:, None], other=0.0)
        visible = (v_col[None, :] == v_row[:, None]) & (jj[None, :] <= i[:, None]) & inside[None, :]
        # One product serves every packed variant, and 0 x inf is NaN: a non-finite value in one
        # variant's v (an edit that overflowed, say) must not reach the rows of the others. It is
        # zeroed in the product, and the rows that see its key become NaN.
        bad = (v != v) | (tl.abs(v.to(tl.float32)) == float("inf"))
        m, l, acc = _keys(q, k, tl.where(bad, tl.zeros_like(v), v), visible, m, l, acc, scale, IEEE)
        bad_key = tl.max(bad.to(tl.int32), 1)  # [BLOCK_N]
        sees_bad = tl.max((visible & (bad_key[None, :] > 0)).to(tl.int32), 1)  # [BLOCK_M]
        acc = tl.where(sees_bad[:, None] > 0, float("nan"), acc)
    z = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(Z + nb[:, None] * (S * H * DH) + i[:, None] * (H * DH) + h[:, None] * DH + e[None, :],
             z.to(Z.dtype.element_ty), mask=valid[:, None])
