// End-to-end test of the node's chat web page in a real (headless) Chromium.
//
// Starts the real `switchboard-node` binary on a free port, opens the page as
// two users in two browser contexts, and checks typing, delivery and read
// receipts, presence, inbox replay after a sign-out, reconnection and
// catch-up after a dropped connection, the `reconnect` frame's delay, recall
// from the page, and receipts stored while the sender was away.
//
// Run: cargo build -p switchboard-node && (cd tests/browser && npm install) && node --test tests/browser/
// Env: SB_NODE_BIN (default <repo>/target/debug/switchboard-node),
//      CHROMIUM_PATH (default /usr/bin/chromium).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { T, bubbles, delay, eventually, jwt, status, transcript } from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const NODE_BIN = process.env.SB_NODE_BIN || path.join(REPO, 'target', 'debug', 'switchboard-node');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(HERE, 'artifacts');

let nodeLog = [];     // output lines of every node, for failure messages
let baseUrl = '';
let browser = null;
const pages = new Map(); // name -> page, for failure screenshots
const pageErrors = [];
const children = [];     // every node started, stopped in `after`

// ---- the node --------------------------------------------------------------

const ANSI = /\x1b\[[0-9;]*m/g;

/** Starts a node with `extraEnv` on top of a clean environment; resolves with its URL. */
function startNode(extraEnv = {}) {
  // A clean environment for the node: no SB_* settings from the caller's shell
  // (a JWT secret or admin token there would turn dev auth off).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SB_')));
  Object.assign(env, { SB_LOG: 'info', NO_COLOR: '1', RUST_LOG_STYLE: 'never' }, extraEnv);
  const child = spawn(NODE_BIN, ['--listen', '127.0.0.1:0', '--drain-timeout', '1s'], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`node did not report its port within ${T} ms:\n${nodeLog.join('\n')}`)), T);
    const onData = (chunk) => {
      for (const raw of chunk.toString('utf8').split('\n')) {
        const line = raw.replace(ANSI, '').trimEnd();
        if (!line) continue;
        nodeLog.push(line);
        const m = /listening on http:\/\/(127\.0\.0\.1:\d+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve({ child, url: `http://${m[1]}` });
        }
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${NODE_BIN}: ${e.message} (build it: cargo build -p switchboard-node)`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`node exited early (code ${code}, signal ${signal}):\n${nodeLog.join('\n')}`));
    });
  });
}

async function stopNode(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  if ((await Promise.race([exited, delay(5000, 'timeout')])) === 'timeout') {
    child.kill('SIGKILL');
    await exited;
  }
}

/** The raw HTTP response to a WebSocket upgrade of `path` (fetch may not send upgrade headers). */
function upgradeResponse(url, path) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port), hostname, () => {
      sock.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    });
    let got = '';
    sock.on('data', (d) => {
      got += d.toString('utf8');
      if (/\r\n\r\n[\s\S]*\}/.test(got)) {
        sock.destroy();
        resolve(got);
      }
    });
    sock.on('error', reject);
    sock.setTimeout(T, () => { sock.destroy(); reject(new Error(`no answer to the upgrade: ${got}`)); });
  });
}

// ---- helpers ---------------------------------------------------------------

async function newPage(context, name) {
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  pages.set(name, page);
  return page;
}

async function signIn(page, user, { url = baseUrl, token } = {}) {
  await page.goto(`${url}/`);
  if (token) await page.getByTestId('login-token').fill(token);
  else await page.getByTestId('login-user').fill(user);
  await page.getByTestId('login-button').click();
  await status(page, 'online');
  assert.equal(await page.getByTestId('me').textContent(), user);
}

async function bubbleStatus(page, text, state) {
  await page.locator(`[data-testid="message"][data-status="${state}"]`, { hasText: text }).waitFor({ timeout: T });
}

/** Records every data-status change of message bubbles, from now on. */
function watchStatuses(page) {
  return page.evaluate(() => {
    window.__statusLog = [];
    new MutationObserver((records) => {
      for (const r of records) window.__statusLog.push([r.target.dataset.clientMsgId, r.oldValue]);
    }).observe(document.getElementById('messages'), {
      subtree: true, attributes: true, attributeFilter: ['data-status'], attributeOldValue: true,
    });
  });
}

/** The statuses a bubble went through since watchStatuses, ending with the current one. */
async function statusHistory(page, bubble) {
  const cid = await bubble.getAttribute('data-client-msg-id');
  assert.ok(cid, 'own bubbles carry their client_msg_id');
  const log = await page.evaluate(() => window.__statusLog);
  return [...log.filter(([id]) => id === cid).map(([, old]) => old), await bubble.getAttribute('data-status')];
}

// ---- the test ----------------------------------------------------------------

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  ({ url: baseUrl } = await startNode());
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  try {
    if (browser) await Promise.race([browser.close(), delay(5000)]);
  } finally {
    browser = null;
    await Promise.all(children.map(stopNode));
  }
});

test('two users chat through the web page', { timeout: 60_000 }, async (t) => {
  let failed = true;
  t.after(async () => {
    if (!failed) return;
    // Leave evidence for whoever reads the failure.
    for (const [name, page] of pages) {
      if (!page.isClosed()) await page.screenshot({ path: path.join(ARTIFACTS, `failure-${name}.png`) }).catch(() => {});
    }
    console.error(`node log:\n${nodeLog.slice(-40).join('\n')}`);
  });

  const tag = randomBytes(3).toString('hex');
  const alice = `alice-${tag}`;
  const bob = `bob-${tag}`;
  const viewport = { width: 1000, height: 640 };

  // The page serves, and the sign-in form is shown to a new visitor.
  const ctxA = await browser.newContext({ viewport });
  const pageA = await newPage(ctxA, 'alice');
  // Alice's WebSocket goes through a pass-through proxy, so the test can cut
  // it and inject server frames later on.
  const wsOpened = [];
  const routes = [];
  let cutOff = false;
  await pageA.routeWebSocket(/\/ws\?/, (ws) => {
    wsOpened.push(Date.now());
    if (cutOff) {
      ws.close({ code: 4999, reason: 'test: network down' });
      return;
    }
    routes.push({ ws, server: ws.connectToServer() });
  });
  await signIn(pageA, alice);

  let ctxB = await browser.newContext({ viewport });
  let pageB = await newPage(ctxB, 'bob');
  await signIn(pageB, bob);

  // Alice sees Bob online and opens the conversation; Bob opens it too.
  await pageA.locator(`[data-testid="online-user"][data-user="${bob}"]`).click({ timeout: T });
  await pageA.getByTestId('conversation-title').filter({ hasText: bob }).waitFor({ timeout: T });
  await pageA.locator('[data-testid="conversation-presence"][data-online="true"]').waitFor({ timeout: T });
  await pageB.locator(`[data-testid="online-user"][data-user="${alice}"]`).click({ timeout: T });
  await pageB.getByTestId('conversation-title').filter({ hasText: alice }).waitFor({ timeout: T });

  // Alice types: Bob sees it.
  const hello = `Hello Bob <b>${tag}</b> & co`;
  await pageA.getByTestId('message-input').pressSequentially(hello.slice(0, 8), { delay: 15 });
  await pageB.getByTestId('typing-indicator').filter({ hasText: `${alice} is typing` }).waitFor({ timeout: T });

  // Alice sends with Enter: Bob gets it, the indicator goes away, and Alice's
  // bubble goes sent -> delivered (Bob's ack) -> read (Bob has it open).
  await watchStatuses(pageA);
  await pageA.getByTestId('message-input').pressSequentially(hello.slice(8));
  await pageA.getByTestId('message-input').press('Enter');
  const helloAtBob = bubbles(pageB, hello, alice);
  await helloAtBob.waitFor({ timeout: T });
  // Markup in a message is shown as text, not interpreted.
  assert.equal(await helloAtBob.locator('b').count(), 0, 'message content must not be parsed as HTML');
  await pageB.getByTestId('typing-indicator').waitFor({ state: 'hidden', timeout: T });
  assert.equal(await pageA.getByTestId('message-input').inputValue(), '', 'the input is cleared after sending');
  const helloAtAlice = bubbles(pageA, hello, alice);
  await bubbleStatus(pageA, hello, 'read');
  assert.deepEqual(await statusHistory(pageA, helloAtAlice), ['pending', 'sent', 'delivered', 'read']);
  assert.equal(await helloAtAlice.getAttribute('data-msg-id'), await helloAtBob.getAttribute('data-msg-id'));
  assert.match(await helloAtAlice.getAttribute('data-msg-id'), /^\d+$/);

  // Bob replies with the Send button: Alice sees it, and Bob sees it read.
  const reply = `Hi Alice ${tag}`;
  await pageB.getByTestId('message-input').fill(reply);
  await pageB.getByTestId('send-button').click();
  await bubbles(pageA, reply, bob).waitFor({ timeout: T });
  await bubbleStatus(pageB, reply, 'read');

  // Bob goes away. Alice sees him offline and sends two messages, which stay
  // "sent": nobody has received them.
  await ctxB.close();
  pages.delete('bob');
  // "last seen" comes only with a live `presence` frame, not from the online poll.
  await pageA.locator('[data-testid="conversation-presence"][data-online="false"]', { hasText: 'last seen' })
    .waitFor({ timeout: T });
  await pageA.locator(`[data-testid="online-user"][data-user="${bob}"]`).waitFor({ state: 'detached', timeout: T });
  const away = [`First while you were away ${tag}`, `Second while you were away ${tag}`];
  for (const text of away) {
    await pageA.getByTestId('message-input').fill(text);
    await pageA.getByTestId('message-input').press('Enter');
  }
  for (const text of away) await bubbleStatus(pageA, text, 'sent');

  // Bob signs in again in a fresh browser: the two messages are replayed from
  // his inbox (an unread badge on the chat), and opening the chat loads the
  // earlier history too, in order, each message once.
  ctxB = await browser.newContext({ viewport });
  pageB = await newPage(ctxB, 'bob');
  await signIn(pageB, bob);
  const chatWithAlice = pageB.locator(`[data-testid="conversation-item"][data-user="${alice}"]`);
  await chatWithAlice.locator('[data-testid="unread-badge"]').filter({ hasText: /^2$/ }).waitFor({ timeout: T });
  for (const text of away) await bubbleStatus(pageA, text, 'delivered');
  await chatWithAlice.click();
  await eventually('four messages in order at Bob', async () => {
    const got = await transcript(pageB);
    const texts = got.map((m) => m.text);
    const want = [hello, reply, ...away];
    return JSON.stringify(texts) === JSON.stringify(want) && got.every((m, i) => m.seq === i + 1) ? got : null;
  });
  await chatWithAlice.locator('[data-testid="unread-badge"]').waitFor({ state: 'hidden', timeout: T });
  for (const text of away) await bubbleStatus(pageA, text, 'read');

  // Alice's connection drops and cannot come back for a while; Bob writes in
  // the meantime. When the network returns, Alice reconnects on her own and
  // catches up, seeing the message exactly once (inbox replay and resume
  // both carry it).
  cutOff = true;
  const live = routes.at(-1);
  await live.server.close({ code: 1001, reason: 'test: cut' });
  await live.ws.close({ code: 4999, reason: 'test: cut' });
  await status(pageA, 'offline');
  await pageB.locator('[data-testid="conversation-presence"][data-online="false"]').waitFor({ timeout: T });
  const missed = `Did you miss this? ${tag}`;
  await pageB.getByTestId('message-input').fill(missed);
  await pageB.getByTestId('send-button').click();
  await bubbleStatus(pageB, missed, 'sent');
  assert.equal(await bubbles(pageA, missed).count(), 0);
  cutOff = false;
  await status(pageA, 'online');
  await bubbles(pageA, missed, bob).waitFor({ timeout: T });
  await bubbleStatus(pageB, missed, 'read');
  await eventually('the missed message shown exactly once', async () => (await bubbles(pageA, missed).count()) === 1);
  const aliceView = await transcript(pageA);
  assert.deepEqual(aliceView.map((m) => m.text), [hello, reply, ...away, missed]);
  assert.equal(new Set(aliceView.map((m) => m.id)).size, aliceView.length, 'no duplicate message ids');

  // A `reconnect` frame (a draining node) makes the page leave and come back
  // after the delay it asks for, not sooner.
  const before = wsOpened.length;
  const asked = Date.now();
  routes.at(-1).ws.send(JSON.stringify({ type: 'reconnect', reason: 'draining', delay_ms: 1500 }));
  await status(pageA, 'offline');
  await eventually('a new connection after the reconnect frame', () => wsOpened.length > before);
  const waited = wsOpened[before] - asked;
  assert.ok(waited >= 1400, `reconnected after ${waited} ms, before the 1500 ms asked for`);
  assert.ok(waited < 5000, `reconnected only after ${waited} ms`);
  await status(pageA, 'online');

  // Signed-in state survives a reload (remembered in localStorage), and
  // opening the chat again loads its history from the server.
  await pageA.reload();
  await status(pageA, 'online');
  assert.equal(await pageA.getByTestId('me').textContent(), alice);
  await pageA.getByTestId('new-chat-input').fill(bob);
  await pageA.getByTestId('new-chat-button').click();
  await eventually('history loaded after a reload', async () =>
    JSON.stringify((await transcript(pageA)).map((m) => m.text)) === JSON.stringify([hello, reply, ...away, missed]));

  // Leave both pages on the conversation for the screenshots.
  await pageB.getByTestId('message-input').fill(`See you ${tag}`);
  await pageB.getByTestId('send-button').click();
  await bubbleStatus(pageB, `See you ${tag}`, 'read');
  await pageA.getByTestId('message-input').pressSequentially('Bye', { delay: 10 });
  await pageB.getByTestId('typing-indicator').filter({ hasText: `${alice} is typing` }).waitFor({ timeout: T });
  await pageA.screenshot({ path: path.join(ARTIFACTS, 'alice.png') });
  await pageB.screenshot({ path: path.join(ARTIFACTS, 'bob.png') });

  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
  failed = false;
});

test('on a JWT node the page signs in with a token that never travels in the URL', { timeout: 60_000 }, async (t) => {
  const secret = randomBytes(24).toString('hex');
  const { url } = await startNode({ SB_JWT_SECRET: secret, SB_DEV_AUTH: 'false' });
  const tag = randomBytes(3).toString('hex');
  const carol = `carol-${tag}`;
  const dave = `dave-${tag}`;
  let failed = true;
  t.after(async () => {
    if (failed) console.error(`node log:\n${nodeLog.slice(-40).join('\n')}`);
  });
  // Dev sign-in is refused by this node: the upgrade fails, the page stays offline.
  const refused = await upgradeResponse(url, `/ws?userId=${carol}`);
  assert.match(refused, /^HTTP\/1\.1 401/);
  assert.match(refused, /"code":"unauthorized"/);

  const urls = [];
  const ctxC = await browser.newContext();
  const pageC = await newPage(ctxC, 'carol-jwt');
  pageC.on('websocket', (ws) => urls.push(ws.url()));
  await signIn(pageC, carol, { url, token: jwt(carol, secret) });
  const ctxD = await browser.newContext();
  const pageD = await newPage(ctxD, 'dave-jwt');
  pageD.on('websocket', (ws) => urls.push(ws.url()));
  await signIn(pageD, dave, { url, token: jwt(dave, secret) });

  // The admin API is off on this node (no admin token): no online list, no error.
  const admin = await fetch(`${url}/api/v1/online`);
  assert.equal(admin.status, 403);
  assert.equal((await admin.json()).code, 'admin_disabled');

  await pageC.getByTestId('new-chat-input').fill(dave);
  await pageC.getByTestId('new-chat-button').click();
  await pageD.getByTestId('new-chat-input').fill(carol);
  await pageD.getByTestId('new-chat-button').click();
  await pageC.getByTestId('message-input').fill(`hello over jwt ${tag}`);
  await pageC.getByTestId('send-button').click();
  await bubbles(pageD, `hello over jwt ${tag}`, carol).first().waitFor({ timeout: T });
  await eventually('the delivered receipt', async () =>
    (await transcript(pageC)).some((m) => m.text === `hello over jwt ${tag}` && ['delivered', 'read'].includes(m.status)));

  // A reload keeps the session (token in sessionStorage) and reconnects.
  await pageC.reload();
  await status(pageC, 'online');
  assert.equal(await pageC.getByTestId('me').textContent(), carol);

  assert.ok(urls.length >= 3, `sockets seen: ${urls}`);
  for (const u of urls) assert.ok(!/token|eyJ/.test(u), `a token in a WebSocket URL: ${u}`);
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
  failed = false;
});

test('a sender recalls a message from the page and learns receipts stored while away', { timeout: 60_000 }, async (t) => {
  const tag = randomBytes(3).toString('hex');
  const erin = `erin-${tag}`;
  const finn = `finn-${tag}`;
  let failed = true;
  t.after(async () => {
    if (failed) console.error(`node log:\n${nodeLog.slice(-40).join('\n')}`);
  });
  const viewport = { width: 1000, height: 640 };
  const ctxE = await browser.newContext({ viewport });
  const pageE = await newPage(ctxE, 'erin');
  await signIn(pageE, erin);
  const ctxF = await browser.newContext({ viewport });
  const pageF = await newPage(ctxF, 'finn');
  await signIn(pageF, finn);
  await pageE.locator(`[data-testid="online-user"][data-user="${finn}"]`).click({ timeout: T });
  await pageF.locator(`[data-testid="online-user"][data-user="${erin}"]`).click({ timeout: T });

  // Erin sends two messages and recalls the first: on both pages its bubble
  // stays, marked recalled, without its content.
  const oops = `oops ${tag}`;
  const keep = `keep ${tag}`;
  for (const text of [oops, keep]) {
    await pageE.getByTestId('message-input').fill(text);
    await pageE.getByTestId('message-input').press('Enter');
    await bubbles(pageF, text, erin).waitFor({ timeout: T });
  }
  await bubbleStatus(pageE, oops, 'read');
  await bubbles(pageE, oops, erin).getByTestId('recall').click({ timeout: T });
  for (const page of [pageE, pageF]) {
    await page.locator(`[data-testid="message"][data-recalled="true"][data-from="${erin}"]`).waitFor({ timeout: T });
    await eventually('the content gone', async () => (await bubbles(page, oops).count()) === 0);
  }
  assert.equal(await bubbles(pageF, keep, erin).count(), 1, 'only that message');

  // Receipts are stored: Finn goes away, Erin sends and goes away too; Finn
  // comes back (the inbox replays it: delivered) and reads it; Erin comes back
  // on a fresh page and sees it read, from the history page alone.
  await ctxF.close();
  const late = `late ${tag}`;
  await pageE.getByTestId('message-input').fill(late);
  await pageE.getByTestId('message-input').press('Enter');
  await bubbleStatus(pageE, late, 'sent');
  await ctxE.close();
  const ctxF2 = await browser.newContext({ viewport });
  const pageF2 = await newPage(ctxF2, 'finn-again');
  await signIn(pageF2, finn);
  await pageF2.getByTestId('new-chat-input').fill(erin);
  await pageF2.getByTestId('new-chat-button').click();
  await bubbles(pageF2, late, erin).waitFor({ timeout: T });
  // The recalled message shows as recalled in Finn's history too.
  await pageF2.locator(`[data-testid="message"][data-recalled="true"]`).waitFor({ timeout: T });
  await delay(500); // the read receipt leaves
  await ctxF2.close();
  const ctxE2 = await browser.newContext({ viewport });
  const pageE2 = await newPage(ctxE2, 'erin-again');
  await signIn(pageE2, erin);
  await pageE2.getByTestId('new-chat-input').fill(finn);
  await pageE2.getByTestId('new-chat-button').click();
  await bubbleStatus(pageE2, late, 'read');
  await ctxE2.close();
  assert.deepEqual(pageErrors, [], 'no uncaught errors in the pages');
  failed = false;
});
