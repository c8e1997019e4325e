// The commands the docs tell people to run, run as written: every `emberlm` CLI command in
// README.md (optional `[...]` flags included, `PATH` as the bundled model) and each terminal
// example's one-line command from its README, with no Hub. A command naming a Hub repo that
// is not available offline must still parse and end in a clean error naming the repo.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ROOT } from '../mock-hub/repos.mjs';
import { BUN, DENO, NODE, run, runtimeEnv } from './spawn.mjs';

const CLI = join(ROOT, 'target', 'release', 'emberlm');
const MODEL = 'models/SmolLM2-135M-Instruct.Q4_1.gguf';
// Nothing listens on port 9: a Hub request fails at once instead of reaching the real Hub.
const NO_HUB = 'http://127.0.0.1:9';
const cacheDir = mkdtempSync(join(tmpdir(), 'emberlm-docs-'));
after(() => rmSync(cacheDir, { recursive: true, force: true }));

/** Shell-like words: double-quoted strings stay one word. */
const words = (line) => [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]);

/** The CLI commands in a markdown text: code spans and indented code lines, `\` continued. */
function cliCommands(markdown) {
  const text = markdown.replace(/\\\n\s*/g, ' ');
  const found = [...text.matchAll(/`(target\/release\/emberlm [^`]+)`/g)].map((m) => m[1]);
  for (const line of text.split('\n')) {
    const code = line.match(/^ {4}((?:target\/release\/emberlm|cargo run --release -p emberlm-cli --) .*)$/);
    if (code) found.push(code[1]);
  }
  return found.map((c) => c.replace(/^cargo run --release -p emberlm-cli -- /, 'target/release/emberlm ').replace(/[[\]]/g, '').replaceAll('PATH', MODEL));
}

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
const commands = cliCommands(readme);

test('README.md names CLI commands to check', () => {
  assert.ok(commands.length >= 4, commands.join('\n'));
  assert.ok(existsSync(CLI), 'build the CLI first (cargo build --release -p emberlm-cli)');
  assert.ok(existsSync(join(ROOT, MODEL)), 'run scripts/setup.sh (the bundled model)');
});

for (const command of commands) {
  test(`README: ${command}`, async () => {
    const [, ...args] = words(command);
    const env = runtimeEnv('node', { EMBERLM_HUB: NO_HUB, EMBERLM_CACHE: cacheDir });
    // `chat` reads the user's turns: one question, then end of input (Ctrl-D) quits.
    const r = await run(CLI, args, { cwd: ROOT, env, input: args[0] === 'chat' ? 'Say hello.\n' : '' });
    assert.doesNotMatch(r.stderr, /panicked/);
    const model = args[args.indexOf('--model') + 1];
    if (existsSync(join(ROOT, model))) {
      assert.equal(r.status, 0, `${command}\n${r.stderr.slice(-2000)}`);
      assert.ok(r.stdout.trim().length > 0, `no output: ${r.stderr.slice(-500)}`);
    } else {
      // A Hub repo: the flags parsed, and the error names the repo and the unreachable Hub.
      assert.notEqual(r.status, 0);
      assert.doesNotMatch(r.stderr, /unexpected argument|invalid value|Usage:/, r.stderr);
      assert.ok(r.stderr.includes(model) && r.stderr.includes('127.0.0.1:9'), r.stderr.slice(-1000));
    }
  });
}

const EXAMPLES = { node: NODE, deno: DENO, bun: BUN };
for (const [name, runtime] of Object.entries(EXAMPLES)) {
  test(`examples/${name}/README.md: its one-line command, offline on the bundled model`, async () => {
    const dir = join(ROOT, 'examples', name);
    const line = readFileSync(join(dir, 'README.md'), 'utf8').match(/^ {4}npm install && (.+)$/m)?.[1];
    assert.ok(line, 'a `npm install && …` line');
    if (!existsSync(join(dir, 'node_modules', 'emberlm'))) {
      const r = await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: dir });
      assert.equal(r.status, 0, r.stderr);
    }
    const [cmd, ...args] = words(line);
    assert.equal(cmd, name);
    const r = await run(runtime, args, { cwd: dir, env: runtimeEnv(name, { EMBERLM_HUB: NO_HUB, EMBERLM_CACHE: cacheDir }) });
    assert.equal(r.status, 0, r.stderr.slice(-2000));
    assert.match(r.stderr, /SmolLM2-135M-Instruct\.Q4_1\.gguf on (cpu|webgpu)/);
    assert.ok(r.stdout.trim().length > 0, 'a reply');
  });
}
