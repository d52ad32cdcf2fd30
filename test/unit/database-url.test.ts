import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/app/config.js';
import { redactUrl, withoutPassword } from '../../src/store/database-url.js';
import { numberPlaceholders } from '../../src/store/postgres-driver.js';

describe('CARRYON_DATABASE_URL', () => {
  it('accepts postgres:// and postgresql:// URLs; unset or empty is SQLite', () => {
    expect(loadConfig({ CARRYON_DATABASE_URL: 'postgres://u:p@db:5432/carryon' }, '/').CARRYON_DATABASE_URL).toBe('postgres://u:p@db:5432/carryon');
    expect(loadConfig({ CARRYON_DATABASE_URL: 'postgresql://db/carryon' }, '/').CARRYON_DATABASE_URL).toBe('postgresql://db/carryon');
    expect(loadConfig({ CARRYON_DATABASE_URL: '' }, '/').CARRYON_DATABASE_URL).toBe('');
    expect(loadConfig({}, '/')).toMatchObject({ CARRYON_DATABASE_URL: '', CARRYON_DATABASE_POOL_SIZE: 10 });
  });

  it('refuses any other scheme at boot, without repeating the password', () => {
    for (const url of ['mysql://u:hunter2@db/carryon', 'sqlite:///data/x.db', 'postgres//u:hunter2@db', 'hunter2']) {
      let err: unknown;
      try {
        loadConfig({ CARRYON_DATABASE_URL: url }, '/');
      } catch (e) {
        err = e;
      }
      expect(err, url).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(/CARRYON_DATABASE_URL: must be a postgres:\/\/ or postgresql:\/\/ URL/);
      expect((err as Error).message).not.toContain('hunter2');
    }
    expect(() => loadConfig({ CARRYON_DATABASE_POOL_SIZE: '0' }, '/')).toThrow(/CARRYON_DATABASE_POOL_SIZE/);
  });

  it('is shown with its password replaced, wherever a message would carry it', () => {
    expect(redactUrl('postgres://carryon:s3cr%40t@db:5432/carryon?sslmode=require')).toBe('postgres://carryon:***@db:5432/carryon?sslmode=require');
    expect(redactUrl('postgres://carryon@db/carryon')).toBe('postgres://carryon@db/carryon');
    expect(redactUrl('postgres://[broken')).toBe('postgres://(unparseable URL)');
    const url = 'postgres://carryon:s3cr%40t@db/carryon';
    expect(withoutPassword(`failed for ${url}: password s3cr@t rejected`, url)).toBe('failed for postgres://carryon:***@db/carryon: password *** rejected');
  });
});

describe('placeholders', () => {
  it('numbers each ? outside string literals', () => {
    expect(numberPlaceholders('SELECT * FROM t WHERE a = ? AND b = ?')).toBe('SELECT * FROM t WHERE a = $1 AND b = $2');
    expect(numberPlaceholders("SELECT '?' AS q, x FROM t WHERE y = ?")).toBe("SELECT '?' AS q, x FROM t WHERE y = $1");
  });
});
