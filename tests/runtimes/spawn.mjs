// Running Node, Deno and Bun (the last two installed from npm into tests/node_modules) as child
// processes beside the mock Hub, which answers from the test's own process: so never spawnSync.
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const bin = (name) => join(dirname(fileURLToPath(import.meta.url)), '..', 'node_modules', '.bin', name);
export const NODE = process.execPath;
export const DENO = bin('deno');
export const BUN = bin('bun');
const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';

/**
 * The environment a runtime's WebGPU works in here: Dawn (Node, Bun) refuses Mesa 22's
 * lavapipe, so those use SwiftShader; Deno's wgpu takes lavapipe, found by default.
 */
export function runtimeEnv(runtime, extra = {}) {
  const env = { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp', NO_COLOR: '1', ...extra };
  if (runtime === 'deno') delete env.VK_ICD_FILENAMES;
  else env.VK_ICD_FILENAMES = SWIFTSHADER;
  return env;
}

/**
 * Runs `cmd args` to the end (killed after `timeoutMs`), with `input` as its standard input
 * (closed after it); resolves to { status, stdout, stderr }.
 */
export function run(cmd, args, { cwd, env, timeoutMs = 240_000, input } = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd, env });
    if (input !== undefined) child.stdin.end(input);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}
