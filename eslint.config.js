// ESLint (flat config) for the gateway's TypeScript and its few plain-JS entry points; `npm run lint`.
// Type-aware: typescript-eslint's recommendedTypeChecked reads types through tsconfig.json (projectService),
// which no-floating-promises, no-misused-promises and the no-unsafe-* rules need.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    // Not JS/TS, or local output (see .gitignore); trainer/ is Python, linted by trainer/lint.
    ignores: ['bench/out/', 'data/', 'trainer/', 'charts/', 'models/', 'docs/'],
  },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: {
          // Files outside tsconfig.json's "include" (the .js/.mjs entry points and the root configs) get
          // a default project with tsconfig.json's compiler options, so they are linted with types too.
          allowDefaultProject: ['*.js', '*.ts', 'bin/*.js', 'scripts/*.mjs', 'src/*/*.mjs'],
          defaultProject: 'tsconfig.json',
        },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // Required (issue 11): all are in recommendedTypeChecked already; listed so they stay errors.
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-unsafe-assignment': 'error',
      '@typescript-eslint/no-unsafe-member-access': 'error',
      '@typescript-eslint/no-unsafe-call': 'error',
      '@typescript-eslint/no-unsafe-return': 'error',
      '@typescript-eslint/no-unsafe-argument': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      // Fastify plugins and route handlers are async by contract (an async plugin is done when it
      // resolves; an async handler's return value is the reply), and several interfaces return promises,
      // so an async function without an await is normal here, not a bug.
      '@typescript-eslint/require-await': 'off',
      // Error messages print shapes as `[${shape}]`: Array.prototype.toString (join(',')) is what is meant.
      '@typescript-eslint/restrict-template-expressions': ['error', { allowArray: true }],
      // `_`-named bindings are deliberate: skipped loop values and fields dropped by a rest destructuring.
      '@typescript-eslint/no-unused-vars': ['error', {
        argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', ignoreRestSiblings: true,
      }],
    },
  },
  {
    // The admin console's browser modules (plugins/console/, served as is, no build step): plain JS
    // outside tsconfig.json, so linted without types, with the browser's globals.
    files: ['plugins/console/**/*.js'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: {
      sourceType: 'module',
      globals: {
        window: 'readonly', document: 'readonly', location: 'readonly', navigator: 'readonly', sessionStorage: 'readonly',
        fetch: 'readonly', FormData: 'readonly', URL: 'readonly', URLSearchParams: 'readonly', TextDecoder: 'readonly',
        setTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', console: 'readonly',
      },
    },
  },
  {
    // Plain JS keeps core no-undef (TypeScript does not report errors in .js here); these run on Node.
    files: ['**/*.js', '**/*.mjs'],
    languageOptions: { globals: { process: 'readonly', fetch: 'readonly', AbortSignal: 'readonly', console: 'readonly' } },
  },
);
