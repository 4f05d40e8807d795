// The operators' console in headless Chromium, against a gateway in demo mode:
// sign in (a POS key refused), find a refund by its transaction number, open
// it and see its timeline, resolve a flagged refund with a note and see the
// audit line, a form posted without its CSRF token refused, a <script> in a
// reason shown as text, times in the browser's time zone, keyboard access,
// sign out and the session dead; an axe-core scan of every page (no serious
// or critical violation) and a screenshot of each at 1280 px and 390 px.
//
// Usage: RG_POS_KEY=... RG_OPS_KEY=... node console.test.mjs BASE_URL [SHOTS_DIR]
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";

const base = process.argv[2];
const shots = process.argv[3] || "console-screenshots";
const posKey = process.env.RG_POS_KEY;
const opsKey = process.env.RG_OPS_KEY;
if (!base || !posKey || !opsKey) throw new Error("usage: RG_POS_KEY=... RG_OPS_KEY=... node console.test.mjs BASE_URL [SHOTS_DIR]");
mkdirSync(shots, { recursive: true });
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => { console.error("console test FAILED: " + msg); await browser.close(); process.exit(1); };
const check = async (cond, msg) => { if (!cond) await fail(msg); };

async function api(method, path, body, key) {
  const headers = { "content-type": "application/json", "idempotency-key": `console-test-${Date.now()}-${Math.random()}` };
  if (key) headers.authorization = `Bearer ${key}`;
  const r = await fetch(base + path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  if (!r.ok) await fail(`${method} ${path} answered ${r.status}: ${text}`);
  return json;
}

// A flagged refund: a sale, a refund whose reason holds a script, the
// provider's record edited (the sandbox's dashboard), and the day's
// reconciliation, which finds the amount mismatch and flags it.
const sale = await api("POST", "/sandbox/pockyt/payments", { amount: "10.00", currency: "USD", status: "success" });
const tx = sale.transactionNo;
const xss = "<script>window.__xss=1</script>";
const refund = await api("POST", "/v1/refunds", {
  provider: "pockyt", transaction_no: tx, amount: "2.00", currency: "USD", reason: xss,
  metadata: { till: "<img src=x onerror=\"window.__xss=2\">" },
}, posKey);
await api("PATCH", `/sandbox/pockyt/refunds/${refund.provider_refund_id}`, { amount: "3.00" });
const today = new Date().toISOString().slice(0, 10);
const report = await api("POST", "/v1/operator/reconciliations", { account: "pockyt-sandbox", date: today }, opsKey);
const flagged = await api("GET", `/v1/operator/refunds/${refund.id}`, null, opsKey);
await check(flagged.review_reason && flagged.review_reason.includes(report.id), `the refund is not flagged: ${JSON.stringify(flagged)}`);

const external = [];
async function axeScan(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => await window.axe.run(document));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    await fail(`${name}: axe found ${bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`).join("; ")}`);
  }
}
async function visit(page, path, name, width) {
  const resp = await page.goto(base + path, { waitUntil: "networkidle" });
  await check(resp.status() < 400, `${path} answered ${resp.status()}`);
  const csp = resp.headers()["content-security-policy"] || "";
  await check(csp.includes("default-src 'self'") && csp.includes("frame-ancestors 'none'"), `${path}: CSP ${csp}`);
  await axeScan(page, `${name} at ${width}px`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await check(overflow <= 1, `${name} at ${width}px is wider than the screen by ${overflow}px`);
  await page.screenshot({ path: `${shots}/${name}-${width}.png`, fullPage: true });
}

try {
  // The desk: 1280 px, New York time. bypassCSP lets axe's script in; it
  // also means a script that escaping let through would run, which the
  // checks below would see.
  const desk = await browser.newContext({ viewport: { width: 1280, height: 900 }, timezoneId: "America/New_York", bypassCSP: true });
  const page = await desk.newPage();
  page.on("request", (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });

  // Sign-in: the POS key is refused with a reason, the operator key works.
  await page.goto(`${base}/console`, { waitUntil: "networkidle" });
  await check(page.url().includes("/console/sign-in"), `not sent to the sign-in: ${page.url()}`);
  await axeScan(page, "sign-in at 1280px");
  await page.screenshot({ path: `${shots}/sign-in-1280.png`, fullPage: true });
  await page.fill("#key", posKey);
  await page.click("button[type=submit]");
  await check((await page.textContent("body")).includes("That is a POS key"), "a POS key was not refused with a reason");
  await page.fill("#key", opsKey);
  await Promise.all([page.waitForURL(`${base}/console`), page.keyboard.press("Enter")]);
  await check((await page.textContent("header")).includes("Signed in as"), "not signed in");
  await visit(page, "/console", "overview", 1280);
  // Keyboard: the first Tab stop skips to the content; Enter follows it.
  await page.keyboard.press("Tab");
  await check((await page.evaluate(() => document.activeElement.textContent)) === "Skip to content", "the first Tab stop is not the skip link");
  await page.keyboard.press("Enter");
  await check((await page.evaluate(() => document.activeElement.id)) === "main", "the skip link does not move the focus to the content");

  // Find the refund by its transaction number and open it.
  await visit(page, "/console/refunds", "refunds", 1280);
  await page.fill("#f-transaction_no", tx);
  await Promise.all([page.waitForURL(/transaction_no=/), page.click("form.search button[type=submit]")]);
  await Promise.all([page.waitForURL(`${base}/console/refunds/${refund.id}`), page.click(`a[href="/console/refunds/${refund.id}"]`)]);
  const items = await page.locator("ol.timeline li").count();
  await check(items >= 3, `the timeline has ${items} lines`);
  const body = await page.textContent("main");
  await check(body.includes(xss), "the reason is not shown as text");
  await check(body.includes("Needs review"), "the flag is not shown");
  await check((await page.evaluate(() => window.__xss)) === undefined, "a script from the refund ran");
  const time = page.locator("main time").first();
  const shown = await time.textContent();
  await check(!shown.endsWith("UTC") && (await time.getAttribute("title")).startsWith("UTC: "), `times are not local with UTC on hover: ${shown}`);
  await visit(page, `/console/refunds/${refund.id}`, "refund", 1280);

  // A form posted without its CSRF token is refused and changes nothing.
  const forged = await page.evaluate(async (id) => {
    const r = await fetch(`/console/refunds/${id}/resolve`, { method: "POST", body: new URLSearchParams({ status: "succeeded", note: "forged" }) });
    return { status: r.status, text: await r.text() };
  }, refund.id);
  await check(forged.status === 403 && forged.text.includes("nothing was changed"), `a form without its token answered ${forged.status}`);

  // Resolve the flagged refund with a note: the audit line appears.
  await page.fill("#note", "amount checked in the Pockyt dashboard: 2.00, the 3.00 was a test edit");
  await Promise.all([page.waitForURL(/done=resolved/), page.click("form.resolve button[type=submit]")]);
  const after = await page.textContent("main");
  await check(after.includes("Resolved:"), "no confirmation after resolving");
  const last = await page.locator("ol.timeline li").last().textContent();
  await check(last.includes("operator") && last.includes("the 3.00 was a test edit"), `the audit line is missing: ${last}`);
  await check((await page.locator(".flag").count()) === 0, "the flag is still shown");
  await page.screenshot({ path: `${shots}/refund-resolved-1280.png`, fullPage: true });

  // The other pages.
  await visit(page, "/console/review", "review", 1280);
  await visit(page, "/console/webhooks", "webhooks", 1280);
  if (process.env.RG_EXPECT_DELIVERIES) {
    // The gateway's demo client sends its events to a dead endpoint: the
    // deliveries are retried, each attempt listed; one is redelivered now.
    await page.goto(`${base}/console/webhooks?state=pending`, { waitUntil: "networkidle" });
    const attempts = await page.locator("ol.attempts li").count();
    await check(attempts >= 1, "no delivery attempt is listed for the dead endpoint");
    await Promise.all([page.waitForURL(/done=redelivered/), page.locator(".delivery button[type=submit]").first().click()]);
    await check((await page.textContent("main")).includes("scheduled for delivery again"), "no confirmation after redelivering");
    await visit(page, "/console/webhooks?state=pending", "webhooks-pending", 1280);
  }
  await visit(page, "/console/reconciliations", "reconciliations", 1280);
  await visit(page, `/console/reconciliations/${report.id}`, "reconciliation", 1280);
  const csv = await page.request.get(`${base}/console/reconciliations/${report.id}/csv`);
  await check(csv.status() === 200 && (csv.headers()["content-type"] || "").startsWith("text/csv"), `CSV download answered ${csv.status()}`);
  await check((await csv.text()).includes(refund.id), "the CSV lacks the refund");

  // The phone: 390 px, every page.
  const cookies = await desk.cookies();
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, bypassCSP: true });
  await phone.addCookies(cookies);
  const small = await phone.newPage();
  small.on("request", (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });
  for (const [path, name] of [["/console/sign-in", "sign-in"], ["/console", "overview"], ["/console/review", "review"], ["/console/refunds", "refunds"],
    [`/console/refunds/${refund.id}`, "refund"], ["/console/webhooks", "webhooks"], ["/console/reconciliations", "reconciliations"],
    [`/console/reconciliations/${report.id}`, "reconciliation"]]) {
    await visit(small, path, name, 390);
  }

  // Sign out: the session no longer works, in this browser or any other.
  await Promise.all([page.waitForURL(/signed_out=1/), page.click("header button[type=submit]")]);
  await check((await page.textContent("main")).includes("You are signed out."), "no sign-out confirmation");
  await page.goto(`${base}/console`, { waitUntil: "networkidle" });
  await check(page.url().includes("/console/sign-in"), "the console still opens after sign-out");
  await small.goto(`${base}/console`, { waitUntil: "networkidle" });
  await check(small.url().includes("/console/sign-in"), "the copied session cookie still works after sign-out");

  await check(external.length === 0, `the console fetched from outside the gateway: ${external.join(", ")}`);
  console.log(`console test OK: sign-in, search, timeline, resolution with audit line, CSRF refusal, escaping, local times, sign-out; axe clean and screenshots of 8 pages at 1280 px and 8 at 390 px in ${shots}`);
} catch (e) {
  await fail(String(e && e.stack || e));
}
await browser.close();
