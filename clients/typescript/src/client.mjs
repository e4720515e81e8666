// A typed client for chat-server: openapi-fetch over the types that openapi-typescript
// generates from openapi/openapi.json (`npm run generate` writes src/schema.d.ts).
import createFetchClient from 'openapi-fetch';

/** @typedef {import('./schema.d.ts').paths} paths */
/** @typedef {import('./schema.d.ts').components} components */
/** @typedef {import('openapi-fetch').Client<paths>} ChatClient */
/** @typedef {components['schemas']} Schemas */

/**
 * A middleware that sends `Authorization: Bearer <token>` on every request when a token is
 * known. `getToken` is called per request, so a refreshed token is picked up at once.
 *
 * @param {() => string | null | undefined} getToken
 * @returns {import('openapi-fetch').Middleware}
 */
export function bearerAuth(getToken) {
  return {
    onRequest({ request }) {
      const token = getToken();
      if (token && !request.headers.has('authorization')) {
        request.headers.set('authorization', `Bearer ${token}`);
      }
      return request;
    },
  };
}

/**
 * Creates a client for the server at `baseUrl` (e.g. `http://127.0.0.1:5001`; the paths in
 * the spec already start with `/api`).
 *
 * @param {string} baseUrl
 * @param {{ token?: string | (() => string | null | undefined), fetch?: (input: Request) => Promise<Response> }} [options]
 *   `token`: an access token, or a function returning the current one.
 * @returns {ChatClient & { setToken(token: string | null | undefined): void }}
 */
export function createClient(baseUrl, options = {}) {
  let current = typeof options.token === 'string' ? options.token : undefined;
  const getToken = typeof options.token === 'function' ? options.token : () => current;
  /** @type {ChatClient} */
  const client = createFetchClient({
    baseUrl: baseUrl.replace(/\/+$/, ''),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
  client.use(bearerAuth(getToken));
  return Object.assign(client, {
    /** Replaces the token the middleware sends (ignored when `options.token` is a function). */
    setToken(/** @type {string | null | undefined} */ token) {
      current = token ?? undefined;
    },
  });
}

export default createClient;
