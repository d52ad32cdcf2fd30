#!/usr/bin/env node
// The project runs its TypeScript through tsx (a runtime dependency), so there is no build step to forget.
import { register } from 'tsx/esm/api';

register();
await import('../src/cli/carryon.ts');
