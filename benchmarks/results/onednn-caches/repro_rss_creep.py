"""Minimal repro: RSS creep from distinct large prompts while live (in-use) malloc memory stays flat.

Starts the server (through run_server.py, which is `python -m api` plus a SIGUSR1 handler that writes glibc's
mallinfo2), sends distinct ~1000-token completions (max_tokens 4, 2 clients) for MINUTES, and prints RSS and glibc's
in-use / free-retained MB each 30 s. Run it as is, and with MALLOC_TRIM_THRESHOLD_=131072 in the environment (which
makes engine/cpu_malloc.py leave glibc's defaults).
usage: repro_rss_creep.py PORT MINUTES MODEL (this run: a random Qwen3 of 2 layers, hidden 64, 2 KV heads of 32,
400 words, the previous session's soak checkpoint)
"""
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

import httpx

port, minutes, model = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
out = os.path.abspath(f"repro_rss_{port}.jsonl")
if os.path.exists(out):
    os.remove(out)
srv = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "run_server.py"), "--model", model,
                        "--port", str(port)], env=os.environ | {"INTROSPECT_OUT": out},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "paged", "attention", "keeps", "cache",
         "blocks", "import", "os", "sys", "print"]

def rss():
    with open(f"/proc/{srv.pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024

def _lines():
    with open(out) as f:
        return sum(1 for _ in f)


def mall():
    n = _lines() if os.path.exists(out) else 0
    srv.send_signal(signal.SIGUSR1)
    while not os.path.exists(out) or _lines() == n:
        time.sleep(0.2)
    with open(out) as f:
        m = json.loads(f.readlines()[-1])["mallinfo_MB"]
    return m["uordblks"] + m["hblkhd"], m["fordblks"]

async def client(i, h, stop):
    rng = random.Random(i)
    while time.time() < stop:
        prompt = f"[{rng.getrandbits(64):x}] " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(250, 600)))
        r = await h.post("/v1/completions", json={"model": os.path.basename(model), "prompt": prompt,
                                                       "max_tokens": 4})
        assert r.status_code == 200, r.text

async def main():
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as h:
        for _ in range(120):
            try:
                if (await h.get("/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(1)
        t0 = time.time()
        stop = t0 + minutes * 60
        tasks = [asyncio.create_task(client(i, h, stop)) for i in range(2)]
        while time.time() < stop:
            inuse, free = mall()
            print(f"{(time.time() - t0) / 60:4.1f} min  rss {rss():7.1f} MB  in-use {inuse:5d} MB  "
                  f"free-retained {free:5d} MB", flush=True)
            await asyncio.sleep(30)
        await asyncio.gather(*tasks)
        inuse, free = mall()
        print(f"end       rss {rss():7.1f} MB  in-use {inuse:5d} MB  free-retained {free:5d} MB  "
              f"(MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_')})")
try:
    asyncio.run(main())
finally:
    srv.terminate()
    srv.wait(30)
