// A tiny OpenAI-compatible upstream for tests that need an agent to call tools: it speaks the
// real wire format (`POST /v1/chat/completions` answered with SSE `chat.completion.chunk`s
// ending in `data: [DONE]`), and its replies follow a small script:
// - a request whose system message contains `PLAYGROUND-AGENT` and whose last message is not
//   a `tool` message: a call to `search_knowledge` with `{"query":"pump reset"}`, its
//   arguments split in fragments across chunks, then `finish_reason: "tool_calls"`;
// - the same after a tool message: the text "Hold the red button [1]." (`stop`);
// - anything else: a short text reply.
// A request whose last user message contains `SLOW` is streamed at `slowDelayMs` (400 ms) a
// frame; one whose last user message contains `PREAMBLE` gets text before its tool call.
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

export const AGENT_MARKER = 'PLAYGROUND-AGENT';
export const TOOL_ARGUMENTS = '{"query":"pump reset"}';
export const AGENT_ANSWER = 'Hold the red button [1].';
export const PLAIN_ANSWER = 'Hello from the mock model.';
export const SLOW_MARKER = 'SLOW';
export const PREAMBLE_MARKER = 'PREAMBLE';
export const PREAMBLE = 'Let me look that up. ';

/** The text of a chat message's `content` (a string or an array of parts). */
function text(content) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((p) => (typeof p === 'string' ? p : p?.text ?? '')).join('');
  return '';
}

function chunk(delta, finishReason = null) {
  const body = {
    id: 'chatcmpl-mock',
    object: 'chat.completion.chunk',
    created: 1_700_000_000,
    model: 'mock-model',
    choices: [{ index: 0, delta, finish_reason: finishReason }],
  };
  return `data: ${JSON.stringify(body)}\n\n`;
}

/** The text of the request's last user message. */
function lastUserText(body) {
  const users = (Array.isArray(body?.messages) ? body.messages : []).filter((m) => m.role === 'user');
  return users.length ? text(users[users.length - 1].content) : '';
}

/** The SSE frames of one scripted reply. */
export function replyFrames(body) {
  const messages = Array.isArray(body?.messages) ? body.messages : [];
  const system = messages.filter((m) => m.role === 'system').map((m) => text(m.content)).join('\n');
  const last = messages[messages.length - 1];
  const frames = [];
  let finish = 'stop';
  let words = [];
  if (system.includes(AGENT_MARKER) && last?.role !== 'tool') {
    // The call's first piece carries the id, type and name with empty arguments; the
    // arguments follow in fragments. As OpenAI does, the role comes in a chunk of its own
    // before any text, else with the first piece of the call.
    const head = { index: 0, id: 'call_pump_1', type: 'function', function: { name: 'search_knowledge', arguments: '' } };
    if (lastUserText(body).includes(PREAMBLE_MARKER)) {
      frames.push(chunk({ role: 'assistant', content: '' }));
      for (const w of PREAMBLE.split(/(?<= )/)) frames.push(chunk({ content: w }));
      frames.push(chunk({ tool_calls: [head] }));
    } else {
      frames.push(chunk({ role: 'assistant', content: null, tool_calls: [head] }));
    }
    for (let i = 0; i < TOOL_ARGUMENTS.length; i += 5) {
      frames.push(chunk({ tool_calls: [{ index: 0, function: { arguments: TOOL_ARGUMENTS.slice(i, i + 5) } }] }));
    }
    finish = 'tool_calls';
  } else {
    const answer = system.includes(AGENT_MARKER) ? AGENT_ANSWER : PLAIN_ANSWER;
    words = answer.split(/(?<= )/);
    frames.push(chunk({ role: 'assistant', content: '' }));
  }
  for (const w of words) frames.push(chunk({ content: w }));
  frames.push(chunk({}, finish));
  frames.push(`data: ${JSON.stringify({
    id: 'chatcmpl-mock', object: 'chat.completion.chunk', created: 1_700_000_000, model: 'mock-model',
    choices: [], usage: { prompt_tokens: 9, completion_tokens: words.length + 1, total_tokens: 10 + words.length },
  })}\n\n`);
  frames.push('data: [DONE]\n\n');
  return frames;
}

/** Whether the request's last user message asks for a slow answer. */
function slow(body) {
  return lastUserText(body).includes(SLOW_MARKER);
}

/**
 * Starts the mock on a free port of 127.0.0.1.
 * @param {{ delayMs?: number, slowDelayMs?: number }} [options] the wait before each SSE frame
 */
export async function startMockUpstream(options = {}) {
  const fastDelayMs = options.delayMs ?? 20;
  const slowDelayMs = options.slowDelayMs ?? 400;
  /** @type {any[]} every request body, in order */
  const requests = [];
  const server = http.createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (d) => { raw += d; });
    req.on('end', async () => {
      if (req.method !== 'POST' || !req.url?.endsWith('/chat/completions')) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: `no route ${req.method} ${req.url}`, type: 'invalid_request_error' } }));
        return;
      }
      let body;
      try { body = JSON.parse(raw); } catch {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'bad JSON', type: 'invalid_request_error' } }));
        return;
      }
      requests.push(body);
      const frames = replyFrames(body);
      if (!body.stream) {
        // Not used by the server for answers, but answer in kind: the frames put together.
        const calls = [];
        let content = '';
        let finish = 'stop';
        for (const f of frames) {
          const json = f.slice('data: '.length).trim();
          if (json === '[DONE]') continue;
          const c = JSON.parse(json);
          for (const choice of c.choices) {
            content += choice.delta.content ?? '';
            for (const p of choice.delta.tool_calls ?? []) {
              if (p.id) calls.push({ id: p.id, type: 'function', function: { name: p.function.name, arguments: '' } });
              else calls[calls.length - 1].function.arguments += p.function.arguments;
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
        const message = { role: 'assistant', content: calls.length && !content ? null : content };
        if (calls.length) message.tool_calls = calls;
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({
          id: 'chatcmpl-mock', object: 'chat.completion', created: 1_700_000_000, model: 'mock-model',
          choices: [{ index: 0, message, finish_reason: finish }],
          usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 },
        }));
        return;
      }
      const delayMs = slow(body) ? slowDelayMs : fastDelayMs;
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      for (const frame of frames) {
        if (res.destroyed) return;
        await sleep(delayMs);
        res.write(frame);
      }
      res.end();
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
  return {
    port,
    baseUrl: `http://127.0.0.1:${port}/v1`,
    requests,
    /** The server environment that points chat-server at this mock. */
    env() {
      return {
        OPENAI_API_KEY: 'test',
        OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1`,
        OPENAI_MODEL: 'mock-model',
        GENERATE_TITLES: 'false',
      };
    },
    close() {
      server.closeAllConnections?.();
      return new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}
