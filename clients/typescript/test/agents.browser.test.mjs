// The playground's agents, knowledge bases, tool calls and citations in headless Chromium
// (the system one, through playwright-core), against the real server answering from a mock
// OpenAI-compatible upstream (test/mock-upstream.mjs) that calls `search_knowledge`.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';

import { newRecordingPage, screenshotDir, startServer, uniqueEmail } from './helpers.mjs';
import {
  AGENT_ANSWER, AGENT_MARKER, PLAIN_ANSWER, PREAMBLE, PREAMBLE_MARKER, SLOW_MARKER, startMockUpstream,
} from './mock-upstream.mjs';

const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const DOCUMENT = 'To reset the pump, hold the red button for ten seconds.';

/** The nodes of an answer's body: a tool-call row by its testid, text as it is. */
function bodyNodes(el) {
  return Array.from(el.childNodes).map((n) => (n.nodeType === 1 ? n.dataset.testid : n.textContent));
}

/** @type {Awaited<ReturnType<typeof startMockUpstream>>} */
let mock;
/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  mkdirSync(screenshotDir, { recursive: true });
  mock = await startMockUpstream();
  server = await startServer({ env: mock.env() });
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'], headless: true });
});
after(async () => {
  await browser?.close();
  await server?.stop();
  await mock?.close();
});

/** A recording page (see `newRecordingPage`) in this file's browser. */
function newPage(viewport = { width: 1400, height: 900 }) {
  return newRecordingPage(browser, viewport);
}

describe('playground: agents, knowledge bases, tool calls and citations', () => {
  /** @type {Awaited<ReturnType<typeof newPage>>} */
  let ctx;
  let agentId = '';
  before(async () => { ctx = await newPage(); });
  after(async () => { await ctx?.context.close(); });

  test('upload a document, watch it get ready, ask an agent that searches it', async () => {
    const { page, problems, frames } = ctx;
    await page.goto(`${server.baseUrl}/`);
    await page.getByTestId('auth-email').fill(uniqueEmail('agents'));
    await page.getByTestId('auth-password').fill('correct-horse-battery');
    await page.getByTestId('auth-name').fill('Grace');
    await page.getByTestId('signup-button').click();
    await page.getByTestId('chat-view').waitFor({ state: 'visible' });
    await page.locator('#ws-status[data-state="live"]').waitFor();

    // A knowledge base, and a document uploaded into it (multipart, from a file input).
    await page.getByTestId('tab-knowledge').click();
    await page.getByTestId('knowledge-panel').waitFor({ state: 'visible' });
    assert.equal(await page.getByTestId('events-panel').isVisible(), false, 'one tab at a time');
    await page.getByTestId('kb-name').fill('Pump manuals');
    await page.getByTestId('kb-description').fill('How to run the pumps');
    await page.getByTestId('kb-create').click();
    const kb = page.getByTestId('knowledge-base').filter({ hasText: 'Pump manuals' });
    await kb.waitFor();
    await kb.getByTestId('kb-upload').setInputFiles({
      name: 'pump-manual.txt', mimeType: 'text/plain', buffer: Buffer.from(DOCUMENT),
    });

    // Its status reaches ready through a document_status frame (data-live marks a row a
    // frame has updated), then the GET that follows gives its chunk count.
    const doc = kb.getByTestId('document').filter({ hasText: 'pump-manual.txt' });
    await doc.and(page.locator('[data-status="ready"][data-live="true"]')).waitFor({ timeout: 15_000 });
    await doc.getByTestId('document-status').filter({ hasText: /ready · 1 chunk$/ }).waitFor();
    assert.equal(await doc.getByTestId('document-progress').evaluate((p) => p.value), 1);
    assert.equal(await doc.getByTestId('document-error').isVisible(), false);
    const docId = await doc.getAttribute('data-document-id');
    const statuses = frames.filter((f) => f.type === 'document_status' && f.documentId === docId);
    assert.ok(statuses.some((f) => f.status === 'ready'), `a ready frame arrived: ${JSON.stringify(statuses)}`);
    assert.match(await kb.locator('.kb-count').innerText(), /1 document/);

    // A document with no text fails, and its row says why.
    await kb.getByTestId('kb-upload').setInputFiles({
      name: 'blank.txt', mimeType: 'text/plain', buffer: Buffer.from('   \n\n  '),
    });
    const blank = kb.getByTestId('document').filter({ hasText: 'blank.txt' });
    await blank.and(page.locator('[data-status="failed"]')).waitFor({ timeout: 15_000 });
    assert.match(await blank.getByTestId('document-error').innerText(), /no extractable text/);
    assert.equal(await blank.getByTestId('document-progress').isVisible(), false);

    // An agent with the search_knowledge tool over that knowledge base.
    await page.getByTestId('tab-agents').click();
    await page.getByTestId('agent-name').fill('Pump helper');
    await page.getByTestId('agent-instructions').fill(`${AGENT_MARKER}: answer from the manuals.`);
    await page.getByTestId('agent-tool-search_knowledge').check();
    await page.getByTestId('agent-knowledge-bases').selectOption({ label: 'Pump manuals' });
    await page.getByTestId('agent-create').click();
    const agentItem = page.getByTestId('agent-item').filter({ hasText: 'Pump helper' });
    await agentItem.waitFor();
    assert.match(await agentItem.innerText(), /search_knowledge · 1 knowledge base/);
    agentId = String(await agentItem.getAttribute('data-agent-id'));

    // Picked with no conversation open: the next conversation is created bound to it.
    await page.getByTestId('agent-select').selectOption({ label: 'Pump helper' });
    assert.equal(await page.getByTestId('conversation-agent').innerText(), 'Agent: Pump helper');
    await page.getByTestId('tab-knowledge').click();

    // Every state a tool-call row shows, in order.
    await page.evaluate(() => {
      window.__toolStates = [];
      new MutationObserver((records) => {
        for (const r of records) {
          if (r.type === 'attributes' && r.target.dataset.testid === 'tool-call') {
            window.__toolStates.push(r.target.dataset.state);
          }
          for (const n of r.addedNodes) {
            if (n.nodeType === 1 && n.dataset.testid === 'tool-call') window.__toolStates.push(n.dataset.state);
          }
        }
      }).observe(document.getElementById('messages'), {
        subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'],
      });
    });

    await page.getByTestId('composer-input').fill('How do I reset the pump?');
    await page.getByTestId('send-button').click();

    const answer = page.locator('.message[data-role="assistant"]').first();
    const call = answer.getByTestId('tool-call');
    await call.waitFor({ timeout: 15_000 });
    await page.locator('.message[data-role="assistant"][data-status="complete"]').waitFor({ timeout: 15_000 });
    assert.equal(await call.count(), 1);
    assert.equal(await call.getAttribute('data-state'), 'ok');
    assert.ok(await call.getAttribute('data-call-id'));
    assert.equal(await call.getByTestId('tool-call-name').innerText(), 'search_knowledge');
    assert.equal(await call.getByTestId('tool-call-arguments').innerText(), '{"query":"pump reset"}');
    assert.match(await call.getByTestId('tool-call-result').innerText(), /hold the red button/);
    const seen = await page.evaluate(() => window.__toolStates);
    assert.equal(seen[0], 'running', `the row showed the call running first: ${seen}`);
    assert.equal(seen[seen.length - 1], 'ok');

    // The answer's text follows the call inside the message; the citation sits under it.
    const content = answer.getByTestId('message-content');
    assert.match(await content.innerText(), /Hold the red button/);
    assert.deepEqual(await content.evaluate(bodyNodes), ['tool-call', AGENT_ANSWER]);
    const citation = answer.getByTestId('citation');
    assert.equal(await citation.count(), 1);
    assert.equal(await citation.getByTestId('citation-document').innerText(), 'pump-manual.txt');
    assert.equal(await citation.getByTestId('citation-snippet').innerText(), DOCUMENT);
    assert.equal(await citation.getAttribute('data-document-id'), docId);

    // The conversation is bound to the agent, on the server too.
    await page.getByTestId('conversation-item').first().waitFor();
    assert.equal(await page.getByTestId('conversation-agent').innerText(), 'Agent: Pump helper');
    const convId = String(await page.getByTestId('conversation-item').first().getAttribute('data-conversation-id'));
    const stored = await page.evaluate(async (id) => {
      const { accessToken } = JSON.parse(sessionStorage.getItem('chat-server.playground.session'));
      const res = await fetch(`/api/conversations/${id}`, { headers: { authorization: `Bearer ${accessToken}` } });
      return res.json();
    }, convId);
    assert.equal(stored.agentId, agentId);

    // What the upstream was asked: the agent's instructions and tool, then the tool's result.
    assert.equal(mock.requests.length, 2);
    assert.match(mock.requests[0].messages[0].content, /PLAYGROUND-AGENT/);
    assert.deepEqual(mock.requests[0].tools.map((t) => t.function.name), ['search_knowledge']);
    assert.equal(mock.requests[1].messages.at(-1).role, 'tool');
    assert.match(mock.requests[1].messages.at(-1).content, /hold the red button/);

    await page.getByTestId('tab-events').click();
    await page.locator('[data-testid="event-item"][data-type="stream_completed"]').waitFor();
    assert.deepEqual(
      await page.getByTestId('event-item').evaluateAll((els) => els.map((e) => e.dataset.type)),
      ['conversation_created', 'message_added', 'stream_started', 'tool_called', 'tool_returned', 'stream_completed'],
    );
    await page.getByTestId('tab-knowledge').click();

    await page.screenshot({ path: path.join(screenshotDir, 'playground-agents.png'), fullPage: true });
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], 'no CSP violations');
    assert.deepEqual(problems, [], 'no script errors');
  });

  test('after a reload the tool call and the citation are rebuilt from REST', async () => {
    const { page, problems } = ctx;
    await page.reload();
    await page.getByTestId('chat-view').waitFor({ state: 'visible' });
    // The knowledge base and its documents come back over REST, too.
    await page.getByTestId('tab-knowledge').click();
    await page.locator('[data-testid="document"][data-status="ready"]').filter({ hasText: 'pump-manual.txt' }).waitFor();
    await page.locator('[data-testid="document"][data-status="failed"]').filter({ hasText: 'blank.txt' }).waitFor();

    await page.getByTestId('conversation-item').first().click();
    const answer = page.locator('.message[data-role="assistant"]').first();
    const call = answer.locator('[data-testid="tool-call"][data-state="ok"]');
    await call.waitFor();
    assert.equal(await call.getByTestId('tool-call-name').innerText(), 'search_knowledge');
    assert.equal(await call.getByTestId('tool-call-arguments').innerText(), '{"query":"pump reset"}');
    assert.match(await answer.getByTestId('message-content').innerText(), /Hold the red button/);
    const citation = answer.getByTestId('citation');
    assert.equal(await citation.count(), 1);
    assert.equal(await citation.getByTestId('citation-document').innerText(), 'pump-manual.txt');
    assert.match(await citation.getByTestId('citation-snippet').innerText(), /hold the red button for ten seconds/);

    // The header and the picker show the bound agent.
    await page.getByTestId('conversation-agent').filter({ hasText: 'Agent: Pump helper' }).waitFor();
    assert.equal(await page.getByTestId('agent-select').inputValue(), agentId);
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], 'no CSP violations');
    assert.deepEqual(problems, []);
  });

  test('reopened mid-answer, the calls so far come back from REST and the stream_snapshot', async () => {
    const { page, problems, frames } = ctx;
    // A slow answer (each upstream frame waits 400 ms, so it streams for seconds) that
    // writes some text before its tool call: live, the call's row sits after that text.
    await page.getByTestId('composer-input').fill(`${SLOW_MARKER} ${PREAMBLE_MARKER}: and how do I reset it again?`);
    await page.getByTestId('send-button').click();
    // The conversation's second answer.
    const answer = page.locator('.message[data-role="assistant"]').nth(1);
    await answer.locator('[data-testid="tool-call"][data-state="ok"]').waitFor({ timeout: 15_000 });
    assert.equal(await answer.getAttribute('data-status'), 'streaming');
    assert.deepEqual((await answer.getByTestId('message-content').evaluate(bodyNodes)).slice(0, 2), [PREAMBLE, 'tool-call']);

    // Reload while the answer runs: the socket that sent it is gone, the answer goes on.
    frames.length = 0;
    await page.reload();
    await page.getByTestId('chat-view').waitFor({ state: 'visible' });
    await page.getByTestId('conversation-item').first().click();
    const reopened = page.locator('.message[data-role="assistant"]').nth(1);
    await reopened.locator('[data-testid="tool-call"][data-state="ok"]').waitFor();
    const snapshot = await (async () => {
      for (let i = 0; i < 100; i += 1) {
        const f = frames.find((x) => x.type === 'stream_snapshot');
        if (f) return f;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return null;
    })();
    assert.ok(snapshot, 'joined while the answer ran: a stream_snapshot arrived');
    assert.deepEqual(snapshot.toolCalls.map((c) => [c.name, c.ok]), [['search_knowledge', true]]);

    await reopened.and(page.locator('[data-status="complete"]')).waitFor({ timeout: 15_000 });
    assert.equal(await reopened.getByTestId('tool-call').count(), 1, 'the call is shown once');
    assert.equal(await reopened.getByTestId('tool-call').getAttribute('data-state'), 'ok');
    // Where in the text a call fell is not in the snapshot or REST: the row comes first.
    assert.deepEqual(await reopened.getByTestId('message-content').evaluate(bodyNodes), ['tool-call', PREAMBLE + AGENT_ANSWER]);
    assert.equal(await reopened.getByTestId('citation').count(), 1);
    assert.equal(await reopened.getByTestId('citation-document').innerText(), 'pump-manual.txt');
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], 'no CSP violations');
    assert.deepEqual(problems, []);
  });

  test('"No agent" unbinds the open conversation; the next answer calls no tools', async () => {
    const { page, problems } = ctx;
    const convId = String(await page.getByTestId('conversation-item').first().getAttribute('data-conversation-id'));
    const [patch] = await Promise.all([
      page.waitForResponse((r) => r.request().method() === 'PATCH' && new URL(r.url()).pathname === `/api/conversations/${convId}`),
      page.getByTestId('agent-select').selectOption(''),
    ]);
    assert.equal(patch.status(), 200);
    assert.deepEqual(JSON.parse(String(patch.request().postData())), { agentId: '' });
    assert.equal((await patch.json()).agentId, null);
    await page.getByTestId('conversation-agent').waitFor({ state: 'hidden' });

    await page.getByTestId('composer-input').fill('Thanks!');
    await page.getByTestId('send-button').click();
    const second = page.locator('.message[data-role="assistant"]').nth(2);
    await second.and(page.locator('[data-status="complete"]')).waitFor({ timeout: 15_000 });
    assert.equal(await second.getByTestId('message-content').innerText(), PLAIN_ANSWER);
    assert.equal(await second.getByTestId('tool-call').count(), 0);
    assert.equal(await second.getByTestId('citations').isVisible(), false);
    assert.equal(mock.requests.at(-1).tools, undefined, 'no tools offered without an agent');
    // The first answer keeps its call and citation.
    assert.equal(await page.locator('.message[data-role="assistant"]').first().getByTestId('citation').count(), 1);

    // Bound again by picking it.
    await page.getByTestId('agent-select').selectOption(agentId);
    await page.getByTestId('conversation-agent').filter({ hasText: 'Agent: Pump helper' }).waitFor();
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], 'no CSP violations');
    assert.deepEqual(problems, []);
  });
});
