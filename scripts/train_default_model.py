"""Train the built-in default model ``pycoder-tiny`` from scratch, on CPU, in one command.

The corpus is the Python standard library's own ``.py`` sources (present on every machine with Python), so the model
is a tiny code-completion model. The script trains a byte-level BPE tokenizer, then a small Llama model with a plain
torch loop (AdamW, linear warmup + cosine decay, bf16 autocast), saves both in Hugging Face format and writes
``TRAINING.md`` with the command, timings and losses.

Held-out files are chosen by a hash of their path relative to the stdlib root (:func:`is_heldout`), so the split is
the same on every machine and held-out files are never trained on. The run is seeded and uses a fixed step count.

Usage::

    python scripts/train_default_model.py                     # writes engine/assets/pycoder-tiny
    python scripts/train_default_model.py --steps 200 --out /tmp/pycoder-smoke
"""

from __future__ import annotations

import os

# Let idle OpenMP threads sleep instead of spinning: on a CPU shared with other work, spinning threads starve the ones
# doing the work (2-3x slower steps measured on a shared 2-core machine). Must be set before torch loads OpenMP;
# only when run as a script, so that importing this module (the tests do) changes no environment.
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import ast
import hashlib
import json
import math
import platform
import resource
import shlex
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "engine" / "assets" / "pycoder-tiny"

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]
HELDOUT_PERCENT = 5
CHAT_EVERY = 8
CHAT_PROMPT_LINES = 16
CHAT_REPLY_LINES = 32
MAX_CLASS_LINES = 50
SAMPLE_PROMPTS = ("def say_hello_world():", "import os\n\n\ndef list_python_files(path):", "class Stack:")
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library (the corpus root)."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def list_corpus_files(root: Path | None = None) -> list[str]:
    """Sorted posix paths (relative to ``root``) of all stdlib ``.py`` files, excluding installed packages."""
    root = root or stdlib_root()
    skip = {"site-packages", "dist-packages", "__pycache__"}
    rels = (p.relative_to(root) for p in root.rglob("*.py") if p.is_file())
    return sorted(r.as_posix() for r in rels if not skip.intersection(r.parts))


def is_heldout(rel_path: str) -> bool:
    """Whether a stdlib file (posix path relative to the stdlib root) belongs to the held-out split.

    A hash of the path, not of the content or of the file's position, keeps the split stable across machines and
    Python versions: a path is either always trained on or never.
    """
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def read_source(root: Path, rel_path: str) -> str | None:
    """The file's text, or None if it is not valid UTF-8 (a few test fixtures deliberately are not)."""
    try:
        return (root / rel_path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None


def load_split(root: Path | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Training and held-out texts, each a ``{relative path: text}`` dict in sorted path order."""
    root = root or stdlib_root()
    train: dict[str, str] = {}
    heldout: dict[str, str] = {}
    for rel in list_corpus_files(root):
        text = read_source(root, rel)
        if text is not None:
            (heldout if is_heldout(rel) else train)[rel] = text
    return train, heldout


def uses_chat_format(rel_path: str) -> bool:
    """Whether a training file is presented as ChatML conversations (about 1 in CHAT_EVERY files)."""
    return int.from_bytes(hashlib.sha256(b"chat:" + rel_path.encode("utf-8")).digest()[:4], "big") % CHAT_EVERY == 0


def as_chat(text: str) -> list[str]:
    """Cut a file into ChatML conversations: the user sends some lines of code, the assistant continues them.

    This teaches the chat template's format and the ``<|im_end|>`` stop token, so the chat endpoint works too.
    """
    lines = text.splitlines(keepends=True)
    size = CHAT_PROMPT_LINES + CHAT_REPLY_LINES
    chats = []
    for start in range(0, len(lines), size):
        prompt = "".join(lines[start : start + CHAT_PROMPT_LINES])
        reply = "".join(lines[start + CHAT_PROMPT_LINES : start + size])
        if prompt.strip() and reply.strip():
            chats.append(f"{IM_START}user\n{prompt.rstrip()}{IM_END}\n{IM_START}assistant\n{reply.rstrip()}{IM_END}\n")
    return chats


def top_level_definitions(text: str) -> list[str]:
    """Source (with decorators) of each module-level function, and of each class of at most MAX_CLASS_LINES lines.

    They are added as extra documents, each right after ``<|endoftext|>``, so that the model learns what a prompt
    like ``def say_hello_world():`` at the start of a sequence is: a top-level definition, whose body is indented by
    four spaces, rather than the deeper indentation of the test methods that dominate the corpus. Returns [] if the
    file does not parse (a few test fixtures are Python 2 or deliberately broken).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError):
            return []
    lines = text.splitlines(keepends=True)
    definitions = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.end_lineno is None:
            continue
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        if isinstance(node, ast.ClassDef) and node.end_lineno - start >= MAX_CLASS_LINES:
            continue
        definitions.append("".join(lines[start - 1 : node.end_lineno]))
    return definitions


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE (lossless on any bytes) with the special tokens at ids 0, 1, 2.

    Encoding adds ``<|endoftext|>`` in front as BOS (``add_special_tokens=False`` does not): in training every
    document follows one, so a prompt then looks like the start of a file.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    eos = (EOS_TOKEN, tokenizer.token_to_id(EOS_TOKEN))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A", pair=f"{EOS_TOKEN} $A {EOS_TOKEN} $B:1", special_tokens=[eos]
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out: Path, model_max_length: int) -> None:
    """Write tokenizer.json and a hand-written tokenizer_config.json that transformers 4.x and 5.x both load.

    ``save_pretrained`` of transformers 5 would record its new ``TokenizersBackend`` class, which 4.x cannot load.
    ``<|endoftext|>`` is added as BOS on encode; decoding must not "clean up" spaces, which would corrupt code.
    """
    tokenizer.save(str(out / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def encode_documents(tokenizer: Tokenizer, docs: list[str]) -> torch.Tensor:
    """One token stream of all documents, each followed by ``<|endoftext|>`` (so it also marks a file's start)."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    ids: list[int] = []
    for enc in tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int32)


def training_documents(train: dict[str, str]) -> list[str]:
    """Training files as documents (most verbatim, about 1 in CHAT_EVERY as chat conversations), then each file's
    top-level definitions (:func:`top_level_definitions`) again as documents of their own."""
    docs: list[str] = []
    for rel, text in train.items():
        if uses_chat_format(rel):
            docs.extend(as_chat(text))
        else:
            docs.append(text)
    for text in train.values():
        docs.extend(top_level_definitions(text))
    return docs


def batches(
    stream: torch.Tensor, seq_len: int, batch_size: int, seed: int, eos_id: int = 0, aligned: int = 0
) -> Iterator[torch.Tensor]:
    """Endless ``[batch, seq_len + 1]`` windows.

    ``batch_size - aligned`` rows cover the stream epoch by epoch (a new random phase and a shuffled window order
    each epoch). ``aligned`` rows start at the ``<|endoftext|>`` before a random document, as a prompt does after its
    BOS; without them, the first positions of a window are always mid-file, and the model treats the start of a
    prompt as deep inside an indented test method.
    """
    gen = torch.Generator().manual_seed(seed)
    doc_starts = (stream[: len(stream) - seq_len - 1] == eos_id).nonzero().flatten()
    rows = batch_size - aligned
    while True:
        phase = int(torch.randint(0, seq_len, (1,), generator=gen))
        n = (len(stream) - phase - 1) // seq_len
        starts = phase + torch.randperm(n, generator=gen) * seq_len
        for i in range(0, n - rows + 1, rows):
            picked = doc_starts[torch.randint(0, len(doc_starts), (aligned,), generator=gen)]
            batch = torch.cat([starts[i : i + rows], picked]).tolist()
            yield torch.stack([stream[s : s + seq_len + 1] for s in batch]).long()


def lm_loss(model: LlamaForCausalLM, window: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of ``[batch, T + 1]`` token windows, computed in fp32."""
    logits = model(input_ids=window[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())


@torch.no_grad()
def heldout_loss(
    model: LlamaForCausalLM,
    stream: torch.Tensor,
    seq_len: int,
    batch_size: int = 8,
    max_windows: int | None = None,
    autocast: bool = False,
) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of a token stream (every token scored once)."""
    model.eval()
    n = (len(stream) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    starts = [i * seq_len for i in range(n)]
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        window = torch.stack([stream[s : s + seq_len + 1] for s in starts[i : i + batch_size]]).long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = lm_loss(model, window)
        total += float(loss) * window[:, 1:].numel()
        count += window[:, 1:].numel()
    model.train()
    return total / count


def lr_at(step: int, steps: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def build_config(args: argparse.Namespace, vocab_size: int) -> LlamaConfig:
    """The Llama configuration of the model (ids: 0 = <|endoftext|>, used as bos/eos/pad)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.d_model,
        intermediate_size=args.d_ff,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_position_embeddings,
        rope_theta=args.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def finalize_config(out: Path) -> None:
    """Add the pre-5.0 spellings (``rope_theta``, ``torch_dtype``) next to transformers 5's, for older readers."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    config.setdefault("rope_theta", config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    config.setdefault("torch_dtype", config.get("dtype", "bfloat16"))
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_generation_config(out: Path, eos_ids: list[int], pad_id: int) -> None:
    """Stop on both ``<|endoftext|>`` (end of file) and ``<|im_end|>`` (end of a chat turn)."""
    config = {"bos_token_id": pad_id, "eos_token_id": eos_ids, "pad_token_id": pad_id, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")


def greedy_samples(folder: Path, max_new_tokens: int = 64) -> dict[str, str]:
    """Greedy completions of SAMPLE_PROMPTS by the saved model, loaded back with transformers in fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    samples = {}
    for prompt in SAMPLE_PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        samples[prompt] = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=False)
    return samples


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (e.g. torch.compile workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults reproduce the shipped model."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output model folder")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-ff", type=int, default=768)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=1024, help="training context length")
    p.add_argument("--max-position-embeddings", type=int, default=2048)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--aligned", type=int, default=4, help="rows per batch that start at a document's start")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-windows", type=int, default=64, help="held-out windows per periodic eval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train tokenizer and model, save them to ``--out`` and document the run in TRAINING.md."""
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO_ROOT), *sys.argv[1:]])
    wall0, cpu0 = time.time(), cpu_seconds()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    root = stdlib_root()
    train, heldout = load_split(root)
    print(f"corpus {root}: {len(train)} training files, {len(heldout)} held-out files", flush=True)
    tokenizer = train_tokenizer(list(train.values()), args.vocab_size)
    vocab_size = tokenizer.get_vocab_size()
    eos_id, im_end_id = tokenizer.token_to_id(EOS_TOKEN), tokenizer.token_to_id(IM_END)
    assert eos_id == 0, "special tokens must come first"
    save_tokenizer(tokenizer, args.out, args.max_position_embeddings)
    train_stream = encode_documents(tokenizer, training_documents(train))
    heldout_stream = encode_documents(tokenizer, list(heldout.values()))
    heldout_bytes = sum(len(t.encode("utf-8")) for t in heldout.values())
    print(f"tokens: train {len(train_stream):,}, held-out {len(heldout_stream):,}", flush=True)

    model = LlamaForCausalLM(build_config(args, vocab_size))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )

    def loss_fn(window: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lm_loss(model, window)

    step_loss = torch.compile(loss_fn) if args.compile else loss_fn
    data = batches(train_stream, args.seq_len, args.batch_size, args.seed, eos_id, args.aligned)
    tokens_per_step = args.batch_size * args.seq_len
    history: list[tuple[int, float, float]] = []
    recent: list[float] = []
    loads: list[float] = []
    train_wall0 = time.time()
    bar = tqdm(range(args.steps), desc="train", unit="step", mininterval=5.0)
    for step in bar:
        lr = lr_at(step, args.steps, args.warmup, args.lr, args.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = step_loss(next(data))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [float(loss.detach())])[-50:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", lr=f"{lr:.1e}", refresh=False)
        if step % 50 == 0:
            loads.append(os.getloadavg()[0])
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            held = heldout_loss(model, heldout_stream, args.seq_len, max_windows=args.eval_windows, autocast=True)
            history.append((step + 1, sum(recent) / len(recent), held))
            bar.write(f"step {step + 1}: train loss {history[-1][1]:.3f}, held-out loss (subset) {held:.3f}")
    train_wall = time.time() - train_wall0
    final_train = sum(recent) / len(recent)

    model.to(torch.bfloat16).save_pretrained(args.out)
    finalize_config(args.out)
    write_generation_config(args.out, [eos_id, im_end_id], eos_id)
    for path in args.out.iterdir():
        path.chmod(0o644)
    wall, cpu = time.time() - wall0, cpu_seconds() - cpu0

    from transformers import AutoModelForCausalLM

    shipped = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    held_full = heldout_loss(shipped, heldout_stream, args.seq_len)
    held_long = heldout_loss(shipped, heldout_stream, args.max_position_embeddings, batch_size=4, max_windows=64)
    short_windows = 64 * args.max_position_embeddings // args.seq_len  # the same text as the 64 long windows
    held_short = heldout_loss(shipped, heldout_stream, args.seq_len, batch_size=4, max_windows=short_windows)
    samples = greedy_samples(args.out)
    write_report(
        args.out,
        {
            "command": command,
            "args": args,
            "root": root,
            "n_train_files": len(train),
            "n_heldout_files": len(heldout),
            "n_train_tokens": len(train_stream),
            "n_heldout_tokens": len(heldout_stream),
            "heldout_bytes": heldout_bytes,
            "vocab_size": vocab_size,
            "n_params": n_params,
            "tokens_per_step": tokens_per_step,
            "wall": wall,
            "cpu": cpu,
            "train_wall": train_wall,
            "load": sum(loads) / len(loads),
            "final_train": final_train,
            "held_full": held_full,
            "held_long": held_long,
            "held_short": held_short,
            "short_windows": short_windows,
            "history": history,
            "samples": samples,
        },
    )
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"done: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU, held-out loss {held_full:.3f}, {size / 1e6:.1f} MB")


def write_report(out: Path, r: dict) -> None:
    """Write TRAINING.md: how to reproduce the model, what it cost and how well it does."""
    a = r["args"]
    baseline = math.log(r["vocab_size"])
    bits_per_byte = r["held_full"] * r["n_heldout_tokens"] / r["heldout_bytes"] / math.log(2)
    curve = "\n".join(f"| {s} | {t:.3f} | {h:.3f} |" for s, t, h in r["history"])
    samples = "\n\n".join(f"Prompt `{p!r}`:\n\n```python\n{p}{c}\n```" for p, c in r["samples"].items())
    text = f"""# pycoder-tiny

A {r["n_params"] / 1e6:.1f}M-parameter Llama-architecture code-completion model, the engine's built-in default model.
It was trained from scratch by `scripts/train_default_model.py` on the `.py` files of the Python standard library
(`{r["root"]}`, Python {platform.python_version()}, test directories included, site-packages excluded).
It continues Python code; it is not an instruction follower. Its chat template is ChatML; about 1 in {CHAT_EVERY}
training files was shown as conversations (the user sends {CHAT_PROMPT_LINES} lines of code, the assistant continues
with the next {CHAT_REPLY_LINES} and ends with `<|im_end|>`), so chat requests get code continuations that end.

## Reproduce

```
{r["command"]}
```

Seeded (`--seed {a.seed}`), fixed step count. Bit-exact reproduction is not guaranteed across CPUs and library
versions (thread scheduling, oneDNN kernels), and the corpus depends on the Python version.

## Data

- Files: {r["n_train_files"]} training, {r["n_heldout_files"]} held out. A file is held out when the first 4 bytes of
  `sha256(relative posix path)` as a big-endian integer are `< {HELDOUT_PERCENT}` mod 100 (`is_heldout` in the script);
  held-out files are never trained on, and the tokenizer is trained on the training files only.
  Files that are not valid UTF-8 are skipped.
- Documents: each training file (about 1 in {CHAT_EVERY} cut into chat conversations), then each training file's
  top-level functions and top-level classes of at most {MAX_CLASS_LINES} lines again as documents of their own;
  every document is followed by `<|endoftext|>`.
- Tokens: {r["n_train_tokens"]:,} training, {r["n_heldout_tokens"]:,} held out.
- Batches: {a.batch_size - a.aligned} rows per batch walk through the shuffled stream epoch by epoch; {a.aligned} rows
  start at the `<|endoftext|>` before a random document, so that the start of a sequence looks like a prompt's start.

## Tokenizer

Byte-level BPE (GPT-2 pre-tokenizer, `tokenizers` library), vocabulary {r["vocab_size"]} including the special tokens
`<|endoftext|>` (id 0: eos, bos and pad), `<|im_start|>` (1) and `<|im_end|>` (2). Encoding prepends
`<|endoftext|>` as BOS (not with `add_special_tokens=False`, and the chat template adds none), because every training
document follows one. Decoding is byte-level and lossless (`clean_up_tokenization_spaces` is off).

## Model

Llama: hidden {a.d_model}, {a.layers} layers, {a.heads} heads ({a.kv_heads} KV heads, head dim {a.d_model // a.heads}),
MLP {a.d_ff} (SwiGLU), RMSNorm, RoPE theta {a.rope_theta:g}, untied input/output embeddings, {r["n_params"]:,}
parameters, stored in bf16. Trained on {a.seq_len}-token windows; `max_position_embeddings` is
{a.max_position_embeddings}, so positions past {a.seq_len} rely on RoPE extrapolation (see the losses below).

## Training

AdamW (betas 0.9/0.95, weight decay {a.weight_decay} on matrices), peak lr {a.lr:g} after {a.warmup} warmup steps,
cosine decay to {a.min_lr:g}, gradient clipping {a.grad_clip}, batch {a.batch_size} x {a.seq_len} =
{r["tokens_per_step"]:,} tokens, {a.steps} steps ({a.steps * r["tokens_per_step"] / 1e6:.1f}M tokens,
{a.steps * r["tokens_per_step"] / r["n_train_tokens"]:.1f} epochs), bf16 autocast on CPU,
torch.compile {"on" if a.compile else "off"}, torch {torch.__version__}.

- Wall time: {r["wall"] / 60:.1f} min in total ({r["train_wall"] / 60:.1f} min in the training loop).
- CPU time: {r["cpu"] / 60:.1f} min (user + system, including child processes), on {os.cpu_count()} cores.
- Mean 1-minute load average during training: {r["load"]:.1f} (this run alone accounts for about {os.cpu_count()};
  more means the cores were shared with other work and the wall time is longer than on a quiet machine).

## Results

Losses are mean next-token cross-entropy in nats per token.

| | loss |
|---|---|
| uniform baseline ln({r["vocab_size"]}) | {baseline:.3f} |
| final training loss (mean of the last 50 steps) | {r["final_train"]:.3f} |
| held-out loss, all held-out files, {a.seq_len}-token windows, bf16 weights run in fp32 | {r["held_full"]:.3f} |
| same, in bits per byte of source | {bits_per_byte:.3f} |
| held-out loss, first {r["short_windows"]} windows of {a.seq_len} tokens | {r["held_short"]:.3f} |
| held-out loss, the same text as 64 windows of {a.max_position_embeddings} tokens | {r["held_long"]:.3f} |

During training (held-out loss on the first {a.eval_windows} held-out windows, bf16 autocast):

| step | train loss | held-out loss |
|---|---|---|
{curve}

## Greedy samples (64 new tokens, transformers `generate(do_sample=False)`)

{samples}
"""
    (out / "TRAINING.md").write_text(text)


if __name__ == "__main__":
    main()
