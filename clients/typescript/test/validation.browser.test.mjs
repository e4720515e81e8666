// The playground's answer checks and ratings (issue #26) in headless Chromium (the system
// one, through playwright-core), against the real server with the background checks on:
// the validation badge under an answer, the thumbs, and their state after a reload.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';

import { createClient } from '../src/client.mjs';
import { newRecordingPage, screenshotDir, startServer, uniqueEmail } from './helpers.mjs';

const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  mkdirSync(screenshotDir, { recursive: true });
  server = await startServer({ env: { DEMO_DELAY_MS: '5', VALIDATION_ENABLED: 'true' } });
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'], headless: true });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A recording page (see `newRecordingPage`) in this file's browser. */
function newPage(viewport = { width: 1400, height: 900 }) {
  return newRecordingPage(browser, viewport);
}

/** Waits until the answer's thumbs say `up`, `down` or `none`. */
async function waitForRating(answer, expected) {
  await answer.getByTestId('rate-up').and(answer.page().locator(`[aria-pressed="${expected === 'up'}"]`)).waitFor();
  await answer.getByTestId('rate-down').and(answer.page().locator(`[aria-pressed="${expected === 'down'}"]`)).waitFor();
}

describe('playground: answer checks and ratings', () => {
  /** @type {Awaited<ReturnType<typeof newPage>>} */
  let ctx;
  /** The signed-in user's client (generated, with the page's access token). */
  let client = createClient('http://invalid');
  let conversationId = '';
  let messageId = '';

  /** The answer's `rating` as the server has it now. */
  async function storedRating() {
    const { data, response } = await client.GET('/api/conversations/{id}', { params: { path: { id: conversationId } } });
    assert.equal(response.status, 200);
    const message = data?.messages.find((m) => m.id === messageId);
    assert.ok(message, 'the answer is in the conversation');
    return message.rating ?? null;
  }

  before(async () => { ctx = await newPage(); });
  after(async () => { await ctx?.context.close(); });

  test('an answer shows its checks; thumbs up, switch to down, remove', async () => {
    const { page, problems, frames } = ctx;
    await page.goto(`${server.baseUrl}/`);
    await page.getByTestId('auth-email').fill(uniqueEmail('ratings'));
    await page.getByTestId('auth-password').fill('correct-horse-battery');
    await page.getByTestId('auth-name').fill('Barbara');
    await page.getByTestId('signup-button').click();
    await page.getByTestId('chat-view').waitFor({ state: 'visible' });
    await page.locator('#ws-status[data-state="live"]').waitFor();

    await page.getByTestId('composer-input').fill('Is this answer any good?');
    await page.getByTestId('send-button').click();
    const answer = page.locator('.message[data-role="assistant"]').first();
    await page.locator('.message[data-role="assistant"][data-status="complete"]').waitFor({ timeout: 15_000 });
    assert.match(await answer.getByTestId('message-content').innerText(), /^This is the demo provider/);
    messageId = String(await answer.getAttribute('data-message-id'));
    await page.getByTestId('conversation-item').first().waitFor();
    conversationId = String(await page.getByTestId('conversation-item').first().getAttribute('data-conversation-id'));
    const { accessToken } = await page.evaluate(() => JSON.parse(sessionStorage.getItem('chat-server.playground.session') || '{}'));
    client = createClient(server.baseUrl, { token: accessToken });

    // The checks run in the background; their message_validated frame fills the badge in.
    const badge = answer.getByTestId('validation-badge');
    await badge.waitFor({ state: 'visible', timeout: 15_000 });
    assert.equal((await badge.innerText()).trim(), '✓ checks passed');
    assert.equal(await badge.getAttribute('data-state'), 'passed');
    assert.match(String(await badge.getAttribute('title')), /empty.*truncated.*refusal/);
    assert.ok(frames.some((f) => f.type === 'message_validated' && f.messageId === messageId),
      'the badge came live from a message_validated frame');
    await page.locator('[data-testid="event-item"][data-type="answer_validated"]').waitFor();

    // The user's own message has no thumbs; the answer's are accessible toggle buttons.
    assert.equal(await page.locator('.message[data-role="user"] [data-testid="rate-up"]').count(), 0);
    const up = answer.getByRole('button', { name: 'Rate up' });
    const down = answer.getByRole('button', { name: 'Rate down' });
    assert.equal(await up.getAttribute('data-testid'), 'rate-up');
    assert.equal(await down.getAttribute('data-testid'), 'rate-down');
    await waitForRating(answer, 'none');
    assert.equal(await storedRating(), null);

    await up.click();
    await waitForRating(answer, 'up');
    assert.equal((await storedRating())?.rating, 'up');

    await down.click();
    await waitForRating(answer, 'down');
    assert.equal((await storedRating())?.rating, 'down');

    await down.click();
    await waitForRating(answer, 'none');
    assert.equal(await storedRating(), null);

    // Each change is a message_rated event in the log (and came back over the socket).
    const rated = page.locator('[data-testid="event-item"][data-type="message_rated"]');
    await rated.nth(2).waitFor();
    assert.deepEqual(
      await rated.locator('.summary-text').allInnerTexts(),
      ['rated up', 'rated down', 'rating removed'],
    );
    const ratedFrames = frames.filter((f) => f.type === 'event' && f.event?.type === 'message_rated');
    assert.deepEqual(ratedFrames.map((f) => f.event.data.rating), ['up', 'down', null]);

    await page.screenshot({ path: path.join(screenshotDir, 'playground-ratings.png'), fullPage: true });
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], 'no CSP violations');
    assert.deepEqual(problems, [], 'no script errors');
  });

  test('a rating from another tab shows up live', async () => {
    const { page, problems } = ctx;
    const answer = page.locator(`.message[data-message-id="${messageId}"]`);
    const { data, response } = await client.PUT('/api/conversations/{id}/messages/{messageId}/rating', {
      params: { path: { id: conversationId, messageId } },
      body: { rating: 'down', comment: 'Too vague' },
    });
    assert.equal(response.status, 200);
    assert.equal(data?.rating?.rating, 'down');
    assert.equal(data?.rating?.comment, 'Too vague');
    await waitForRating(answer, 'down');
    await page.locator('[data-testid="event-item"][data-type="message_rated"]').nth(3).waitFor();
    assert.deepEqual(problems, []);
  });

  test('after a reload the conversation opens with its rating and checks', async () => {
    const { page, problems } = ctx;
    await page.reload();
    await page.getByTestId('chat-view').waitFor({ state: 'visible' });
    await page.getByTestId('conversation-item').first().click();
    const answer = page.locator(`.message[data-role="assistant"][data-message-id="${messageId}"]`);
    await answer.waitFor();
    await waitForRating(answer, 'down');
    const badge = answer.getByTestId('validation-badge');
    await badge.waitFor({ state: 'visible' });
    assert.equal((await badge.innerText()).trim(), '✓ checks passed');

    // Back to up from here: the PUT answers with the Message, the buttons follow it.
    await answer.getByTestId('rate-up').click();
    await waitForRating(answer, 'up');
    assert.equal((await storedRating())?.rating, 'up');
    assert.deepEqual(problems, []);
  });

  test('PUT with an unknown rating is 400 VALIDATION_ERROR and changes nothing', async () => {
    const { data, error, response } = await client.PUT('/api/conversations/{id}/messages/{messageId}/rating', {
      params: { path: { id: conversationId, messageId } },
      // Not a RatingValue: the server refuses it before it looks at the message.
      body: /** @type {any} */ ({ rating: 'sideways' }),
    });
    assert.equal(response.status, 400);
    assert.equal(data, undefined);
    assert.equal(error?.code, 'VALIDATION_ERROR');
    assert.equal((await storedRating())?.rating, 'up');
  });
});
