import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/app/config.js';

const load = (env: Record<string, string>) => loadConfig(env, '/');

describe('CARRYON_MODELS: the bases a gateway serves', () => {
  it('without it, the one CARRYON_MODEL is the only base, named by CARRYON_MODEL_NAME or its file', () => {
    expect(load({}).bases).toEqual([{ name: 'stories260K', source: '', tokenizer: '' }]);
    expect(load({ CARRYON_MODEL: '/m/llama-7b.Q4_0.gguf' }).bases.map((b) => b.name)).toEqual(['llama-7b.Q4_0']);
    expect(load({ CARRYON_MODEL: '/m/x.bin', CARRYON_TOKENIZER: '/m/tok.bin', CARRYON_MODEL_NAME: 'tiny' }).bases).toEqual([
      { name: 'tiny', source: '/m/x.bin', tokenizer: '/m/tok.bin' },
    ]);
  });

  it('lists name=source entries in order, the first being the default base; spaces around entries are ignored', () => {
    const config = load({ CARRYON_MODELS: 'stories=/m/stories260K.bin, qwen/0.5b = /m/qwen-folder ,llama=/m/l.gguf' });
    expect(config.bases).toEqual([
      { name: 'stories', source: '/m/stories260K.bin', tokenizer: '' },
      { name: 'qwen/0.5b', source: '/m/qwen-folder', tokenizer: '' },
      { name: 'llama', source: '/m/l.gguf', tokenizer: '' },
    ]);
    // The raw setting stays as given (the chart test compares it value for value).
    expect(config.CARRYON_MODELS).toBe('stories=/m/stories260K.bin, qwen/0.5b = /m/qwen-folder ,llama=/m/l.gguf');
  });

  it('refuses a name given twice', () => {
    expect(() => load({ CARRYON_MODELS: 'a=/m/1.bin,b=/m/2.bin,a=/m/3.bin' })).toThrow(/CARRYON_MODELS: entry 3: the name 'a' is given twice/);
  });

  it('refuses setting it together with CARRYON_MODEL, CARRYON_MODEL_NAME or CARRYON_TOKENIZER', () => {
    for (const single of ['CARRYON_MODEL', 'CARRYON_MODEL_NAME', 'CARRYON_TOKENIZER']) {
      const fail = () => load({ CARRYON_MODELS: 'a=/m/1.bin', [single]: 'x' });
      expect(fail).toThrow(ConfigError);
      expect(fail).toThrow(new RegExp(`set together with ${single}; use one form`));
    }
  });

  it('refuses entries that are not name=source, and names that routing could not tell apart', () => {
    expect(() => load({ CARRYON_MODELS: 'a=/m/1.bin,/m/2.bin' })).toThrow(/entry 2 '\/m\/2.bin' is not name=source/);
    expect(() => load({ CARRYON_MODELS: 'a=' })).toThrow(/entry 1 'a=' is not name=source/);
    expect(() => load({ CARRYON_MODELS: 'a=/m/1.bin,,b=/m/2.bin' })).toThrow(/entry 2 '' is not name=source/);
    expect(() => load({ CARRYON_MODELS: 'a:b=/m/1.bin' })).toThrow(/entry 1: the name 'a:b' must match/);
    expect(() => load({ CARRYON_MODELS: 'x@2=/m/1.bin' })).toThrow(/the name 'x@2' must match/);
    expect(() => load({ CARRYON_MODELS: '=/m/1.bin' })).toThrow(/the name '' must match/);
  });

  it('names every bad entry at once', () => {
    let message = '';
    try {
      load({ CARRYON_MODELS: 'a:1=/m/1.bin,b,a:1=/m/2.bin' });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message.split('\n').filter((l) => l.includes('CARRYON_MODELS'))).toHaveLength(3);
  });

  it("refuses a single base named with routing's separators", () => {
    expect(() => load({ CARRYON_MODEL_NAME: 'my:model' })).toThrow(/CARRYON_MODEL_NAME: 'my:model' may not contain ':' or '@'/);
  });
});
