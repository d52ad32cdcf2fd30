import fs from 'node:fs';
import path from 'node:path';
import { SHARED } from './paths.js';

export interface Gsm8kProblem {
  question: string;
  answer: string;
}

/** The first `count` GSM8K training problems short enough for stories260K's 512-token context. */
export function gsm8kTrainProblems(count: number): Gsm8kProblem[] {
  return fs
    .readFileSync(path.join(SHARED, 'data/gsm8k/train.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Gsm8kProblem)
    .filter((p) => p.question.length + p.answer.length < 900)
    .slice(0, count);
}
