// The WebSocket protocol (openapi/asyncapi.yaml) with the `ws` package.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { openSocket, registerUser, startServer } from './helpers.mjs';

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

/** Frames of one stream, from `stream_start` to its `stream_complete`. */
async function collectStream(sock, messageId) {
  const frames = await sock.until((f) => f.type === 'stream_complete' && f.messageId === messageId);
  const chunks = frames.filter((f) => f.type === 'stream_chunk' && f.messageId === messageId);
  return { chunks, complete: frames[frames.length - 1], frames };
}

function assertContiguous(chunks, from = 0) {
  assert.deepEqual(chunks.map((c) => c.index), chunks.map((_, i) => from + i), 'chunk indexes have no gaps');
}

describe('WebSocket streaming', () => {
  /** @type {Awaited<ReturnType<typeof registerUser>>} */
  let alice;
  /** @type {Awaited<ReturnType<typeof registerUser>>} */
  let bob;
  /** @type {Awaited<ReturnType<typeof openSocket>>} */
  let sock;
  /** @type {string} */
  let conversationId;
  /** @type {string} */
  let fullReply;
  /** The first turn's `stream_start` and `stream_complete`, as the sender received them. */
  let firstStart;
  let firstComplete;

  before(async () => {
    alice = await registerUser(server.baseUrl, 'alice');
    bob = await registerUser(server.baseUrl, 'bob');
  });
  after(async () => { await sock?.close(); });

  test('a socket without a token gets UNAUTHORIZED and is closed', async () => {
    const anon = await openSocket(server.wsUrl);
    anon.send({ type: 'ping' });
    const err = await anon.next((f) => f.type === 'error');
    assert.equal(err.code, 'UNAUTHORIZED');
    await new Promise((resolve) => {
      if (anon.ws.readyState === anon.ws.CLOSED) resolve(undefined);
      else anon.ws.once('close', resolve);
    });
  });

  test('an Origin outside CORS_ORIGINS is refused; an allowed one is accepted', async () => {
    const token = alice.tokens.accessToken;
    await assert.rejects(
      openSocket(`${server.wsUrl}?token=${token}`, { origin: 'http://evil.example' }),
      /upgrade refused: 403/,
    );
    const ok = await openSocket(`${server.wsUrl}?token=${token}`, { origin: 'http://localhost:8081' });
    assert.equal((await ok.next()).type, 'ready');
    await ok.close();
  });

  test('connect with ?token= and get ready; ping answers pong', async () => {
    sock = await openSocket(`${server.wsUrl}?token=${alice.tokens.accessToken}`);
    const ready = await sock.next();
    assert.equal(ready.type, 'ready');
    assert.equal(ready.userId, alice.tokens.user.id);
    sock.send({ type: 'ping' });
    assert.equal((await sock.next()).type, 'pong');
  });

  test('the first frame can authenticate instead of ?token=', async () => {
    const s = await openSocket(server.wsUrl);
    s.send({ type: 'auth', token: bob.tokens.accessToken });
    const ready = await s.next();
    assert.equal(ready.type, 'ready');
    assert.equal(ready.userId, bob.tokens.user.id);
    await s.close();
  });

  test('stream_chat streams contiguous chunks and one stream_complete with the joined text', async () => {
    sock.send({ type: 'stream_chat', message: 'Stream me an answer', clientMessageId: 'c-1' });
    const start = await sock.next((f) => f.type === 'stream_start');
    assert.ok(start.conversationId && start.messageId && start.userMessageId);
    assert.equal(typeof start.seq, 'number');
    conversationId = start.conversationId;

    const { chunks, complete, frames } = await collectStream(sock, start.messageId);
    assert.ok(chunks.length > 5, `expected many chunks, got ${chunks.length}`);
    assertContiguous(chunks);
    assert.equal(frames.filter((f) => f.type === 'stream_complete').length, 1);
    assert.equal(complete.status, 'complete');
    assert.equal(complete.conversationId, conversationId);
    assert.equal(complete.content, chunks.map((c) => c.delta).join(''));
    assert.match(complete.content, /^This is the demo provider/);
    assert.match(complete.content, /Stream me an answer/);
    assert.ok(complete.seq > start.seq);
    fullReply = complete.content;
    firstStart = start;
    firstComplete = complete;

    // Committed: the REST view has the same text.
    const { data } = await alice.client.GET('/api/conversations/{id}', {
      params: { path: { id: conversationId } },
    });
    assert.deepEqual(data?.messages.map((m) => [m.role, m.status]), [['user', 'complete'], ['assistant', 'complete']]);
    assert.equal(data?.messages[1].content, fullReply);
    assert.equal(data?.lastSeq, complete.seq);
  });

  test('a repeated clientMessageId starts nothing new', async () => {
    assert.deepEqual(sock.pending, [], 'nothing left over from the first turn');
    sock.send({ type: 'stream_chat', conversationId, message: 'Stream me an answer', clientMessageId: 'c-1' });
    // The socket handles frames in order: by the time the pong comes, the repeated send has
    // been answered in full, and a new turn (had one started) would already be stored.
    sock.send({ type: 'ping' });
    const frames = await sock.until((f) => f.type === 'pong');
    // The repeat gets, to this socket alone, what the first send started: the first turn's
    // stream_start and, as it has finished, its stream_complete; nothing else.
    assert.deepEqual(frames, [firstStart, firstComplete, { type: 'pong' }]);

    const { data } = await alice.client.GET('/api/conversations/{id}', {
      params: { path: { id: conversationId } },
    });
    assert.deepEqual(data?.messages.map((m) => [m.id, m.role, m.status, m.content]), [
      [firstStart.userMessageId, 'user', 'complete', 'Stream me an answer'],
      [firstStart.messageId, 'assistant', 'complete', fullReply],
    ], 'no second turn');
    assert.equal(data?.lastSeq, firstComplete.seq, 'no event appended');
  });

  test('cancel_stream ends a running stream as cancelled, keeping the text so far', async () => {
    sock.send({ type: 'stream_chat', conversationId, message: 'Please stop me', clientMessageId: 'c-2' });
    const start = await sock.next((f) => f.type === 'stream_start');
    assert.equal(start.conversationId, conversationId);
    sock.send({ type: 'cancel_stream', messageId: start.messageId });
    const { chunks, complete } = await collectStream(sock, start.messageId);
    assert.equal(complete.status, 'cancelled');
    assertContiguous(chunks);
    assert.equal(complete.content, chunks.map((c) => c.delta).join(''));
    assert.ok(complete.content.length < fullReply.length, 'stopped before the end');

    const { data } = await alice.client.GET('/api/conversations/{id}', {
      params: { path: { id: conversationId } },
    });
    const last = data?.messages.at(-1);
    assert.equal(last?.id, start.messageId);
    assert.equal(last?.status, 'cancelled');
    assert.equal(last?.content, complete.content);
  });

  test('resume from a second socket replays every event after afterSeq', async () => {
    const { data: events } = await alice.client.GET('/api/conversations/{id}/events', {
      params: { path: { id: conversationId } },
    });
    assert.ok(events && events.length >= 7);

    const other = await openSocket(`${server.wsUrl}?token=${alice.tokens.accessToken}`);
    assert.equal((await other.next()).type, 'ready');
    other.send({ type: 'resume', conversationId, afterSeq: 0 });
    const joined = await other.next();
    assert.equal(joined.type, 'joined');
    assert.equal(joined.conversationId, conversationId);
    assert.equal(joined.lastSeq, events.at(-1)?.seq);
    const replayed = [];
    for (let i = 0; i < events.length; i += 1) replayed.push(await other.next());
    assert.ok(replayed.every((f) => f.type === 'event'));
    assert.deepEqual(replayed.map((f) => f.event.seq), events.map((e) => e.seq));
    assert.deepEqual(replayed.map((f) => f.event.type), events.map((e) => e.type));
    assert.deepEqual(replayed.map((f) => f.event.type).slice(0, 5), [
      'conversation_created', 'message_added', 'stream_started', 'stream_completed', 'message_added',
    ]);

    // Joined: a new turn from the first socket reaches the second one live.
    sock.send({ type: 'stream_chat', conversationId, message: 'Both of you', clientMessageId: 'c-3' });
    const start = await other.next((f) => f.type === 'stream_start');
    const live = await collectStream(other, start.messageId);
    const mine = await collectStream(sock, start.messageId);
    assertContiguous(live.chunks);
    assert.equal(live.complete.status, 'complete');
    assert.equal(live.complete.content, live.chunks.map((c) => c.delta).join(''));
    assert.equal(live.complete.content, mine.complete.content);
    await other.close();
  });

  test("another user cannot resume or join someone else's conversation", async () => {
    const s = await openSocket(`${server.wsUrl}?token=${bob.tokens.accessToken}`);
    assert.equal((await s.next()).type, 'ready');
    s.send({ type: 'resume', conversationId, afterSeq: 0 });
    const err = await s.next();
    assert.equal(err.type, 'error');
    assert.equal(err.code, 'CONVERSATION_NOT_FOUND');
    s.send({ type: 'join_conversation', conversationId });
    const err2 = await s.next();
    assert.equal(err2.type, 'error');
    assert.equal(err2.code, 'CONVERSATION_NOT_FOUND');
    s.send({ type: 'ping' });
    assert.equal((await s.next()).type, 'pong', 'the socket stays usable');
    await s.close();
  });
});

describe('resume during a running stream', () => {
  // A server of its own whose demo provider pauses this long between words: the ~40-word
  // answer then streams for well over a second, so a resume sent after its third chunk lands
  // while it is still running, even on a busy machine. (With a delay near zero the answer
  // can end before the resume arrives, and the snapshot path would go untested.)
  const DEMO_DELAY_MS = 40;
  /** @type {Awaited<ReturnType<typeof startServer>>} */
  let slow;
  /** @type {Awaited<ReturnType<typeof registerUser>>} */
  let carol;
  /** @type {Awaited<ReturnType<typeof openSocket>>} */
  let sender;

  before(async () => {
    slow = await startServer({ env: { DEMO_DELAY_MS: String(DEMO_DELAY_MS) } });
    carol = await registerUser(slow.baseUrl, 'carol');
    sender = await openSocket(`${slow.wsUrl}?token=${carol.tokens.accessToken}`);
    assert.equal((await sender.next()).type, 'ready');
  });
  after(async () => {
    await sender?.close();
    await slow?.stop();
  });

  test('resume during a running stream gives the whole text, nothing twice', async () => {
    sender.send({ type: 'stream_chat', message: 'Resume in the middle', clientMessageId: 'r-1' });
    const start = await sender.next((f) => f.type === 'stream_start');
    const { conversationId, messageId } = start;
    // Let chunks 0..2 go by before the second socket arrives.
    const early = await sender.until((f) => f.type === 'stream_chunk' && f.messageId === messageId && f.index >= 2);

    const late = await openSocket(`${slow.wsUrl}?token=${carol.tokens.accessToken}`);
    assert.equal((await late.next()).type, 'ready');
    late.send({ type: 'resume', conversationId, afterSeq: start.seq });
    // Up to this stream's end, live (stream_complete) or replayed (a stream_completed event).
    const frames = await late.until((f) => (f.type === 'stream_complete' && f.messageId === messageId)
      || (f.type === 'event' && f.event.type === 'stream_completed' && f.event.data?.messageId === messageId));
    const rest = await collectStream(sender, messageId);
    await late.close();
    const all = [...early, ...rest.frames].filter((f) => f.type === 'stream_chunk' && f.messageId === messageId);
    assertContiguous(all);
    const { complete } = rest;
    assert.equal(complete.status, 'complete');

    const shape = frames.map((f) => (f.type === 'stream_chunk' ? f.index : f.type === 'stream_snapshot' ? `snapshot@${f.nextIndex}` : f.type));
    // The resume landed mid-stream: joined (nothing to replay after the start), the
    // snapshot of the text so far, live chunks, the completion.
    assert.equal(frames[0].type, 'joined');
    const snapshot = frames[1];
    assert.equal(snapshot.type, 'stream_snapshot', `a stream_snapshot follows joined: ${shape}`);
    assert.equal(frames.at(-1).type, 'stream_complete', `the stream was still running at the resume: ${shape}`);
    assert.deepEqual(frames[0], { type: 'joined', conversationId, lastSeq: start.seq });
    assert.equal(snapshot.conversationId, conversationId);
    assert.equal(snapshot.messageId, messageId);
    assert.ok(snapshot.nextIndex >= 3, `the snapshot covers the chunks 0..2 sent before the resume: ${shape}`);
    assert.equal(snapshot.content, all.slice(0, snapshot.nextIndex).map((c) => c.delta).join(''),
      'the snapshot is chunks 0..nextIndex-1 joined');

    const live = frames.slice(2, -1);
    assert.ok(live.every((f) => f.type === 'stream_chunk' && f.messageId === messageId),
      `only this stream's chunks between the snapshot and the completion: ${shape}`);
    assert.ok(live.length > 0, `live chunks followed the snapshot: ${shape}`);
    assertContiguous(live, snapshot.nextIndex);
    assert.equal(snapshot.content + live.map((c) => c.delta).join(''), complete.content, 'the whole text, nothing twice');
    assert.deepEqual(frames.at(-1), complete, 'the same stream_complete as the sender got');

    const { data } = await carol.client.GET('/api/conversations/{id}', {
      params: { path: { id: conversationId } },
    });
    const last = data?.messages.at(-1);
    assert.deepEqual([last?.id, last?.status, last?.content], [messageId, 'complete', complete.content], 'the committed text');
  });
});
