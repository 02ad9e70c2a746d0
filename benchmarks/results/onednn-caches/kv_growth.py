"""RSS of `python -m api` (default model) under distinct ~400-token prompts from 2 clients, every 30 s.
usage: kv_growth.py PORT MINUTES"""
import asyncio
import random
import subprocess
import sys
import time

import httpx

port, minutes = int(sys.argv[1]), float(sys.argv[2])
with open("kv_growth_server.log", "w") as log:
    srv = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=log)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "paged", "attention", "keeps", "cache",
         "blocks", "import", "os", "sys", "print"]
def rss():
    with open(f"/proc/{srv.pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024
async def client(i, h, stop, count):
    rng = random.Random(i)
    while time.time() < stop:
        prompt = f"[{rng.getrandbits(64):x}] " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(250, 600)))
        r = await h.post("/v1/completions", json={"model": "pycoder-tiny", "prompt": prompt, "max_tokens": 4})
        assert r.status_code == 200, r.text
        count[0] += 1
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
        count = [0]
        tasks = [asyncio.create_task(client(i, h, stop, count)) for i in range(2)]
        while time.time() < stop:
            print(f"{(time.time() - t0) / 60:4.1f} min  rss {rss():7.1f} MB  requests {count[0]}", flush=True)
            await asyncio.sleep(30)
        await asyncio.gather(*tasks)
        print(f"end       rss {rss():7.1f} MB  requests {count[0]}", flush=True)
try:
    asyncio.run(main())
finally:
    srv.terminate()
    srv.wait(30)
