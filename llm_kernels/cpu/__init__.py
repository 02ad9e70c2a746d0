"""CPU kernels in C, for the steps where the torch reference leaves most of the CPU's time on the table.

So far one: paged attention of decode tokens and short chunks of new tokens (`paged_attention.c`, wrapped by
`llm_kernels.cpu.attention`), which reads the paged cache in place where the reference first gathers it into dense
buffers. Built on first use by
`llm_kernels.cpu.native`; tested against the torch reference like the Triton kernels.
"""
