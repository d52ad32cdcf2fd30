/**
 * The Python trainer from end-to-end tests: which python3 it runs on, and running its commands
 * while the gateway they talk to keeps answering in this process.
 */
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { REPO_ROOT } from './paths.js';

export const TRAINER = path.join(REPO_ROOT, 'trainer');

/**
 * The python3 with torch that trainer/python finds, or null (the caller skips, loudly). CI installs
 * PyTorch and sets CARRYON_TRAINER_REQUIRED=1: there a missing torch fails the file instead.
 */
export function trainerPython(test: string): string | null {
  const which = spawnSync(path.join(TRAINER, 'python'), ['--which'], { encoding: 'utf8' });
  if (which.status === 0) return which.stdout.trim();
  const why = which.stderr.trim() || 'no python3 with torch';
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`${test}: ${why}`);
  console.warn(`${test} SKIPPED: ${why}`);
  return null;
}

/** Runs a command from the repository root; asynchronous, so a gateway in this process keeps serving it. */
export function runChild(cmd: string, args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: REPO_ROOT, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}
