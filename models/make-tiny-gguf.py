#!/usr/bin/env python3
"""Write hearth's tiny random-weight llama GGUF (for fast mechanical tests).

    make-tiny-gguf.py OUTPUT            write the model (deterministic: same bytes every run)
    make-tiny-gguf.py --verify FILE     check that FILE has every key/tensor llama.cpp's
                                        llama architecture needs, with the right shapes

Needs the PyPI packages gguf==0.19.0, numpy==2.4.6 and pyyaml==6.0.4 (models/fetch installs
them into models/.cache/pylib-<hash> and sets PYTHONPATH). The output is pinned by sha256 in
models/manifest.toml: if you change anything here (or the pinned versions), regenerate and
update the manifest's size and sha256 for "tiny-random".

The model: llama architecture, 2 layers, n_embd 64, 4 heads (head dim 16), n_ff 256, all F32,
context length 2048, a 498-token SentencePiece ("llama") vocabulary that includes the 256
<0xNN> byte tokens (llama.cpp's SPM tokenizer looks up <0x0A> for newline and falls back to
bytes for anything else), <unk> <s> </s> <|im_start|> <|im_end|>, and a ChatML chat template.
eos = </s>, eot = <|im_end|>: both end generation, and the output rows of those two are aimed
so that generation does end (after 3-60 tokens, on either one depending on the sampling seed).
Weights are otherwise random (numpy RandomState with a fixed seed, machine-independent
arithmetic), so it generates gibberish — in milliseconds.
"""
import sys

SEED = 20240601
N_VOCAB = 498
N_CTX = 2048
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 256
HEAD_DIM = N_EMBD // N_HEAD
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
# Random weights alone almost never sample </s> or <|im_end|>. So the output rows of those two
# point along the embeddings of a few "trigger" tokens each (every TRIGGER_EVERY-th normal token):
# once a trigger is generated, an end token is likely next, so generation stops after a few to a
# few dozen tokens, on one end token or the other depending on the seed.
TRIGGER_EVERY = 24
EOG_LOGIT = 5.5     # length of those two output rows

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# token types (llama.cpp / gguf TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def build_vocab():
    """Deterministic SPM vocabulary: (tokens, scores, types)."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [UNKNOWN, CONTROL, CONTROL]
    for b in range(256):
        tokens.append("<0x%02X>" % b)
        types.append(BYTE)
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [CONTROL, CONTROL]
    n_special = len(tokens)

    sp = "\u2581"  # SentencePiece's word-boundary marker
    lower = "abcdefghijklmnopqrstuvwxyz"
    normal = [sp]
    normal += list(lower) + list(lower.upper()) + list("0123456789") + list(".,!?'\"-:;()")
    normal += [sp + c for c in lower]
    # words with every prefix present, so SPM's pairwise merges can reach them
    words = ["user", "assistant", "system", "hello", "world", "the", "is", "of", "and",
             "capital", "france", "paris", "what", "answer", "sentence", "test"]
    for w in words:
        for piece in (w, sp + w):
            for i in range(2, len(piece) + 1):
                normal.append(piece[:i])
    # common letter pairs to fill the vocabulary up to N_VOCAB
    for a in "etaoinshrdlu":
        for b in "etaoinshrdlucmfwy":
            normal.append(a + b)
    seen = set(tokens)
    uniq = []
    for t in normal:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    need = N_VOCAB - n_special
    if len(uniq) < need:
        raise SystemExit(f"vocabulary too small: {len(uniq)} < {need}")
    uniq = uniq[:need]

    tokens += uniq
    types += [NORMAL] * len(uniq)
    # scores: specials/bytes 0; normal tokens: longer pieces merge first, then earlier ones
    scores = [0.0] * n_special
    for i, t in enumerate(uniq):
        scores.append(float(len(t)) * 100.0 - i * 0.01 - 1000.0)
    assert len(tokens) == len(scores) == len(types) == N_VOCAB
    return tokens, scores, types


def tensor_specs():
    """name -> numpy shape (gguf reverses numpy shapes into ggml ne)."""
    specs = {
        "token_embd.weight": (N_VOCAB, N_EMBD),
        "output_norm.weight": (N_EMBD,),
        "output.weight": (N_VOCAB, N_EMBD),
    }
    for i in range(N_LAYER):
        p = f"blk.{i}."
        specs[p + "attn_norm.weight"] = (N_EMBD,)
        specs[p + "attn_q.weight"] = (N_HEAD * HEAD_DIM, N_EMBD)
        specs[p + "attn_k.weight"] = (N_HEAD_KV * HEAD_DIM, N_EMBD)
        specs[p + "attn_v.weight"] = (N_HEAD_KV * HEAD_DIM, N_EMBD)
        specs[p + "attn_output.weight"] = (N_EMBD, N_HEAD * HEAD_DIM)
        specs[p + "ffn_norm.weight"] = (N_EMBD,)
        specs[p + "ffn_gate.weight"] = (N_FF, N_EMBD)
        specs[p + "ffn_up.weight"] = (N_FF, N_EMBD)
        specs[p + "ffn_down.weight"] = (N_EMBD, N_FF)
    return specs


def write(path):
    import math
    import numpy as np
    import gguf

    tokens, scores, types = build_vocab()
    rng = np.random.RandomState(SEED)

    # Byte-identical output on any machine: only RandomState's integer-derived uniforms and
    # element-wise IEEE arithmetic (+ - * /, sqrt), no libm (log/exp) and no numpy reductions
    # (their SIMD summation order may depend on the CPU).
    def randn(shape):  # ~N(0, 1): sum of 4 uniforms (Irwin-Hall), rescaled
        u = rng.random_sample((4,) + tuple(shape))
        return (((u[0] + u[1]) + u[2]) + u[3] - 2.0) * math.sqrt(3.0)

    def unit(v):
        return v / math.sqrt(math.fsum(float(x) * float(x) for x in v))

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("hearth-tiny-random")
    w.add_description("random weights for hearth's mechanical tests; generates gibberish")
    w.add_file_type(0)  # ALL_F32
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_vocab_size(N_VOCAB)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK_ID)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_eot_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML)

    first_normal = types.index(NORMAL)
    triggers = {EOS_ID: range(first_normal, N_VOCAB, TRIGGER_EVERY),
                tokens.index("<|im_end|>"): range(first_normal + TRIGGER_EVERY // 2, N_VOCAB, TRIGGER_EVERY)}
    embd = None
    for name, shape in tensor_specs().items():
        if len(shape) == 1:  # RMS norm weights: around 1
            t = 1.0 + 0.1 * randn(shape)
        elif name == "token_embd.weight":
            t = randn(shape)
            embd = t
        else:  # scaled by 1/sqrt(fan_in); output gets a boost so logits are not flat
            t = randn(shape) / math.sqrt(shape[1])
            if name == "output.weight":
                t *= 4.0
                for eog, trig in triggers.items():
                    d = np.zeros(N_EMBD)
                    for i in trig:
                        d = d + unit(embd[i])
                    t[eog] = EOG_LOGIT * unit(d)
        w.add_tensor(name, t.astype(np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def verify(path):
    import numpy as np
    import gguf

    r = gguf.GGUFReader(path)
    errors = []

    def field(key):
        f = r.fields.get(key)
        if f is None:
            errors.append(f"missing key {key}")
            return None
        return f

    def scalar(key):
        f = field(key)
        return None if f is None else f.contents()

    expect = {
        "general.architecture": "llama",
        "llama.context_length": N_CTX,
        "llama.embedding_length": N_EMBD,
        "llama.block_count": N_LAYER,
        "llama.feed_forward_length": N_FF,
        "llama.attention.head_count": N_HEAD,
        "llama.attention.head_count_kv": N_HEAD_KV,
        "llama.rope.dimension_count": HEAD_DIM,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": BOS_ID,
        "tokenizer.ggml.eos_token_id": EOS_ID,
        "tokenizer.ggml.unknown_token_id": UNK_ID,
    }
    for k, v in expect.items():
        got = scalar(k)
        if got != v:
            errors.append(f"{k} = {got!r}, want {v!r}")
    eps = scalar("llama.attention.layer_norm_rms_epsilon")
    if eps is None or abs(eps - RMS_EPS) > 1e-9:
        errors.append(f"llama.attention.layer_norm_rms_epsilon = {eps!r}")
    if scalar("llama.rope.freq_base") is None:
        pass  # already reported
    tmpl = scalar("tokenizer.chat_template")
    if not tmpl or "<|im_start|>" not in tmpl:
        errors.append("tokenizer.chat_template missing or not ChatML")

    toks = scalar("tokenizer.ggml.tokens") or []
    scores = scalar("tokenizer.ggml.scores") or []
    ttypes = scalar("tokenizer.ggml.token_type") or []
    if not (len(toks) == len(scores) == len(ttypes) == N_VOCAB):
        errors.append(f"vocab lengths tokens={len(toks)} scores={len(scores)} types={len(ttypes)}")
    for b in range(256):
        t = "<0x%02X>" % b
        if t not in toks:
            errors.append(f"byte token {t} missing")
        elif ttypes[toks.index(t)] != BYTE:
            errors.append(f"byte token {t} not of type BYTE")
    for t in ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]:
        if t not in toks:
            errors.append(f"token {t} missing")
    if len(set(toks)) != len(toks):
        errors.append("duplicate tokens")
    eot = scalar("tokenizer.ggml.eot_token_id")
    if eot is None or toks[eot] != "<|im_end|>":
        errors.append(f"eot id {eot!r} is not <|im_end|>")

    # tensor shapes: gguf reports ggml ne order (numpy shape reversed)
    have = {t.name: t for t in r.tensors}
    want = tensor_specs()
    for name, shape in want.items():
        t = have.get(name)
        if t is None:
            errors.append(f"missing tensor {name}")
            continue
        ne = tuple(int(x) for x in t.shape)
        if ne != tuple(reversed(shape)):
            errors.append(f"tensor {name}: ne {ne}, want {tuple(reversed(shape))}")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            errors.append(f"tensor {name}: type {t.tensor_type!r}, want F32")
        elif not np.all(np.isfinite(t.data)):
            errors.append(f"tensor {name}: non-finite values")
    extra = sorted(set(have) - set(want))
    if extra:
        errors.append(f"unexpected tensors {extra}")

    if errors:
        for e in errors:
            print(f"verify {path}: {e}", file=sys.stderr)
        return 1
    print(f"verify {path}: ok ({len(have)} tensors, {len(toks)} tokens, {len(r.fields)} keys)")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "--verify":
        return verify(argv[2])
    if len(argv) == 2 and not argv[1].startswith("-"):
        write(argv[1])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
