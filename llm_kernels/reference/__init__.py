"""Plain-torch references of every kernel: the exact definitions the kernels are tested against, and the CPU path."""
