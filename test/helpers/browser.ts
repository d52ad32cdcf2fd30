import fs from 'node:fs';
import path from 'node:path';
import puppeteer, { type Browser, type HTTPResponse, type Page } from 'puppeteer-core';
import { REPO_ROOT } from './paths.js';

/** Debian's chromium (`apt-get install chromium`; .ci/run installs it); CHROMIUM_PATH overrides. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const HAS_CHROMIUM = fs.existsSync(CHROMIUM);

/** Screenshots of the console's pages, kept after the run (gitignored). */
export const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts', 'console');

/**
 * Whether a browser test file runs: without chromium it is skipped, loudly, unless
 * CARRYON_TRAINER_REQUIRED=1 (CI), where a missing browser fails the run instead of hiding it.
 */
export function browserAvailable(what: string): boolean {
  if (HAS_CHROMIUM) return true;
  if (process.env.CARRYON_TRAINER_REQUIRED === '1') throw new Error(`${what}: no chromium at ${CHROMIUM}`);
  console.warn(`${what} SKIPPED: no chromium at ${CHROMIUM} (apt-get install chromium)`);
  return false;
}

export async function launchBrowser(): Promise<Browser> {
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // --no-sandbox: CI and these containers run as root, where Chromium's sandbox cannot start.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--window-size=1400,1000'],
    defaultViewport: { width: 1400, height: 1000 },
    // A training job's wait can outlast the default 180 s on a loaded machine; each wait has its own timeout.
    protocolTimeout: 600_000,
  });
}

/** Everything a page reported that a test must account for: console errors, failed and error responses. */
export class PageProblems {
  readonly consoleErrors: string[] = [];
  readonly failedRequests: string[] = [];
  readonly errorResponses: Array<{ method: string; path: string; status: number }> = [];
  readonly pageErrors: string[] = [];

  constructor(page: Page) {
    page.on('console', (m) => {
      if (m.type() === 'error') this.consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => this.pageErrors.push(e instanceof Error ? e.message : String(e)));
    page.on('requestfailed', (r) => {
      // A stream the page itself cancelled is not a failure; anything else is.
      this.failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText ?? '?'}`);
    });
    page.on('response', (r: HTTPResponse) => {
      if (r.status() >= 400) this.errorResponses.push({ method: r.request().method(), path: new URL(r.url()).pathname, status: r.status() });
    });
  }

  /**
   * Console errors that are not Chromium's own line for an error response the test expected
   * ("Failed to load resource: the server responded with a status of 400"), which it prints for
   * every 4xx a fetch receives, handled or not.
   */
  unexpectedConsoleErrors(): string[] {
    let allowed = this.errorResponses.length;
    return this.consoleErrors.filter((e) => {
      if (allowed > 0 && /^Failed to load resource: the server responded with a status of \d+/.test(e)) {
        allowed--;
        return false;
      }
      return true;
    });
  }
}

export async function screenshot(page: Page, name: string): Promise<void> {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}
