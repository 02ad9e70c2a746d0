"""Triton kernel benchmarks: decode and prefill attention, sampling, each checked against a reference first.

    python -m benchmarks.kernels            # on a GPU: every shape (a few minutes)
    python -m benchmarks.kernels --quick    # on a GPU: a few shapes
    python -m benchmarks.kernels --smoke    # anywhere (TRITON_INTERPRET=1 on a CPU): tiny shapes, the code paths only
    python -m benchmarks.kernels --sampling-sweep   # on a GPU: the samplers' tile width, warps, lane sums, spans

Printed per shape:
- decode: K/V bytes read / time as GB/s and as a percentage of the device's measured copy bandwidth (a 1 GiB
  device-to-device copy, read + write bytes). Timed with `triton.testing.do_bench`, which empties the L2
  before every run; large batches keep launch overhead negligible. "graph us" is the same call replayed from a
  CUDA graph (`do_bench_cudagraph`, L2 not emptied): the GPU time without the host's launch overhead.
- prefill: causal attention TFLOP/s of our paged kernel and of `scaled_dot_product_attention`'s flash path on
  the same data (the K/V heads repeated for SDPA), and their ratio.
- sampling: our samplers ("1-prog", one program per row, `benchmarks.one_program_sampler`; and "split", several
  programs per row, the default, with its CUDA-graph time "split graph", as its six launches may be bound by the
  host) against a `torch.sort`-based top-k/top-p sampler, and the speedups; "kept ok" is the tests' oracle
  (tests/sampling_oracle.py) on the first 4 rows for both samplers (any problem is printed below the row).
- layer ops: the fused RMSNorm + residual, SiLU-and-mul and rotary kernels against the torch code they would
  replace (`llm_kernels.reference.layer_ops`, the engine's own), bf16, Llama-3-8B's sizes: time from do_bench and
  from a CUDA graph (without launch overhead) for both, and the fused kernel's bytes moved / time. The engine
  uses them only where this shows they pay.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import torch

GIB = 1 << 30


def _timer(cuda: bool):
    """A function timing `fn()` in ms: do_bench on CUDA, one wall-clock run under the interpreter."""
    if cuda:
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100)

    def wall(fn) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return wall


def copy_bandwidth(device: torch.device, timer, nbytes: int) -> float:
    """GB/s of a device-to-device copy (bytes read + written)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def paged_batch(batch: int, context: int, q_len: int, num_heads: int, num_kv_heads: int, head_dim: int,
                block_size: int, dtype: torch.dtype, device: torch.device):
    """A batch of `batch` sequences of `context` cached tokens (the last `q_len` new), blocks shuffled."""
    blocks_per_seq = -(-context // block_size)
    num_blocks = batch * blocks_per_seq
    tables = torch.randperm(num_blocks, device=device).view(batch, blocks_per_seq).int()
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device=device).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device=device).to(dtype)
    q = torch.randn(batch * q_len, num_heads, head_dim, device=device).to(dtype)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    cu = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32, device=device)
    return q, k_cache, v_cache, tables, seq_lens, cu


def bench_decode(shapes, device, timer, copy_gbs: float) -> None:
    from llm_kernels.reference import attention as ref
    from llm_kernels.triton_ops import paged_attention
    from llm_kernels.triton_ops.decode_attention import choose_num_splits

    print("\n== decode attention (fp16, q heads 32 / kv heads 8, head 128, block 16) ==")
    print(f"{'batch':>6} {'context':>8} {'splits':>6} {'max err':>9} {'time us':>9} {'GB/s':>8} {'% copy':>7} "
          f"{'graph us':>9}")
    for batch, context in shapes:
        q, k, v, tables, lens, cu = paged_batch(batch, context, 1, 32, 8, 128, 16, torch.float16, device)
        run = functools.partial(paged_attention, q, k, v, tables, lens, cu, 1, 128 ** -0.5)
        check = min(batch, 8)
        err = (run()[:check].float() - ref.paged_attention(q[:check], k, v, tables[:check], lens[:check],
                                                           cu[:check + 1], 1, 128 ** -0.5).float()).abs().max()
        ms = timer(run)
        graph_us = graph_time_us(run) if device.type == "cuda" else float("nan")
        nbytes = 2 * batch * context * 8 * 128 * 2 + 2 * q.numel() * 2
        gbs = nbytes / ms / 1e6
        splits = choose_num_splits(batch, 8, tables.shape[1] * 16, device)
        print(f"{batch:>6} {context:>8} {splits:>6} {err:>9.2e} {ms * 1e3:>9.1f} {gbs:>8.0f} "
              f"{100 * gbs / copy_gbs:>6.1f}% {graph_us:>9.1f}")


def graph_time_us(fn) -> float:
    """Microseconds of `fn` replayed from a CUDA graph; NaN where capture fails."""
    import triton.testing

    try:
        return triton.testing.do_bench_cudagraph(fn) * 1e3
    except Exception:  # noqa: BLE001 -- a capture failure must not stop the table
        return float("nan")


def bench_prefill(shapes, device, timer, cuda: bool) -> None:
    import torch.nn.functional as F

    from llm_kernels.triton_ops import paged_attention

    print("\n== prefill attention (fp16, q heads 32 / kv heads 8, head 128, block 16, causal) ==")
    print(f"{'batch':>6} {'prompt':>7} {'prefix':>7} {'max err':>9} {'ours TF/s':>10} {'SDPA TF/s':>10} {'ratio':>6}")
    for batch, q_len, prefix in shapes:
        context = prefix + q_len
        q, k, v, tables, lens, cu = paged_batch(batch, context, q_len, 32, 8, 128, 16, torch.float16, device)
        run = functools.partial(paged_attention, q, k, v, tables, lens, cu, q_len, 128 ** -0.5)
        ms = timer(run)
        # Each new token i sees prefix + i + 1 keys; 2 matmuls, 2 flops per multiply-add.
        flops = 4 * batch * 32 * 128 * (q_len * prefix + q_len * (q_len + 1) / 2)
        ours = flops / ms / 1e9
        if prefix:
            print(f"{batch:>6} {q_len:>7} {prefix:>7} {'':>9} {ours:>10.1f} {'':>10} {'':>6}")
            continue
        # The same data, dense and with the KV heads repeated, for SDPA.
        kd, vd = (cache[tables.long()].flatten(1, 2).transpose(1, 2).repeat_interleave(4, dim=1) for cache in (k, v))
        qd = q.view(batch, q_len, 32, 128).transpose(1, 2)
        sdpa = functools.partial(F.scaled_dot_product_attention, qd, kd, vd, is_causal=True, scale=128 ** -0.5)
        if cuda:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                expected = sdpa()
                sdpa_ms = timer(sdpa)
        else:
            expected = sdpa()
            sdpa_ms = timer(sdpa)
        err = (run().view(batch, q_len, 32, 128).transpose(1, 2).float() - expected.float()).abs().max()
        theirs = flops / sdpa_ms / 1e9
        print(f"{batch:>6} {q_len:>7} {prefix:>7} {err:>9.2e} {ours:>10.1f} {theirs:>10.1f} {ours / theirs:>6.2f}")


def sort_sampler(logits, temperature, top_k, top_p):
    """The usual torch top-k/top-p sampler: sort, mask by rank and cumulative mass, scatter back, draw."""
    logits = logits / temperature[:, None]
    ordered, order = logits.sort(dim=-1)
    vocab = logits.shape[1]
    kth = ordered.gather(1, vocab - torch.where(top_k > 0, top_k.long(), vocab).clamp(max=vocab)[:, None])
    ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - top_p[:, None]
    drop[:, -1] = False
    ordered = ordered.masked_fill(drop, float("-inf"))
    probs = torch.empty_like(ordered).scatter_(1, order, ordered).softmax(dim=-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1)


def bench_sampling(batches, vocabs, device, timer) -> None:
    from benchmarks import one_program_sampler
    from llm_kernels.triton_ops import sampling_split
    from tests.sampling_oracle import kept_set_problems

    samplers = (one_program_sampler.sample_with_thresholds, sampling_split.sample_with_thresholds)
    cuda = device.type == "cuda"
    print("\n== sampling (T 0.8; logits ~ N(0, 2.5^2); 'split': several programs per row) ==")
    print(f"{'batch':>6} {'vocab':>7} {'filters':>18} {'kept ok':>8} {'1-prog us':>9} {'split us':>9} "
          f"{'split graph':>12} {'sort us':>9} {'1-prog':>8} {'split':>7}")
    target_rows = {"one-program": [], "split (default)": []}          # speedups where issue 3 sets its target
    for vocab in vocabs:
        for batch in batches:
            logits = torch.randn(batch, vocab, device=device) * 2.5
            for top_k, top_p in ((50, 0.9), (0, 0.95), (40, 1.0)):
                full = functools.partial(torch.full, (batch,), device=device)
                temperature, k, p = full(0.8), full(top_k, dtype=torch.int32), full(top_p)
                args = (logits, temperature, k, p, full(0.0), full(1, dtype=torch.int64),
                        torch.arange(batch, device=device))
                rows = min(batch, 4)
                problems = []
                for label, sampler in zip(("", "split: "), samplers):
                    _, thresholds, counts = sampler(*args)
                    problems += [label + problem for problem in kept_set_problems(
                        *(a[:rows].cpu() for a in args[:5]), thresholds[:rows].cpu(), counts[:rows].cpu())]
                ours, split = (timer(functools.partial(sampler, *args)) for sampler in samplers)
                graphed = graph_time_us(functools.partial(samplers[1], *args)) if cuda else float("nan")
                theirs = timer(functools.partial(sort_sampler, logits, temperature, k, p))
                name = f"k={top_k} p={top_p}"
                print(f"{batch:>6} {vocab:>7} {name:>18} {str(not problems):>8} {ours * 1e3:>9.1f} "
                      f"{split * 1e3:>9.1f} {graphed:>12.1f} {theirs * 1e3:>9.1f} {theirs / ours:>7.2f}x "
                      f"{theirs / split:>6.2f}x")
                for problem in problems:
                    print(f"    ! {problem}")
                if batch >= 64 and vocab == 128256:
                    target_rows["one-program"].append(theirs / ours)
                    target_rows["split (default)"].append(theirs / split)
    for name, speedups in target_rows.items():
        if speedups:
            print(f"target (>= 3x sort at batch >= 64, vocab 128256): the {name} sampler's slowest row is "
                  f"{min(speedups):.2f}x")


def _sweep_configs() -> list[tuple[str, object, dict]]:
    """(label, sampler, launch options): tile width x warps x lane sums ('L') x compacting search ('C') of the
    one-program sampler, and tile width x warps x programs per multiprocessor of the split one ('S4': 4 per SM)."""
    from benchmarks import one_program_sampler
    from llm_kernels.triton_ops import sampling_split

    # The H100 sweep of 2026-11-26 (benchmarks/RESULTS.md) made the split sampler the default at 1024/4w with
    # 8 programs per SM; the one-program settings kept here are its default and its fastest variants.
    single = [(2048, 8, ""), (2048, 8, "L"), (2048, 8, "LC")]
    split = [(512, 4, 8), (1024, 4, 4), (1024, 4, 8), (1024, 4, 16), (2048, 4, 8), (1024, 8, 8)]
    return ([(f"{block}/{warps}w{flags}", one_program_sampler.sample_with_thresholds,
              {"block": block, "num_warps": warps, "lane_sums": "L" in flags, "compact": "C" in flags})
             for block, warps, flags in single]
            + [(f"{block}/{warps}wS{per_sm}", sampling_split.sample_with_thresholds,
                {"block": block, "num_warps": warps, "per_sm": per_sm}) for block, warps, per_sm in split])


def sampling_sweep(device, timer, batches=(1, 64, 256), vocab: int = 128256) -> None:
    """The samplers' time per launch configuration."""
    from llm_kernels.triton_ops import _utils
    from tests.sampling_oracle import kept_set_problems

    configs = _sweep_configs()
    print(f"\n== sampling launch configurations (vocab {vocab}, T 0.8; tile/warps, 'L': lane sums, 'C': compacting "
          "search, 'S<n>': split, n programs per SM) ==")
    print(f"{'batch':>6} {'filters':>14} " + " ".join(f"{label:>10}" for label, _, _ in configs))
    for batch in batches:
        logits = torch.randn(batch, vocab, device=device) * 2.5
        full = functools.partial(torch.full, (batch,), device=device)
        for top_k, top_p in ((50, 0.9), (0, 0.95)):
            args = (logits, full(0.8), full(top_k, dtype=torch.int32), full(top_p), full(0.0),
                    full(1, dtype=torch.int64), torch.arange(batch, device=device))
            cells = []
            for _, sampler, options in configs:
                options = dict(options)
                if "per_sm" in options:
                    options["splits"] = _utils.cdiv(options.pop("per_sm") * _utils.sm_count(device), batch)
                run = functools.partial(sampler, *args, **options)
                try:
                    _, thresholds, counts = run()
                    ok = not kept_set_problems(*(a[:4].cpu() for a in args[:5]), thresholds[:4].cpu(),
                                               counts[:4].cpu())
                    cells.append(f"{timer(run) * 1e3:>9.1f}{'' if ok else '!'}")
                except Exception:  # noqa: BLE001 -- e.g. out of registers or shared memory
                    cells.append(f"{'fail':>10}")
            print(f"{batch:>6} {f'k={top_k} p={top_p}':>14} " + " ".join(f"{c:>10}" for c in cells))
    print("(us per call; '!' marks a cut that differs from the reference beyond float rounding)")


def bench_layer_ops(token_counts, hidden: int, intermediate: int, heads: int, head_dim: int, device, timer,
                    copy_gbs: float) -> None:
    from llm_kernels.reference import layer_ops as ref
    from llm_kernels.triton_ops import layer_ops

    dtype, cuda = torch.bfloat16, device.type == "cuda"
    print(f"\n== layer ops (bf16; hidden {hidden}, intermediate {intermediate}, {heads} q+k heads of {head_dim}) ==")
    print(f"{'op':>14} {'tokens':>7} {'max err':>9} {'ours us':>8} {'torch us':>9} {'speedup':>8} "
          f"{'graph ours':>11} {'graph torch':>12} {'speedup':>8} {'GB/s':>7} {'% copy':>7}")
    for tokens in token_counts:
        x, residual = (torch.randn(tokens, hidden, device=device).to(dtype) for _ in range(2))
        weight = torch.randn(hidden, device=device).to(dtype)
        gate_up = torch.randn(tokens, 2 * intermediate, device=device).to(dtype)
        qk = torch.randn(tokens, heads, head_dim, device=device).to(dtype)
        angles = torch.rand(tokens, head_dim // 2, device=device) * 8192
        cos, sin = torch.cat([angles.cos(), angles.sin()], dim=-1).chunk(2, dim=-1)   # the model's rows
        part = functools.partial
        cases = [
            ("rms_norm+add", part(layer_ops.rms_norm, x, weight, 1e-5, residual),
             part(ref.rms_norm, x, weight, 1e-5, residual), (4 * tokens * hidden + hidden) * 2),
            ("silu_and_mul", part(layer_ops.silu_and_mul, gate_up), part(ref.silu_and_mul, gate_up),
             3 * tokens * intermediate * 2),
            ("rotary", part(layer_ops.rotary, qk, cos, sin), part(ref.rotary, qk, cos, sin),
             2 * qk.numel() * 2 + tokens * head_dim * 4),           # q/k in and out, a cos and a sin row
        ]
        for name, ours, theirs, nbytes in cases:
            got, want = ours(), theirs()
            err = max((a.float() - b.float()).abs().max().item() for a, b in zip(
                got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)))
            ours_ms, theirs_ms = timer(ours), timer(theirs)
            graph_ours = graph_time_us(ours) if cuda else float("nan")
            graph_theirs = graph_time_us(theirs) if cuda else float("nan")
            gbs = nbytes / ours_ms / 1e6
            print(f"{name:>14} {tokens:>7} {err:>9.2e} {ours_ms * 1e3:>8.1f} {theirs_ms * 1e3:>9.1f} "
                  f"{theirs_ms / ours_ms:>7.2f}x {graph_ours:>11.1f} {graph_theirs:>12.1f} "
                  f"{graph_theirs / graph_ours:>7.2f}x {gbs:>7.0f} {100 * gbs / copy_gbs:>6.1f}%")


def bench_moe(token_counts, experts: int, top_k: int, hidden: int, intermediate: int, device, timer) -> None:
    """Our fused MoE against the torch reference's loop over experts and, where this torch has it,
    torch._grouped_mm over the same sorted tokens (bf16 on a GPU, fp32 through the interpreter)."""
    from llm_kernels.reference.moe import fused_moe as reference
    from llm_kernels.triton_ops.fused_moe import fused_moe

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    grouped = getattr(torch, "_grouped_mm", None) if device.type == "cuda" else None
    print(f"\n== fused MoE ({dtype}; {experts} experts, top {top_k}, hidden {hidden}, expert intermediate "
          f"{intermediate}) ==")
    print(f"{'tokens':>7} {'max err':>9} {'ours us':>8} {'loop us':>8} {'speedup':>8} {'grouped_mm us':>14}")
    w13 = (torch.randn(experts, 2 * intermediate, hidden, device=device) / hidden ** 0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, intermediate, device=device) / intermediate ** 0.5).to(dtype)
    for tokens in token_counts:
        x = torch.randn(tokens, hidden, device=device).to(dtype)
        weights, ids = torch.softmax(torch.randn(tokens, experts, device=device), dim=-1).topk(top_k, dim=-1)
        ours = functools.partial(fused_moe, x, w13, w2, weights, ids)
        loop = functools.partial(reference, x, w13, w2, weights, ids)
        err = (ours().float() - loop().float()).abs().max().item()
        ours_ms, loop_ms = timer(ours), timer(loop)
        grouped_us = float("nan")
        if grouped is not None:
            try:
                flat = ids.reshape(-1)
                order = flat.argsort()
                offsets = torch.bincount(flat, minlength=experts).cumsum(0).to(torch.int32)
                rows = x[order // top_k]
                grouped_us = timer(functools.partial(grouped, rows, w13.transpose(1, 2), offs=offsets)) * 1e3
            except (RuntimeError, TypeError) as exc:             # not on this device or this torch's signature
                print(f"torch._grouped_mm unavailable: {exc}")
                grouped = None
        print(f"{tokens:>7} {err:>9.2e} {ours_ms * 1e3:>8.1f} {loop_ms * 1e3:>8.1f} {loop_ms / ours_ms:>7.2f}x "
              f"{grouped_us:>14.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; runs on a CPU with TRITON_INTERPRET=1")
    parser.add_argument("--sampling-sweep", action="store_true", help="only the sampler's launch configurations")
    parser.add_argument("--moe", action="store_true", help="only the fused MoE kernel (Qwen3-30B-A3B's experts)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.smoke:
            parser.error("no CUDA device: only --smoke runs here (under Triton's interpreter)")
        os.environ["TRITON_INTERPRET"] = "1"  # before llm_kernels.triton_ops is imported: kernels are defined then
    device = torch.device("cuda" if cuda else "cpu")
    timer = _timer(cuda)
    torch.manual_seed(0)
    if cuda:
        print(f"device: {torch.cuda.get_device_name(device)}")
    else:
        print("device: CPU through Triton's interpreter -- these numbers are NOT meaningful, only the code paths are")

    if args.smoke:
        copy_gbs = copy_bandwidth(device, timer, 1 << 20)
        decode, prefill, batches, vocabs = [(2, 40), (1, 70)], [(2, 24, 0), (1, 16, 20)], [2], [1000]
        layer_tokens, layer_sizes = [1, 3], (64, 96, 3, 16)
    elif args.quick:
        copy_gbs = copy_bandwidth(device, timer, GIB)
        decode = [(1, 4096), (32, 4096), (64, 4096), (256, 2048)]
        prefill = [(1, 4096, 0), (4, 1024, 0), (1, 512, 4096)]
        batches, vocabs = [1, 64, 256], [128256]
        layer_tokens, layer_sizes = [1, 256], (4096, 14336, 40, 128)
    else:
        copy_gbs = copy_bandwidth(device, timer, GIB)
        decode = [(1, 4096), (1, 32768), (8, 4096), (32, 4096), (64, 4096), (128, 4096), (256, 1024), (256, 4096)]
        prefill = [(1, 8192, 0), (1, 4096, 0), (4, 2048, 0), (16, 512, 0), (1, 512, 4096), (8, 256, 2048)]
        batches, vocabs = [1, 8, 64, 128, 256], [32000, 128256, 151936]
        layer_tokens, layer_sizes = [1, 64, 256, 2048], (4096, 14336, 40, 128)
    if args.sampling_sweep:
        sampling_sweep(device, timer, *(((2,), 1000) if args.smoke else ()))
        return
    if args.moe:          # the gate/up projection only, for torch._grouped_mm: the first of our two GEMMs
        bench_moe([3, 16] if args.smoke else [1, 16, 256, 2048], 4 if args.smoke else 128, 2 if args.smoke else 8,
                  64 if args.smoke else 2048, 32 if args.smoke else 768, device, timer)
        return
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s")
    bench_decode(decode, device, timer, copy_gbs)
    bench_prefill(prefill, device, timer, cuda)
    bench_sampling(batches, vocabs, device, timer)
    bench_layer_ops(layer_tokens, *layer_sizes, device, timer, copy_gbs)


if __name__ == "__main__":
    main()
