"""engine.AsyncLLM in-process: its outputs against the offline LLM, aborts that free KV blocks, an engine
thread that sleeps when idle, the queue limit, and what pending requests see when the engine thread dies."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from engine import LLM, AsyncLLM, SamplingParams
from engine.async_llm import EngineDeadError, EngineOverloadedError
from engine.request_stream import OutputAccumulator

PROMPTS = ["def add(a, b):", "日本語のテキスト 😀", "import os\n"]


@pytest.fixture(scope="module")
def offline(llama_path):
    return LLM(llama_path)


def _run(coro):
    return asyncio.run(coro)


def test_streamed_deltas_add_up_to_the_offline_outputs(llama_path, offline):
    params = SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=20, logprobs=1, stop=["e"])
    expected = offline.generate(PROMPTS, params)

    async def one(llm: AsyncLLM, prompt: str):
        acc = OutputAccumulator()
        deltas = 0
        async for out in llm.generate(prompt, params):
            acc.add(out)
            deltas += 1
        return acc.output, deltas

    async def main():
        llm = AsyncLLM(llama_path)
        try:
            return await asyncio.gather(*(one(llm, p) for p in PROMPTS))
        finally:
            llm.shutdown()

    for (got, deltas), want in zip(_run(main()), expected):
        assert got.finished and deltas > 1
        for a, b in zip(got.outputs, want.outputs):
            assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
            assert [sorted(p) for p in a.logprobs] == [sorted(p) for p in b.logprobs]
            assert a.cumulative_logprob == pytest.approx(b.cumulative_logprob)


def test_cancelling_the_consumer_or_abort_frees_the_blocks(llama_path):
    params = SamplingParams(max_tokens=200, ignore_eos=True, temperature=0)

    async def main():
        llm = AsyncLLM(llama_path)
        real_step = llm._engine.step

        def slow_step():                                 # so that 200 tokens take a while on any machine
            time.sleep(0.005)
            return real_step()

        llm._engine.step = slow_step
        try:
            async def consume(request_id: str):
                async for _ in llm.generate(PROMPTS[0], params, request_id=request_id):
                    pass

            task = asyncio.create_task(consume("a"))
            other = asyncio.create_task(consume("b"))
            for _ in range(3000):                        # both running (soon, on a busy machine too)
                busy = llm.stats()
                if busy.num_running == 2:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            await llm.abort("b")
            await asyncio.gather(task, other, return_exceptions=True)
            for _ in range(100):
                if llm.stats().kv_blocks_used == 0:
                    break
                await asyncio.sleep(0.02)
            return busy, llm.stats(), other.done() and not other.cancelled()
        finally:
            llm.shutdown()

    busy, idle, other_ended = _run(main())
    assert busy.num_running == 2 and busy.kv_blocks_used > 0
    assert idle.num_running == idle.num_waiting == idle.kv_blocks_used == 0
    assert other_ended                                    # abort() ends the stream quietly


def test_a_reused_request_id_keeps_its_own_stream(llama_path):
    """The old request's last output arrives after the id was reused: it must not unregister the new stream,
    which `abort` must still end (before the fix it hung, holding its slot)."""
    first_step_may_run = threading.Event()

    async def main():
        llm = AsyncLLM(llama_path, max_queued_seqs=4)
        real_step = llm._engine.step
        steps = []

        def gated_step():
            if not steps:
                first_step_may_run.wait(30)
            steps.append(1)
            time.sleep(0.005)
            return real_step()

        llm._engine.step = gated_step
        try:
            await llm.add_request(PROMPTS[0], SamplingParams(max_tokens=1), request_id="x")   # the step waits
            await llm.abort("x")
            again = asyncio.create_task(llm.add_request(PROMPTS[0], SamplingParams(max_tokens=500, ignore_eos=True),
                                                        request_id="x"))
            await asyncio.sleep(0.05)                      # the new stream is registered; the step still waits
            first_step_may_run.set()                       # the old request finishes in it, after its abort
            stream = await asyncio.wait_for(again, 30)
            await asyncio.sleep(0.1)                       # its last output has been delivered by now
            await llm.abort("x")
            await asyncio.wait_for(_drain(stream), 30)
            return llm._in_flight
        finally:
            first_step_may_run.set()
            llm.shutdown()

    assert _run(main()) == 0


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def test_engine_thread_sleeps_when_idle(llama_path):
    async def main():
        llm = AsyncLLM(llama_path)
        try:
            async for _ in llm.generate(PROMPTS[0], SamplingParams(max_tokens=4)):
                pass
            thread = next(t for t in threading.enumerate() if t.name == "engine")
            start = _cpu_ticks(thread.native_id)
            await asyncio.sleep(1.0)
            return _cpu_ticks(thread.native_id) - start
        finally:
            llm.shutdown()

    assert _run(main()) <= 2                              # clock ticks (1/100 s): no busy wait


def _cpu_ticks(native_id: int) -> int:
    stat = Path(f"/proc/{os.getpid()}/task/{native_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])             # utime + stime


def test_invalid_requests_raise_at_add_time(llama_path):
    async def main():
        llm = AsyncLLM(llama_path)
        try:
            with pytest.raises(ValueError, match="vocabulary|token ids"):
                await llm.add_request([10**6], SamplingParams())
            with pytest.raises(ValueError, match="context"):
                await llm.add_request([5] * 256, SamplingParams())
            stream = await llm.add_request([5, 6], SamplingParams(max_tokens=200, ignore_eos=True), request_id="x")
            with pytest.raises(ValueError, match="in use"):
                await llm.add_request([5, 6], SamplingParams(), request_id="x")
            await llm.abort("x")
            return [out async for out in stream]
        finally:
            llm.shutdown()

    outputs = _run(main())
    assert not (outputs and outputs[-1].finished)
    assert sum(len(o.outputs[0].token_ids) for o in outputs) < 200


def test_queue_limit(llama_path):
    async def main():
        llm = AsyncLLM(llama_path, max_num_seqs=2, max_queued_seqs=1)
        try:
            first = await llm.add_request(PROMPTS[0], SamplingParams(n=2, max_tokens=200, ignore_eos=True))
            with pytest.raises(EngineOverloadedError):
                await llm.add_request(PROMPTS[0], SamplingParams(n=2))
            second = await llm.add_request(PROMPTS[0], SamplingParams(n=1, max_tokens=2))
            await llm.abort(first.request_id)
            [out async for out in second]
            third = await llm.add_request(PROMPTS[0], SamplingParams(n=3, max_tokens=2))   # room again
            acc = OutputAccumulator()
            async for out in third:
                acc.add(out)
            return acc.output
        finally:
            llm.shutdown()

    assert len(_run(main()).outputs) == 3


def test_a_dead_engine_fails_pending_and_new_requests(llama_path):
    async def main():
        llm = AsyncLLM(llama_path)
        real_step = llm._engine.step
        calls = 0

        def failing_step():
            nonlocal calls
            calls += 1
            if calls == 5:
                raise RuntimeError("boom")
            return real_step()

        llm._engine.step = failing_step
        try:
            with pytest.raises(EngineDeadError, match="boom"):
                async for _ in llm.generate(PROMPTS[0], SamplingParams(max_tokens=100, ignore_eos=True)):
                    pass
            for _ in range(50):
                if not llm.is_alive:
                    break
                await asyncio.sleep(0.01)
            alive = llm.is_alive
            with pytest.raises(EngineDeadError):
                await llm.add_request(PROMPTS[0], SamplingParams())
            return alive
        finally:
            llm.shutdown()

    started = time.monotonic()
    assert _run(main()) is False and time.monotonic() - started < 30


def test_the_engine_is_built_and_run_on_its_own_thread(llama_path, monkeypatch):
    """Loading on the caller's thread and stepping on another would split torch's OpenMP work over two
    threads (slow on the CPU): the model is loaded, and every step runs, on the engine thread."""
    from engine.llm_engine import LLMEngine

    threads = []
    for name in ("__init__", "step"):
        original = getattr(LLMEngine, name)

        def spy(self, *args, _original=original, **kwargs):
            threads.append(threading.current_thread().name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(LLMEngine, name, spy)

    async def main():
        llm = AsyncLLM(llama_path)
        try:
            async for _ in llm.generate("def add(a, b):", SamplingParams(max_tokens=3)):
                pass
        finally:
            llm.shutdown()

    _run(main())
    assert len(threads) >= 4 and set(threads) == {"engine"}


def test_a_bad_option_is_raised_to_the_caller(llama_path):
    with pytest.raises(ValueError, match="max_num_seqs"):
        AsyncLLM(llama_path, max_num_seqs=0)
