// The REST API, used only through the generated client (openapi-fetch over src/schema.d.ts).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createClient } from '../src/client.mjs';
import { registerUser, startServer } from './helpers.mjs';

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

describe('REST API through the generated client', () => {
  /** @type {Awaited<ReturnType<typeof registerUser>>} */
  let alice;
  /** @type {Awaited<ReturnType<typeof registerUser>>} */
  let bob;
  /** @type {string} */
  let chatConversationId;

  test('health answers OK', async () => {
    const { data, response } = await createClient(server.baseUrl).GET('/api/health');
    assert.equal(response.status, 200);
    assert.equal(data?.status, 'OK');
    assert.equal(data?.database, 'ok');
  });

  test('two users register; the first is admin', async () => {
    alice = await registerUser(server.baseUrl, 'alice');
    bob = await registerUser(server.baseUrl, 'bob');
    assert.equal(alice.tokens.tokenType, 'Bearer');
    assert.ok(alice.tokens.accessToken && alice.tokens.refreshToken);
    assert.equal(alice.tokens.user.email, alice.email);
    assert.equal(alice.tokens.user.role, 'admin');
    assert.equal(bob.tokens.user.role, 'user');

    const { data: me } = await bob.client.GET('/api/auth/me');
    assert.equal(me?.id, bob.tokens.user.id);
  });

  test('a request without a token is 401 with the error body', async () => {
    const { data, error, response } = await createClient(server.baseUrl).GET('/api/conversations');
    assert.equal(response.status, 401);
    assert.equal(data, undefined);
    assert.equal(error?.code, 'UNAUTHORIZED');
    assert.equal(typeof error?.message, 'string');
  });

  test('create and list conversations', async () => {
    const created = await alice.client.POST('/api/conversations', {
      body: { title: 'Trip planning', systemPrompt: 'Be brief.' },
    });
    assert.equal(created.response.status, 201);
    assert.equal(created.data?.title, 'Trip planning');
    assert.equal(created.data?.systemPrompt, 'Be brief.');
    assert.deepEqual(created.data?.messages, []);

    const second = await alice.client.POST('/api/conversations', { body: { title: 'Second' } });
    assert.equal(second.response.status, 201);

    const { data: list, response } = await alice.client.GET('/api/conversations', {
      params: { query: { limit: 10 } },
    });
    assert.equal(response.status, 200);
    assert.ok(list);
    assert.deepEqual(list.map((c) => c.title), ['Second', 'Trip planning'], 'newest first');
    assert.ok(list.every((c) => c.messageCount === 0 && c.lastSeq === 1));

    const { data: bobs } = await bob.client.GET('/api/conversations');
    assert.deepEqual(bobs, [], 'own conversations only');
  });

  test('POST /api/chat answers with the demo provider', async () => {
    const { data, error, response } = await alice.client.POST('/api/chat', {
      body: { message: 'Hello from the generated client' },
    });
    assert.equal(response.status, 200, JSON.stringify(error));
    assert.ok(data);
    assert.equal(data.message.role, 'assistant');
    assert.equal(data.message.status, 'complete');
    assert.match(data.message.content, /^This is the demo provider/);
    assert.match(data.message.content, /Hello from the generated client/);
    assert.equal(data.conversation.title, 'Hello from the generated client');
    assert.equal(data.conversation.messages.length, 2);
    assert.deepEqual(data.conversation.messages.map((m) => m.role), ['user', 'assistant']);
    assert.equal(data.conversation.messages[1].id, data.message.id);
    chatConversationId = data.conversation.id;

    const { data: again } = await alice.client.GET('/api/conversations/{id}', {
      params: { path: { id: chatConversationId } },
    });
    assert.equal(again?.messages.length, 2);
    assert.equal(again?.messages[1].content, data.message.content);
  });

  test('the event log lists the turn in order', async () => {
    const { data: events, response } = await alice.client.GET('/api/conversations/{id}/events', {
      params: { path: { id: chatConversationId } },
    });
    assert.equal(response.status, 200);
    assert.ok(events);
    assert.deepEqual(events.map((e) => e.type), [
      'conversation_created',
      'message_added',
      'stream_started',
      'stream_completed',
    ]);
    assert.deepEqual(events.map((e) => e.seq), [1, 2, 3, 4]);
    assert.ok(events.every((e) => e.actorId === alice.tokens.user.id));
    const completed = /** @type {any} */ (events[3].data);
    assert.equal(completed.status, 'complete');
    assert.match(completed.content, /^This is the demo provider/);

    const { data: tail } = await alice.client.GET('/api/conversations/{id}/events', {
      params: { path: { id: chatConversationId }, query: { after: 2 } },
    });
    assert.deepEqual(tail?.map((e) => e.seq), [3, 4]);
  });

  test("another user's conversation and its events are 404", async () => {
    const conv = await bob.client.GET('/api/conversations/{id}', {
      params: { path: { id: chatConversationId } },
    });
    assert.equal(conv.response.status, 404);
    assert.equal(conv.data, undefined);
    assert.equal(conv.error?.code, 'CONVERSATION_NOT_FOUND');

    const events = await bob.client.GET('/api/conversations/{id}/events', {
      params: { path: { id: chatConversationId } },
    });
    assert.equal(events.response.status, 404);
    assert.equal(events.data, undefined);
    assert.equal(events.error?.code, 'CONVERSATION_NOT_FOUND');

    const chat = await bob.client.POST('/api/chat', {
      body: { message: 'let me in', conversationId: chatConversationId },
    });
    assert.equal(chat.response.status, 404);
    assert.equal(chat.error?.code, 'CONVERSATION_NOT_FOUND');
  });
});
