"""KV-cache blocks: allocation, reference counts and prefix caching.

Each full block of a sequence gets a chained hash of (the previous block's hash, its token ids). A map from
hash to block finds blocks whose KV another sequence already computed; on a hit the block's own token ids
and its parent block are compared, so a hash collision can never hand out wrong KV. A block whose reference
count drops to zero goes to the back of the free queue but keeps its hash: until it is reused for something
else, a later request with the same prefix can revive it. Allocation takes from the front, so the least recently freed
cached blocks are the first evicted.

A block is registered in the map only after the step that computed its KV has run (`register_computed`, from
the scheduler's `update`), as in nano-vllm: a step that fails leaves nothing in the cache to undo, and no
request can take KV that was never written. The `n` choices of one prompt share its full blocks explicitly
instead (`sibling_prefix`), even blocks their first choice computes in the same step: every layer writes the
step's keys and values before it attends. With prefix caching disabled, nothing is registered and only the
choices of one prompt share blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from engine.block_tables import BlockTables
from engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    """One block of `block_size` token slots in every layer's cache."""

    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] | None = None
    parent: int | None = None          # the block holding the previous block_size tokens of the prefix


def chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    """The hash of a full block, chained on its parent's so that equal hashes mean equal prefixes (modulo
    collisions, which the token comparison catches)."""
    return hash((parent, token_ids))


class BlockManager:
    """Hands out KV blocks to sequences and takes them back."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}     # block hash -> block id, for blocks whose KV is computed
        self.tables = BlockTables()          # the sequences' block tables as rows of one array

    @property
    def num_blocks(self) -> int:
        """All blocks."""
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (cached ones included: they can be evicted)."""
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Ids of the cached blocks that hold the longest prefix of `seq`'s tokens, leaving at least its last
        token to compute (its logits are needed). Nothing is taken yet: see `allocate`."""
        if not self.enable_prefix_caching:
            return []
        found: list[int] = []
        parent = None
        tokens = seq.token_ids
        for start in range(0, len(tokens) - 1 - self.block_size + 1, self.block_size):
            chunk = tuple(tokens[start:start + self.block_size])
            parent = chain_hash(parent, chunk)
            block_id = self.cached.get(parent)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.token_ids != chunk or block.parent != (found[-1] if found else None):
                break
            found.append(block_id)
        return found

    def sibling_prefix(self, seq: Sequence, first: Sequence, covered: int) -> list[int]:
        """The full prompt blocks of `first` (the prompt's first choice) that `seq`, another choice of the same
        prompt, can share: those wholly within the `covered` tokens whose KV `first` has computed or computes in
        this step, leaving `seq`'s last token to compute."""
        shareable = min(covered, seq.num_prompt_tokens, seq.num_tokens - 1) // self.block_size
        return first.block_table[:shareable]

    def fits(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether `seq`'s blocks already hold `num_tokens` tokens (true for most decode steps)."""
        return num_tokens <= len(seq.block_table) * self.block_size

    def can_allocate(self, seq: Sequence, num_tokens: int, cached: list[int] = (), reserve: int = 0) -> bool:
        """Whether `seq` (after taking `cached` blocks) can hold `num_tokens` tokens, keeping `reserve` free."""
        new = self.blocks_needed(num_tokens) - len(seq.block_table) - len(cached)
        revived = sum(1 for b in cached if self.blocks[b].ref_count == 0)
        return new + revived <= self.num_free_blocks - reserve

    def allocate(self, seq: Sequence, num_tokens: int, cached: list[int] = ()) -> None:
        """Give `seq` the `cached` prefix blocks (from the cache or a sibling), then fresh blocks up to
        `num_tokens` tokens. The caller checked `can_allocate`."""
        held = len(seq.block_table)
        for block_id in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        if cached:
            seq.num_computed_tokens = len(cached) * self.block_size
        while len(seq.block_table) < self.blocks_needed(num_tokens):
            seq.block_table.append(self._take_fresh())
        if len(seq.block_table) > held:
            self.tables.extend(seq, held)

    def free_seq(self, seq: Sequence) -> None:
        """Return `seq`'s blocks, last block first so that a prompt's tail is evicted before its head."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                if not self.enable_prefix_caching:
                    self._forget(block)
        self.tables.release(seq)
        seq.block_table.clear()
        seq.block_hashes.clear()

    def _take_fresh(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        self._forget(block)
        block.ref_count = 1
        return block_id

    def _forget(self, block: Block) -> None:
        """Drop a block's contents from the prefix cache."""
        if block.hash is not None and self.cached.get(block.hash) == block.block_id:
            del self.cached[block.hash]
        block.hash = block.token_ids = block.parent = None

    def register_computed(self, seqs: list[Sequence]) -> None:
        """The step that computed these sequences' tokens up to their `num_computed_tokens` has run: their full
        blocks so far enter the prefix cache (a block another sequence registered first keeps that
        registration)."""
        if not self.enable_prefix_caching:
            return
        size = self.block_size
        for seq in seqs:
            full = min(seq.num_computed_tokens, len(seq.token_ids)) // size
            while len(seq.block_hashes) < full:
                i = len(seq.block_hashes)
                chunk = tuple(seq.token_ids[i * size:(i + 1) * size])
                parent = seq.block_hashes[-1] if seq.block_hashes else None
                block_hash = chain_hash(parent, chunk)
                seq.block_hashes.append(block_hash)
                block = self.blocks[seq.block_table[i]]
                if block.hash is None:
                    block.hash, block.token_ids = block_hash, chunk
                    block.parent = seq.block_table[i - 1] if i else None
                    self.cached.setdefault(block_hash, block.block_id)
