"""Tests of the built-in default model ``engine/assets/pycoder-tiny``.

The model must really be trained (held-out loss far below the uniform baseline, checked with Hugging Face
transformers as an independent oracle) and its greedy completion of a function header must be Python, both through
transformers and through our engine.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "engine" / "assets" / "pycoder-tiny"
SCRIPT = REPO_ROOT / "scripts" / "train_default_model.py"
PROMPT = "def say_hello_world():"
MIN_LINES = 3
N_HELDOUT_FILES = 8
TOKENS_PER_FILE = 1024
LOSS_FRACTION_OF_BASELINE = 0.5


def _training_script() -> ModuleType:
    """The training script as a module, so the test uses its own corpus split (``scripts/`` is not a package)."""
    name = "train_default_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def compilable_lines(prompt: str, completion: str) -> int:
    """Number of lines of the longest line-prefix of ``prompt + completion`` that compiles as Python (0 if none).

    Generation stops at a token limit, usually mid-line, mid-block or inside a docstring, so shorter prefixes are
    tried too, each also with an open triple-quoted string closed at its end.
    """
    lines = (prompt + completion).split("\n")
    for k in range(len(lines), 0, -1):
        source = "\n".join(lines[:k])
        for closing in ("", '"""', "'''"):
            try:
                compile(source + closing + "\n", "<completion>", "exec")
            except SyntaxError:
                continue
            return k
    return 0


def test_compilable_lines_rejects_non_python() -> None:
    assert compilable_lines(PROMPT, "\n    return 'hello'\n\n\nx = 1\ny = (") == 5
    assert compilable_lines(PROMPT, "\n    print('hi')\n    if x:\n") == 2
    assert compilable_lines(PROMPT, " ) ( ]] 42 def\nfoo bar baz\n") == 0
    assert compilable_lines(PROMPT, '\n    """Say hello.\n\n    Longer descrip') == 4
    assert compilable_lines(PROMPT, "\nx = 1") == 0
    assert compilable_lines(PROMPT, "") == 0


def test_shipped_files() -> None:
    names = {p.name for p in MODEL_DIR.iterdir()}
    required = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "TRAINING.md"}
    assert required <= names
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file()) < 30_000_000
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["max_position_embeddings"] >= 1024


def test_tokenizer_is_fast_byte_level_with_chatml() -> None:
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    assert tok.is_fast
    assert 1000 < len(tok) <= 8192
    assert tok.eos_token == "<|endoftext|>"
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens)
    text = "def f(x):\n\treturn 'héllo ☃ 世界 \\x00'  # café\r\n"
    ids = tok(text).input_ids
    assert ids[0] == tok.eos_token_id, "the BOS is <|endoftext|>, as before every training document"
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert chat == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    no_prompt = tok.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False)
    assert no_prompt == "<|im_start|>user\nU<|im_end|>\n"
    chat_ids = tok(chat, add_special_tokens=False).input_ids
    assert chat_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3


def _heldout_windows(tok: PreTrainedTokenizerBase) -> list[torch.Tensor]:
    """``<|endoftext|>`` + the first tokens of a few held-out stdlib files, spread over the sorted split."""
    script = _training_script()
    root = script.stdlib_root()
    heldout = [rel for rel in script.list_corpus_files(root) if script.is_heldout(rel)]
    assert len(heldout) >= N_HELDOUT_FILES
    picked = heldout[:: len(heldout) // N_HELDOUT_FILES][:N_HELDOUT_FILES]
    windows = []
    for rel in picked:
        text = script.read_source(root, rel)
        if text is None:
            continue
        ids = tok(text[: 4 * TOKENS_PER_FILE], add_special_tokens=False).input_ids  # about 3.3 characters a token
        ids = [tok.eos_token_id, *ids][: TOKENS_PER_FILE + 1]
        if len(ids) > 16:
            windows.append(torch.tensor([ids]))
    assert len(windows) >= N_HELDOUT_FILES // 2
    return windows


def test_heldout_loss_far_below_uniform() -> None:
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for window in _heldout_windows(tok):
            logits = model(input_ids=window[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")
            total += float(loss)
            count += window.shape[1] - 1
    baseline = math.log(model.config.vocab_size)
    loss = total / count
    assert loss < LOSS_FRACTION_OF_BASELINE * baseline, f"held-out loss {loss:.3f}, uniform baseline {baseline:.3f}"


def test_hf_greedy_completion_is_python() -> None:
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, do_sample=False, max_new_tokens=64, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert compilable_lines(PROMPT, text) >= MIN_LINES, PROMPT + text


def test_engine_greedy_completion_is_python() -> None:
    from engine import LLM, SamplingParams

    llm = LLM()
    text = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=64))[0].outputs[0].text
    assert compilable_lines(PROMPT, text) >= MIN_LINES, PROMPT + text
