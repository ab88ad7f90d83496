#!/usr/bin/env python3
"""Python onnxruntime side of `hearth bench --rag`: embeddings/s on the same model files and the
same inputs (src/bench/rag.rs builds them the same way), same thread count.

Usage: embed_bench.py MODELS_DIR THREADS FILE → JSON [batch1/s, batch32/s, long_chunks/s]
(FILE: the ONNX model file in MODELS_DIR)
Needs the packages in MODELS_DIR/.cache/pyref (scripts/test installs them).
"""
import json
import os
import sys
import time

models_dir, threads, model_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, os.path.join(models_dir, ".cache", "pyref"))
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

SUBJECTS = ["The old fisherman", "A young doctor", "My neighbour", "The city council", "A tired student", "The museum guide", "Our team lead", "The baker", "A curious child", "The night nurse"]
VERBS = ["repaired", "painted", "sold", "photographed", "described", "borrowed", "cleaned", "measured", "delivered", "studied"]
OBJECTS = ["a wooden boat", "the broken clock", "three red bicycles", "an ancient map", "the kitchen window", "a box of apples", "the village bridge", "a strange telescope", "the school garden", "a stack of letters"]
PLACES = ["near the harbour", "in the mountains", "before sunrise", "during the storm", "at the market", "in Lisbon", "behind the station", "after the festival", "on the island", "in the old library"]
TIMES = ["yesterday", "last week", "in 1998", "every Sunday", "twice", "at noon", "quietly", "for hours", "again", "by accident"]


def sentences(n):
    out = []
    for i in range(n):
        c = i % 100_000
        out.append(f"{SUBJECTS[c % 10]} {VERBS[(c // 10) % 10]} {OBJECTS[(c // 100) % 10]} {PLACES[(c // 1000) % 10]} {TIMES[(c // 10_000) % 10]} (note {i // 100_000}).")
    return out


def long_chunk(i):
    return " ".join(sentences(i * 17 + 20)[i * 17:])


tokenizer = Tokenizer.from_file(os.path.join(models_dir, "all-MiniLM-L6-v2.tokenizer.json"))
tokenizer.enable_truncation(max_length=256)
tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.path.join(models_dir, model_file), options, providers=["CPUExecutionProvider"])
names = {i.name for i in session.get_inputs()}


def embed(texts):
    enc = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }
    hidden = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def rate(n, f):
    start = time.perf_counter()
    f()
    return n / (time.perf_counter() - start)


short = sentences(512)
long = [long_chunk(i) for i in range(64)]
embed(short[:32])  # warm up
b1 = rate(128, lambda: [embed([t]) for t in short[:128]])
b32 = rate(len(short), lambda: [embed(short[i:i + 32]) for i in range(0, len(short), 32)])
lc = rate(len(long), lambda: [embed(long[i:i + 32]) for i in range(0, len(long), 32)])
json.dump([b1, b32, lc], sys.stdout)
