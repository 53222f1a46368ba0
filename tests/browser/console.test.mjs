// The console in a real browser (README "Console"): Playwright (playwright-core) driving Debian's
// Chromium against `warmline sandbox` (the gateway with the project's fake Realtime server and
// Twilio simulator). Logs in, creates a business, chats with it through the web chat widget on
// a page of another origin, places a simulated call, watches it live with
// its transcript, opens its page and timeline, plays its recording, and checks every page with
// axe-core (no serious or critical violation). Screenshots of each page go to $SHOTS_DIR.
//
//   WARMLINE_BIN=target/debug/warmline node console.test.mjs
//
// Run by scripts/browser-test.sh (which installs Chromium and these packages).

import { spawn } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import readline from "node:readline";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const BIN = process.env.WARMLINE_BIN;
const SHOTS = process.env.SHOTS_DIR || "shots";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const EMAIL = "admin@example.com";
const PASSWORD = "browser-test-password";
const NUMBER = "+15005550006";
const CALLER = "+14155550100";

if (!BIN) throw new Error("WARMLINE_BIN: the warmline binary to test");
mkdirSync(SHOTS, { recursive: true });

const step = (what) => console.log(`browser: ${what}`);

// The sandbox, driven through its standard input.
const sandbox = spawn(BIN, ["sandbox", "--listen", "127.0.0.1:0", "--admin", EMAIL], {
  env: { ...process.env, WARMLINE_SANDBOX_PASSWORD: PASSWORD },
  stdio: ["pipe", "pipe", "inherit"],
});
const waiting = [];
const seen = [];
readline.createInterface({ input: sandbox.stdout }).on("line", (line) => {
  console.log(`sandbox: ${line}`);
  seen.push(line);
  for (const w of waiting.splice(0)) {
    if (!w(line)) waiting.push(w);
  }
});
sandbox.on("exit", (code) => {
  if (code !== 0 && code !== null) console.error(`sandbox exited with ${code}`);
});
function line(match, ms = 60000) {
  const found = seen.find(match);
  if (found) return Promise.resolve(found);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sandbox: no line matching ${match} in ${ms} ms`)), ms);
    waiting.push((l) => {
      if (!match(l)) return false;
      clearTimeout(timer);
      resolve(l);
      return true;
    });
  });
}

let browser;
const problems = [];
async function axe(page, name) {
  await page.evaluate(AXE);
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    await axe.run(document, { resultTypes: ["violations"] }),
  );
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of bad) {
    problems.push(`${name}: axe ${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
  }
  const minor = result.violations.length - bad.length;
  step(`${name}: axe ${bad.length} serious or critical, ${minor} minor`);
}
async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}
async function fits(page, name) {
  const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (over > 1) problems.push(`${name}: ${over} px wider than a phone's screen`);
}
function expect(cond, what) {
  if (!cond) throw new Error(what);
}

try {
  const ready = await line((l) => l.startsWith("ready "));
  const consoleUrl = ready.split(" ")[1];
  const base = new URL(consoleUrl).origin;
  step(`sandbox at ${base}`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--mute-audio"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // The wrong password (401) and the invalid form (422) are answered so on purpose.
    const expected = /status of (401|422)/.test(m.text());
    if (m.type() === "error" && !expected) problems.push(`console error: ${m.text()} at ${page.url()}`);
    if (/Content Security Policy/.test(m.text())) problems.push(`CSP: ${m.text()}`);
  });

  // Not logged in: the log-in page.
  await page.goto(`${base}/console`);
  expect(page.url().includes("/console/login"), `not sent to the log-in page: ${page.url()}`);
  await axe(page, "login");
  await shot(page, "login");
  await page.fill("#email", EMAIL);
  await page.fill("#password", "not the password");
  await page.click("button[type=submit]");
  expect((await page.textContent("[role=alert]")).includes("Wrong email or password"), "a wrong password was accepted");
  await page.fill("#password", PASSWORD);
  await page.click("button[type=submit]");
  await page.waitForURL(`${base}/console`);
  step("logged in");
  await axe(page, "overview");
  await shot(page, "overview");

  // A business, through the form (with a validation error first).
  await page.click("text=Businesses");
  await page.click("text=New business");
  await page.fill("#f-name", "Bright Smile Dental");
  await page.fill("#f-phone_numbers", "555-0100");
  await page.fill("#f-instructions", "You are the receptionist of Bright Smile Dental. Be brief and warm.");
  await page.fill("#f-greeting", "Thanks for calling Bright Smile Dental, how can I help?");
  await page.selectOption("#f-voice", "marin");
  await page.selectOption("#f-recording", "on");
  await page.click("form.business button[type=submit]");
  const error = await page.textContent("#form-error");
  expect(error.includes("phone_numbers"), `no validation message naming the field: ${error}`);
  await axe(page, "business-invalid");
  await page.fill("#f-phone_numbers", NUMBER);
  await page.click("form.business button[type=submit]");
  await page.waitForSelector("text=Saved.");

  // The business's web chat widget on a page of another origin (another port), as a site
  // embeds it: one script tag with the chat key.
  const clients = await (await page.request.get(`${base}/admin/api/v1/clients`)).json();
  const chatKey = clients.find((c) => c.name === "Bright Smile Dental").chat_key;
  expect(/^wlc_/.test(chatKey), `no chat key: ${chatKey}`);
  const site = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Bright Smile Dental</title>
      <meta name="viewport" content="width=device-width, initial-scale=1"></head>
      <body><main><h1>Bright Smile Dental</h1><p>Family dentistry.</p></main>
      <script src="${base}/chat/widget.js" data-warmline-chat="${chatKey}" defer></script></body></html>`);
  });
  await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
  const siteUrl = `http://127.0.0.1:${site.address().port}/`;
  const chat = await context.newPage();
  chat.on("pageerror", (e) => problems.push(`widget page error: ${e.message}`));
  chat.on("console", (m) => {
    if (m.type() === "error") problems.push(`widget console error: ${m.text()}`);
  });
  await chat.goto(siteUrl);
  await chat.click("button.launch");
  await chat.fill("#warmline-chat-input", "Do you take walk-ins?");
  await chat.press("#warmline-chat-input", "Enter");
  await chat.waitForSelector("li.agent >> text=Noted: Do you take walk-ins?.", { timeout: 15000 });
  expect(await chat.isEnabled("#warmline-chat-input"), "the input stays disabled after the answer");
  // The same visitor again: the same conversation, answered in order.
  await chat.fill("#warmline-chat-input", "Thanks!");
  await chat.press("#warmline-chat-input", "Enter");
  await chat.waitForSelector("li.agent >> text=Noted: Thanks!.", { timeout: 15000 });
  step("web chat widget answered twice on a page of another origin");
  await axe(chat, "widget");
  await shot(chat, "widget");
  await chat.setViewportSize({ width: 390, height: 844 });
  await fits(chat, "widget (phone)");
  await chat.close();
  site.close();
  step(`business created: ${page.url()}`);
  await axe(page, "business");
  await shot(page, "business");

  // Live: the call appears with its transcript as it happens.
  await page.goto(`${base}/console/live`);
  await page.waitForFunction(() => document.getElementById("live-status").textContent.includes("Following"));
  sandbox.stdin.write(`call ${CALLER} ${NUMBER}\n`);
  const placed = await line((l) => l.startsWith("placed ") || l.startsWith("error"));
  expect(placed.startsWith("placed "), placed);
  const sid = placed.split(" ")[1];
  const card = `#live-${sid}`;
  await page.waitForSelector(card, { timeout: 20000 });
  await page.waitForSelector(`${card} li.agent:not(.partial)`, { timeout: 20000 });
  step("the call is live with the agent's first line");
  await page.waitForSelector(`${card} li.caller`, { timeout: 30000 });
  await shot(page, "live");
  await axe(page, "live");
  await page.waitForFunction((c) => document.querySelector(`${c} .state`).textContent.startsWith("ended"), card, { timeout: 40000 });
  step(`live page saw it end: ${await page.textContent(`${card} .state`)}`);
  await line((l) => l === `ended ${sid}` || l.startsWith(`error ${sid}`));

  // Calls: the list, then the call's page with its timeline and recording.
  await page.goto(`${base}/console/calls`);
  await page.waitForSelector(`a[href="/console/calls/${sid}"]`);
  await axe(page, "calls");
  await shot(page, "calls");
  await page.click(`a[href="/console/calls/${sid}"]`);
  for (const text of ["Voice webhook arrived", "Stream claimed the session", "First audio", "Call ended"]) {
    expect(await page.locator("#timeline", { hasText: text }).count(), `timeline lacks ${text}`);
  }
  expect((await page.locator("#transcript li").count()) >= 2, "the transcript has fewer than two lines");
  // The recording is stored off the call's path: reload until it is there.
  for (let i = 0; i < 30 && !(await page.locator("audio").count()); i++) {
    await page.waitForTimeout(500);
    await page.reload();
  }
  expect(await page.locator("audio").count(), "no recording player");
  const played = await page.evaluate(async () => {
    const a = document.querySelector("audio");
    a.preload = "auto";
    await a.play();
    await new Promise((r) => setTimeout(r, 1500));
    return { time: a.currentTime, duration: a.duration, error: a.error && a.error.code };
  });
  step(`recording played: ${JSON.stringify(played)}`);
  expect(!played.error && played.time > 0.5, `the recording did not play: ${JSON.stringify(played)}`);
  await page.evaluate(() => document.querySelector("audio").pause());
  await axe(page, "call");
  await shot(page, "call");

  // Callers and messages of the business.
  await page.goto(`${base}/console/businesses`);
  await page.click("text=Callers");
  expect(await page.locator(`text=${CALLER}`).count(), "the caller is not remembered");
  await axe(page, "callers");
  await shot(page, "callers");
  await page.goto(`${base}/console/businesses`);
  await page.click("text=Messages");
  await axe(page, "messages");

  // On a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [name, path] of [["overview", "/console"], ["call", `/console/calls/${sid}`], ["calls", "/console/calls"]]) {
    await page.goto(`${base}${path}`);
    await fits(page, `${name} (phone)`);
    await shot(page, `${name}-phone`);
  }

  // Log-out: the console is closed again.
  await page.click("form.logout button");
  await page.waitForURL(/\/console\/login/);
  await page.goto(`${base}/console`);
  expect(page.url().includes("/console/login"), "still logged in after logging out");
  step("logged out");
} catch (e) {
  problems.push(`failed: ${e.stack || e}`);
} finally {
  if (browser) await browser.close();
  sandbox.stdin.end("quit\n");
  await new Promise((r) => {
    const t = setTimeout(() => { sandbox.kill("SIGKILL"); r(); }, 15000);
    sandbox.on("exit", () => { clearTimeout(t); r(); });
  });
}

if (problems.length) {
  console.error(`browser test FAILED:\n- ${problems.join("\n- ")}`);
  process.exit(1);
}
console.log(`browser test passed; screenshots in ${SHOTS}`);
