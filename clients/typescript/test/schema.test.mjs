// src/schema.d.ts must be what `npm run generate` makes from the committed openapi.json.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { packageDir } from './helpers.mjs';

test('src/schema.d.ts is current with openapi/openapi.json (else run `npm run generate`)', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'chat-schema-'));
  try {
    const out = path.join(dir, 'schema.d.ts');
    const bin = path.join(packageDir, 'node_modules', 'openapi-typescript', 'bin', 'cli.js');
    const run = spawnSync(process.execPath, [bin, '../../openapi/openapi.json', '-o', out], {
      cwd: packageDir,
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, `openapi-typescript failed:\n${run.stdout}\n${run.stderr}`);
    const fresh = readFileSync(out, 'utf8');
    const committed = readFileSync(path.join(packageDir, 'src', 'schema.d.ts'), 'utf8');
    assert.ok(
      fresh === committed,
      'src/schema.d.ts is stale: run `npm run generate` in clients/typescript and commit the result',
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
