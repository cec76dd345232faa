// Drives the console (docs/console.md) in Debian's Chromium, one phase per run:
//   node console.mjs before-restart   roles, search, timeline, rotation, drift, dead letter seen
//   node console.mjs after-restart    the dead letter moved back and its key active
// Started by crates/keyledger/tests/it/console.rs, which serves keyledger, makes the drift
// and the dead letter, and passes everything in the environment. Each check prints
// "ok <name>"; the first failure prints "FAILED <name>: <why>" and exits 1. Every page
// visited is saved as a screenshot in $SHOTS_DIR.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const BASE = env('BASE_URL');
const SHOTS = env('SHOTS_DIR');
const PHASE = process.argv[2];
// How long a page may take to show what the log already says, e.g. the projector's view.
const CONVERGE_MS = 20000;

mkdirSync(SHOTS, { recursive: true });

let current = 'launch';
function check(condition, why) {
  if (!condition) throw new Error(why);
}
async function step(name, body) {
  current = name;
  await body();
  console.log(`ok ${name}`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(context, token) {
  const page = await context.newPage();
  await page.goto(`${BASE}/console`);
  check(page.url().endsWith('/console/signin'), `no session should lead to the sign-in form, got ${page.url()}`);
  await page.fill('#token', token);
  await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
  return page;
}

/// Reloads `path` until `predicate(page)` holds or the deadline passes.
async function until(page, path, predicate, what) {
  const deadline = Date.now() + CONVERGE_MS;
  for (;;) {
    await page.goto(`${BASE}${path}`);
    if (await predicate(page)) return;
    check(Date.now() < deadline, `${what} did not happen within ${CONVERGE_MS} ms`);
    await page.waitForTimeout(250);
  }
}

const text = async (page, selector) => (await page.locator(selector).first().textContent())?.trim() ?? '';

async function beforeRestart(browser) {
  const KEY = env('KEY_ID');
  const USER = env('USER_ID');
  const CLIENT = env('CLIENT_UUID');
  const DEAD_KEY = env('DEAD_LETTER_KEY_ID');

  await step('a wrong token is refused with a clear error', async () => {
    const context = await browser.newContext();
    const page = await signIn(context, 'not-a-token-of-this-deployment');
    check((await text(page, '#signin-error')).includes('not valid'), 'no "not valid" error shown');
    await shot(page, '01-signin-refused');
    await context.close();
  });

  await step('the service token has no console', async () => {
    const context = await browser.newContext();
    const page = await signIn(context, env('SERVICE_TOKEN'));
    check((await text(page, '#signin-error')).includes('has no console'), 'the service role was let in');
    await context.close();
  });

  const auditor = await browser.newContext();
  await step('an auditor finds the key by user id, key id and client UUID', async () => {
    const page = await signIn(auditor, env('AUDITOR_TOKEN'));
    check((await text(page, '#role')) === 'auditor', 'not signed in as auditor');
    for (const q of [USER, KEY, CLIENT]) {
      await page.goto(`${BASE}/console/keys?q=${encodeURIComponent(q)}`);
      const rows = await page.locator('#keys a').allTextContents();
      check(rows.includes(KEY), `searching ${q} did not find key ${KEY}: ${rows}`);
    }
    await shot(page, '02-auditor-search');
  });

  await step('an auditor reads the timeline but sees no commands', async () => {
    const page = await auditor.newPage();
    await page.goto(`${BASE}/console/keys/${KEY}`);
    check((await page.locator('#events tr.event').count()) >= 2, 'no timeline');
    check((await page.locator('#actions').count()) === 0, 'an auditor sees the commands');
    check((await text(page, '#chain')).includes('holds'), 'the chain check is not shown as holding');
    await shot(page, '03-auditor-key');
  });

  await step('an auditor runs audit verify', async () => {
    const page = await auditor.newPage();
    await page.goto(`${BASE}/console/audit`);
    await Promise.all([page.waitForURL(/verify=1/), page.click('#verify button')]);
    check((await text(page, '#verify-result')).includes('everything holds'), `verify: ${await text(page, '#verify-result')}`);
    await shot(page, '04-auditor-audit');
  });

  await step('an auditor sees the dead letter and its reason, without a move-back button', async () => {
    const page = await auditor.newPage();
    await page.goto(`${BASE}/console/queues`);
    const reason = await text(page, 'section.dead-letters tr.dead-letter td.reason');
    check(reason.includes('not served by this worker'), `reason shown: ${reason}`);
    check((await page.locator('a.move-back').count()) === 0, 'an auditor sees "move back"');
    await shot(page, '05-auditor-queues');
  });

  await step('an auditor posting an admin command directly is refused', async () => {
    const page = await auditor.newPage();
    await page.goto(`${BASE}/console/keys/${KEY}`);
    const csrf = await page.locator('input[name=csrf]').first().inputValue();
    for (const path of [`/console/keys/${KEY}/rotate`, '/console/queues/keyledger.x3ui-worker/move-back']) {
      const answer = await page.request.post(`${BASE}${path}`, { form: { csrf }, maxRedirects: 0 });
      check(answer.status() === 403, `POST ${path} as auditor answered ${answer.status()}`);
    }
  });
  await auditor.close();

  const admin = await browser.newContext();
  const page = await signIn(admin, env('ADMIN_TOKEN'));
  await step('an admin sees every page with its commands', async () => {
    check((await text(page, '#role')) === 'admin', 'not signed in as admin');
    await page.goto(`${BASE}/console/keys/${KEY}`);
    check((await page.locator('#actions a.action').count()) === 3, 'rotate, revoke, renew not offered');
    await page.goto(`${BASE}/console/queues`);
    check((await page.locator('a.move-back').count()) === 1, 'no "move back" for the admin');
  });

  await step('a drift found and repaired shows on the locations page', async () => {
    await page.goto(`${BASE}/console/locations`);
    const row = page.locator('tr.location[data-location=ams]');
    const found = Number(await text(row, 'td.drift-detected'));
    const repaired = Number(await text(row, 'td.drift-repaired'));
    check(found >= 1 && repaired >= 1, `drift found ${found}, repaired ${repaired}`);
    check((await text(row, 'td.breaker')) === 'closed', 'the breaker is not shown closed');
    check(/\d+ ms/.test(await text(row, 'td.latency')), 'no panel latency');
    await shot(page, '06-admin-locations');
  });

  await step('an admin rotates the key after confirming, and the client UUID changes', async () => {
    await page.goto(`${BASE}/console/keys/${KEY}`);
    const before = await text(page, '#client-uuid');
    await page.click('#actions a.action:has-text("Rotate")');
    check(page.url().endsWith(`/console/keys/${KEY}/rotate`), `no confirmation page: ${page.url()}`);
    await shot(page, '07-admin-confirm-rotate');
    await Promise.all([page.waitForURL(`${BASE}/console/keys/${KEY}`), page.click('#confirm button[type=submit]')]);
    await until(page, `/console/keys/${KEY}`, async (p) =>
      (await text(p, '#status')) === 'active' && (await text(p, '#client-uuid')) !== before,
      'the rotation reaching the view');
    console.log(`rotated ${before} -> ${await text(page, '#client-uuid')}`);
  });

  await step('the timeline shows the rotation with actors, hashes and the chain', async () => {
    const rows = page.locator('#events tr.event');
    const seen = [];
    for (let i = 0; i < await rows.count(); i++) {
      const row = rows.nth(i);
      seen.push({
        type: await text(row, 'td.type'),
        actor: await text(row, 'td.actor'),
        hash: await text(row, 'td.hash'),
      });
    }
    const requested = seen.find((e) => e.type === 'key.rotation_requested');
    const rotated = seen.find((e) => e.type === 'key.rotated');
    check(requested && requested.actor === 'admin:console', `rotation_requested: ${JSON.stringify(requested)}`);
    check(rotated && rotated.actor.startsWith('worker:'), `rotated: ${JSON.stringify(rotated)}`);
    check(seen.every((e) => /^[0-9a-f]{64}$/.test(e.hash)), 'an event without its hash');
    check((await text(page, '#chain')).includes('holds'), 'the chain does not hold');
    await shot(page, '08-admin-key-timeline');
  });

  await step('the dead letter is listed for the admin with its key', async () => {
    await page.goto(`${BASE}/console/queues`);
    const keys = await page.locator('section.dead-letters tr.dead-letter a').allTextContents();
    check(keys.includes(DEAD_KEY), `dead letters: ${keys}`);
    await shot(page, '09-admin-queues');
  });
  await admin.close();
}

async function afterRestart(browser) {
  const DEAD_KEY = env('DEAD_LETTER_KEY_ID');
  const admin = await browser.newContext();
  const page = await signIn(admin, env('ADMIN_TOKEN'));
  await step('an admin moves the dead letter back after confirming', async () => {
    await page.goto(`${BASE}/console/queues`);
    await page.click('a.move-back');
    await shot(page, '10-admin-confirm-move-back');
    await Promise.all([page.waitForURL(`${BASE}/console/queues`), page.click('#confirm button[type=submit]')]);
    await until(page, '/console/queues', async (p) => (await p.locator('section.dead-letters').count()) === 0,
      'the dead-letter queue emptying');
  });

  await step('the moved key converges to active', async () => {
    await until(page, `/console/keys/${DEAD_KEY}`, async (p) => (await text(p, '#status')) === 'active',
      'the moved key becoming active');
    await shot(page, '11-admin-key-converged');
  });

  await step('the API has an interactive page served from the binary', async () => {
    await page.goto(`${BASE}/docs/`);
    await page.waitForSelector('.swagger-ui .info .title', { timeout: 10000 });
    check((await text(page, '.swagger-ui .info .title')).includes('keyledger'), 'Swagger UI shows no keyledger document');
    await shot(page, '12-swagger-ui');
  });
  await admin.close();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // Playwright gives every launch a fresh, empty profile (--user-data-dir) of its own.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  if (PHASE === 'before-restart') await beforeRestart(browser);
  else if (PHASE === 'after-restart') await afterRestart(browser);
  else throw new Error(`unknown phase ${PHASE}`);
} catch (error) {
  console.log(`FAILED ${current}: ${error.message}`);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
