"""Drives hearth's /v1 with the official `openai` Python package (installed by scripts/test into
models/.cache/pyopenai). Usage: openai_sdk.py uds SOCKET CHAT_MODEL | tcp HOST:PORT TOKEN CHAT_MODEL.
Asserts as it goes (a failure exits non-zero with the traceback) and prints one JSON line with what
the Rust test compares against /api/v1: {"embedding": [...]}."""
import base64
import json
import struct
import sys

import httpx2
import openai

if sys.argv[1] == "uds":
    client = openai.OpenAI(
        base_url="http://hearth/v1",
        api_key="unused-on-the-socket",
        http_client=httpx2.Client(transport=httpx2.HTTPTransport(uds=sys.argv[2])),
    )
else:
    client = openai.OpenAI(base_url=f"http://{sys.argv[2]}/v1", api_key=sys.argv[3])
MODEL = sys.argv[-1]
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]

# Chat, not streamed.
r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
assert r.object == "chat.completion", r
assert r.model == MODEL, r.model
assert "Paris" in r.choices[0].message.content, r.choices[0].message.content
assert r.choices[0].message.role == "assistant"
assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

# Streamed, with usage at the end; content parts as an array.
parts = [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
chunks = list(client.chat.completions.create(
    model=MODEL, messages=parts, temperature=0, max_tokens=24,
    stream=True, stream_options={"include_usage": True}))
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert "Paris" in text, text
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finishes in (["stop"], ["length"]), finishes
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, chunks[-1]
assert text == r.choices[0].message.content, (text, r.choices[0].message.content)

# A stop string ends the reply before it (and is not part of it).
s = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stop=["Paris"])
assert "Paris" not in s.choices[0].message.content and s.choices[0].finish_reason == "stop", s

# Plain completion.
c = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
assert c.object == "text_completion" and c.choices[0].text, c
streamed = "".join(x.choices[0].text for x in client.completions.create(
    model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True) if x.choices)
assert streamed == c.choices[0].text, (streamed, c.choices[0].text)

# Embeddings: floats, and base64 decoding to the same floats.
e = client.embeddings.create(model="all-minilm-l6-v2", input=["hello world", "the cat sat"], encoding_format="float")
assert len(e.data) == 2 and len(e.data[0].embedding) == 384, e
b = client.embeddings.create(model="all-minilm-l6-v2", input="hello world", encoding_format="base64")
raw = base64.b64decode(b.data[0].embedding)
decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
assert decoded == e.data[0].embedding, "base64 and float embeddings differ"

# Structured output: the SDK's parse helper builds a strict schema from a pydantic model and
# validates the reply into it.
from pydantic import BaseModel


class City(BaseModel):
    name: str
    country: str


p = client.chat.completions.parse(
    model=MODEL, temperature=0, max_tokens=64, response_format=City,
    messages=[{"role": "user", "content": "Name the capital of France and its country."}])
city = p.choices[0].message.parsed
assert isinstance(city, City) and city.name and city.country, p
try:
    client.chat.completions.create(model=MODEL, messages=QUESTION, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a+"}}})
    raise AssertionError("an unsupported schema keyword accepted")
except openai.BadRequestError as err:
    assert "pattern" in str(err.body), err.body

# Tools: a forced call (grammar-exact), its result, then the final answer in text.
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}}}]
talk = [{"role": "user", "content": "What is the weather in Paris?"}]
r = client.chat.completions.create(model=MODEL, messages=talk, tools=TOOLS, tool_choice="required",
                                   temperature=0, max_tokens=64)
assert r.choices[0].finish_reason == "tool_calls", r
call = r.choices[0].message.tool_calls[0]
assert call.type == "function" and call.function.name == "get_weather" and call.id, call
assert isinstance(json.loads(call.function.arguments)["city"], str), call.function.arguments
talk += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
         {"role": "tool", "tool_call_id": call.id, "content": "18 degrees Celsius and sunny"}]
final = client.chat.completions.create(model=MODEL, messages=talk, tools=TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=48)
assert final.choices[0].message.content and not final.choices[0].message.tool_calls, final
# Streamed, a named function: the call arrives as a tool_calls delta.
chunks = list(client.chat.completions.create(
    model=MODEL, messages=talk[:1], tools=TOOLS, temperature=0, max_tokens=64, stream=True,
    tool_choice={"type": "function", "function": {"name": "get_weather"}}))
deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
assert deltas and deltas[0].function.name == "get_weather", chunks
assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
try:
    client.chat.completions.create(model=MODEL, messages=talk[:1], tools=TOOLS,
                                   tool_choice={"type": "function", "function": {"name": "nope"}})
    raise AssertionError("an unknown tool_choice function accepted")
except openai.BadRequestError as err:
    assert err.param == "tool_choice.function.name", err.body

# Models.
ids = [m.id for m in client.models.list()]
assert MODEL in ids and "all-minilm-l6-v2" in ids, ids
assert client.models.retrieve(MODEL).id == MODEL

# Errors arrive as the SDK's typed exceptions, in OpenAI's shape.
try:
    client.chat.completions.create(model="no-such-model", messages=QUESTION)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as err:
    assert err.code == "model_not_found", err.body
try:
    client.chat.completions.create(model=MODEL, messages=QUESTION, extra_body={"bogus_field": 1})
    raise AssertionError("unknown field accepted")
except openai.BadRequestError as err:
    assert err.param == "bogus_field", err.body
try:
    client.chat.completions.create(model=MODEL, messages=QUESTION, n=2)
    raise AssertionError("n=2 accepted")
except openai.BadRequestError as err:
    assert err.param == "n", err.body
try:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    raise AssertionError("an image part accepted")
except openai.BadRequestError as err:
    assert "image_url" in str(err.body), err.body

print(json.dumps({"embedding": e.data[0].embedding}))
