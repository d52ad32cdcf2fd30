import { describe, expect, it } from 'vitest';
import { CreateTrainingJobBody } from '../../src/training/job-request.js';
import { trainerArgs } from '../../src/training/trainer-process.js';

/** A job's fields become the trainer's command line: values must stay values. */
describe('trainer command line', () => {
  const run = (body: object) =>
    trainerArgs({
      baseDir: '/base',
      shardPaths: ['/s/1.safetensors'],
      outDir: '/out',
      body: CreateTrainingJobBody.parse({ carry_on: 'style', ...body }),
      threads: 1,
      logFile: '/log',
      maxLogBytes: 1,
    });

  it('passes a description that looks like an option as one --description=value argument', () => {
    const args = run({ description: '--steps 1000000 --out /etc' });
    expect(args).toContain('--description=--steps 1000000 --out /etc');
    expect(args.filter((a) => a === '--out')).toHaveLength(1);
    expect(args[args.indexOf('--out') + 1]).toBe('/out');
  });

  it('refuses an alias that could never be set, when the job is created', () => {
    for (const alias of ['latest', '7up', 'a/b']) expect(CreateTrainingJobBody.safeParse({ carry_on: 'x', alias }).success).toBe(false);
    expect(CreateTrainingJobBody.safeParse({ carry_on: 'x', alias: 'stable' }).success).toBe(true);
  });
});
