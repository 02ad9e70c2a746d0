"""Every sequence's block table as a row of one persistent array, so that a step's tables are one gather.

The block manager writes a sequence's blocks into its row as it hands them out and zeroes the row when the blocks go
back; the scheduler gathers the rows of a step's sequences into the step's record (`SchedulerOutput.block_tables`).
Built from the sequences' lists every step instead, a decode step of 256 sequences with 1,024-token contexts (16,640
block ids) spent 0.6 ms converting them (padding the lists, then `array.fromlist` or a numpy assignment, 25-30 ns a
value); the gather takes about 10 us. Rows and columns grow (doubling) when a step needs more.
"""

from __future__ import annotations

import numpy as np

from engine.sequence import Sequence


class BlockTables:
    """Rows of block ids (int32), one per sequence that holds blocks (`Sequence.table_row`); past a sequence's
    blocks its row holds zeros, the padding the kernels never read."""

    def __init__(self, rows: int = 64, width: int = 64) -> None:
        self.array = np.zeros((rows, width), dtype=np.int32)
        self._free_rows = list(range(rows - 1, -1, -1))

    def extend(self, seq: Sequence, start: int) -> None:
        """Write `seq.block_table[start:]`, its blocks from index `start` on, into its row (taken at its first)."""
        if seq.table_row < 0:
            if not self._free_rows:
                self._grow(rows=2 * self.array.shape[0])
            seq.table_row = self._free_rows.pop()
        end = len(seq.block_table)
        if end > self.array.shape[1]:
            self._grow(width=max(end, 2 * self.array.shape[1]))
        self.array[seq.table_row, start:end] = seq.block_table[start:]

    def release(self, seq: Sequence) -> None:
        """`seq` is giving its blocks back: zero its row and free it."""
        if seq.table_row >= 0:
            self.array[seq.table_row, :len(seq.block_table)] = 0
            self._free_rows.append(seq.table_row)
            seq.table_row = -1

    def gather(self, seqs: list[Sequence]) -> np.ndarray:
        """A copy of the tables of `seqs` (each holding blocks), as wide as the longest: [len(seqs), width]."""
        width = max(len(seq.block_table) for seq in seqs)
        return self.array[[seq.table_row for seq in seqs], :width]

    def _grow(self, rows: int | None = None, width: int | None = None) -> None:
        old_rows, old_width = self.array.shape
        grown = np.zeros((rows or old_rows, width or old_width), dtype=np.int32)
        grown[:old_rows, :old_width] = self.array
        self.array = grown
        if rows:
            self._free_rows[:0] = range(rows - 1, old_rows - 1, -1)
