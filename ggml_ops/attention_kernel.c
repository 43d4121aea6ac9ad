// Attention over a KV cache as one ggml custom op (ggml_custom_4d), for the CPU.
//
//   dst  [hd, H, T] f32 = softmax(scale * Q K^T + mask) V, per query head; or [hd + 1, H, T]:
//        the same, each row followed by log sum exp(scale * Q K^T + mask) over the slots
//   src0 q    [hd, H, T] f32      (post-RoPE queries)
//   src1 k    [hd, n_kv, Hkv]     (a view of the cache: f32, f16, bf16, q8_0 or q4_0)
//   src2 v    [hd, n_kv, Hkv]     (same types)
//   src3 mask [n_kv, >= T] f16    (additive: 0 where visible, -inf where not)
//
// Query head h reads KV head h / (H / Hkv), as ggml's attention does. Everything is accumulated
// in f32 with an online softmax. Slots are taken 16 at a time ("tiles"); a tile every query of
// a block has masked is skipped, so a padded or causally masked cache costs nothing there.
//
// Two ways through a KV head:
//  - many query vectors (prefill): blocks of 16 query vectors, one per SIMD lane. The head's
//    K and V are converted to f32 once (tile by tile on the stack if that memory cannot be had),
//    then each tile costs two rank-1 update loops (scores = Q·K^T with K[j][d] broadcast;
//    out += P^T V with V[j][d] broadcast): no horizontal sums, and K/V are read once per 16
//    query vectors.
//  - few query vectors (decode): every query vector of the KV head against each slot in turn
//    (one K and V read per slot for all the heads sharing it), scores summed across the
//    lanes, the softmax of a tile vectorized over its 16 slots.
//
// Built by ggml_ops/kernel.py with the system C compiler against the ggml.h that
// llama-cpp-python installs. Three builds of the same arithmetic: AVX-512 (16 lanes in one
// register), AVX2 with FMA and F16C (16 lanes as two 8-float registers, ``v16``), and portable C
// for anything else; im_kernel_simd() says which (16, 8 or 0 floats per register).

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "kernel_common.h"

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__)
#define IM_SIMD 16
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define IM_SIMD 8
#else
#define IM_SIMD 0
#endif
#define IM_AVX512 (IM_SIMD == 16)
#define IM_AVX2 (IM_SIMD == 8)

#define TILE 16
#define LANES 16
#define MAX_HD 256
#define FEW_VECTORS 8  // at most this many query vectors per KV head: the decode way
#define FEW_TOTAL 32   // query vectors of the KV heads one decode pass over the cache serves

// block layouts of ggml's quantized types (ggml-common.h); kernel.py checks their sizes
typedef struct {
    uint16_t d;
    int8_t qs[32];
} block_q8_0;
typedef struct {
    uint16_t d;
    uint8_t qs[16];
} block_q4_0;

int im_kernel_abi(void) { return 4; }

// prefill converts each KV head to f32 in memory it allocates, or tile by tile without it (what
// happens when the allocation fails; the tests switch it off to check that way too)
static int use_head_scratch = 1;
void im_kernel_use_head_scratch(int on) { use_head_scratch = on; }
int im_kernel_simd(void) { return IM_SIMD; }
size_t im_tensor_size(void) { return sizeof(struct ggml_tensor); }
size_t im_block_size(int type) {
    return type == GGML_TYPE_Q8_0 ? sizeof(block_q8_0) : type == GGML_TYPE_Q4_0 ? sizeof(block_q4_0) : 0;
}

// the element types this kernel reads, with the head sizes it handles
int im_kernel_supports(int type_k, int type_v, int64_t head_dim) {
    const int ok_k = type_k == GGML_TYPE_F32 || type_k == GGML_TYPE_F16 || type_k == GGML_TYPE_BF16 ||
                     type_k == GGML_TYPE_Q8_0 || type_k == GGML_TYPE_Q4_0;
    const int ok_v = type_v == GGML_TYPE_F32 || type_v == GGML_TYPE_F16 || type_v == GGML_TYPE_BF16 ||
                     type_v == GGML_TYPE_Q8_0 || type_v == GGML_TYPE_Q4_0;
    const int quantized = type_k == GGML_TYPE_Q8_0 || type_k == GGML_TYPE_Q4_0 || type_v == GGML_TYPE_Q8_0 ||
                          type_v == GGML_TYPE_Q4_0;
    return ok_k && ok_v && head_dim > 0 && head_dim <= MAX_HD && head_dim % (quantized ? 32 : 16) == 0;
}

// one head's row of hd elements (of type `type`) at `src` -> f32
static void row_to_f32(int type, const char* src, float* dst, int hd) {
    switch (type) {
        case GGML_TYPE_F32:
            memcpy(dst, src, (size_t)hd * 4);
            break;
        case GGML_TYPE_F16: {
            const uint16_t* s = (const uint16_t*)src;
#if IM_AVX512
            for (int i = 0; i < hd; i += 16) {
                _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(s + i))));
            }
#elif IM_AVX2
            for (int i = 0; i < hd; i += 8) {
                _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s + i))));
            }
#else
            for (int i = 0; i < hd; i++) dst[i] = half_to_float(s[i]);
#endif
            break;
        }
        case GGML_TYPE_BF16: {
            const uint16_t* s = (const uint16_t*)src;
            for (int i = 0; i < hd; i++) {
                const uint32_t bits = (uint32_t)s[i] << 16;
                memcpy(dst + i, &bits, 4);
            }
            break;
        }
        case GGML_TYPE_Q8_0: {
            const block_q8_0* b = (const block_q8_0*)src;
            for (int ib = 0; ib < hd / 32; ib++) {
                const float d = half_to_float(b[ib].d);
                for (int i = 0; i < 32; i++) dst[ib * 32 + i] = d * (float)b[ib].qs[i];
            }
            break;
        }
        case GGML_TYPE_Q4_0: {
            const block_q4_0* b = (const block_q4_0*)src;
            for (int ib = 0; ib < hd / 32; ib++) {
                const float d = half_to_float(b[ib].d);
                for (int i = 0; i < 16; i++) {
                    dst[ib * 32 + i] = d * (float)((b[ib].qs[i] & 0x0f) - 8);
                    dst[ib * 32 + i + 16] = d * (float)((b[ib].qs[i] >> 4) - 8);
                }
            }
            break;
        }
    }
}

#if IM_AVX512
// elements [d, d + 16) of one head's row, as f32 (d a multiple of 16): straight into a register,
// never through memory (a store then a wide reload of it stalls on store forwarding)
static inline __m512 load16(int type, const char* row, int64_t d) {
    switch (type) {
        case GGML_TYPE_F16:
            return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)((const uint16_t*)row + d)));
        case GGML_TYPE_BF16: {
            const __m256i h = _mm256_loadu_si256((const __m256i*)((const uint16_t*)row + d));
            return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
        case GGML_TYPE_Q8_0: {
            const block_q8_0* b = (const block_q8_0*)row + d / 32;
            const __m128i q = _mm_loadu_si128((const __m128i*)(b->qs + d % 32));
            return _mm512_mul_ps(_mm512_set1_ps(half_to_float(b->d)), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
        }
        case GGML_TYPE_Q4_0: {
            const block_q4_0* b = (const block_q4_0*)row + d / 32;
            __m128i q = _mm_loadu_si128((const __m128i*)b->qs);
            if (d % 32) q = _mm_srli_epi16(q, 4);
            q = _mm_and_si128(q, _mm_set1_epi8(0x0f));
            const __m512i v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(q), _mm512_set1_epi32(8));
            return _mm512_mul_ps(_mm512_set1_ps(half_to_float(b->d)), _mm512_cvtepi32_ps(v));
        }
        default:
            return _mm512_loadu_ps((const float*)row + d);
    }
}
#endif

// --- exp over 16 floats ---------------------------------------------------------------
#if IM_AVX512
static inline __m512 exp16(__m512 x) {
    // exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2/2. Below -87 (masked slots: -inf)
    // the result is 0, never a subnormal: multiplying subnormals costs microcode assists
    const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(normal, _mm512_scalef_ps(p, n));
}
#endif

#if IM_AVX2
// --- 16 lanes on AVX2: two 8-float registers, the operations the AVX-512 code uses ----------
typedef struct {
    __m256 lo, hi;
} v16;

static inline v16 v16_of(__m256 lo, __m256 hi) {
    v16 r;
    r.lo = lo;
    r.hi = hi;
    return r;
}
static inline v16 v16_load(const float* p) { return v16_of(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)); }
static inline void v16_store(float* p, v16 a) {
    _mm256_storeu_ps(p, a.lo);
    _mm256_storeu_ps(p + 8, a.hi);
}
static inline v16 v16_set1(float x) { return v16_of(_mm256_set1_ps(x), _mm256_set1_ps(x)); }
static inline v16 v16_add(v16 a, v16 b) { return v16_of(_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)); }
static inline v16 v16_sub(v16 a, v16 b) { return v16_of(_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)); }
static inline v16 v16_mul(v16 a, v16 b) { return v16_of(_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)); }
static inline v16 v16_max(v16 a, v16 b) { return v16_of(_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)); }
static inline v16 v16_fmadd(v16 a, v16 b, v16 c) {
    return v16_of(_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi));
}
static inline float v16_sum(v16 a) {
    const __m256 s = _mm256_add_ps(a.lo, a.hi);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
static inline float v16_hmax(v16 a) {
    const __m256 s = _mm256_max_ps(a.lo, a.hi);
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

// exp over 8 floats, as exp16 does it; inputs here are <= 0 (scores minus their running max), so
// 2^n is built in the exponent field (n in [-126, 0]) where AVX-512 has scalef
static inline __m256 exp8(__m256 x) {
    const __m256 normal = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    // n in [-126, 127] after the clamp: 2^n has the biased exponent n + 127 in [1, 254]
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(normal, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
static inline v16 v16_exp(v16 x) { return v16_of(exp8(x.lo), exp8(x.hi)); }

// elements [d, d + 16) of one head's row as f32 (d a multiple of 16), as the AVX-512 load16
static inline v16 load16(int type, const char* row, int64_t d) {
    switch (type) {
        case GGML_TYPE_F16: {
            const __m128i* h = (const __m128i*)((const uint16_t*)row + d);
            return v16_of(_mm256_cvtph_ps(_mm_loadu_si128(h)), _mm256_cvtph_ps(_mm_loadu_si128(h + 1)));
        }
        case GGML_TYPE_BF16: {
            const __m128i* h = (const __m128i*)((const uint16_t*)row + d);
            return v16_of(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(h)), 16)),
                          _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(h + 1)), 16)));
        }
        case GGML_TYPE_Q8_0: {
            const block_q8_0* b = (const block_q8_0*)row + d / 32;
            const __m128i q = _mm_loadu_si128((const __m128i*)(b->qs + d % 32));
            const v16 f = v16_of(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)),
                                 _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))));
            return v16_mul(v16_set1(half_to_float(b->d)), f);
        }
        case GGML_TYPE_Q4_0: {
            const block_q4_0* b = (const block_q4_0*)row + d / 32;
            __m128i q = _mm_loadu_si128((const __m128i*)b->qs);
            if (d % 32) q = _mm_srli_epi16(q, 4);
            q = _mm_and_si128(q, _mm_set1_epi8(0x0f));
            const __m256i eight = _mm256_set1_epi32(8);
            const v16 f = v16_of(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(q), eight)),
                                 _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)), eight)));
            return v16_mul(v16_set1(half_to_float(b->d)), f);
        }
        default:
            return v16_load((const float*)row + d);
    }
}
#endif

static inline void exp_lanes(float* x) {  // x[0..16) <- exp(x), -inf -> 0
#if IM_AVX512
    _mm512_storeu_ps(x, exp16(_mm512_loadu_ps(x)));
#elif IM_AVX2
    v16_store(x, v16_exp(v16_load(x)));
#else
    for (int i = 0; i < 16; i++) x[i] = x[i] < -87.0f ? 0.0f : expf(x[i]);
#endif
}

// --- the mask of one tile -------------------------------------------------------------
enum { TILE_HIDDEN = 0, TILE_VISIBLE = 1, TILE_MIXED = 2 };

// how queries t0..t1 see slots [j0, j0 + n): all masked, all visible (mask 0), or otherwise
static int classify(const struct ggml_tensor* mask, int64_t t0, int64_t t1, int64_t j0, int n) {
    int any_open = 0, all_zero = 1;
    if (n == TILE) {  // four halves a word
        const uint64_t hidden = IM_NEG_INF_F16 * 0x0001000100010001ull, magnitude = 0x7fff7fff7fff7fffull;
        for (int64_t t = t0; t <= t1; t++) {
            uint64_t w[TILE / 4];
            memcpy(w, (const uint16_t*)((const char*)mask->data + t * mask->nb[1]) + j0, sizeof w);
            for (int i = 0; i < TILE / 4; i++) {
                any_open |= w[i] != hidden;
                all_zero &= (w[i] & magnitude) == 0;
            }
        }
        return !any_open ? TILE_HIDDEN : all_zero ? TILE_VISIBLE : TILE_MIXED;
    }
    for (int64_t t = t0; t <= t1; t++) {
        const uint16_t* m = (const uint16_t*)((const char*)mask->data + t * mask->nb[1]) + j0;
        for (int j = 0; j < n; j++) {
            const uint16_t v = m[j];
            if (v != IM_NEG_INF_F16) any_open = 1;
            if ((v & 0x7fff) != 0) all_zero = 0;
        }
    }
    if (!any_open) return TILE_HIDDEN;
    return all_zero && n == TILE ? TILE_VISIBLE : TILE_MIXED;
}

static inline float mask_at(const struct ggml_tensor* mask, int64_t t, int64_t j) {
    return half_to_float(((const uint16_t*)((const char*)mask->data + t * mask->nb[1]))[j]);
}

// online softmax step of one query vector (or lane) with this tile's scores s[0..16):
// s <- probabilities relative to the new running max; returns the factor the running sum and
// output must be rescaled by
static inline float softmax_step(float* m, float* l, float* s) {
#if IM_AVX512
    const float mt = _mm512_reduce_max_ps(_mm512_loadu_ps(s));
    const float mnew = mt > *m ? mt : *m;
    const float base = mnew == -INFINITY ? 0.0f : mnew;
    const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(s), _mm512_set1_ps(base)));
    _mm512_storeu_ps(s, p);
    const float alpha = *m - base < -87.0f ? 0.0f : expf(*m - base);  // -inf - base < -87 too
    *l = *l * alpha + _mm512_reduce_add_ps(p);
    *m = mnew;
    return alpha;
#elif IM_AVX2
    const float mt = v16_hmax(v16_load(s));
    const float mnew = mt > *m ? mt : *m;
    const float base = mnew == -INFINITY ? 0.0f : mnew;
    const v16 p = v16_exp(v16_sub(v16_load(s), v16_set1(base)));
    v16_store(s, p);
    const float alpha = *m - base < -87.0f ? 0.0f : expf(*m - base);  // -inf - base < -87 too
    *l = *l * alpha + v16_sum(p);
    *m = mnew;
    return alpha;
#else
    float mt = -INFINITY;
    for (int j = 0; j < TILE; j++) mt = s[j] > mt ? s[j] : mt;
    const float mnew = mt > *m ? mt : *m;
    const float base = mnew == -INFINITY ? 0.0f : mnew;
    for (int j = 0; j < TILE; j++) s[j] -= base;
    exp_lanes(s);
    const float alpha = *m - base < -87.0f ? 0.0f : expf(*m - base);  // -inf - base < -87 too
    float sum = 0.0f;
    for (int j = 0; j < TILE; j++) sum += s[j];
    *l = *l * alpha + sum;
    *m = mnew;
    return alpha;
#endif
}


// --- decode: few query vectors per KV head ----------------------------------------------
typedef struct {
    const struct ggml_tensor *q, *k, *v, *mask;
    float scale;
    int64_t hd, n_head, n_tokens, n_kv, group;
} job;

#define ALWAYS_INLINE inline __attribute__((always_inline))

#if IM_SIMD
// the 16-float vector of each SIMD build, for the decode loops below
#if IM_AVX512
typedef __m512 vec16;
#define V_ZERO() _mm512_setzero_ps()
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_STORE(p, a) _mm512_storeu_ps(p, a)
#define V_SET1(x) _mm512_set1_ps(x)
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_SUM(a) _mm512_reduce_add_ps(a)
#define V_MUL(a, b) _mm512_mul_ps(a, b)
#define V_ACCUMULATORS 16  // of 32 registers
#define LANE_VALUE_DIMS 8
#define V_IN_REGISTER(a) __asm__("" : "+v"(a))
#else
typedef v16 vec16;
#define V_ZERO() v16_set1(0.0f)
#define V_LOAD(p) v16_load(p)
#define V_STORE(p, a) v16_store(p, a)
#define V_SET1(x) v16_set1(x)
#define V_FMA(a, b, c) v16_fmadd(a, b, c)
#define V_SUM(a) v16_sum(a)
#define V_MUL(a, b) v16_mul(a, b)
#define V_ACCUMULATORS 6  // two registers each, of 16
#define LANE_VALUE_DIMS 4
// keeps a loaded vector in registers: GCC otherwise folds the load into each FMA that uses it,
// and the loads, not the FMAs, then bound the loop
#define V_IN_REGISTER(a) __asm__("" : "+x"((a).lo), "+x"((a).hi))
#endif

// The decode loops take RG (query vectors per KV head) as a compile-time constant: each size
// has its own copy (few_vectors dispatches), so the accumulators stay in registers. Software
// prefetch, sparingly: the first line of each head's V row in the tile is asked for before the
// tile's scores, so it arrives while K is read (SmolLM2 over 1,040 slots, AMD EPYC: f16 17%,
// q8_0 10% faster). Asking for more (the rows' last lines too, or the next tile's K) was slower:
// the loads then wait on the CPU's line-fill buffers, as asking for every line of the next tiles
// did (~15% slower).

// s[r][j] = q[r] . K[slot], r < RG: one row of a KV head against its RG query vectors
static ALWAYS_INLINE void few_scores(const int RG, int type, const char* krow, int64_t hd,
                                     float (*q)[MAX_HD], float (*s)[TILE], int j) {
    vec16 acc[FEW_VECTORS];
    for (int r = 0; r < RG; r++) acc[r] = V_ZERO();
    for (int64_t d = 0; d < hd; d += 16) {
        const vec16 kd = load16(type, krow, d);
        for (int r = 0; r < RG; r++) acc[r] = V_FMA(V_LOAD(q[r] + d), kd, acc[r]);
    }
    for (int r = 0; r < RG; r++) s[r][j] = V_SUM(acc[r]);
}

// o[r][d0, d0 + 16 G) += sum over the tile's n slots of p[r][j] V[j], held in registers over
// the tile: G chunks of 16 dimensions at once, so G * RG independent FMA chains hide latency
static ALWAYS_INLINE void few_values_pass(const int RG, const int G, int type, const char* vhead, size_t row_bytes,
                                          int n, int64_t d0, float (*s)[TILE], float (*o)[MAX_HD]) {
    vec16 acc[4][FEW_VECTORS];
    for (int g = 0; g < G; g++)
        for (int r = 0; r < RG; r++) acc[g][r] = V_LOAD(o[r] + d0 + 16 * g);
    for (int j = 0; j < n; j++) {
        const char* row = vhead + j * row_bytes;
        for (int g = 0; g < G; g++) {
            const vec16 vd = load16(type, row, d0 + 16 * g);
            for (int r = 0; r < RG; r++) acc[g][r] = V_FMA(V_SET1(s[r][j]), vd, acc[g][r]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int r = 0; r < RG; r++) V_STORE(o[r] + d0 + 16 * g, acc[g][r]);
}

static ALWAYS_INLINE void few_values(const int RG, int type, const char* vhead, size_t row_bytes, int n,
                                     int64_t hd, float (*s)[TILE], float (*o)[MAX_HD]) {
    const int G = V_ACCUMULATORS / RG >= 4 ? 4 : V_ACCUMULATORS / RG >= 2 ? 2 : 1;
    int64_t d = 0;
    for (; d + 16 * G <= hd; d += 16 * G) few_values_pass(RG, G, type, vhead, row_bytes, n, d, s, o);
    for (; d < hd; d += 16) few_values_pass(RG, 1, type, vhead, row_bytes, n, d, s, o);
}

// prefill: ot[d0 + g][lane] = ot * a + sum over the tile's n slots of v[j][d0 + g] p[j][lane],
// for g < DG dimensions at once: DG independent FMA chains per lane register (one chain per
// dimension left the loop waiting on the FMA's latency, ~4 cycles per slot)
static ALWAYS_INLINE void lane_values(const int DG, vec16 a, const float* vf, int64_t hd, int n, int64_t d0,
                                      float st[TILE][LANES], float ot[MAX_HD][LANES]) {
    vec16 acc[LANE_VALUE_DIMS];
    for (int g = 0; g < DG; g++) acc[g] = V_MUL(V_LOAD(ot[d0 + g]), a);
    for (int j = 0; j < n; j++) {
        vec16 p = V_LOAD(st[j]);
        V_IN_REGISTER(p);
        const float* vrow = vf + j * hd + d0;
        for (int g = 0; g < DG; g++) acc[g] = V_FMA(V_SET1(vrow[g]), p, acc[g]);
    }
    for (int g = 0; g < DG; g++) V_STORE(ot[d0 + g], acc[g]);
}
#endif

// Online softmax step of one query vector over a tile's scores s[0..16) in decoding, where the
// per-vector reductions and the scalar exp of softmax_step cost as much as the products: the
// running max m moves only when a score passes it by more than RESCALE_MARGIN (probabilities stay
// below e^8 relative to it, far from f32 overflow), and the running sum is kept per lane (l16,
// summed at the end). s <- probabilities relative to m; returns the factor the running sum and
// output must be rescaled by (1 for most tiles).
#define RESCALE_MARGIN 8.0f
static inline float decode_softmax_step(float* m, float* l16, float* s) {
    float alpha = 1.0f;
#if IM_AVX512
    const __m512 x = _mm512_loadu_ps(s);
    if (_mm512_cmp_ps_mask(x, _mm512_set1_ps(*m + RESCALE_MARGIN), _CMP_GT_OQ)) {
        const float mt = _mm512_reduce_max_ps(x);
        alpha = *m == -INFINITY ? 0.0f : expf(*m - mt);
        *m = mt;
    }
    const __m512 p = exp16(_mm512_sub_ps(x, _mm512_set1_ps(*m == -INFINITY ? 0.0f : *m)));
    _mm512_storeu_ps(s, p);
    _mm512_storeu_ps(l16, _mm512_fmadd_ps(_mm512_loadu_ps(l16), _mm512_set1_ps(alpha), p));
#elif IM_AVX2
    const v16 x = v16_load(s);
    const __m256 over = _mm256_set1_ps(*m + RESCALE_MARGIN);
    if (_mm256_movemask_ps(_mm256_cmp_ps(x.lo, over, _CMP_GT_OQ)) | _mm256_movemask_ps(_mm256_cmp_ps(x.hi, over, _CMP_GT_OQ))) {
        const float mt = v16_hmax(x);
        alpha = *m == -INFINITY ? 0.0f : expf(*m - mt);
        *m = mt;
    }
    const v16 p = v16_exp(v16_sub(x, v16_set1(*m == -INFINITY ? 0.0f : *m)));
    v16_store(s, p);
    v16_store(l16, v16_fmadd(v16_load(l16), v16_set1(alpha), p));
#else
    float mt = -INFINITY;
    for (int j = 0; j < TILE; j++) mt = s[j] > mt ? s[j] : mt;
    if (mt > *m + RESCALE_MARGIN) {
        alpha = *m == -INFINITY ? 0.0f : expf(*m - mt);
        *m = mt;
    }
    const float base = *m == -INFINITY ? 0.0f : *m;
    for (int j = 0; j < TILE; j++) s[j] -= base;
    exp_lanes(s);
    for (int j = 0; j < TILE; j++) l16[j] = l16[j] * alpha + s[j];
#endif
    return alpha;
}

static ALWAYS_INLINE void few_vectors_of(const int RG, const job* J, int64_t hk0, int64_t hk1, float* out_base,
                                         const struct ggml_tensor* dst) {
    const int64_t hd = J->hd, R = (hk1 - hk0) * RG;
    float q[FEW_TOTAL][MAX_HD], o[FEW_TOTAL][MAX_HD], s[FEW_TOTAL][TILE];
    float m[FEW_TOTAL], l16[FEW_TOTAL][TILE];
    int64_t vec_t[FEW_TOTAL], vec_h[FEW_TOTAL];
#if !IM_SIMD
    float kf[MAX_HD], vf[MAX_HD];
#endif
    for (int64_t r = 0; r < R; r++) {
        const int64_t hk = hk0 + r / RG, rr = r % RG;
        vec_t[r] = rr / J->group;
        vec_h[r] = hk * J->group + rr % J->group;
        const float* src = (const float*)((const char*)J->q->data + vec_t[r] * J->q->nb[2] + vec_h[r] * J->q->nb[1]);
        for (int64_t d = 0; d < hd; d++) q[r][d] = src[d] * J->scale;
        memset(o[r], 0, (size_t)hd * 4);
        m[r] = -INFINITY;
        memset(l16[r], 0, sizeof l16[r]);
    }
    const char* kbase = (const char*)J->k->data + hk0 * J->k->nb[2];
    const char* vbase = (const char*)J->v->data + hk0 * J->v->nb[2];
    const size_t kstep = J->k->nb[2], vstep = J->v->nb[2];
    for (int64_t j0 = 0; j0 < J->n_kv; j0 += TILE) {
        const int n = (int)(J->n_kv - j0 < TILE ? J->n_kv - j0 : TILE);
        const int kind = classify(J->mask, 0, J->n_tokens - 1, j0, n);
        if (kind == TILE_HIDDEN) continue;
        for (int j = 0; j < n; j++) {  // the tile's V rows load while its scores are computed
            const char* vrow = vbase + (j0 + j) * J->v->nb[1];
            for (int64_t r0 = 0; r0 < R; r0 += RG) __builtin_prefetch(vrow + (r0 / RG) * vstep);
        }
        for (int j = 0; j < TILE; j++) {
            if (j >= n) {
                for (int64_t r = 0; r < R; r++) s[r][j] = -INFINITY;
                continue;
            }
            for (int64_t r0 = 0; r0 < R; r0 += RG) {  // one KV head, the query vectors reading it
                const char* krow = kbase + (j0 + j) * J->k->nb[1] + (r0 / RG) * kstep;
#if IM_SIMD
                few_scores(RG, J->k->type, krow, hd, q + r0, s + r0, j);
#else
                row_to_f32(J->k->type, krow, kf, (int)hd);
                for (int64_t r = r0; r < r0 + RG; r++) {
                    float acc = 0.0f;
                    for (int64_t d = 0; d < hd; d++) acc += q[r][d] * kf[d];
                    s[r][j] = acc;
                }
#endif
            }
            if (kind == TILE_MIXED) {
                for (int64_t r = 0; r < R; r++) s[r][j] += mask_at(J->mask, vec_t[r], j0 + j);
            }
        }
        for (int64_t r = 0; r < R; r++) {
            const float alpha = decode_softmax_step(&m[r], l16[r], s[r]);
            if (alpha != 1.0f) {
                for (int64_t d = 0; d < hd; d++) o[r][d] *= alpha;
            }
        }
        for (int64_t r0 = 0; r0 < R; r0 += RG) {
            const char* vhead = vbase + (r0 / RG) * vstep;
#if IM_SIMD
            few_values(RG, J->v->type, vhead + j0 * J->v->nb[1], J->v->nb[1], n, hd, s + r0, o + r0);
#else
            for (int j = 0; j < n; j++) {
                row_to_f32(J->v->type, vhead + (j0 + j) * J->v->nb[1], vf, (int)hd);
                for (int64_t r = r0; r < r0 + RG; r++) {
                    for (int64_t d = 0; d < hd; d++) o[r][d] += s[r][j] * vf[d];
                }
            }
#endif
        }
    }
    for (int64_t r = 0; r < R; r++) {
        float* dst_row = (float*)((char*)out_base + vec_t[r] * dst->nb[2] + vec_h[r] * dst->nb[1]);
        float l = 0.0f;
        for (int j = 0; j < TILE; j++) l += l16[r][j];
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int64_t d = 0; d < hd; d++) dst_row[d] = o[r][d] * inv;
        if (dst->ne[0] > hd) dst_row[hd] = m[r] + logf(l);
    }
}

static void few_vectors(const job* J, int64_t hk0, int64_t hk1, float* out_base, const struct ggml_tensor* dst) {
    switch (J->n_tokens * J->group) {  // <= FEW_VECTORS (im_attention's test)
        case 1: few_vectors_of(1, J, hk0, hk1, out_base, dst); break;
        case 2: few_vectors_of(2, J, hk0, hk1, out_base, dst); break;
        case 3: few_vectors_of(3, J, hk0, hk1, out_base, dst); break;
        case 4: few_vectors_of(4, J, hk0, hk1, out_base, dst); break;
        case 5: few_vectors_of(5, J, hk0, hk1, out_base, dst); break;
        case 6: few_vectors_of(6, J, hk0, hk1, out_base, dst); break;
        case 7: few_vectors_of(7, J, hk0, hk1, out_base, dst); break;
        default: few_vectors_of(8, J, hk0, hk1, out_base, dst); break;
    }
}

// --- prefill: blocks of 16 query vectors (one per lane) --------------------------------
// softmax_step for 16 lanes at once over a tile of scores st[slot][lane]
static void lanes_softmax_step(float* m, float* l, float st[TILE][LANES], float* alpha) {
#if IM_AVX512
    __m512 mt = _mm512_loadu_ps(st[0]);
    for (int j = 1; j < TILE; j++) mt = _mm512_max_ps(mt, _mm512_loadu_ps(st[j]));
    const __m512 mold = _mm512_loadu_ps(m), ninf = _mm512_set1_ps(-INFINITY);
    const __m512 mnew = _mm512_max_ps(mt, mold);
    const __m512 base = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mnew, ninf, _CMP_EQ_OQ), mnew,
                                             _mm512_setzero_ps());
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < TILE; j++) {
        const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(st[j]), base));
        _mm512_storeu_ps(st[j], p);
        sum = _mm512_add_ps(sum, p);
    }
    const __m512 a = exp16(_mm512_sub_ps(mold, base));  // mold = -inf gives 0
    _mm512_storeu_ps(alpha, a);
    _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), a, sum));
    _mm512_storeu_ps(m, mnew);
#elif IM_AVX2
    v16 mt = v16_load(st[0]);
    for (int j = 1; j < TILE; j++) mt = v16_max(mt, v16_load(st[j]));
    const v16 mold = v16_load(m), mnew = v16_max(mt, mold);
    const __m256 ninf = _mm256_set1_ps(-INFINITY), zero = _mm256_setzero_ps();
    const v16 base = v16_of(_mm256_blendv_ps(mnew.lo, zero, _mm256_cmp_ps(mnew.lo, ninf, _CMP_EQ_OQ)),
                            _mm256_blendv_ps(mnew.hi, zero, _mm256_cmp_ps(mnew.hi, ninf, _CMP_EQ_OQ)));
    v16 sum = v16_set1(0.0f);
    for (int j = 0; j < TILE; j++) {
        const v16 p = v16_exp(v16_sub(v16_load(st[j]), base));
        v16_store(st[j], p);
        sum = v16_add(sum, p);
    }
    const v16 a = v16_exp(v16_sub(mold, base));  // mold = -inf gives 0
    v16_store(alpha, a);
    v16_store(l, v16_fmadd(v16_load(l), a, sum));
    v16_store(m, mnew);
#else
    float col[TILE];
    for (int i = 0; i < LANES; i++) {
        for (int j = 0; j < TILE; j++) col[j] = st[j][i];
        alpha[i] = softmax_step(&m[i], &l[i], col);
        for (int j = 0; j < TILE; j++) st[j][i] = col[j];
    }
#endif
}

// kf_head, vf_head: the head's K and V converted to f32 rows, or NULL: each tile is converted here
static void lane_block(const job* J, int64_t hk, int64_t r0, const float* kf_head, const float* vf_head,
                       float* out_base, const struct ggml_tensor* dst) {
    const int64_t hd = J->hd, R = J->n_tokens * J->group;
    const int nl = (int)(R - r0 < LANES ? R - r0 : LANES);
    float qt[MAX_HD][LANES], ot[MAX_HD][LANES], st[TILE][LANES];
    float kt[TILE * MAX_HD], vt[TILE * MAX_HD];
    const char* kbase = (const char*)J->k->data + hk * J->k->nb[2];
    const char* vbase = (const char*)J->v->data + hk * J->v->nb[2];
    float m[LANES], l[LANES];
    int64_t lane_t[LANES], lane_h[LANES];
    for (int i = 0; i < LANES; i++) {
        const int64_t r = r0 + (i < nl ? i : 0);
        lane_t[i] = r / J->group;
        lane_h[i] = hk * J->group + r % J->group;
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    for (int64_t d = 0; d < hd; d++) {
        for (int i = 0; i < LANES; i++) {
            const float* src = (const float*)((const char*)J->q->data + lane_t[i] * J->q->nb[2] +
                                              lane_h[i] * J->q->nb[1]);
            qt[d][i] = i < nl ? src[d] * J->scale : 0.0f;
            ot[d][i] = 0.0f;
        }
    }
    const int64_t t0 = lane_t[0], t1 = lane_t[nl - 1];
    for (int64_t j0 = 0; j0 < J->n_kv; j0 += TILE) {
        const int n = (int)(J->n_kv - j0 < TILE ? J->n_kv - j0 : TILE);
        const int kind = classify(J->mask, t0, t1, j0, n);
        if (kind == TILE_HIDDEN) continue;
        const float *kf = kt, *vf = vt;  // the tile's K and V rows, f32
        if (kf_head) {
            kf = kf_head + j0 * hd;
            vf = vf_head + j0 * hd;
        } else {
            for (int j = 0; j < n; j++) {
                row_to_f32(J->k->type, kbase + (j0 + j) * J->k->nb[1], kt + j * hd, (int)hd);
                row_to_f32(J->v->type, vbase + (j0 + j) * J->v->nb[1], vt + j * hd, (int)hd);
            }
        }
        // scores of the tile, st[j][lane]
#if IM_AVX512
        for (int jb = 0; jb < TILE; jb += 8) {
            __m512 acc[8];
            for (int u = 0; u < 8; u++) acc[u] = _mm512_setzero_ps();
            const float* krow = kf + jb * hd;
            const int valid = n - jb;  // rows past the cache's end read as zeros below
            if (valid >= 8) {
                for (int64_t d = 0; d < hd; d++) {
                    const __m512 qd = _mm512_loadu_ps(qt[d]);
                    for (int u = 0; u < 8; u++) {
                        acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(krow[u * hd + d]), qd, acc[u]);
                    }
                }
            } else {
                for (int64_t d = 0; d < hd; d++) {
                    const __m512 qd = _mm512_loadu_ps(qt[d]);
                    for (int u = 0; u < valid; u++) {
                        acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(krow[u * hd + d]), qd, acc[u]);
                    }
                }
            }
            for (int u = 0; u < 8; u++) _mm512_storeu_ps(st[jb + u], acc[u]);
        }
#elif IM_AVX2
        // 4 slots at a time: 8 accumulators, the query column and a broadcast fit in 16 registers
        for (int jb = 0; jb < TILE; jb += 4) {
            v16 acc[4];
            for (int u = 0; u < 4; u++) acc[u] = v16_set1(0.0f);
            const float* krow = kf + jb * hd;
            const int valid = n - jb;  // rows past the cache's end read as zeros below
            if (valid >= 4) {
                for (int64_t d = 0; d < hd; d++) {
                    v16 qd = v16_load(qt[d]);
                    V_IN_REGISTER(qd);
                    for (int u = 0; u < 4; u++) acc[u] = v16_fmadd(v16_set1(krow[u * hd + d]), qd, acc[u]);
                }
            } else {
                for (int64_t d = 0; d < hd; d++) {
                    const v16 qd = v16_load(qt[d]);
                    for (int u = 0; u < valid; u++) acc[u] = v16_fmadd(v16_set1(krow[u * hd + d]), qd, acc[u]);
                }
            }
            for (int u = 0; u < 4; u++) v16_store(st[jb + u], acc[u]);
        }
#else
        for (int j = 0; j < TILE; j++) {
            for (int i = 0; i < LANES; i++) st[j][i] = 0.0f;
            if (j >= n) continue;
            const float* krow = kf + j * hd;
            for (int64_t d = 0; d < hd; d++) {
                for (int i = 0; i < LANES; i++) st[j][i] += krow[d] * qt[d][i];
            }
        }
#endif
        for (int j = n; j < TILE; j++) {
            for (int i = 0; i < LANES; i++) st[j][i] = -INFINITY;
        }
        if (kind == TILE_MIXED) {
            for (int j = 0; j < n; j++) {
                for (int i = 0; i < LANES; i++) st[j][i] += mask_at(J->mask, lane_t[i], j0 + j);
            }
        }
        float alpha[LANES];
        lanes_softmax_step(m, l, st, alpha);  // st: probabilities, [slot][lane]
        // ot[d][lane] = ot * alpha + sum_j v[j][d] * p[j][lane]
#if IM_SIMD
        const vec16 a = V_LOAD(alpha);
        int64_t d = 0;
        for (; d + LANE_VALUE_DIMS <= hd; d += LANE_VALUE_DIMS) lane_values(LANE_VALUE_DIMS, a, vf, hd, n, d, st, ot);
        for (; d < hd; d++) lane_values(1, a, vf, hd, n, d, st, ot);
#else
        for (int64_t d = 0; d < hd; d++) {
            for (int i = 0; i < LANES; i++) {
                float acc = ot[d][i] * alpha[i];
                for (int j = 0; j < n; j++) acc += vf[j * hd + d] * st[j][i];
                ot[d][i] = acc;
            }
        }
#endif
    }
    for (int i = 0; i < nl; i++) {
        float* dst_row = (float*)((char*)out_base + lane_t[i] * dst->nb[2] + lane_h[i] * dst->nb[1]);
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        for (int64_t d = 0; d < hd; d++) dst_row[d] = ot[d][i] * inv;
        if (dst->ne[0] > hd) dst_row[hd] = m[i] + logf(l[i]);
    }
}

// one KV head's K or V, all n_kv slots, converted to f32 rows of hd
static void head_to_f32(const struct ggml_tensor* t, int64_t hk, int64_t n_kv, int64_t hd, float* out) {
    const char* base = (const char*)t->data + hk * t->nb[2];
    for (int64_t j = 0; j < n_kv; j++) row_to_f32(t->type, base + j * t->nb[1], out + j * hd, (int)hd);
}

void im_attention(struct ggml_tensor* dst, int ith, int nth, void* userdata) {
    job J;
    J.q = dst->src[0];
    J.k = dst->src[1];
    J.v = dst->src[2];
    J.mask = dst->src[3];
    J.scale = *(const float*)userdata;
    J.hd = J.q->ne[0];
    J.n_head = J.q->ne[1];
    J.n_tokens = J.q->ne[2];
    J.n_kv = J.k->ne[1];
    const int64_t n_head_kv = J.k->ne[2];
    J.group = J.n_head / n_head_kv;
    const int64_t R = J.n_tokens * J.group;
    float* out = (float*)dst->data;
    if (R <= FEW_VECTORS) {
        // one thread reads each cache row once for all its KV heads (rows stream from memory
        // in order); several threads split the heads
        const int64_t per_pass = nth == 1 ? (FEW_TOTAL / R < n_head_kv ? FEW_TOTAL / R : n_head_kv) : 1;
        for (int64_t hk = ith * per_pass; hk < n_head_kv; hk += nth * per_pass) {
            few_vectors(&J, hk, hk + per_pass < n_head_kv ? hk + per_pass : n_head_kv, out, dst);
        }
        return;
    }
    // units: (KV head, block of 16 query vectors), in contiguous runs per thread so that a
    // thread converts each head it touches once (where memory for it can be had; else tile by tile)
    const int64_t blocks = (R + LANES - 1) / LANES, units = n_head_kv * blocks;
    const int64_t per = (units + nth - 1) / nth, u0 = ith * per, u1 = u0 + per < units ? u0 + per : units;
    if (u0 >= u1) return;
    float* kf = use_head_scratch ? (float*)malloc((size_t)J.n_kv * J.hd * 4 * 2) : NULL;
    float* vf = kf ? kf + J.n_kv * J.hd : NULL;
    int64_t converted = -1;
    for (int64_t u = u0; u < u1; u++) {
        const int64_t hk = u / blocks;
        if (kf && hk != converted) {
            head_to_f32(J.k, hk, J.n_kv, J.hd, kf);
            head_to_f32(J.v, hk, J.n_kv, J.hd, vf);
            converted = hk;
        }
        lane_block(&J, hk, (u % blocks) * LANES, kf, vf, out, dst);
    }
    free(kf);
}

// --- one query's logits over K rows as the cache stores them (engine/recall_step.py) --------
// out[h * n + j] = scale * q[h] . (K head h / (n_head / n_head_kv) of row j), for n rows
// row_bytes apart. Returns 0, or -1 for a type, head size or shape it does not take (the
// caller checks first; nothing is read then).
static int64_t head_bytes_of(int type, int64_t hd) {
    switch (type) {
        case GGML_TYPE_F32:
            return hd * 4;
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16:
            return hd * 2;
        case GGML_TYPE_Q8_0:
            return hd / 32 * (int64_t)sizeof(block_q8_0);
        case GGML_TYPE_Q4_0:
            return hd / 32 * (int64_t)sizeof(block_q4_0);
    }
    return -1;
}

static inline float dot_f32(const float* a, const float* b, int64_t hd) {  // hd: a multiple of 16
#if IM_SIMD
    vec16 acc = V_ZERO();
    for (int64_t i = 0; i < hd; i += 16) acc = V_FMA(V_LOAD(a + i), V_LOAD(b + i), acc);
    return V_SUM(acc);
#else
    float s = 0.0f;
    for (int64_t i = 0; i < hd; i++) s += a[i] * b[i];
    return s;
#endif
}

int im_query_logits(int type_k, const char* rows, int64_t n, int64_t row_bytes, int64_t n_head_kv,
                    int64_t head_dim, const float* q, int64_t n_head, float scale, float* out) {
    if (!im_kernel_supports(type_k, type_k, head_dim) || n < 0 || n_head_kv < 1 || n_head < n_head_kv ||
        n_head % n_head_kv != 0 || row_bytes != n_head_kv * head_bytes_of(type_k, head_dim)) {
        return -1;
    }
    const int64_t group = n_head / n_head_kv, head_bytes = row_bytes / n_head_kv;
    float k[MAX_HD];
    for (int64_t j = 0; j < n; j++) {
        for (int64_t hk = 0; hk < n_head_kv; hk++) {
            row_to_f32(type_k, rows + j * row_bytes + hk * head_bytes, k, (int)head_dim);
            for (int64_t h = hk * group; h < (hk + 1) * group; h++) {
                out[h * n + j] = scale * dot_f32(q + h * head_dim, k, head_dim);
            }
        }
    }
    return 0;
}
