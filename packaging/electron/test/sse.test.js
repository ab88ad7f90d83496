'use strict';
// Unit tests for the SSE parser in hearth-sidecar.js. Run: node --test packaging/electron/test/
const test = require('node:test');
const assert = require('node:assert/strict');
const { SseParser } = require('../hearth-sidecar.js');

/** Feeds `chunks` (Buffers or strings) and returns every event, including those end() yields. */
function parseChunks(chunks) {
  const p = new SseParser();
  const out = [];
  for (const c of chunks) out.push(...p.push(c));
  out.push(...p.end());
  return { events: out, parser: p };
}

/** Every way to cut `buf` in two, plus one byte at a time. */
function* splits(buf) {
  for (let i = 0; i <= buf.length; i++) yield [buf.subarray(0, i), buf.subarray(i)];
  yield Array.from(buf, (b) => Buffer.from([b]));
}

// What hearth really sends (src/server/sse.rs), with a multi-byte token and a keep-alive.
const HEARTH_STREAM =
  'id: 1\nevent: start\ndata: {"message_id":"m1","reply_id":"r1"}\n\n' +
  ': keep-alive\n\n' +
  'id: 2\nevent: token\ndata: {"text":"Paris"}\n\n' +
  'id: 3\nevent: token\ndata: {"text":" é€😀 ok"}\n\n' +
  ': keep-alive\n\n' +
  'id: 4\nevent: done\ndata: {"reply_id":"r1","finish_reason":"stop","usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n';

const EXPECTED = [
  { event: 'start', data: '{"message_id":"m1","reply_id":"r1"}', id: '1' },
  { event: 'token', data: '{"text":"Paris"}', id: '2' },
  { event: 'token', data: '{"text":" é€😀 ok"}', id: '3' },
  {
    event: 'done',
    data: '{"reply_id":"r1","finish_reason":"stop","usage":{"prompt_tokens":3,"completion_tokens":2}}',
    id: '4',
  },
];

test('whole stream in one chunk', () => {
  const { events, parser } = parseChunks([Buffer.from(HEARTH_STREAM)]);
  assert.deepEqual(events, EXPECTED);
  assert.equal(parser.comments, 2);
  assert.equal(parser.hadPartial, false);
});

test('split at every byte boundary (including inside UTF-8 characters)', () => {
  const buf = Buffer.from(HEARTH_STREAM, 'utf8');
  let n = 0;
  for (const chunks of splits(buf)) {
    const { events } = parseChunks(chunks);
    assert.deepEqual(events, EXPECTED, `split #${n}`);
    n++;
  }
  assert.equal(n, buf.length + 2);
});

test('events are emitted as soon as their blank line arrives, not before', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('event: token\ndata: {"text":"a"}\n'), []);
  assert.deepEqual(p.push('\n'), [{ event: 'token', data: '{"text":"a"}', id: '' }]);
  assert.deepEqual(p.push('event: token\ndata: {"text":"b"}'), []);
  assert.deepEqual(p.push('\n'), []);
  assert.deepEqual(p.push('\nevent: done'), [{ event: 'token', data: '{"text":"b"}', id: '' }]);
});

test('multi-line data is joined with \\n', () => {
  const s = 'event: note\ndata: line one\ndata:line two\ndata:\ndata:  indented\n\n';
  for (const chunks of splits(Buffer.from(s))) {
    const { events } = parseChunks(chunks);
    assert.deepEqual(events, [{ event: 'note', data: 'line one\nline two\n\n indented', id: '' }]);
  }
});

test('keep-alive and other comments are ignored, alone or inside an event', () => {
  const s = ': keep-alive\n\n:\n\nevent: token\n: in the middle\ndata: {"text":"x"}\n\n: keep-alive\n\n';
  for (const chunks of splits(Buffer.from(s))) {
    const { events, parser } = parseChunks(chunks);
    assert.deepEqual(events, [{ event: 'token', data: '{"text":"x"}', id: '' }]);
    assert.equal(parser.comments, 4);
  }
});

test('CRLF line endings, split at every byte (including between \\r and \\n)', () => {
  const crlf = HEARTH_STREAM.replace(/\n/g, '\r\n');
  for (const chunks of splits(Buffer.from(crlf))) {
    assert.deepEqual(parseChunks(chunks).events, EXPECTED);
  }
});

test('lone CR line endings and mixed endings', () => {
  const cr = HEARTH_STREAM.replace(/\n/g, '\r');
  for (const chunks of splits(Buffer.from(cr))) {
    assert.deepEqual(parseChunks(chunks).events, EXPECTED);
  }
  const mixed = 'event: a\r\ndata: 1\r\r\nevent: b\rdata: 2\n\r\ndata: 3\r\n\n';
  for (const chunks of splits(Buffer.from(mixed))) {
    assert.deepEqual(parseChunks(chunks).events, [
      { event: 'a', data: '1', id: '' },
      { event: 'b', data: '2', id: '' },
      { event: 'message', data: '3', id: '' },
    ]);
  }
});

test('a \\r at the end of one chunk followed by \\n is one line break, not two', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('data: x\r'), []);
  assert.deepEqual(p.push('\n'), []); // the LF of the CRLF: no blank line yet
  assert.deepEqual(p.push('\r'), [{ event: 'message', data: 'x', id: '' }]); // the blank line
  assert.deepEqual(p.push('\n'), []);
  assert.deepEqual(p.push('data: y\n\n'), [{ event: 'message', data: 'y', id: '' }]);
});

test('field parsing: one optional space, no colon, unknown fields, default event name', () => {
  const s = 'data:no-space\ndata:  two-spaces\nfoo: bar\ndata\nretry: 1500\nevent\n\n';
  const { events, parser } = parseChunks([s]);
  assert.deepEqual(events, [{ event: 'message', data: 'no-space\n two-spaces\n', id: '' }]);
  assert.equal(parser.retry, 1500);
});

test('id sticks to later events; event name does not', () => {
  const s = 'id: 7\nevent: token\ndata: a\n\ndata: b\n\nid\ndata: c\n\n';
  assert.deepEqual(parseChunks([s]).events, [
    { event: 'token', data: 'a', id: '7' },
    { event: 'message', data: 'b', id: '7' },
    { event: 'message', data: 'c', id: '' },
  ]);
});

test('an event without data is not dispatched', () => {
  assert.deepEqual(parseChunks(['event: ping\n\nid: 3\n\n']).events, []);
});

test('an unterminated event at the end of the stream is dropped and reported', () => {
  const { events, parser } = parseChunks(['data: complete\n\nevent: done\ndata: {"partial":true}\n']);
  assert.deepEqual(events, [{ event: 'message', data: 'complete', id: '' }]);
  assert.equal(parser.hadPartial, true);
});

test('a leading BOM is skipped', () => {
  const buf = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('data: x\n\n')]);
  for (const chunks of splits(buf)) {
    assert.deepEqual(parseChunks(chunks).events, [{ event: 'message', data: 'x', id: '' }]);
  }
});

test('an over-long line throws instead of buffering without bound', () => {
  const p = new SseParser({ maxLineLength: 16 });
  assert.throws(() => p.push('data: ' + 'x'.repeat(64)), { code: 'sse_line_too_long' });
});
