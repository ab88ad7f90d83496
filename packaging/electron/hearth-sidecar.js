'use strict';
/**
 * hearth-sidecar: run the hearth daemon as a child ("sidecar") of a Node/Electron process and
 * talk to it over its Unix socket (a named pipe on Windows).
 *
 * Plain Node >= 18, CommonJS, no dependencies, no Electron import: use it from Electron's main
 * process, from a plain Node script, or from tests.
 *
 *   const { startHearth } = require('./hearth-sidecar');
 *   const hearth = await startHearth({ binary, dataDir });
 *   await hearth.waitReady();                         // the model may still be loading after "ready"
 *   const { json: user } = await hearth.request('POST', '/api/v1/users', { username: 'me' });
 *   const { json: chat } = await hearth.request('POST', '/api/v1/chats', { user_id: user.id });
 *   const done = await hearth.streamChat(chat.id, 'Hello!', { temperature: 0 }, (ev) => { ... });
 *   await hearth.stop();
 *
 * Sidecar contract (what `hearth serve --sidecar` promises, and all this module relies on):
 *  - stdout carries exactly one JSON line: `{"event":"ready","socket":...,"pid":...,"version":...}`
 *    once the socket accepts connections, or `{"event":"error","code":...,"message":...}` followed
 *    by a non-zero exit. Unknown keys are ignored. Logs go to stderr.
 *  - hearth exits (code 0) when its stdin reaches EOF, when `--parent-pid` dies, or on
 *    SIGTERM/SIGINT; running streams then end with `event: error` `{"code":"shutting_down"}`.
 *  - right after "ready" the model may still be loading: /api/v1/health is 503 `loading` and chat
 *    requests are 503 `model_loading` (with Retry-After) until it is ready.
 */

const { spawn } = require('node:child_process');
const { EventEmitter } = require('node:events');
const http = require('node:http');

const API = '/api/v1';

// On Windows `child.kill(anything)` is TerminateProcess: a hard kill with no handler run. There the
// graceful paths are stdin EOF and the API, and a kill is only the last resort.
const IS_WINDOWS = process.platform === 'win32';

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/**
 * An error from hearth or from talking to it. `code` is hearth's stable error code
 * (`model_loading`, `chat_not_found`, `shutting_down`, ...) when hearth sent one, otherwise one of
 * this module's own: `spawn_failed`, `exited`, `ready_timeout`, `bad_ready_line`, `timeout`,
 * `stream_ended`, `unexpected_response`, `idle_timeout`, `model_unavailable`.
 */
class HearthError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {object} [extra] copied onto the error: status, retryAfter, requestId, data, ...
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'HearthError';
    this.code = code;
    Object.assign(this, extra);
  }
}

function abortError(signal) {
  const reason = signal && signal.reason;
  const err = new Error(reason instanceof Error ? reason.message : 'the operation was aborted');
  err.name = 'AbortError';
  err.code = 'ABORT_ERR';
  if (reason !== undefined) err.cause = reason;
  return err;
}

// ---------------------------------------------------------------------------------------------
// SSE parser
// ---------------------------------------------------------------------------------------------

/**
 * Incremental `text/event-stream` parser (WHATWG "server-sent events" rules).
 *
 * Network reads split the stream anywhere: in the middle of a line, between the `\r` and `\n` of
 * a CRLF, even inside a multi-byte UTF-8 character. So the parser keeps the undecoded bytes
 * (streaming TextDecoder), the partial line, and the partially built event between `push()`
 * calls, and only hands out an event once its terminating blank line has arrived.
 *
 * Lines end in LF, CRLF or a lone CR. `:` lines are comments (hearth sends `: keep-alive` when a
 * stream is idle) and are skipped. `data:` lines are joined with `\n`. `id:` sets the last event
 * id, which sticks to later events. An event without `event:` is a `message`. An event without
 * any `data:` line is not dispatched; an unterminated event at the end of the stream is dropped
 * (see `end()`).
 */
class SseParser {
  /**
   * @param {object} [opts]
   * @param {number} [opts.maxLineLength=8388608] characters one line may have before `push()`
   *   throws (a misbehaving peer must not make us buffer without bound).
   */
  constructor({ maxLineLength = 8 * 1024 * 1024 } = {}) {
    this.maxLineLength = maxLineLength;
    // TextDecoder in streaming mode keeps a split multi-byte character for the next chunk, and
    // drops a leading BOM as the SSE spec asks.
    this._decoder = new TextDecoder('utf-8');
    this._line = '';
    this._skipLF = false; // the previous chunk ended in '\r': a leading '\n' belongs to it
    this._eventName = '';
    this._data = [];
    this.lastEventId = '';
    this.retry = null;
    this.comments = 0;
  }

  /**
   * Feeds a chunk and returns the events it completed.
   * @param {Buffer|Uint8Array|string} chunk
   * @returns {{event: string, data: string, id: string}[]}
   */
  push(chunk) {
    const text = typeof chunk === 'string' ? chunk : this._decoder.decode(chunk, { stream: true });
    const out = [];
    this._feed(text, out);
    return out;
  }

  /**
   * Ends the stream. Returns the events completed by the last undecoded bytes (none for a
   * well-formed stream). Whatever was not terminated by a blank line is discarded, per spec;
   * `hadPartial` tells whether there was such a leftover.
   * @returns {{event: string, data: string, id: string}[]}
   */
  end() {
    const out = [];
    this._feed(this._decoder.decode(), out);
    this.hadPartial = this._line.length > 0 || this._data.length > 0 || this._eventName !== '';
    this._line = '';
    this._data = [];
    this._eventName = '';
    return out;
  }

  _feed(text, out) {
    if (text.length === 0) return;
    let i = 0;
    if (this._skipLF) {
      this._skipLF = false;
      if (text.charCodeAt(0) === 10) i = 1;
    }
    let start = i;
    for (; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      const line = this._line + text.slice(start, i);
      this._line = '';
      if (c === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          this._skipLF = true;
        }
      }
      start = i + 1;
      this._processLine(line, out);
    }
    if (start < text.length) {
      this._line += text.slice(start);
      if (this._line.length > this.maxLineLength) {
        throw new HearthError('sse_line_too_long', `SSE line longer than ${this.maxLineLength} characters`);
      }
    }
  }

  _processLine(line, out) {
    if (line.length === 0) {
      // Blank line: dispatch.
      if (this._data.length > 0) {
        out.push({ event: this._eventName || 'message', data: this._data.join('\n'), id: this.lastEventId });
      }
      this._data = [];
      this._eventName = '';
      return;
    }
    if (line.charCodeAt(0) === 58 /* ':' */) {
      this.comments++;
      return;
    }
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32 /* ' ' */) value = value.slice(1);
    }
    switch (field) {
      case 'event':
        this._eventName = value;
        break;
      case 'data':
        this._data.push(value);
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP over the socket
// ---------------------------------------------------------------------------------------------

/**
 * One HTTP request on hearth's socket. Resolves for every status (the caller decides what a 404
 * means); rejects only on transport errors, timeout or abort.
 *
 * Why `socketPath` and not TCP: the socket is mode 0600 in a 0700 directory and hearth checks each
 * connection's peer uid, so only this user's processes can reach it, with no token to manage. A
 * localhost port is open to every local user and to web pages doing DNS rebinding (hearth's
 * optional `--tcp` listener exists for clients that have no other way, and needs a bearer token
 * for that reason). Node's `http` speaks HTTP over a Unix socket (or a Windows named pipe) when
 * given `socketPath`; the host name in the request is irrelevant.
 *
 * @returns {Promise<{status: number, headers: object, json: any, text: string}>}
 */
function httpRequest(socketPath, method, path, body, { headers = {}, timeoutMs = 30000, signal } = {}) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(abortError(signal));
    const hdrs = { accept: 'application/json', ...headers };
    let payload;
    if (body !== undefined && body !== null) {
      payload = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body), 'utf8');
      hdrs['content-type'] = 'application/json';
      hdrs['content-length'] = String(payload.length);
    }
    const req = http.request({ socketPath, method, path, headers: hdrs, host: 'hearth' });
    let settled = false;
    const finish = (fn, value) => {
      if (settled) return;
      settled = true;
      if (signal) signal.removeEventListener('abort', onAbort);
      fn(value);
    };
    const onAbort = () => {
      req.destroy();
      finish(reject, abortError(signal));
    };
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    if (timeoutMs > 0) {
      req.setTimeout(timeoutMs, () => {
        req.destroy();
        finish(reject, new HearthError('timeout', `${method} ${path}: no response within ${timeoutMs} ms`));
      });
    }
    req.on('error', (err) => finish(reject, err));
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', (err) => finish(reject, err));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json = null;
        if (text.length > 0) {
          try {
            json = JSON.parse(text);
          } catch {
            json = null;
          }
        }
        finish(resolve, { status: res.statusCode, headers: res.headers, json, text });
      });
    });
    req.end(payload);
  });
}

/** Builds a HearthError from a non-2xx response (`{"error":{"code","message"}}`). */
function responseError(status, headers, json, text) {
  const e = json && json.error ? json.error : {};
  const code = typeof e.code === 'string' ? e.code : `http_${status}`;
  const message = typeof e.message === 'string' ? e.message : (text || `HTTP ${status}`).slice(0, 500);
  const retry = headers && headers['retry-after'];
  return new HearthError(code, message, {
    status,
    retryAfter: retry !== undefined && /^[0-9]+$/.test(retry) ? Number(retry) : undefined,
    requestId: headers && headers['x-request-id'],
  });
}

/**
 * POST /api/v1/chats/{chatId}/messages and follow the SSE reply. See `Hearth#streamChat`.
 */
function streamChat(socketPath, chatId, content, options, onEvent) {
  if (typeof options === 'function') {
    onEvent = options;
    options = {};
  }
  // `search_mode` is a field of the message itself, not a generation option: the daemon rejects
  // unknown keys inside `options` (422), so it is lifted out here.
  const { signal, idleTimeoutMs = 60000, search_mode: searchMode, ...generation } = options || {};
  const body = { content };
  if (searchMode !== undefined) body.search_mode = searchMode;
  if (Object.keys(generation).length > 0) body.options = generation;
  const payload = Buffer.from(JSON.stringify(body), 'utf8');
  const path = `${API}/chats/${encodeURIComponent(chatId)}/messages`;

  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(abortError(signal));
    const req = http.request({
      socketPath,
      method: 'POST',
      path,
      host: 'hearth',
      headers: {
        accept: 'text/event-stream',
        'content-type': 'application/json',
        'content-length': String(payload.length),
      },
    });
    let settled = false;
    const finish = (fn, value) => {
      if (settled) return;
      settled = true;
      if (signal) signal.removeEventListener('abort', onAbort);
      fn(value);
    };
    // Destroying the request closes the connection; hearth sees the client gone, cancels the
    // generation and keeps the partial reply (finish_reason "cancelled").
    const fail = (err) => {
      req.destroy();
      finish(reject, err);
    };
    const onAbort = () => fail(abortError(signal));
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    if (idleTimeoutMs > 0) {
      // hearth sends a `: keep-alive` every 15 s on an idle stream, so silence this long means the
      // daemon or the connection is gone.
      req.setTimeout(idleTimeoutMs, () =>
        fail(new HearthError('idle_timeout', `no data from hearth for ${idleTimeoutMs} ms`)),
      );
    }
    req.on('error', (err) => finish(reject, err));
    req.on('response', (res) => {
      const status = res.statusCode;
      const type = String(res.headers['content-type'] || '');
      if (status < 200 || status > 299 || !type.startsWith('text/event-stream')) {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', (err) => finish(reject, err));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json = null;
          try {
            json = JSON.parse(text);
          } catch {
            json = null;
          }
          if (status >= 200 && status <= 299) {
            finish(reject, new HearthError('unexpected_response', `expected text/event-stream, got ${type || 'no content type'}`, { status }));
          } else {
            finish(reject, responseError(status, res.headers, json, text));
          }
        });
        return;
      }
      const parser = new SseParser();
      let terminal = false;
      const handle = (events) => {
        for (const ev of events) {
          if (settled) return;
          let data = ev.data;
          try {
            data = JSON.parse(ev.data);
          } catch {
            // hearth always sends one line of JSON; pass anything else through as a string
          }
          const event = { event: ev.event, data, id: ev.id };
          try {
            if (onEvent) onEvent(event);
          } catch (err) {
            fail(err); // a throwing callback cancels the generation
            return;
          }
          if (ev.event === 'done') {
            terminal = true;
            finish(resolve, data);
          } else if (ev.event === 'error') {
            terminal = true;
            const d = data && typeof data === 'object' ? data : {};
            finish(reject, new HearthError(d.code || 'stream_error', d.message || String(ev.data), { status, data }));
          }
        }
      };
      res.on('data', (chunk) => {
        try {
          handle(parser.push(chunk));
        } catch (err) {
          fail(err);
        }
      });
      res.on('error', (err) => finish(reject, err));
      res.on('end', () => {
        try {
          handle(parser.end());
        } catch (err) {
          fail(err);
        }
        if (!terminal) {
          finish(reject, new HearthError('stream_ended', 'the stream ended without a done or error event'));
        }
      });
      // 'close' without 'end': the connection was lost mid-stream (hearth killed, socket reset).
      res.on('close', () => {
        if (!terminal) finish(reject, new HearthError('stream_ended', 'the connection to hearth was lost mid-stream'));
      });
    });
    req.end(payload);
  });
}

// ---------------------------------------------------------------------------------------------
// The sidecar process
// ---------------------------------------------------------------------------------------------

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A running hearth sidecar. Created by `startHearth`; emits `'exit' (code, signal)` when the
 * process ends (whether through `stop()` or not: an unexpected exit is the app's cue to show an
 * error or start a new one), and `'log' (line)` for each stderr line.
 */
class Hearth extends EventEmitter {
  constructor(child, ready, onLog) {
    super();
    /** @type {import('node:child_process').ChildProcess} */
    this.child = child;
    /** The ready line as parsed (unknown keys included). */
    this.info = ready;
    /** Socket (or named pipe) path to give `http.request({ socketPath })`. */
    this.socket = ready.socket;
    /** Pid reported by hearth (the same as child.pid unless a wrapper script is in between). */
    this.pid = ready.pid != null ? ready.pid : child.pid;
    this.version = ready.version;
    /** API prefix, `/api/v1`. */
    this.api = ready.api || API;
    this.exitCode = child.exitCode;
    this.signalCode = child.signalCode;
    this._onLog = onLog;
    this._stopping = null;
    this._exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
      child.once('exit', (code, signal) => {
        this.exitCode = code;
        this.signalCode = signal;
        // A process that inherited hearth's stdout/stderr (seen under Wine: a helper a system DLL
        // started) keeps them open after hearth exited, and with them this process alive: its
        // last lines get a second, then the pipes are closed.
        const closer = setTimeout(() => {
          child.stdout.destroy();
          child.stderr.destroy();
        }, 1000);
        closer.unref();
        resolve(code);
        this.emit('exit', code, signal);
      });
    });
  }

  /** True while the process runs. */
  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * One JSON request. `body` (object or JSON string) is sent as application/json.
   * Resolves with `{status, headers, json, text}` for every HTTP status; non-2xx are not thrown,
   * use `HearthError`-style handling on `json.error` yourself or call `requestOk`.
   */
  request(method, path, body, opts) {
    return httpRequest(this.socket, method, path, body, opts);
  }

  /** Like `request`, but resolves with the JSON body and rejects with a HearthError on non-2xx. */
  async requestOk(method, path, body, opts) {
    const r = await this.request(method, path, body, opts);
    if (r.status < 200 || r.status > 299) throw responseError(r.status, r.headers, r.json, r.text);
    return r.json;
  }

  /**
   * Polls GET /api/v1/health until it answers 200 (chat model loaded). "ready" on stdout only
   * means the socket accepts connections: the model may still be loading (health 503 "loading").
   * Rejects with `model_unavailable` if the model failed to load (no point waiting), `exited` if
   * hearth exits, `timeout` after `timeoutMs`.
   * @returns {Promise<object>} the health body
   */
  async waitReady(timeoutMs = 120000, { intervalMs = 250, signal } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last = 'no answer yet';
    for (;;) {
      if (signal && signal.aborted) throw abortError(signal);
      if (!this.running) throw new HearthError('exited', `hearth exited (code ${this.exitCode}, signal ${this.signalCode}) before the model was ready`);
      const left = deadline - Date.now();
      if (left <= 0) throw new HearthError('timeout', `hearth was not ready within ${timeoutMs} ms (${last})`);
      try {
        const r = await this.request('GET', `${API}/health`, undefined, { timeoutMs: Math.min(5000, left), signal });
        if (r.status === 200) return r.json;
        const st = r.json && r.json.status;
        if (st === 'unavailable') {
          const chat = r.json.models && r.json.models.chat;
          throw new HearthError('model_unavailable', `the chat model failed to load: ${(chat && chat.error) || 'unknown error'}`, { status: r.status, health: r.json });
        }
        last = `health ${r.status} ${st || ''}`.trim();
      } catch (err) {
        if (err.code === 'model_unavailable' || err.name === 'AbortError') throw err;
        last = err.message; // socket not there yet, connection refused, ...: retry
      }
      await delay(Math.max(0, Math.min(intervalMs, deadline - Date.now())));
    }
  }

  /**
   * Sends a chat message and follows the streamed reply.
   *
   * @param {string} chatId
   * @param {string} content the user's message
   * @param {object} [options] generation overrides sent as the request's `options` (temperature,
   *   top_p, top_k, min_p, repeat_penalty, max_tokens, seed, system_prompt); `search_mode`
   *   (`'normal'` | `'docs'` | `'all'`, sent as the message's own field: this message searches the
   *   chat's documents and the library, `'all'` memories too; absent = the chat's mode); plus two local keys
   *   that are not sent: `signal` (AbortSignal: aborting closes the connection, which makes hearth
   *   cancel the generation and keep the partial reply) and `idleTimeoutMs` (default 60000; hearth
   *   sends a keep-alive every 15 s, so longer silence means it is gone; 0 disables).
   * @param {(ev: {event: string, data: any, id: string}) => void} [onEvent] called for every event
   *   (`start`, `sources`, `token`, `done`, `error`) with `data` parsed from JSON. `sources` comes
   *   before the first token when the message searched documents or memories: `{sources: [...],
   *   reason?}`, an empty list with `reason` (`no_documents`, `no_match`) when nothing was found. If it throws, the stream is
   *   cancelled and the promise rejects with that error.
   * @returns {Promise<object>} the `done` event's data. Rejects with a HearthError whose `code` is
   *   the `error` event's code (`inference_failed`, `store_unavailable`, `shutting_down`), or the JSON
   *   error body's code for a non-2xx answer (`model_loading` with `retryAfter`, `chat_not_found`,
   *   `generation_in_progress`, `queue_full`, ...), or `stream_ended` if the connection dropped;
   *   with an AbortError when `signal` fires.
   */
  streamChat(chatId, content, options, onEvent) {
    return streamChat(this.socket, chatId, content, options, onEvent);
  }

  /**
   * Stops hearth and resolves with its exit code (`null` if it had to be killed by a signal; see
   * `signalCode`). Idempotent.
   *
   * First the graceful way: end stdin. hearth treats EOF on stdin as "my parent is done with me",
   * finishes running streams with `shutting_down`, flushes its store and exits 0. If it is still
   * there after `timeoutMs / 2`, SIGTERM (same graceful path, for a hearth stuck reading; not on
   * Windows, where it would be a hard kill); after `timeoutMs`, SIGKILL (on Windows
   * TerminateProcess). Signals go to this child's pid only, never to processes found by name.
   */
  stop({ timeoutMs = 10000 } = {}) {
    if (this._stopping) return this._stopping;
    this._stopping = (async () => {
      if (!this.running) return this.exitCode;
      const child = this.child;
      try {
        child.stdin.end();
      } catch {
        // already closed
      }
      const term = setTimeout(() => {
        if (this.running && !IS_WINDOWS) child.kill('SIGTERM');
      }, Math.floor(timeoutMs / 2));
      const kill = setTimeout(() => {
        if (this.running) child.kill('SIGKILL');
      }, timeoutMs);
      try {
        return await this._exited;
      } finally {
        clearTimeout(term);
        clearTimeout(kill);
      }
    })();
    return this._stopping;
  }

  /** Resolves with the exit code once the process has exited (without asking it to). */
  exited() {
    return this._exited;
  }
}

function defaultLog(line) {
  process.stderr.write(`[hearth] ${line}\n`);
}

/** Splits a readable stream into lines, tolerating chunk boundaries anywhere. */
function onLines(stream, cb) {
  let buf = '';
  stream.setEncoding('utf8'); // StringDecoder: never splits a UTF-8 character
  stream.on('data', (chunk) => {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      cb(line);
    }
  });
  stream.on('end', () => {
    if (buf.length > 0) cb(buf.replace(/\r$/, ''));
    buf = '';
  });
}

/**
 * Starts `binary serve --sidecar --parent-pid <our pid> ...` and resolves once it reports ready.
 *
 * Why stdin stays open: it is a pipe whose only writer is this process. Nothing is ever written,
 * but when this process goes away for any reason (quit, crash, SIGKILL, OOM killer) the OS closes
 * it, hearth reads EOF and shuts down. `--parent-pid` is the second line of defence (hearth polls
 * it), for the case where a grandchild inherited the pipe's write end. So hearth never outlives the
 * app, and the app never needs to find and kill "stray hearths" by name, which could hit a hearth
 * the user runs on purpose.
 *
 * @param {object} opts
 * @param {string} opts.binary path of the hearth executable
 * @param {string} [opts.dataDir] `--data-dir` (in Electron: a folder under app.getPath('userData'))
 * @param {string} [opts.socket] `--socket` path; by default hearth picks
 *   `$XDG_RUNTIME_DIR/hearth/hearth.sock` or `DATA_DIR/run/hearth.sock` and reports it in "ready"
 * @param {string[]} [opts.args] more `serve` flags (`--models-dir`, `--threads`, `--ctx`, ...)
 * @param {object} [opts.env] environment for hearth (default: this process's)
 * @param {number} [opts.readyTimeoutMs=30000] how long to wait for the ready line
 * @param {(line: string) => void} [opts.onLog] gets each stderr line of hearth (default: written to
 *   our stderr with a `[hearth] ` prefix; pass `() => {}` to drop them)
 * @param {string} [opts.cwd]
 * @returns {Promise<Hearth>}
 */
function startHearth({ binary, dataDir, socket, args = [], env, readyTimeoutMs = 30000, onLog = defaultLog, cwd } = {}) {
  if (!binary) return Promise.reject(new TypeError('startHearth: `binary` is required'));
  const argv = ['serve', '--sidecar', '--parent-pid', String(process.pid)];
  if (dataDir) argv.push('--data-dir', dataDir);
  if (socket) argv.push('--socket', socket);
  argv.push(...args);

  return new Promise((resolve, reject) => {
    let child;
    try {
      child = spawn(binary, argv, {
        // All three piped. stdin: kept open as the lifeline (see above). stdout: the ready line.
        // stderr: logs, forwarded to onLog. Nothing is inherited, so hearth cannot write into the
        // app's terminal or keep it open.
        stdio: ['pipe', 'pipe', 'pipe'],
        env: env || process.env,
        cwd,
        windowsHide: true,
      });
    } catch (err) {
      reject(new HearthError('spawn_failed', `could not start ${binary}: ${err.message}`, { cause: err }));
      return;
    }

    const recentLog = [];
    let settled = false;
    let timer = null;

    // If this Node process exits while hearth runs, take it down too. Only synchronous work is
    // possible in an 'exit' handler: send SIGTERM (graceful) to this child's pid. (When Node is
    // killed by a signal no handler runs; then stdin EOF and --parent-pid do the job.) Not on
    // Windows, where that would be a hard kill: there the stdin pipe closing as this process exits
    // is the graceful signal, and hearth watches our process handle (--parent-pid) besides.
    const onParentExit = () => {
      if (IS_WINDOWS) return;
      if (child.exitCode === null && child.signalCode === null) {
        try {
          child.kill('SIGTERM');
        } catch {
          // nothing more we can do
        }
      }
    };
    process.on('exit', onParentExit);

    // Writing to a pipe whose reader died raises EPIPE on the stream: never let it crash the app.
    child.stdin.on('error', () => {});

    onLines(child.stderr, (line) => {
      recentLog.push(line);
      if (recentLog.length > 20) recentLog.shift();
      try {
        onLog(line);
      } catch {
        // a logging callback must not break the sidecar
      }
    });

    const fail = (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(err);
    };
    const tail = () => (recentLog.length ? `\n--- hearth stderr (last lines) ---\n${recentLog.join('\n')}` : '');

    onLines(child.stdout, (line) => {
      if (settled) {
        // The contract says one line; anything more is logged, not interpreted. Reading stdout
        // to the end also keeps hearth from blocking on a full pipe.
        if (line.trim()) onLog(`(stdout) ${line}`);
        return;
      }
      if (!line.trim()) return;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        onLog(`(stdout, not JSON) ${line}`);
        return;
      }
      if (!msg || typeof msg !== 'object') return;
      if (msg.event === 'ready') {
        if (typeof msg.socket !== 'string' || !msg.socket) {
          fail(new HearthError('bad_ready_line', `ready line without a socket: ${line}`));
          terminate(child, 2000);
          return;
        }
        settled = true;
        clearTimeout(timer);
        resolve(new Hearth(child, msg, onLog));
      } else if (msg.event === 'error') {
        // hearth exits non-zero by itself after an error line; make sure it does.
        fail(new HearthError(msg.code || 'start_failed', msg.message || 'hearth failed to start', { data: msg }));
        terminate(child, 2000);
      }
      // other events: unknown to this version, ignored
    });

    child.once('error', (err) => {
      // ENOENT, EACCES, ...: the binary could not be started at all.
      process.removeListener('exit', onParentExit);
      fail(new HearthError('spawn_failed', `could not start ${binary}: ${err.message}`, { cause: err }));
    });
    child.once('exit', (code, signal) => {
      if (settled) return;
      process.removeListener('exit', onParentExit);
      // Let the stderr pipe drain so the error message can include hearth's last words.
      setImmediate(() =>
        fail(new HearthError('exited', `hearth exited before it was ready (code ${code}, signal ${signal})${tail()}`, { exitCode: code, signal })),
      );
    });
    child.once('exit', () => process.removeListener('exit', onParentExit));

    if (readyTimeoutMs > 0) {
      timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        // Reject only once it is gone, so a retry does not race the old process for the data
        // dir lock or the socket.
        terminate(child, 2000).then(() =>
          reject(new HearthError('ready_timeout', `hearth did not report ready within ${readyTimeoutMs} ms${tail()}`)),
        );
      }, readyTimeoutMs);
    }
  });
}

/**
 * stdin EOF, then SIGTERM (not on Windows, where it is a hard kill), then SIGKILL after `graceMs`;
 * resolves when the child has exited.
 */
function terminate(child, graceMs) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const kill = setTimeout(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }, graceMs);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    try {
      child.stdin.end();
    } catch {
      // ignore
    }
    if (!IS_WINDOWS) child.kill('SIGTERM');
  });
}

module.exports = {
  startHearth,
  Hearth,
  HearthError,
  SseParser,
  httpRequest,
  streamChat,
  API,
};
