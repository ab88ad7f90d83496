#!/usr/bin/env python3
"""Reference embeddings with Python onnxruntime, for tests/it/docs.rs.

Usage: embed_reference.py MODELS_DIR TEXT...  → JSON list of vectors on stdout.
Same files as the daemon (the ONNX model and tokenizer.json from MODELS_DIR), same recipe as
fastembed: truncate to 256 tokens, run the model, mean-pool over the attention mask, L2-normalise.
The Python packages live in MODELS_DIR/.cache/pyref (scripts/test installs them).
"""
import json
import os
import sys

models_dir = sys.argv[1]
texts = sys.argv[2:]
sys.path.insert(0, os.path.join(models_dir, ".cache", "pyref"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

tokenizer = Tokenizer.from_file(os.path.join(models_dir, "all-MiniLM-L6-v2.tokenizer.json"))
tokenizer.enable_truncation(max_length=256)
tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
encodings = tokenizer.encode_batch(texts)
feeds = {
    "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
    "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
}
session = ort.InferenceSession(os.path.join(models_dir, "all-MiniLM-L6-v2.onnx"), providers=["CPUExecutionProvider"])
names = {i.name for i in session.get_inputs()}
hidden = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
mask = feeds["attention_mask"][..., None].astype(np.float32)
pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
json.dump(pooled.astype(np.float64).tolist(), sys.stdout)
