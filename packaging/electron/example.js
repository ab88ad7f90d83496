#!/usr/bin/env node
'use strict';
/**
 * Runnable example of the sidecar module, outside Electron:
 *
 *   HEARTH_MODELS_DIR=./models node packaging/electron/example.js "Why is the sky blue?"
 *
 * Environment:
 *   HEARTH_BIN         hearth executable (default: ../../target/release/hearth from this file)
 *   HEARTH_MODELS_DIR  model files (default: ../../models from this file, if it exists)
 *   HEARTH_DATA_DIR    data dir (default: a fresh temp dir, removed at the end)
 *   HEARTH_SOCKET      socket path (default: DATA_DIR/hearth.sock, so a hearth that is already
 *                      running for this user at the default path is left alone; on Windows
 *                      hearth's own per-data-dir pipe)
 * Other HEARTH_* settings (HEARTH_THREADS, HEARTH_CTX, ...) reach hearth through the environment.
 *
 * Output: the reply's tokens on stdout as they stream, then one line `DONE {...}` with the done
 * event's data; then a follow-up that searches documents prints `EVENTS start,sources,token,done`
 * (the event names in order, repeats folded) and `SOURCES {...}` (the sources event's data). hearth's logs go to stderr. Exit status 0 on success, 1 on any failure, 130 on
 * Ctrl-C.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startHearth } = require('./hearth-sidecar.js');

const DEFAULT_QUESTION = 'What is the capital of France? Answer in one sentence.';

async function main() {
  const question = process.argv.slice(2).join(' ').trim() || DEFAULT_QUESTION;
  const binary =
    process.env.HEARTH_BIN ||
    path.resolve(__dirname, '../../target/release', process.platform === 'win32' ? 'hearth.exe' : 'hearth');
  let modelsDir = process.env.HEARTH_MODELS_DIR;
  if (!modelsDir) {
    const repoModels = path.resolve(__dirname, '../../models');
    if (fs.existsSync(repoModels)) modelsDir = repoModels;
  }
  let dataDir = process.env.HEARTH_DATA_DIR;
  let tempDir = null;
  if (!dataDir) {
    tempDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hearth-example-'));
    dataDir = tempDir;
  }
  // Unix socket paths are limited to ~104-108 bytes; a temp dir keeps it short. On Windows hearth's
  // default named pipe is already per user and per data dir.
  let socket = process.env.HEARTH_SOCKET;
  if (!socket && process.platform !== 'win32') {
    socket = path.join(dataDir, 'hearth.sock');
    if (Buffer.byteLength(socket) > 100) socket = path.join(os.tmpdir(), `hearth-example-${process.pid}.sock`);
  }

  const args = [];
  if (modelsDir) args.push('--models-dir', modelsDir);

  let hearth = null;
  const controller = new AbortController();
  let interrupted = false;
  process.on('SIGINT', () => {
    interrupted = true;
    controller.abort(new Error('interrupted'));
  });

  try {
    hearth = await startHearth({ binary, dataDir, socket, args, readyTimeoutMs: 30000 });
    process.stderr.write(`hearth ${hearth.version} ready on ${hearth.socket} (pid ${hearth.pid}); waiting for the model\n`);

    // "ready" means the socket accepts connections; the model may still be loading.
    await hearth.waitReady(120000, { signal: controller.signal });

    const user = await hearth.requestOk('POST', '/api/v1/users', { username: 'example' });
    const chat = await hearth.requestOk('POST', '/api/v1/chats', { user_id: user.id, title: 'Example' });

    process.stderr.write(`> ${question}\n`);
    const done = await hearth.streamChat(
      chat.id,
      question,
      { temperature: 0, signal: controller.signal },
      (ev) => {
        if (ev.event === 'token') process.stdout.write(ev.data.text);
      },
    );
    process.stdout.write('\n');
    process.stdout.write(`DONE ${JSON.stringify(done)}\n`);

    // A follow-up that searches the user's documents (`search_mode` is the message's own
    // field): a `sources` event comes before the first token, here an empty list with the
    // reason, since this fresh data dir holds no document.
    const names = [];
    let sources = null;
    await hearth.streamChat(
      chat.id,
      'What do my documents say about Paris?',
      { temperature: 0, max_tokens: 16, search_mode: 'docs', signal: controller.signal },
      (ev) => {
        if (names[names.length - 1] !== ev.event) names.push(ev.event);
        if (ev.event === 'sources') sources = ev.data;
      },
    );
    process.stdout.write(`EVENTS ${names.join(',')}\n`);
    process.stdout.write(`SOURCES ${JSON.stringify(sources)}\n`);

    const code = await hearth.stop();
    hearth = null;
    if (code !== 0) throw new Error(`hearth exited with code ${code} on stop`);
    return 0;
  } catch (err) {
    if (interrupted) {
      process.stderr.write('\ninterrupted\n');
    } else {
      process.stderr.write(`\nerror: ${err.code ? `[${err.code}] ` : ''}${err.message}\n`);
    }
    return interrupted ? 130 : 1;
  } finally {
    if (hearth) await hearth.stop().catch(() => {});
    if (tempDir) fs.rmSync(tempDir, { recursive: true, force: true });
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`fatal: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  },
);
