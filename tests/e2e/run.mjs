// signet end to end in a real browser: headless Debian Chromium, driven by
// playwright-core, with the Chrome DevTools Protocol's virtual
// authenticators, against the demo bank (examples/demo-bank), which relays
// to a real `signet serve`. tests/browser_e2e.rs starts both and runs this.
//
// Environment:
//   DEMO_URL         the demo bank, http://localhost:PORT (required)
//   SIGNET_BIN       the signet binary, for `signet evidence verify` (required)
//   COUNTERSIGN_PEM  the approval-countersign public key, PEM (required)
//   CHROMIUM         the browser (default /usr/bin/chromium)
//   E2E_ARTIFACTS    where downloads and failure screenshots go (default: a
//                    new directory under the system's temporary directory)
//
// Exit 0 when every check passed, 1 otherwise.

import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const DEMO_URL = required("DEMO_URL").replace(/\/$/, "");
const SIGNET_BIN = required("SIGNET_BIN");
const COUNTERSIGN_PEM = required("COUNTERSIGN_PEM");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = process.env.E2E_ARTIFACTS || mkdtempSync(join(tmpdir(), "signet-e2e-"));
mkdirSync(ARTIFACTS, { recursive: true });

// What the machine's closed network and a root user need (see
// /work/.library/env/machines/rust.md); every context gets its own fresh
// --user-data-dir through launchPersistentContext.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const STEP_TIMEOUT_MS = 45_000;

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`e2e: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

// ---------------------------------------------------------------------------
// Browsers, one per context, each with its own profile directory.

const open = []; // {name, context, page, dir, logs}

async function browserContext(name) {
  const dir = mkdtempSync(join(tmpdir(), `signet-e2e-profile-${name}-`));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    acceptDownloads: true,
    viewport: { width: 1100, height: 1400 },
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = context.pages()[0] || (await context.newPage());
  const entry = { name, context, page, dir, logs: [], apiBodies: [] };
  page.on("console", (m) => entry.logs.push(`[${name} console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => entry.logs.push(`[${name} pageerror] ${e.message}`));
  // Every answer of the bank's /api to this browser, to check that no
  // pairing secret ever reaches page JavaScript.
  page.on("response", async (r) => {
    if (new URL(r.url()).pathname.startsWith("/api/")) {
      try {
        entry.apiBodies.push({ url: r.url(), body: await r.text() });
      } catch (_) {
        /* a download or a closed page */
      }
    }
  });
  open.push(entry);
  return entry;
}

// A CDP virtual authenticator on this context's page.
async function addAuthenticator(entry, options) {
  const cdp = await entry.context.newCDPSession(entry.page);
  await cdp.send("WebAuthn.enable", { enableUI: false });
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", { options });
  return { cdp, authenticatorId };
}

async function credentialsOf({ cdp, authenticatorId }) {
  return (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials;
}

// ---------------------------------------------------------------------------
// Steps: each is logged; a failing one saves a screenshot of every open page.

let failures = 0;
let stepNo = 0;

async function step(name, fn) {
  stepNo += 1;
  const label = `${String(stepNo).padStart(2, "0")} ${name}`;
  const started = Date.now();
  try {
    await fn();
    console.log(`ok   ${label} (${Date.now() - started} ms)`);
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${label}: ${e && e.stack ? e.stack : e}`);
    for (const o of open) {
      const file = join(ARTIFACTS, `step${String(stepNo).padStart(2, "0")}-${o.name}.png`);
      try {
        await o.page.screenshot({ path: file, fullPage: true });
        console.log(`     screenshot: ${file}`);
      } catch (err) {
        console.log(`     no screenshot of ${o.name}: ${err.message}`);
      }
      for (const line of o.logs) console.log(`     ${line}`);
    }
    throw e;
  }
}

// Waits until the status line `id` is "ok" or "error"; its text if ok.
async function settled(page, id) {
  const el = page.locator(`#${id}[data-state="ok"], #${id}[data-state="error"]`);
  await el.waitFor({ state: "attached" });
  const state = await page.locator(`#${id}`).getAttribute("data-state");
  const text = await page.locator(`#${id}`).textContent();
  assert.equal(state, "ok", `#${id}: ${text}`);
  return text;
}

async function jsonOf(page, id) {
  const text = await page.locator(`#${id}`).textContent();
  try {
    return JSON.parse(text);
  } catch (_) {
    throw new Error(`#${id} holds no JSON: ${text}`);
  }
}

async function whoami(page) {
  return page.locator("#whoami").getAttribute("data-user");
}

// Registers `name` on the demo bank's page; signet's answer.
async function register(page, name) {
  await page.fill("#reg-username", name);
  await page.click("#register-btn");
  await settled(page, "register-status");
  return jsonOf(page, "register-result");
}

// Logs in (by name, or discoverable with ""); signet's answer.
async function login(page, name) {
  await page.fill("#login-username", name);
  await page.click("#login-btn");
  await settled(page, "login-status");
  await page.waitForFunction(() => document.getElementById("whoami").dataset.user !== "");
  return jsonOf(page, "login-result");
}

function verifyReceipt(file) {
  return spawnSync(SIGNET_BIN, ["evidence", "verify", "--key", COUNTERSIGN_PEM, file], {
    encoding: "utf8",
  });
}

// ---------------------------------------------------------------------------

async function main() {
  console.log(`e2e: demo bank ${DEMO_URL}, browser ${CHROMIUM}, node ${process.version}`);
  console.log(`e2e: downloads and failure screenshots go to ${ARTIFACTS}`);

  // ---- a platform passkey (CTAP2, internal, resident, UV) ----
  const alice = await browserContext("alice");
  let aliceAuth;
  await step("ctap2/internal: register alice (packed attestation)", async () => {
    aliceAuth = await addAuthenticator(alice, {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
    });
    await alice.page.goto(DEMO_URL);
    const answer = await register(alice.page, "alice");
    assert.equal(answer.fmt, "packed", JSON.stringify(answer));
    assert.equal(answer.userName, "alice");
    assert.equal(answer.userVerified, true);
    // The demo's metadata pins Chromium's batch certificate: attested,
    // software keys, so tier 3.
    assert.equal(answer.attestationTrusted, true, JSON.stringify(answer));
    assert.equal(answer.tier, 3, JSON.stringify(answer));
    assert.equal((await credentialsOf(aliceAuth)).length, 1);
  });
  await step("ctap2/internal: log in as alice with a discoverable credential", async () => {
    const answer = await login(alice.page, "");
    assert.equal(answer.userName, "alice", JSON.stringify(answer));
    assert.equal(answer.decision, "allow");
    assert.equal(answer.userVerified, true);
    assert.equal(await whoami(alice.page), "alice");
  });

  let receiptFile;
  await step("alice makes a payment and approves it; the receipt downloads", async () => {
    const page = alice.page;
    await page.fill("#pay-amount", "250.00");
    await page.selectOption("#pay-currency", "CHF");
    await page.fill("#pay-payee", "ACME AG");
    await page.click("#pay-btn");
    await settled(page, "pay-status");
    const question = await page.locator("#pay-question").textContent();
    assert.match(question, /250\.00/);
    assert.match(question, /ACME AG/);
    await page.click("#approve-btn");
    await settled(page, "approve-status");
    const approval = await jsonOf(page, "approval-result");
    assert.equal(approval.state, "approved", JSON.stringify(approval));
    const receipt = (await page.locator("#receipt").textContent()).trim();
    assert.match(receipt, /^[A-Za-z0-9_-]{100,}$/);
    assert.equal(receipt, approval.receipt);
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.click("#receipt-download"),
    ]);
    receiptFile = join(ARTIFACTS, download.suggestedFilename());
    await download.saveAs(receiptFile);
    const saved = JSON.parse(readFileSync(receiptFile, "utf8"));
    assert.equal(saved.receipt, receipt);
    assert.equal(saved.transactionId, approval.transactionId ?? saved.transactionId);
  });
  await step("the receipt verifies offline: signet evidence verify --key countersign.pem", async () => {
    const good = verifyReceipt(receiptFile);
    console.log(`     signet evidence verify: exit ${good.status}\n     ${(good.stdout + good.stderr).trim().replace(/\n/g, "\n     ")}`);
    assert.equal(good.status, 0);
    assert.match(good.stdout, /250\.00/);
    // The same receipt with one byte of the signature changed does not.
    const saved = JSON.parse(readFileSync(receiptFile, "utf8"));
    const r = saved.receipt;
    const i = r.length - 10;
    saved.receipt = r.slice(0, i) + (r[i] === "A" ? "B" : "A") + r.slice(i + 1);
    const tamperedFile = join(ARTIFACTS, "receipt-tampered.json");
    writeFileSync(tamperedFile, JSON.stringify(saved));
    const bad = verifyReceipt(tamperedFile);
    assert.equal(bad.status, 1, `tampered receipt: exit ${bad.status}: ${bad.stdout}${bad.stderr}`);
  });
  await alice.context.close();

  // ---- a U2F security key (CTAP1, USB, no resident key, no UV) ----
  const bob = await browserContext("bob");
  await step("u2f/usb: register bob (fido-u2f attestation)", async () => {
    const bobAuth = await addAuthenticator(bob, { protocol: "u2f", transport: "usb" });
    await bob.page.goto(DEMO_URL);
    const answer = await register(bob.page, "bob");
    assert.equal(answer.fmt, "fido-u2f", JSON.stringify(answer));
    assert.equal(answer.userName, "bob");
    assert.equal(answer.attestationTrusted, true, JSON.stringify(answer));
    assert.equal((await credentialsOf(bobAuth)).length, 1);
  });
  await step("u2f/usb: log in as bob by name", async () => {
    const answer = await login(bob.page, "bob");
    assert.equal(answer.userName, "bob", JSON.stringify(answer));
    assert.equal(answer.decision, "allow");
    assert.equal(await whoami(bob.page), "bob");
  });
  await bob.context.close();

  // ---- QR login: a desktop without a passkey, a phone with one ----
  const phone = await browserContext("phone");
  const desktop = await browserContext("desktop");
  await step("phone: register carol on the phone's own authenticator", async () => {
    await addAuthenticator(phone, {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
    });
    await phone.page.goto(DEMO_URL);
    const answer = await register(phone.page, "carol");
    assert.equal(answer.fmt, "packed", JSON.stringify(answer));
  });
  let link;
  let pairingId;
  await step("desktop: log in with your phone shows a QR code and its link", async () => {
    const page = desktop.page;
    await page.goto(DEMO_URL);
    assert.equal(await whoami(page), "");
    await page.fill("#qr-username", "carol");
    await page.click("#qr-btn");
    await page.locator("#qr-link:not([hidden])").waitFor();
    await page.locator("#qr-code svg").waitFor();
    link = await page.locator("#qr-link").getAttribute("href");
    pairingId = await page.locator("#qr-link").getAttribute("data-pairing-id");
    const payload = await page.locator("#qr-link").getAttribute("data-qr-payload");
    assert.ok(link.startsWith(`${DEMO_URL}/pair#pairing=${pairingId}&code=`), link);
    // signet's payload carries the same fragment on its own https link.
    assert.equal(payload.split("#")[1], link.split("#")[1]);
  });
  await step("phone: open the link, see the question, approve with the passkey", async () => {
    const page = phone.page;
    await page.goto(link);
    await settled(page, "pair-status");
    const display = await page.locator("#pair-display").textContent();
    assert.match(display, /^Log in on .*\(127\.0\.0\.1\)\?$/, display);
    assert.equal(new URL(page.url()).hash, "", "the code stays in the address bar");
    await page.click("#pair-approve");
    await settled(page, "pair-result-status");
    const approved = await jsonOf(page, "pair-result");
    assert.equal(approved.state, "approved", JSON.stringify(approved));
  });
  await step("desktop: the long poll sees the approval and logs in as carol", async () => {
    const page = desktop.page;
    const text = await settled(page, "qr-status");
    assert.equal(text, "logged in as carol");
    const login = await jsonOf(page, "qr-result");
    assert.equal(login.userName, "carol", JSON.stringify(login));
    await page.waitForFunction(() => document.getElementById("whoami").dataset.user === "carol");
    // The pairing is consumed, once: a second consume is refused.
    const state = await page.evaluate((id) => api(`/pairings/${id}`), pairingId);
    assert.equal(state.status, 200, JSON.stringify(state));
    assert.equal(state.body.state, "consumed", JSON.stringify(state));
    const again = await page.evaluate((id) => api(`/pairings/${id}/consume`, undefined, "POST"), pairingId);
    assert.equal(again.status, 409, JSON.stringify(again));
    assert.match(again.body.type, /pairing-consumed$/, JSON.stringify(again));
  });
  await step("screenshots of the end state (for people)", async () => {
    await desktop.page.screenshot({ path: join(ARTIFACTS, "desktop-logged-in-by-phone.png"), fullPage: true });
    await phone.page.screenshot({ path: join(ARTIFACTS, "phone-approved.png"), fullPage: true });
  });
  await step("no pairing secret reached either browser", async () => {
    const bodies = [...phone.apiBodies, ...desktop.apiBodies].filter((b) => b.url.includes("/api/pairings"));
    assert.ok(bodies.length >= 4, `only ${bodies.length} pairing answers seen`);
    for (const b of bodies) {
      assert.doesNotMatch(b.body, /desktopSecret|phoneSecret/, `${b.url}: ${b.body}`);
    }
  });
}

let code = 0;
try {
  await main();
} catch (_) {
  code = 1;
} finally {
  for (const o of open) {
    try {
      await o.context.close();
    } catch (_) {
      /* already closed */
    }
    rmSync(o.dir, { recursive: true, force: true });
  }
}
if (failures > 0) code = 1;
console.log(code === 0 ? `e2e: all ${stepNo} steps passed` : `e2e: FAILED at step ${stepNo}`);
process.exit(code);
