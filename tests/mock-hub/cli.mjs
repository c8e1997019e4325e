#!/usr/bin/env node
// Serves the fixture repos (and SmolLM2 when fetched) as a mock Hub: node tests/mock-hub/cli.mjs [--port N]
import { fixtureRepos } from './repos.mjs';
import { startMockHub } from './server.mjs';

const i = process.argv.indexOf('--port');
const hub = await startMockHub({ repos: fixtureRepos(), port: i > 0 ? Number(process.argv[i + 1]) : 0 });
console.log(`mock Hub on ${hub.url}`);
for (const repo of Object.keys(fixtureRepos())) console.log(`  ${hub.url}/${repo}`);
