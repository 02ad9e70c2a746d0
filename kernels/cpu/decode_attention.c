/* Paged decode attention for the CPU: one query token per sequence, reading the paged cache in place.
 *
 * The torch reference gathers every sequence's keys and values into dense buffers before attending, which
 * writes the cache out once more and reads it twice; this reads each cached row once. One sequence per
 * OpenMP task; per sequence, three passes over its tokens: scores (q . k for every query head), softmax,
 * then the weighted sum of the values. Each token's row of all KV heads is contiguous in the cache
 * ([num_blocks, block_size, num_kv_heads, head_dim]), so a pass reads memory in order within a block.
 * float32 only. Built and loaded by kernels/cpu/native.py; the contract is kernels.api.paged_attention's.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline __attribute__((always_inline)) void attend_one(
        const float *q, const float *k_cache, const float *v_cache, const int32_t *table, int len,
        float *out, int num_heads, int num_kv_heads, const int head_dim, int block_size, float scale,
        float *scores) {
    const int group = num_heads / num_kv_heads;
    const long row = (long)num_kv_heads * head_dim;
    for (int t = 0; t < len; t++) {
        const float *k = k_cache + ((long)table[t / block_size] * block_size + t % block_size) * row;
        for (int h = 0; h < num_heads; h++) {
            const float *kh = k + (long)(h / group) * head_dim, *qh = q + (long)h * head_dim;
            float dot = 0.f;
            for (int i = 0; i < head_dim; i++) dot += qh[i] * kh[i];
            scores[(long)h * len + t] = dot * scale;
        }
    }
    for (int h = 0; h < num_heads; h++) {
        float *s = scores + (long)h * len, max = -FLT_MAX, sum = 0.f;
        for (int t = 0; t < len; t++) max = s[t] > max ? s[t] : max;
        for (int t = 0; t < len; t++) {
            s[t] = expf(s[t] - max);
            sum += s[t];
        }
        const float inv = 1.f / sum;
        for (int t = 0; t < len; t++) s[t] *= inv;
        for (int i = 0; i < head_dim; i++) out[(long)h * head_dim + i] = 0.f;
    }
    for (int t = 0; t < len; t++) {
        const float *v = v_cache + ((long)table[t / block_size] * block_size + t % block_size) * row;
        for (int h = 0; h < num_heads; h++) {
            const float *vh = v + (long)(h / group) * head_dim, p = scores[(long)h * len + t];
            float *o = out + (long)h * head_dim;
            for (int i = 0; i < head_dim; i++) o[i] += p * vh[i];
        }
    }
}

/* q, out [num_seqs, num_heads, head_dim]; caches [num_blocks, block_size, num_kv_heads, head_dim];
 * block_tables [num_seqs, max_blocks]; seq_lens [num_seqs] >= 1. Returns 0, or 1 if memory ran out. */
int paged_decode_f32(const float *q, const float *k_cache, const float *v_cache, const int32_t *block_tables,
                     const int32_t *seq_lens, float *out, int num_seqs, int num_heads, int num_kv_heads,
                     int head_dim, int block_size, int max_blocks, float scale) {
    int failed = 0;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < num_seqs; s++) {
        float *scores = malloc(sizeof(float) * ((size_t)seq_lens[s] * num_heads + 1));   /* never malloc(0) */
        if (scores == NULL) {
            failed = 1;
            continue;
        }
        const float *qs = q + (long)s * num_heads * head_dim;
        float *os = out + (long)s * num_heads * head_dim;
        const int32_t *table = block_tables + (long)s * max_blocks;
        /* Head sizes known at compile time unroll and vectorise the inner loops fully. */
        switch (head_dim) {
#define CASE(D) case D: attend_one(qs, k_cache, v_cache, table, seq_lens[s], os, num_heads, num_kv_heads, D, \
                                   block_size, scale, scores); break;
            CASE(64) CASE(80) CASE(96) CASE(128) CASE(256)
#undef CASE
            default: attend_one(qs, k_cache, v_cache, table, seq_lens[s], os, num_heads, num_kv_heads, head_dim,
                                block_size, scale, scores);
        }
        free(scores);
    }
    return failed;
}
