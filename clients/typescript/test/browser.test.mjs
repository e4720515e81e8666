// Real browser tests: headless Chromium (the system one, through playwright-core) against the
// playground at / and Swagger UI at /docs.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';

import { screenshotDir, startServer, uniqueEmail } from './helpers.mjs';

const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  mkdirSync(screenshotDir, { recursive: true });
  // A slower demo provider than the other tests, so a stream lasts long enough to watch and cancel.
  server = await startServer({ env: { DEMO_DELAY_MS: '25' } });
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'], headless: true });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A page that records script errors, console errors and failed requests (but a missing favicon). */
async function newPage(viewport = { width: 1400, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    // A failed request is reported below with its URL.
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
      problems.push(`console: ${msg.text()}`);
    }
  });
  page.on('response', (res) => {
    if (res.status() >= 400 && new URL(res.url()).pathname !== '/favicon.ico') {
      problems.push(`HTTP ${res.status()} ${res.request().method()} ${res.url()}`);
    }
  });
  return { context, page, problems };
}

describe('playground', () => {
  let ctx;
  before(async () => {
    ctx = await newPage();
    // Record CSP violations from the first script on.
    await ctx.context.addInitScript(() => {
      window.__cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
      });
    });
  });
  after(async () => { await ctx?.context.close(); });

  test('sign up, send a message and watch the answer stream in', async () => {
    const { page, problems } = ctx;
    const doc = await page.goto(`${server.baseUrl}/`);
    // The page runs under a strict policy (the server's header, or the page's own meta tag).
    const policy = (await doc?.headerValue('content-security-policy'))
      ?? (await page.locator('meta[http-equiv="Content-Security-Policy"]').getAttribute('content'));
    assert.match(String(policy), /default-src 'self'/);

    await page.getByTestId('auth-email').fill(uniqueEmail('browser'));
    await page.getByTestId('auth-password').fill('correct-horse-battery');
    await page.getByTestId('auth-name').fill('Ada');
    await page.getByTestId('signup-button').click();
    await page.getByTestId('chat-view').waitFor({ state: 'visible' });
    await page.locator('#ws-status[data-state="live"]').waitFor();
    assert.match(await page.getByTestId('user-label').innerText(), /Ada/);

    // Count how often the answer's text changes: a streamed answer changes many times.
    await page.evaluate(() => {
      window.__updates = 0;
      new MutationObserver((records) => {
        for (const r of records) {
          const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
          if (el?.closest('.message[data-role="assistant"] .content')) window.__updates += 1;
        }
      }).observe(document.getElementById('messages'), { subtree: true, childList: true, characterData: true });
    });

    await page.getByTestId('composer-input').fill('Hello from a real browser');
    await page.getByTestId('send-button').click();

    const answer = page.locator('.message[data-role="assistant"]').first();
    await answer.getByText('This is the demo provider').waitFor({ timeout: 15_000 });
    await page.locator('.message[data-role="assistant"][data-status="complete"]').waitFor({ timeout: 15_000 });
    const text = await answer.getByTestId('message-content').innerText();
    assert.match(text, /^This is the demo provider/);
    assert.match(text, /Hello from a real browser/);
    const updates = await page.evaluate(() => window.__updates);
    assert.ok(updates > 10, `the answer was rendered delta by delta (${updates} updates)`);

    // The new conversation is listed and open; its event log is shown.
    await page.getByTestId('conversation-item').first().waitFor();
    assert.equal(await page.getByTestId('conversation-item').count(), 1);
    assert.match(await page.getByTestId('conversation-title').innerText(), /Hello from a real browser/);
    await page.locator('[data-testid="event-item"][data-type="stream_completed"]').waitFor();
    assert.deepEqual(
      await page.getByTestId('event-item').evaluateAll((els) => els.map((e) => e.dataset.type)),
      ['conversation_created', 'message_added', 'stream_started', 'stream_completed'],
    );

    await page.screenshot({ path: path.join(screenshotDir, 'playground.png'), fullPage: true });
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], 'no CSP violations');
    assert.deepEqual(problems, [], 'no script errors');
  });

  test('Cancel stops a running answer', async () => {
    const { page, problems } = ctx;
    await page.getByTestId('composer-input').fill('Answer slowly, I will interrupt');
    await page.getByTestId('send-button').click();
    const cancel = page.getByTestId('cancel-button');
    await cancel.waitFor({ state: 'visible' });
    await page.locator('.message[data-role="assistant"][data-status="streaming"]').waitFor();
    await cancel.click();
    const cancelled = page.locator('.message[data-role="assistant"][data-status="cancelled"]');
    await cancelled.waitFor({ timeout: 10_000 });
    await cancel.waitFor({ state: 'hidden' });
    assert.equal(await cancelled.getByTestId('message-status').innerText(), 'cancelled');
    assert.ok(await page.getByTestId('send-button').isEnabled());
    assert.deepEqual(problems, []);
  });

  test('the session survives a reload; the conversation opens with its messages', async () => {
    const { page, problems } = ctx;
    await page.reload();
    await page.getByTestId('chat-view').waitFor({ state: 'visible' });
    await page.getByTestId('conversation-item').first().click();
    await page.locator('.message').nth(3).waitFor();
    assert.deepEqual(
      await page.locator('.message').evaluateAll((els) => els.map((e) => `${e.dataset.role}:${e.dataset.status}`)),
      ['user:complete', 'assistant:complete', 'user:complete', 'assistant:cancelled'],
    );
    await page.getByTestId('events-refresh').click();
    await page.locator('[data-testid="event-item"]').nth(6).waitFor();
    assert.deepEqual(
      (await page.getByTestId('event-item').evaluateAll((els) => els.map((e) => e.dataset.type))).slice(4),
      ['message_added', 'stream_started', 'stream_completed'],
    );
    assert.deepEqual(problems, []);
  });
});

describe('Swagger UI', () => {
  test('authorize with a bearer token, try GET /api/conversations, get 200', async () => {
    const res = await fetch(`${server.baseUrl}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: uniqueEmail('swagger'), password: 'correct-horse-battery' }),
    });
    assert.equal(res.status, 201);
    const { accessToken } = await res.json();
    const created = await fetch(`${server.baseUrl}/api/conversations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${accessToken}` },
      body: JSON.stringify({ title: 'Made before opening Swagger UI' }),
    });
    assert.equal(created.status, 201);

    const { context, page, problems } = await newPage({ width: 1400, height: 1300 });
    try {
      await page.goto(`${server.baseUrl}/docs`);
      await page.locator('.swagger-ui .info .title', { hasText: 'Chat Server API' }).waitFor({ timeout: 20_000 });

      // The Authorize dialog: the BearerAuth scheme takes the token as is.
      await page.locator('.swagger-ui .auth-wrapper button.authorize').click();
      const dialog = page.locator('.swagger-ui .dialog-ux .modal-ux');
      await dialog.waitFor();
      await dialog.locator('input').first().fill(accessToken);
      await dialog.locator('button.authorize').click();
      await dialog.locator('button.btn-done, button.close-modal').first().click();
      await dialog.waitFor({ state: 'hidden' });

      const op = page.locator('.opblock.opblock-get').filter({
        has: page.locator('.opblock-summary-path[data-path="/api/conversations"]'),
      });
      await op.locator('.opblock-summary').click();
      await op.locator('button.try-out__btn').click();
      const [response] = await Promise.all([
        page.waitForResponse((r) => new URL(r.url()).pathname === '/api/conversations' && r.request().method() === 'GET'),
        op.locator('button.execute').click(),
      ]);
      assert.equal(response.status(), 200);
      assert.equal(response.request().headers().authorization, `Bearer ${accessToken}`);

      const status = op.locator('.live-responses-table .response .response-col_status').first();
      await status.waitFor();
      assert.equal((await status.innerText()).trim(), '200');
      assert.match(await op.locator('.live-responses-table .response .response-col_description').first().innerText(),
        /Made before opening Swagger UI/);
      // The operation's header at the top, its live 200 response below.
      await op.evaluate((el) => el.scrollIntoView({ block: 'start' }));
      await page.screenshot({ path: path.join(screenshotDir, 'swagger.png') });
      assert.deepEqual(problems, [], 'no script errors');
    } finally {
      await context.close();
    }
  });
});
