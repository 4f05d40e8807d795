// Headless Chromium against a running gateway: /docs loads, lists the refund
// operations, and "Try it out" of GET /healthz works.
// Usage: node docs.test.mjs http://127.0.0.1:PORT
import { chromium } from "playwright-core";

const base = process.argv[2];
if (!base) throw new Error("usage: node docs.test.mjs BASE_URL");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => { console.error("docs test FAILED: " + msg); await browser.close(); process.exit(1); };
try {
  const page = await browser.newPage();
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });
  await page.goto(`${base}/docs/`, { waitUntil: "networkidle" });
  await page.waitForSelector("#operations-refunds-create", { timeout: 15000 });
  const text = await page.textContent("body");
  for (const needle of ["/v1/refunds", "/v1/refunds/{id}", "/v1/refunds/{id}/receipt", "/ipn/pockyt", "/ipn/pay10/{account}", "/healthz"]) {
    if (!text.includes(needle)) await fail(`${needle} not listed`);
  }
  const op = "#operations-operations-healthz";
  await page.click(`${op} .opblock-summary`);
  await page.click(`${op} button.try-out__btn`);
  await page.click(`${op} button.execute`);
  const status = await page.waitForSelector(`${op} .live-responses-table tr.response .response-col_status`, { timeout: 15000 });
  const code = (await status.textContent()).trim();
  if (!code.startsWith("200")) await fail(`Try it out of GET /healthz answered ${code}`);
  const body = await page.textContent(`${op} .live-responses-table tr.response .response-col_description`);
  if (!body.includes("ok")) await fail(`unexpected /healthz body: ${body}`);
  if (external.length) await fail(`the page fetched from outside the gateway: ${external.join(", ")}`);
  console.log("docs test OK: page loads, lists the refund operations, Try it out of GET /healthz answered 200");
} catch (e) {
  await fail(String(e));
}
await browser.close();
