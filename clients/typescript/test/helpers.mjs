// Test helpers: start the real chat-server binary on a free port with a throwaway SQLite
// database, and small utilities for the API and WebSocket tests.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';

import { createClient } from '../src/client.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const packageDir = path.resolve(here, '..');
export const repoRoot = path.resolve(packageDir, '../..');
export const screenshotDir = path.join(repoRoot, 'target', 'screenshots');

/** The server binary: `CHAT_SERVER_BIN`, else `target/debug/chat-server` of the workspace. */
export function serverBinary() {
  return process.env.CHAT_SERVER_BIN
    ? path.resolve(process.env.CHAT_SERVER_BIN)
    : path.join(repoRoot, 'target', 'debug', 'chat-server');
}

/** A port nobody listens on right now (the OS picks it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address());
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts the server and waits until `GET /api/health` answers 200.
 * @param {{ env?: Record<string, string> }} [options] extra environment variables
 */
export async function startServer(options = {}) {
  const bin = serverBinary();
  if (!existsSync(bin)) {
    throw new Error(`server binary not found at ${bin}: run \`cargo build\` or set CHAT_SERVER_BIN`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'chat-ts-'));
  const port = await freePort();
  // A clean environment: nothing inherited that could change the server's behaviour (no
  // OPENAI_API_KEY: the demo provider answers), except PATH and the log filter.
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    RUST_LOG: process.env.RUST_LOG ?? 'warn',
    DATABASE_URL: `sqlite://${dir}/chat.db?mode=rwc`,
    DATA_DIR: dir,
    HOST: '127.0.0.1',
    PORT: String(port),
    JWT_SECRET: 'ts-client-tests-secret-0123456789abcdefghijklmnop',
    DEMO_DELAY_MS: '5',
    CORS_ORIGINS: 'http://localhost:8081',
    // Answer checks append an `answer_validated` event after each answer, at their own pace:
    // tests that read a log's exact order run without them (the validation tests turn
    // them on).
    VALIDATION_ENABLED: 'false',
    ...options.env,
  };
  // cwd is the temp folder, so a developer's .env in the repo is not read.
  const child = spawn(bin, [], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });

  const baseUrl = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`server exited early (${JSON.stringify(exited)}):\n${log}`);
    }
    try {
      const res = await fetch(`${baseUrl}/api/health`);
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`server did not become healthy within 30 s:\n${log}`);
    }
    await sleep(50);
  }

  return {
    baseUrl,
    wsUrl: `ws://127.0.0.1:${port}/api/ws`,
    port,
    dir,
    log: () => log,
    async stop() {
      if (!exited) {
        const done = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await done;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

let counter = 0;
/** A unique e-mail address for this run. */
export function uniqueEmail(name = 'user') {
  counter += 1;
  return `${name}-${process.pid}-${Date.now()}-${counter}@example.com`;
}

/**
 * Registers a user through the generated client; returns the tokens and a client that sends
 * the access token.
 * @param {string} baseUrl
 * @param {string} [name]
 */
export async function registerUser(baseUrl, name = 'user') {
  const anon = createClient(baseUrl);
  const email = uniqueEmail(name);
  const { data, error, response } = await anon.POST('/api/auth/register', {
    body: { email, password: 'correct-horse-battery', displayName: name },
  });
  if (!data) throw new Error(`register failed: ${response.status} ${JSON.stringify(error)}`);
  return { email, tokens: data, client: createClient(baseUrl, { token: data.accessToken }) };
}

/**
 * A WebSocket with a frame queue: `next(pred)` waits for the next frame matching `pred`
 * (frames that do not match are kept for later calls, in order).
 * @param {string} url
 * @param {import('ws').ClientOptions} [options]
 */
export async function openSocket(url, options = {}) {
  const ws = new WebSocket(url, options);
  /** @type {any[]} */
  const frames = [];
  /** @type {Array<() => void>} */
  let waiters = [];
  let closed = null;
  const wake = () => { const w = waiters; waiters = []; w.forEach((f) => f()); };
  ws.on('message', (data, isBinary) => {
    frames.push(isBinary ? { type: '<binary>' } : JSON.parse(data.toString()));
    wake();
  });
  ws.on('close', (code, reason) => { closed = { code, reason: reason.toString() }; wake(); });
  ws.on('error', () => {});
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    ws.once('error', reject);
  });

  return {
    ws,
    /** Every frame received so far and not yet taken by `next`. */
    pending: frames,
    /** @param {object} frame */
    send(frame) { ws.send(JSON.stringify(frame)); },
    /**
     * @param {(f: any) => boolean} [pred]
     * @param {number} [timeoutMs]
     */
    async next(pred = () => true, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const i = frames.findIndex(pred);
        if (i >= 0) return frames.splice(i, 1)[0];
        if (closed) throw new Error(`socket closed (${JSON.stringify(closed)}) while waiting; pending: ${JSON.stringify(frames)}`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`timed out waiting for a frame; pending: ${JSON.stringify(frames)}`);
        await new Promise((resolve) => {
          const t = setTimeout(resolve, left);
          waiters.push(() => { clearTimeout(t); resolve(undefined); });
        });
      }
    },
    /** Takes every frame up to and including the first that matches `pred`. */
    async until(pred, timeoutMs = 10_000) {
      const taken = [];
      for (;;) {
        const f = await this.next(() => true, timeoutMs);
        taken.push(f);
        if (pred(f)) return taken;
      }
    },
    close() {
      return new Promise((resolve) => {
        if (ws.readyState === WebSocket.CLOSED) return resolve(undefined);
        ws.once('close', () => resolve(undefined));
        ws.close();
      });
    },
  };
}

/**
 * A page that records script errors, console errors, failed requests (but a missing
 * favicon), CSP violations, and the frames its WebSocket receives.
 * @param {import('playwright-core').Browser} browser
 * @param {{ width: number, height: number }} [viewport]
 */
export async function newRecordingPage(browser, viewport = { width: 1400, height: 900 }) {
  const context = await browser.newContext({ viewport });
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  const page = await context.newPage();
  const problems = [];
  /** @type {any[]} */
  const frames = [];
  page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) {
      problems.push(`console: ${msg.text()}`);
    }
  });
  page.on('response', (res) => {
    if (res.status() >= 400 && new URL(res.url()).pathname !== '/favicon.ico') {
      problems.push(`HTTP ${res.status()} ${res.request().method()} ${res.url()}`);
    }
  });
  page.on('websocket', (ws) => {
    ws.on('framereceived', ({ payload }) => {
      try { frames.push(JSON.parse(String(payload))); } catch { /* not JSON */ }
    });
  });
  return { context, page, problems, frames };
}
