/**
 * The trainer's `report.json`, as far as the gateway reads it. The trainer is another program (and
 * another language): its report is validated here, so a drifted or truncated file is "no report",
 * never a crash or an `undefined` that reaches an API response. Unknown fields pass through.
 */
import fs from 'node:fs';
import { z } from 'zod';

const LossRow = z.looseObject({ alpha: z.number(), loss: z.number() });

/** Parity between the exported ONNX graph and the trained PyTorch module (one or several figures). */
type Nested = number | { [k: string]: Nested };
const NestedNumbers: z.ZodType<Nested> = z.lazy(() => z.union([z.number(), z.record(z.string(), NestedNumbers)]));

export const TrainerReport = z.looseObject({
  eval: z
    .looseObject({ base: LossRow.nullable(), carry_on: LossRow.nullable(), best_alpha: z.number(), best: LossRow, sweep: z.array(LossRow).optional() })
    .optional(),
  export: z
    .looseObject({
      package: z.string().min(1),
      verify: z.looseObject({ ok: z.boolean(), maxAbsDiff: NestedNumbers.optional() }),
    })
    .optional(),
});
export type TrainerReport = z.infer<typeof TrainerReport>;

/** The report in `file`, or null when it is missing or does not match what the gateway reads. */
export function readTrainerReport(file: string): TrainerReport | null {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
  const parsed = TrainerReport.safeParse(raw);
  return parsed.success ? parsed.data : null;
}

/** The largest number anywhere in a nested report value (the parity check reports several). */
export function maxNumber(v: Nested | undefined): number | null {
  if (typeof v === 'number') return v;
  if (v && typeof v === 'object') {
    const xs = Object.values(v).map(maxNumber).filter((x): x is number => x !== null);
    return xs.length > 0 ? Math.max(...xs) : null;
  }
  return null;
}
