/* Paged attention for the CPU over query rows each attending a causal prefix of its sequence (decode tokens, short
 * chunks of new tokens such as speculative verification), reading the paged cache in place.
 *
 * The torch reference gathers every sequence's keys and values into dense buffers before attending, which
 * writes the cache out once more and reads it twice; this reads each cached row once. The OpenMP tasks are
 * query rows (all their heads), or (row, KV head) pairs when there are fewer rows than threads. Per task,
 * three passes over the tokens the row attends: scores (q . k for each query head), softmax, then the
 * weighted sum of the values. A token's row of KV heads is contiguous in the cache
 * ([num_blocks, block_size, num_kv_heads, head_dim]), so a whole-row task reads memory in order within a
 * block. float32 only. Built and loaded by llm_kernels/cpu/native.py; the contract is llm_kernels.api.paged_attention's.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

enum { OK = 0, NO_MEMORY = 1, BAD_TABLE = 2 };

/* Query heads [h0, h1) of one sequence, over its tokens [start, len); group query heads share a KV head. */
static inline __attribute__((always_inline)) void attend(
        const float *q, const float *k_cache, const float *v_cache, const int32_t *table, int start, int len,
        float *out, int h0, int h1, int group, int num_kv_heads, const int head_dim, int block_size, float scale,
        float *scores) {
    const int64_t row = (int64_t)num_kv_heads * head_dim;
    const int n = len - start;
    for (int t = start; t < len; t++) {
        const float *k = k_cache + ((int64_t)table[t / block_size] * block_size + t % block_size) * row;
        for (int h = h0; h < h1; h++) {
            const float *kh = k + (int64_t)(h / group) * head_dim, *qh = q + (int64_t)h * head_dim;
            float dot = 0.f;
            for (int i = 0; i < head_dim; i++) dot += qh[i] * kh[i];
            scores[(int64_t)(h - h0) * n + (t - start)] = dot * scale;
        }
    }
    for (int h = h0; h < h1; h++) {
        float *s = scores + (int64_t)(h - h0) * n, max = -FLT_MAX, sum = 0.f;
        for (int t = 0; t < n; t++) max = s[t] > max ? s[t] : max;
        for (int t = 0; t < n; t++) {
            s[t] = expf(s[t] - max);
            sum += s[t];
        }
        const float inv = 1.f / sum;
        for (int t = 0; t < n; t++) s[t] *= inv;
        for (int i = 0; i < head_dim; i++) out[(int64_t)h * head_dim + i] = 0.f;
    }
    for (int t = start; t < len; t++) {
        const float *v = v_cache + ((int64_t)table[t / block_size] * block_size + t % block_size) * row;
        for (int h = h0; h < h1; h++) {
            const float *vh = v + (int64_t)(h / group) * head_dim, p = scores[(int64_t)(h - h0) * n + (t - start)];
            float *o = out + (int64_t)h * head_dim;
            for (int i = 0; i < head_dim; i++) o[i] += p * vh[i];
        }
    }
}

/* Whether the sequence's length and the block ids it will read are inside the table and the cache. */
static int table_ok(const int32_t *table, int len, int max_blocks, int block_size, int num_blocks) {
    if (len < 1 || (int64_t)len > (int64_t)max_blocks * block_size) return 0;
    for (int b = 0; b < (len + block_size - 1) / block_size; b++)
        if (table[b] < 0 || table[b] >= num_blocks) return 0;
    return 1;
}

/* One task: query heads of KV heads [kv0, kv1) of one query row `qs` whose sequence's table is `table` and which
 * attends that sequence's first `len` tokens (its last `window` of them when window > 0). */
static int run_task(const float *qs, const float *k_cache, const float *v_cache, const int32_t *table, int len,
                    float *os, int kv0, int kv1, int group, int num_kv_heads, int head_dim, int block_size,
                    int max_blocks, int num_blocks, float scale, int window) {
    if (!table_ok(table, len, max_blocks, block_size, num_blocks)) return BAD_TABLE;
    const int start = window > 0 && len > window ? len - window : 0;
    float *scores = malloc(sizeof(float) * ((size_t)(len - start) * (kv1 - kv0) * group));
    if (scores == NULL) return NO_MEMORY;
    /* Head sizes known at compile time unroll and vectorise the inner loops fully. */
    switch (head_dim) {
#define CASE(D) case D: attend(qs, k_cache, v_cache, table, start, len, os, kv0 * group, kv1 * group, group, \
                               num_kv_heads, D, block_size, scale, scores); break;
        CASE(64) CASE(80) CASE(96) CASE(128) CASE(256)
#undef CASE
        default: attend(qs, k_cache, v_cache, table, start, len, os, kv0 * group, kv1 * group, group,
                        num_kv_heads, head_dim, block_size, scale, scores);
    }
    free(scores);
    return OK;
}

/* q, out [num_rows, num_heads, head_dim]: query rows, row r of sequence row_seq[r] attending its first
 * row_len[r] tokens (a decode row: all of them; row i of a chunk of n new tokens of a sequence of length L:
 * L - n + i + 1, causal); caches [num_blocks, block_size, num_kv_heads, head_dim]; block_tables [num_seqs,
 * max_blocks]; num_heads a multiple of num_kv_heads; window > 0: only the last `window` tokens of each row's
 * are attended (a sliding window), 0: all. With fewer rows than threads a task is one KV head of a row.
 * Returns OK, NO_MEMORY, or BAD_TABLE (a length or block id out of range: that row is not computed). */
int paged_rows_f32(const float *q, const float *k_cache, const float *v_cache, const int32_t *block_tables,
                   const int32_t *row_seq, const int32_t *row_len, float *out, int num_rows, int num_heads,
                   int num_kv_heads, int head_dim, int block_size, int max_blocks, int num_blocks, float scale,
                   int window, int num_threads) {
    const int group = num_heads / num_kv_heads;
    const int splits = num_rows >= num_threads ? 1 : num_kv_heads;   /* tasks per row */
    int status = OK;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t task = 0; task < (int64_t)num_rows * splits; task++) {
        const int r = (int)(task / splits), part = (int)(task % splits);
        const int kv0 = part * num_kv_heads / splits, kv1 = (part + 1) * num_kv_heads / splits;
        const int code = run_task(q + (int64_t)r * num_heads * head_dim, k_cache, v_cache,
                                  block_tables + (int64_t)row_seq[r] * max_blocks, row_len[r],
                                  out + (int64_t)r * num_heads * head_dim, kv0, kv1, group, num_kv_heads, head_dim,
                                  block_size, max_blocks, num_blocks, scale, window);
        if (code != OK) {
            #pragma omp atomic write
            status = code;
        }
    }
    return status;
}
