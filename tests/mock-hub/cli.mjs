#!/usr/bin/env node
// Serves the fixture repos (and SmolLM2 when fetched) as a mock Hub:
//   node tests/mock-hub/cli.mjs [--port N] [--page-size N] [--fault JSON]...
// --fault injects one fault as `hub.inject` takes it, e.g. '{"match":".gguf","kind":"drop"}'.
import { fixtureRepos } from './repos.mjs';
import { startMockHub } from './server.mjs';

const values = (flag) => process.argv.flatMap((a, i) => (a === flag ? [process.argv[i + 1]] : []));
const port = Number(values('--port')[0] ?? 0);
const pageSize = Number(values('--page-size')[0] ?? 0);
const hub = await startMockHub({ repos: fixtureRepos(), port, pageSize });
for (const f of values('--fault')) hub.inject(JSON.parse(f));
console.log(`mock Hub on ${hub.url}`);
for (const repo of Object.keys(fixtureRepos())) console.log(`  ${hub.url}/${repo}`);
