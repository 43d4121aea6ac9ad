// Weight products of a prefill chunk for Q4_1 matrices, as one ggml custom op (ggml_custom_4d).
//
//   dst  [N, T] f32 = W . X
//   src0 W [K, N] q4_1  (a model weight, in ggml's plain layout)
//   src1 X [K, T] q8_1  (the activations, quantized by ggml_cpy: ggml's own quantize_row_q8_1)
//
// ggml multiplies a Q4_1 matrix one (row, column) pair at a time (ggml_vec_dot_q4_1_q8_1; Q4_1 has
// no repacked or llamafile GEMM on x86), so every pair unpacks its weight blocks and loads its
// activation blocks again. Here a tile of 2 weight rows x 4 columns shares them: each block of a
// weight row is unpacked once for four columns, each activation block loaded once for two rows.
// Every pair keeps ggml's arithmetic in ggml's order (per block: the integer dot product as 8
// int32 lanes, converted, times d_w*d_x by one FMA into 8 float lanes; m_w*s_x summed apart;
// then ggml's horizontal sum plus that sum), so the result equals ggml_mul_mat's bit for bit
// (tests/test_matmul_kernel.py checks it against ggml). AVX2 only: elsewhere im_mul_mat_supports
// says no and the engine keeps ggml_mul_mat. Threads split the weight rows.

#include <stdint.h>
#include <string.h>

#include "ggml.h"
#include "kernel_common.h"

typedef struct {
    uint16_t d, m;  // scale and minimum (f16)
    uint8_t qs[16];
} block_q4_1;
typedef struct {
    uint16_t d, s;  // scale and d * sum(qs) (f16)
    int8_t qs[32];
} block_q8_1;

size_t im_mul_mat_block_size(int type) {
    return type == GGML_TYPE_Q4_1 ? sizeof(block_q4_1) : type == GGML_TYPE_Q8_1 ? sizeof(block_q8_1) : 0;
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

int im_mul_mat_supports(int type_w, int64_t k) { return type_w == GGML_TYPE_Q4_1 && k > 0 && k % 32 == 0; }

static inline __m256i unpack_nibbles(const uint8_t* qs) {  // 32 values 0..15: low nibbles, then high
    const __m128i packed = _mm_loadu_si128((const __m128i*)qs);
    const __m256i both = _mm256_insertf128_si256(_mm256_castsi128_si256(packed), _mm_srli_epi16(packed, 4), 1);
    return _mm256_and_si256(_mm256_set1_epi8(0xF), both);
}

static inline __m256 dot_lanes(__m256i w, __m256i x) {  // 32 u8 x i8 products summed into 8 floats
    const __m256i pairs = _mm256_maddubs_epi16(w, x);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), pairs));
}

static inline float sum_lanes(__m256 v) {  // ggml's hsum_float_8, in its order
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// one pair, exactly as ggml_vec_dot_q4_1_q8_1 (the tile's edges)
static float dot_pair(int64_t nb, const block_q4_1* w, const block_q8_1* x) {
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const float dw = half_to_float(w[i].d), dx = half_to_float(x[i].d);
        mins += half_to_float(w[i].m) * half_to_float(x[i].s);
        const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(dw), _mm256_set1_ps(dx));
        const __m256i qx = _mm256_loadu_si256((const __m256i*)x[i].qs);
        acc = _mm256_fmadd_ps(scale, dot_lanes(unpack_nibbles(w[i].qs), qx), acc);
    }
    return sum_lanes(acc) + mins;
}

// rows w0, w1 against columns x[0..3]: out[r][c]
static void tile_2x4(int64_t nb, const block_q4_1* w0, const block_q4_1* w1, const block_q8_1* const x[4],
                     float out[2][4]) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m128 mins0 = _mm_setzero_ps(), mins1 = mins0;  // the four columns' sums of m_w * s_x
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q0 = unpack_nibbles(w0[i].qs), q1 = unpack_nibbles(w1[i].qs);
        const float d0 = half_to_float(w0[i].d), d1 = half_to_float(w1[i].d);
        const __m128 s = _mm_setr_ps(half_to_float(x[0][i].s), half_to_float(x[1][i].s),
                                     half_to_float(x[2][i].s), half_to_float(x[3][i].s));
        mins0 = _mm_add_ps(mins0, _mm_mul_ps(_mm_set1_ps(half_to_float(w0[i].m)), s));
        mins1 = _mm_add_ps(mins1, _mm_mul_ps(_mm_set1_ps(half_to_float(w1[i].m)), s));
#define IM_COLUMN(c, acc0, acc1)                                                                  \
    {                                                                                             \
        const __m256i qx = _mm256_loadu_si256((const __m256i*)x[c][i].qs);                        \
        const __m256 dx = _mm256_set1_ps(half_to_float(x[c][i].d));                               \
        acc0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(d0), dx), dot_lanes(q0, qx), acc0); \
        acc1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(d1), dx), dot_lanes(q1, qx), acc1); \
    }
        IM_COLUMN(0, a00, a10)
        IM_COLUMN(1, a01, a11)
        IM_COLUMN(2, a02, a12)
        IM_COLUMN(3, a03, a13)
#undef IM_COLUMN
    }
    float m0[4], m1[4];
    _mm_storeu_ps(m0, mins0);
    _mm_storeu_ps(m1, mins1);
    const __m256 acc[2][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
    for (int c = 0; c < 4; c++) {
        out[0][c] = sum_lanes(acc[0][c]) + m0[c];
        out[1][c] = sum_lanes(acc[1][c]) + m1[c];
    }
}

void im_mul_mat_q4_1(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    (void)userdata;
    const struct ggml_tensor *w = dst->src[0], *x = dst->src[1];
    const int64_t nb = w->ne[0] / 32, n_rows = w->ne[1], n_cols = x->ne[1];
    const int64_t pairs = (n_rows + 1) / 2, per = (pairs + nth - 1) / nth;
    const int64_t r0 = 2 * ith * per, r1 = 2 * (ith + 1) * per < n_rows ? 2 * (ith + 1) * per : n_rows;
#define IM_W(r) ((const block_q4_1*)((const char*)w->data + (r) * w->nb[1]))
#define IM_X(c) ((const block_q8_1*)((const char*)x->data + (c) * x->nb[1]))
#define IM_OUT(r, c) (*(float*)((char*)dst->data + (c) * dst->nb[1] + (r) * dst->nb[0]))
    for (int64_t r = r0; r < r1; r += 2) {
        int64_t c = 0;
        if (r + 1 < r1) {
            for (; c + 4 <= n_cols; c += 4) {
                const block_q8_1* const cols[4] = {IM_X(c), IM_X(c + 1), IM_X(c + 2), IM_X(c + 3)};
                float out[2][4];
                tile_2x4(nb, IM_W(r), IM_W(r + 1), cols, out);
                for (int j = 0; j < 4; j++) {
                    IM_OUT(r, c + j) = out[0][j];
                    IM_OUT(r + 1, c + j) = out[1][j];
                }
            }
        }
        for (int64_t rr = r; rr < r + 2 && rr < r1; rr++) {
            for (int64_t cc = c; cc < n_cols; cc++) IM_OUT(rr, cc) = dot_pair(nb, IM_W(rr), IM_X(cc));
        }
    }
#undef IM_W
#undef IM_X
#undef IM_OUT
}

#else

int im_mul_mat_supports(int type_w, int64_t k) {
    (void)type_w;
    (void)k;
    return 0;
}

void im_mul_mat_q4_1(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    (void)dst;
    (void)ith;
    (void)nth;
    (void)userdata;
}

#endif
