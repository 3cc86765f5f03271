/** Pure pieces of the server: error mapping, query and header parsing. No engine needed. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { validatorCompiler } from 'fastify-type-provider-zod';
import { AirlockError } from '@airlock/engine';
import { HttpError, issueField, mapError } from '../src/errors.js';
import { parseListen } from '../src/index.js';
import { wantsNdjson } from '../src/exec-stream.js';
import { listFilterFrom } from '../src/routes/sandboxes.js';
import { parseSignal } from '../src/signals.js';
import { parseLastEventId, sseMessage } from '../src/sse.js';
import { createSandboxBody, execBody, fileWriteQuery } from '../src/schemas.js';

function validationError(schema: z.ZodType, input: unknown, context = 'body') {
  // Exactly what fastify does with the compiler's answer.
  const r = validatorCompiler({ schema, method: 'POST', url: '/', httpPart: context })(input) as { error?: unknown };
  assert.ok(r.error, 'input should be invalid');
  return Object.assign(new Error('validation'), { validation: r.error, validationContext: context, statusCode: 400 });
}

test('validation errors name the first failing field path', () => {
  const m = mapError(validationError(createSandboxBody, { resources: { memoryMiB: 4 } }));
  assert.equal(m.status, 400);
  assert.equal(m.body.error.code, 'bad_request');
  assert.equal(m.body.error.field, 'resources.memoryMiB');
  assert.match(m.body.error.message, /^resources\.memoryMiB: /);
});

test('an unknown key is named with its own path', () => {
  const m = mapError(validationError(createSandboxBody, { resources: { gpus: 1 } }));
  assert.equal(m.body.error.field, 'resources.gpus');
});

test('schemas enforce the documented bounds', () => {
  const ok = (s: z.ZodType, v: unknown) => assert.equal(s.safeParse(v).success, true, JSON.stringify(v));
  const bad = (s: z.ZodType, v: unknown) => assert.equal(s.safeParse(v).success, false, JSON.stringify(v));
  ok(createSandboxBody, { resources: { cpus: 0.01, memoryMiB: 262144, diskMiB: 16, pids: 8 }, timeoutSeconds: 86400 });
  bad(createSandboxBody, { resources: { cpus: 65 } });
  bad(createSandboxBody, { resources: { memoryMiB: 100.5 } });
  bad(createSandboxBody, { resources: { pids: 7 } });
  bad(createSandboxBody, { timeoutSeconds: 0 });
  bad(createSandboxBody, { env: { '1BAD': 'x' } });
  bad(createSandboxBody, { env: { OK: 'a\0b' } });
  bad(createSandboxBody, { workdir: 'relative' });
  bad(createSandboxBody, { workdir: '/' + 'a'.repeat(4096) });
  ok(execBody, { cmd: ['/bin/true'] });
  bad(execBody, { cmd: [] });
  bad(execBody, { cmd: [''] });
  bad(execBody, { cmd: ['/bin/echo', 'a\0b'] });
  bad(execBody, { cmd: ['/bin/echo', 'x'.repeat(128 * 1024 + 1)] });
  bad(execBody, { cmd: 'echo hi' });
  ok(fileWriteQuery, { path: '/work/a', mode: '0644' });
  bad(fileWriteQuery, { path: '/work/a', mode: '0999' });
  bad(fileWriteQuery, { path: '/work/\0' });
});

test('engine errors keep their status, code and field; internal ones hide their text', () => {
  const m = mapError(new AirlockError('conflict', 'sandbox abc is killed'));
  assert.deepEqual([m.status, m.body.error.code, m.body.error.message], [409, 'conflict', 'sandbox abc is killed']);
  const f = mapError(new AirlockError('bad_request', 'bad cwd', 'cwd'));
  assert.equal(f.body.error.field, 'cwd');
  const i = mapError(new AirlockError('internal', 'runc failed at /var/lib/airlock/x'));
  assert.deepEqual([i.status, i.body.error.message, i.internal], [500, 'internal error', true]);
  const h = mapError(new HttpError(401, 'unauthorized', 'no key'));
  assert.deepEqual([h.status, h.body.error.code], [401, 'unauthorized']);
});

test('plumbing errors map by status and unknown errors leak nothing', () => {
  const tooBig = Object.assign(new Error('Request body is too large'), { statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' });
  assert.deepEqual(mapError(tooBig).body.error, { code: 'too_large', message: 'request body is too large' });
  const badJson = Object.assign(new SyntaxError('Unexpected token } in JSON at position 7'), { statusCode: 400 });
  assert.deepEqual(mapError(badJson).body.error, { code: 'bad_request', message: 'body is not valid JSON' });
  const boom = new TypeError('cannot read properties of undefined (reading secret)');
  const m = mapError(boom);
  assert.deepEqual([m.status, m.body.error.code, m.body.error.message], [500, 'internal', 'internal error']);
  assert.equal(mapError('a string').status, 500);
  assert.equal(mapError(null).status, 500);
});

test('issueField joins paths', () => {
  assert.equal(issueField({ path: ['mounts', 0, 'source'] }), 'mounts.0.source');
  assert.equal(issueField({ code: 'unrecognized_keys', path: [], keys: ['foo'] }), 'foo');
});

test('signals by name or number', () => {
  assert.equal(parseSignal(undefined), 9);
  assert.equal(parseSignal('SIGTERM'), 15);
  assert.equal(parseSignal('term'), 15);
  assert.equal(parseSignal('2'), 2);
  assert.equal(parseSignal('0'), null);
  assert.equal(parseSignal('99'), null);
  assert.equal(parseSignal('SIGNOPE'), null);
});

test('listen addresses', () => {
  assert.deepEqual(parseListen('127.0.0.1:7070'), { host: '127.0.0.1', port: 7070 });
  assert.deepEqual(parseListen('[::1]:0'), { host: '::1', port: 0 });
  assert.deepEqual(parseListen(':7070'), { host: '0.0.0.0', port: 7070 });
  assert.deepEqual(parseListen('7070'), { host: '127.0.0.1', port: 7070 });
  assert.throws(() => parseListen('localhost'));
  assert.throws(() => parseListen('1.2.3.4:70000'));
});

test('Accept negotiation for NDJSON', () => {
  assert.equal(wantsNdjson('application/x-ndjson'), true);
  assert.equal(wantsNdjson('application/json, application/x-ndjson;q=0.9'), true);
  assert.equal(wantsNdjson('application/json'), false);
  assert.equal(wantsNdjson(undefined), false);
});

test('list filters from the query string', () => {
  assert.deepEqual(listFilterFrom({ state: 'running', 'metadata.team': 'a' }), { state: 'running', metadata: { team: 'a' } });
  assert.deepEqual(listFilterFrom({}), {});
  assert.throws(() => listFilterFrom({ stat: 'running' }), (e: any) => e.status === 400 && e.field === 'stat');
  assert.throws(() => listFilterFrom({ 'metadata.team': ['a', 'b'] }), (e: any) => e.status === 400);
});

test('SSE framing and Last-Event-ID', () => {
  const msg = sseMessage({ seq: 7, ts: 't', tenant: 'x', sandbox: null, type: 'sandbox.created', data: {}, prev: 'p', hash: 'h' });
  assert.match(msg, /^id: 7\nevent: sandbox\.created\ndata: \{.*\}\n\n$/);
  assert.equal(parseLastEventId('42'), 42);
  assert.equal(parseLastEventId('4x'), undefined);
  assert.equal(parseLastEventId(undefined), undefined);
});
