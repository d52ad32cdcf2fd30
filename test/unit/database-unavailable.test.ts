import { describe, expect, it } from 'vitest';
import { databaseUnavailableError, isDatabaseUnavailable } from '../../src/core/errors.js';

/** Which failures mean "the metadata database cannot be reached" (503 database_unavailable), and which do not. */
describe('database_unavailable', () => {
  const withCode = (code: string, message = 'x') => Object.assign(new Error(message), { code });

  it('socket failures, a server shutting down or refusing connections, and a dropped connection are all one state', () => {
    for (const code of ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', '57P01', '57P03', '53300', '08006', '08001']) {
      expect(isDatabaseUnavailable(withCode(code)), code).toBe(true);
    }
    expect(isDatabaseUnavailable(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isDatabaseUnavailable(new Error('timeout exceeded when trying to connect'))).toBe(true);
    expect(isDatabaseUnavailable(new AggregateError([withCode('ECONNREFUSED'), withCode('ECONNREFUSED')], ''))).toBe(true);
  });

  it('bad SQL, constraint violations and disk errors are not', () => {
    for (const code of ['42P01', '23505', '40001', 'ENOSPC', 'SQLITE_BUSY']) expect(isDatabaseUnavailable(withCode(code)), code).toBe(false);
    expect(isDatabaseUnavailable(new Error('something else'))).toBe(false);
    expect(isDatabaseUnavailable('ECONNREFUSED')).toBe(false);
  });

  it('answers 503 with Retry-After and a message that cannot be mistaken for a bad key', () => {
    const e = databaseUnavailableError();
    expect(e.status).toBe(503);
    expect(e.headers['retry-after']).toBe('5');
    expect(e.toBody().error).toMatchObject({ code: 'database_unavailable', type: 'server_error' });
    expect(e.message).toMatch(/metadata database is unreachable/);
  });
});
