// Agents and knowledge through the generated client: a knowledge base, an uploaded document
// ingested to `ready`, an agent that searches it, and a whole answer (POST /api/chat) that
// called `search_knowledge` and cites the document. The upstream is the Node mock that
// speaks OpenAI's wire format, tool calls included.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { AGENT_ANSWER, AGENT_MARKER, startMockUpstream } from './mock-upstream.mjs';
import { registerUser, startServer } from './helpers.mjs';

let upstream;
let server;
before(async () => {
  upstream = await startMockUpstream({ delayMs: 0 });
  server = await startServer({
    env: {
      OPENAI_API_KEY: 'test',
      OPENAI_BASE_URL: upstream.baseUrl,
      OPENAI_MODEL: 'mock-model',
      GENERATE_TITLES: 'false',
      JOB_POLL_MS: '100',
    },
  });
});
after(async () => {
  await server?.stop();
  await upstream?.close();
});

test('an agent answers from an uploaded document, with a citation, through the generated client', async () => {
  const { client } = await registerUser(server.baseUrl, 'kb');
  const { data: kb, response: created } = await client.POST('/api/knowledge-bases', {
    body: { name: 'Manuals', description: 'pumps' },
  });
  assert.equal(created.status, 201);

  const upload = await client.POST('/api/knowledge-bases/{id}/documents', {
    params: { path: { id: kb.id } },
    body: { file: 'pump-manual.txt' },
    bodySerializer: () => {
      const form = new FormData();
      form.append('file', new Blob(['To reset the pump, hold the red button for ten seconds.']), 'pump-manual.txt');
      return form;
    },
  });
  assert.equal(upload.response.status, 202, JSON.stringify(upload.error));
  assert.equal(upload.data.status, 'pending');
  let doc = upload.data;
  for (let i = 0; i < 200 && doc.status !== 'ready' && doc.status !== 'failed'; i += 1) {
    await new Promise((r) => setTimeout(r, 50));
    ({ data: doc } = await client.GET('/api/knowledge-bases/{id}/documents/{documentId}', {
      params: { path: { id: kb.id, documentId: upload.data.id } },
    }));
  }
  assert.equal(doc.status, 'ready');
  assert.equal(doc.chunkCount, 1);

  const { data: found } = await client.POST('/api/knowledge-bases/{id}/search', {
    params: { path: { id: kb.id } },
    body: { query: 'reset the pump' },
  });
  assert.equal(found.mode, 'fulltext');
  assert.equal(found.results[0].documentName, 'pump-manual.txt');

  const { data: agent, response: made } = await client.POST('/api/agents', {
    body: { name: 'Support', instructions: AGENT_MARKER, tools: ['search_knowledge'], knowledgeBaseIds: [kb.id] },
  });
  assert.equal(made.status, 201);
  const { data: conversation } = await client.POST('/api/conversations', { body: { agentId: agent.id } });
  assert.equal(conversation.agentId, agent.id);

  const { data: chat, response } = await client.POST('/api/chat', {
    body: { conversationId: conversation.id, message: 'How do I reset the pump?' },
  });
  assert.equal(response.status, 200);
  assert.equal(chat.message.content, AGENT_ANSWER);
  assert.equal(chat.message.toolCalls?.[0]?.name, 'search_knowledge');
  assert.equal(chat.message.toolCalls?.[0]?.ok, true);
  assert.equal(chat.message.citations?.[0]?.documentId, doc.id);
  assert.match(chat.message.citations?.[0]?.snippet ?? '', /red button/);
});
