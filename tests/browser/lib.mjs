// Helpers shared by the browser tests: tokens, waiting, and reading the chat page.

import { createHmac } from 'node:crypto';

export const T = 10_000; // how long any single expectation may take to come true

/** An HS256 JWT for `sub`, valid for 10 minutes. */
export function jwt(sub, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 600 })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** Resolves with `value` after `ms`, without keeping the process alive. */
export function delay(ms, value) {
  return new Promise((resolve) => setTimeout(resolve, ms, value).unref());
}

/** Polls `fn` until it returns a truthy value; fails after `timeout` ms. */
export async function eventually(what, fn, timeout = T) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits for the connection status badge to show `state`. */
export function status(page, state) {
  return page.locator(`[data-testid="status"][data-state="${state}"]`).waitFor({ timeout: T });
}

/** Message bubbles containing `text`, optionally only those from `from`. */
export function bubbles(page, text, from) {
  const sel = from ? `[data-testid="message"][data-from="${from}"]` : '[data-testid="message"]';
  return page.locator(sel, { hasText: text });
}

/** Every bubble of the open conversation, in display order. */
export function transcript(page) {
  return page.locator('[data-testid="message"]').evaluateAll((els) =>
    els.map((e) => ({
      from: e.dataset.from,
      seq: Number(e.dataset.seq),
      id: e.dataset.msgId,
      status: e.dataset.status,
      text: e.querySelector('.text').textContent,
    })));
}
