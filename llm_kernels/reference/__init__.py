"""Plain-torch references of every kernel: the exact definitions, the test oracles and the CPU path."""
