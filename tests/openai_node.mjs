// Drives hearth's /v1 over loopback TCP with the official `openai` npm package, as an Electron
// app would: one streamed chat and one embeddings call. Usage:
//   NODE_PATH=… node openai_node.mjs HOST:PORT TOKEN CHAT_MODEL
// Prints one JSON line: {"text": "...", "dims": 384}. Any failure throws (non-zero exit).
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.OPENAI_NPM_DIR, "node_modules", "x.js"));
const { default: OpenAI } = await import(require.resolve("openai"));

const [addr, token, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `http://${addr}/v1`, apiKey: token });

const stream = await client.chat.completions.create({
  model,
  messages: [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "What is the capital of France?" },
  ],
  temperature: 0,
  max_tokens: 24,
  stream: true,
});
let text = "";
let finish = null;
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
  finish = chunk.choices[0]?.finish_reason ?? finish;
}
if (!text.includes("Paris")) throw new Error(`no Paris in ${JSON.stringify(text)}`);
if (finish !== "stop" && finish !== "length") throw new Error(`finish_reason ${finish}`);

const embedded = await client.embeddings.create({ model: "all-minilm-l6-v2", input: "hello world" });
const dims = embedded.data[0].embedding.length;
if (dims !== 384) throw new Error(`${dims} dimensions`);

console.log(JSON.stringify({ text, dims }));
