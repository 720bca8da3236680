// The chat web page through the client Service of a ChatCluster on real pods, signed in
// with JWTs: two users on different pods chat, with receipts. Not run by the browser
// step (no `.test.` in the name): tests/e2e/tests/realpods.rs runs it against its
// cluster with `node --test tests/browser/cluster.mjs`.
//
// Env (all required): SB_BROWSER_URL (the client Service, forwarded to a host port),
// SB_BROWSER_JWT_SECRET (the cluster's JWT secret), SB_BROWSER_ADMIN_TOKEN (its admin
// token, to ask which pod each user is on); CHROMIUM_PATH (default /usr/bin/chromium).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';
import { T, bubbles, delay, eventually, jwt, status, transcript } from './lib.mjs';

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/e2e/tests/realpods.rs sets it)`);
  return v;
}

const URL_ = required('SB_BROWSER_URL');
const SECRET = required('SB_BROWSER_JWT_SECRET');
const ADMIN = required('SB_BROWSER_ADMIN_TOKEN');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

let browser = null;
const pageErrors = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await Promise.race([browser.close(), delay(5000)]);
});

/** The pods `user` is connected on, from the cluster-wide presence (admin API). */
async function podsOf(user) {
  const r = await fetch(`${URL_}/api/v1/presence/${user}`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(r.status, 200, `presence of ${user}`);
  return (await r.json()).pods || [];
}

async function open(name) {
  const page = await (await browser.newContext()).newPage();
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  await page.goto(`${URL_}/`);
  await page.getByTestId('login-token').fill(jwt(name, SECRET));
  await page.getByTestId('login-button').click();
  await status(page, 'online');
  assert.equal(await page.getByTestId('me').textContent(), name);
  return page;
}

test('two users on different pods chat through the client Service', { timeout: 120_000 }, async () => {
  const tag = randomBytes(3).toString('hex');
  const erin = `erin-${tag}`;
  const finn = `finn-${tag}`;
  const pageE = await open(erin);
  const pageF = await open(finn);
  // The Service picks a pod per connection: reconnect finn until he is on another pod
  // than erin (3 pods: 10 tries miss with probability 1/3^10).
  const [podE] = await eventually(`${erin} registered`, async () => (await podsOf(erin)).length === 1 && podsOf(erin));
  let podF = null;
  for (let i = 0; i < 10; i++) {
    [podF] = await eventually(`${finn} registered`, async () => {
      const pods = await podsOf(finn);
      return pods.length === 1 && pods;
    });
    if (podF !== podE) break;
    await pageF.reload();
    await status(pageF, 'online');
    await eventually(`${finn} moved off ${podF} or back`, async () => {
      const pods = await podsOf(finn);
      return pods.length === 1;
    });
  }
  assert.notEqual(podF, podE, `${erin} and ${finn} on different pods`);
  console.log(`${erin} on ${podE}, ${finn} on ${podF}`);

  await pageE.getByTestId('new-chat-input').fill(finn);
  await pageE.getByTestId('new-chat-button').click();
  await pageF.getByTestId('new-chat-input').fill(erin);
  await pageF.getByTestId('new-chat-button').click();
  await pageE.getByTestId('message-input').fill(`across pods ${tag}`);
  await pageE.getByTestId('send-button').click();
  await bubbles(pageF, `across pods ${tag}`, erin).first().waitFor({ timeout: T });
  // finn has the conversation open: erin's bubble turns read.
  await eventually('the read receipt', async () =>
    (await transcript(pageE)).some((m) => m.text === `across pods ${tag}` && m.status === 'read'));
  await pageF.getByTestId('message-input').fill(`and back ${tag}`);
  await pageF.getByTestId('send-button').click();
  await bubbles(pageE, `and back ${tag}`, finn).first().waitFor({ timeout: T });
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
});
