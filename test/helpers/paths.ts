import path from 'node:path';

export const REPO_ROOT = path.resolve(import.meta.dirname, '../..');
export const SHARED = path.resolve(REPO_ROOT, '../shared');
export const STORIES_DIR = path.join(SHARED, 'models/stories260K');
export const STORIES_BIN = path.join(STORIES_DIR, 'stories260K.bin');
export const STORIES_TOK = path.join(STORIES_DIR, 'tok512.bin');
export const STORIES_GGUF = path.join(STORIES_DIR, 'stories260K.gguf');
