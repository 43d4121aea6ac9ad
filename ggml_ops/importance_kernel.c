// The indexer's importance of every cached slot as one ggml custom op (ggml_custom_4d), for the CPU.
//
//   dst  [n_kv, 1] f32: max over the queries t that may see slot s of
//        sum_j a[j, t] ReLU(q[:, j, t] . k_s) + mask[t, s]; -inf where no query may
//   src0 q    [d_idx, H_idx, T] f32   (index queries)
//   src1 a    [H_idx, T] f32          (head weights)
//   src2 k    [d_idx, n_kv] f32       (a view of the layer's index keys)
//   src3 mask [n_kv, >= T] f16        (the layer's attention mask: 0 or -inf)
//
// The same sum as ggml_ops/indexmem.py composes from ggml ops, where every score is a dot product
// of d_idx (8 for SmolLM2) floats, one call each. Here a block of slots goes one per lane of a SIMD
// register (16 with AVX-512, else 8): the block's keys are transposed once, and each query then
// costs H_idx * (d_idx + 1) vector FMAs for the block, no horizontal sums. The lanes are GCC/Clang
// vector types of the register's width (wider ones are split by the compiler through the stack,
// four times slower with AVX2). Threads split the slot blocks.

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ggml.h"
#include "kernel_common.h"

#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
#define MAX_IDX_DIM 64
#define MAX_IDX_HEADS 16

int im_importance_supports(int64_t dim, int64_t n_heads) {
    return dim >= 1 && dim <= MAX_IDX_DIM && n_heads >= 1 && n_heads <= MAX_IDX_HEADS;
}

// one register of floats (GCC/Clang vector extensions; two registers with SSE)
typedef float lanes_f __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t lanes_i __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline lanes_f lanes_max(lanes_f x, lanes_f y) {
    const lanes_i take_x = x > y;
    return (lanes_f)(((lanes_i)x & take_x) | ((lanes_i)y & ~take_x));
}

// the mask of query row m over the block's n slots, as the lanes' starting totals (-inf where
// hidden, also past n); returns 0 when every lane is hidden
static inline int block_mask(const uint16_t* m, int n, lanes_f* total) {
    if (n == LANES) {
        uint64_t w[LANES / 4], any = 0, hidden = 1;  // four halves a word
        memcpy(w, m, sizeof w);
        for (int i = 0; i < LANES / 4; i++) {
            any |= w[i];
            hidden &= w[i] == IM_NEG_INF_F16 * 0x0001000100010001ull;  // four -inf halves
        }
        if (hidden) return 0;
        if (!any) {  // the common case: every slot visible, mask 0
            *total = (lanes_f){0};
            return 1;
        }
    }
    int open = 0;
    for (int i = 0; i < LANES; i++) {
        const int hidden = i >= n || m[i] == IM_NEG_INF_F16;
        open |= !hidden;
        (*total)[i] = hidden ? -INFINITY : half_to_float(m[i]);
    }
    return open;
}

// max over queries of one block of n <= LANES slots starting at s0
static lanes_f slot_block(const struct ggml_tensor* q, const struct ggml_tensor* a, const struct ggml_tensor* k,
                          const struct ggml_tensor* mask, int64_t s0, int n) {
    const int64_t dim = q->ne[0], n_heads = q->ne[1], n_tokens = q->ne[2];
    lanes_f kt[MAX_IDX_DIM];  // the block's keys, dimension by dimension
    for (int64_t d = 0; d < dim; d++) {
        for (int i = 0; i < LANES; i++) {
            kt[d][i] = i < n ? ((const float*)((const char*)k->data + (s0 + i) * k->nb[1]))[d] : 0.0f;
        }
    }
    const lanes_f zero = {0};
    lanes_f best = zero - INFINITY;
    for (int64_t t = 0; t < n_tokens; t++) {
        lanes_f total;
        if (!block_mask((const uint16_t*)((const char*)mask->data + t * mask->nb[1]) + s0, n, &total)) continue;
        for (int64_t j = 0; j < n_heads; j++) {
            const float* qv = (const float*)((const char*)q->data + t * q->nb[2] + j * q->nb[1]);
            const float w = *(const float*)((const char*)a->data + t * a->nb[1] + j * a->nb[0]);
            lanes_f dot = zero;
            for (int64_t d = 0; d < dim; d++) dot += qv[d] * kt[d];
            total += w * lanes_max(dot, zero);
        }
        best = lanes_max(total, best);
    }
    return best;
}

void im_importance(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    (void)userdata;
    const struct ggml_tensor *q = dst->src[0], *a = dst->src[1], *k = dst->src[2], *mask = dst->src[3];
    const int64_t n_kv = k->ne[1], blocks = (n_kv + LANES - 1) / LANES;
    const int64_t per = (blocks + nth - 1) / nth, b0 = ith * per, b1 = b0 + per < blocks ? b0 + per : blocks;
    for (int64_t b = b0; b < b1; b++) {
        const int64_t s0 = b * LANES;
        const int n = (int)(n_kv - s0 < LANES ? n_kv - s0 : LANES);
        const lanes_f best = slot_block(q, a, k, mask, s0, n);
        for (int i = 0; i < n; i++) ((float*)dst->data)[s0 + i] = best[i];
    }
}
