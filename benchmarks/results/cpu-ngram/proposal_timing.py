"""The n-gram search per sequence with its token list converted every call (the commit before) and with the bytes
kept and extended by the new tokens (Speculation._bytes_of), on random token lists of 300, 1,000 and 3,000 tokens
growing by one token a call. Run from the repository root."""

import random
import time
from array import array

from engine.speculative import ngram_proposal

random.seed(0)
for length in (300, 1000, 3000):
    tokens = [random.randrange(4096) for _ in range(length)]
    calls = 2000
    grown = list(tokens)
    start = time.perf_counter()
    for _ in range(calls):
        grown.append(random.randrange(4096))
        ngram_proposal(grown, 5, 2, 4)
    fresh = (time.perf_counter() - start) / calls * 1e6
    grown, kept = list(tokens), bytearray(array("i", tokens).tobytes())
    start = time.perf_counter()
    for _ in range(calls):
        grown.append(random.randrange(4096))
        kept += array("i", grown[len(kept) // 4:]).tobytes()
        ngram_proposal(grown, 5, 2, 4, kept)
    incremental = (time.perf_counter() - start) / calls * 1e6
    print(f"{length} tokens: converted each call {fresh:.1f} us, kept bytes {incremental:.1f} us")
