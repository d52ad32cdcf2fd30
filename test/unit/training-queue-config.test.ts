import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/app/config.js';

describe('training queue configuration', () => {
  it('defaults to the gateway running jobs itself, with heartbeats every 5 s and three attempts', () => {
    expect(loadConfig({}, '/')).toMatchObject({
      CARRYON_TRAINING_WORKER: 'inline',
      CARRYON_TRAINING_HEARTBEAT_MS: 5000,
      CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS: 60000,
      CARRYON_TRAINING_MAX_ATTEMPTS: 3,
    });
    expect(loadConfig({ CARRYON_TRAINING_WORKER: 'external' }, '/').CARRYON_TRAINING_WORKER).toBe('external');
  });

  it('refuses an unknown worker mode, and a timeout a single late heartbeat could pass', () => {
    expect(() => loadConfig({ CARRYON_TRAINING_WORKER: 'remote' }, '/')).toThrow(/CARRYON_TRAINING_WORKER/);
    expect(() => loadConfig({ CARRYON_TRAINING_MAX_ATTEMPTS: '0' }, '/')).toThrow(/CARRYON_TRAINING_MAX_ATTEMPTS/);
    let err: unknown;
    try {
      loadConfig({ CARRYON_TRAINING_HEARTBEAT_MS: '5000', CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS: '9000' }, '/');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(/CARRYON_TRAINING_HEARTBEAT_TIMEOUT_MS: must be at least twice CARRYON_TRAINING_HEARTBEAT_MS/);
  });
});
