"use strict";
// The coxp demo page: one panel per scenario. Plain JavaScript, no build step.
// Settings from `coxp demo`: proxy (coxp's URL), coxp (the command that runs coxp), config (its file).
const S = JSON.parse(document.getElementById("demo-settings").textContent);
const HERE = location.origin;
let nonce = Date.now();
const fresh = () => `n=${++nonce}`;  // a fresh query: images and frames are fetched, not cached

function shellQuote(word) {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : "'" + word.replace(/'/g, "'\\''") + "'";
}

// The `coxp explain` command that shows every header coxp sets for this request.
function explainCommand([method, path, headers]) {
  const words = ["explain", "-c", S.config, "-X", method, "-H", `Origin: ${HERE}`];
  for (const [name, value] of Object.entries(headers || {})) words.push("-H", `${name}: ${value}`);
  words.push(S.proxy + path);
  return S.coxp + " " + words.map(shellQuote).join(" ");
}

async function readLog(since) {
  const response = await fetch(`/demo/log?since=${since}`, {cache: "no-store"});
  return response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(probe, ms) {
  const until = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value || Date.now() > until) return value;
    await sleep(150);
  }
}

// A frame that reports its result with postMessage ({panel, ...result}).
function frameResult(panel, url, ms) {
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    const timer = setTimeout(() => { window.removeEventListener("message", listen); resolve(null); }, ms);
    function listen(event) {
      if (event.source !== frame.contentWindow || event.data?.panel !== panel.id) return;
      clearTimeout(timer);
      window.removeEventListener("message", listen);
      resolve(event.data);
    }
    window.addEventListener("message", listen);
    frame.src = url;
    panel.querySelector(".visual").append(frame);
  });
}

const PANELS = [
  {
    id: "cors-allowed",
    title: "Cross-origin fetch, allowed",
    expect: "read",
    lesson: "This page and coxp differ in port, so they are different origins. The api route allows " +
      "http://localhost:*, so coxp adds Access-Control-Allow-Origin and the script may read the answer.",
    request: `fetch("${S.proxy}/api/hello")`,
    paths: ["/api/hello"],
    tries: [["GET", "/api/hello"]],
    async run() {
      const response = await fetch(`${S.proxy}/api/hello`);
      return {did: "read", detail: `status ${response.status}, body ${await response.text()}`};
    },
  },
  {
    id: "cors-denied",
    title: "Cross-origin fetch, denied",
    expect: "blocked",
    lesson: "The partner route allows only https://partner.example.test. coxp still forwards the request " +
      "(see the status in its decision: CORS decides what a page may read, not what reaches the server) but " +
      "sets no Access-Control-Allow-Origin, so the browser hides the answer. enforce = true answers 403 instead.",
    request: `fetch("${S.proxy}/partner/data")`,
    paths: ["/partner/data"],
    tries: [["GET", "/partner/data"]],
    async run() {
      await fetch(`${S.proxy}/partner/data`);
      return {did: "read", detail: "the script could read the answer"};
    },
  },
  {
    id: "credentials",
    title: "Credentials: a cookie login",
    expect: "signed in, /api/ blocked",
    lesson: "A request with credentials: \"include\" needs Access-Control-Allow-Credentials: true and the " +
      "page's own origin (never *): the account route has allow_credentials = true, the api route has not. " +
      "The session cookie is SameSite=Lax; it travels because localhost on two ports is one site " +
      "(127.0.0.1 would be another site, and the cookie would be dropped).",
    request: `fetch("${S.proxy}/account/login", {method: "POST", credentials: "include", body: "user=demo"})\n` +
      `fetch("${S.proxy}/account/me", {credentials: "include"})\n` +
      `fetch("${S.proxy}/api/hello", {credentials: "include"})`,
    paths: ["/account/login", "/account/me", "/api/hello"],
    tries: [["GET", "/account/me", {Cookie: "demo_session=1"}]],
    async run() {
      await fetch(`${S.proxy}/account/login`, {method: "POST", credentials: "include", body: "user=demo"});
      const me = await (await fetch(`${S.proxy}/account/me`, {credentials: "include"})).json();
      let api = "read";
      try { await fetch(`${S.proxy}/api/hello`, {credentials: "include"}); } catch { api = "blocked"; }
      return {
        did: `${me.user ? "signed in" : "not signed in"}, /api/ ${api}`,
        detail: `/account/me answered ${JSON.stringify(me)}; the credentialed call to /api/hello was ${api}`,
      };
    },
  },
  {
    id: "preflight",
    title: "Preflighted PUT",
    expect: "read",
    lesson: "PUT, Content-Type: application/json and a custom header are not \"simple\", so the browser " +
      "first asks with OPTIONS. coxp answers that preflight itself (204) from allow_methods and allow_headers; " +
      "the origin never sees it. max_age = 600 lets the browser skip it for 10 minutes.",
    request: `fetch("${S.proxy}/api/echo", {method: "PUT",\n  headers: {"Content-Type": "application/json", "X-Demo": "1"},\n  body: '{"hello":"coxp"}'})`,
    paths: ["/api/echo"],
    tries: [["OPTIONS", "/api/echo", {"Access-Control-Request-Method": "PUT",
      "Access-Control-Request-Headers": "content-type, x-demo"}], ["PUT", "/api/echo"]],
    async run() {
      const response = await fetch(`${S.proxy}/api/echo`, {method: "PUT",
        headers: {"Content-Type": "application/json", "X-Demo": "1"}, body: JSON.stringify({hello: "coxp"})});
      return {did: "read", detail: `status ${response.status}, body ${await response.text()}`};
    },
  },
  {
    id: "expose",
    title: "Exposed response headers",
    expect: "X-Request-Id read, X-Internal-Build hidden",
    lesson: "A script sees only a few response headers unless Access-Control-Expose-Headers names them. " +
      "The origin sends both X-Request-Id and X-Internal-Build; the api route exposes only X-Request-Id.",
    request: `const r = await fetch("${S.proxy}/api/headers")\nr.headers.get("X-Request-Id"); r.headers.get("X-Internal-Build")`,
    paths: ["/api/headers"],
    tries: [["GET", "/api/headers"]],
    async run() {
      const response = await fetch(`${S.proxy}/api/headers`);
      const id = response.headers.get("X-Request-Id");
      const build = response.headers.get("X-Internal-Build");
      return {
        did: `X-Request-Id ${id === null ? "hidden" : "read"}, X-Internal-Build ${build === null ? "hidden" : "read"}`,
        detail: `X-Request-Id = ${JSON.stringify(id)}, X-Internal-Build = ${JSON.stringify(build)}`,
      };
    },
  },
  {
    id: "isolation",
    title: "crossOriginIsolated and SharedArrayBuffer",
    expect: "isolated",
    manual: "Open the isolated page",
    lesson: "SharedArrayBuffer needs a cross-origin isolated page: COOP same-origin (a window of its own) and " +
      "COEP require-corp (every cross-origin file opts in). The isolated route sets both; this page has " +
      `neither (here crossOriginIsolated = ${self.crossOriginIsolated}). The button opens the page through coxp.`,
    request: `window.open("${S.proxy}/isolated/")`,
    paths: ["/isolated/"],
    tries: [["GET", "/isolated/"]],
    async run(_panel, since) {
      const opened = window.open(`${S.proxy}/isolated/?${fresh()}`, "coxp-isolated");
      const result = await waitFor(async () => (await readLog(since)).isolation.at(-1), 10000);
      if (!result) return {did: "no answer", detail: "the isolated page did not report back (popup blocked?)"};
      return {
        did: result.isolated && result.shared_array_buffer ? "isolated" : "not isolated",
        detail: `the new window says crossOriginIsolated = ${result.isolated}, SharedArrayBuffer ` +
          `${result.shared_array_buffer ? "available" : "missing"}; COOP cut this page's link to it ` +
          `(window.closed = ${opened === null || opened.closed})`,
      };
    },
  },
  {
    id: "corp",
    title: "CORP: an image another origin may not embed",
    expect: "/assets/ loaded, /private-assets/ blocked",
    lesson: "Cross-Origin-Resource-Policy says who may embed a file. The assets route sends cross-origin; " +
      "private-assets sends same-origin, so this page (another origin) gets no image, even without any " +
      "isolation of its own.",
    request: `<img src="${S.proxy}/assets/logo.png">\n<img src="${S.proxy}/private-assets/logo.png">`,
    paths: ["/assets/logo.png", "/private-assets/logo.png"],
    tries: [["GET", "/private-assets/logo.png"]],
    async run(panel) {
      const open = await loadImage(`${S.proxy}/assets/logo.png?${fresh()}`, panel.querySelector(".visual"));
      const closed = await loadImage(`${S.proxy}/private-assets/logo.png?${fresh()}`, panel.querySelector(".visual"));
      return {did: `/assets/ ${open}, /private-assets/ ${closed}`};
    },
  },
  {
    id: "coep",
    title: "COEP: an embed without CORP",
    expect: "image without CORP blocked, image with CORP loaded",
    lesson: "The frame below comes through the isolated route (COEP require-corp). It embeds the same image " +
      "twice: straight from the demo origin, which sends no CORP, and through coxp's assets route, which " +
      "adds CORP cross-origin. Only the second may load.",
    request: `<iframe src="${S.proxy}/isolated/embed.html">\n  <img src="${HERE}/logo.png">\n  <img src="http://127.0.0.1:…/assets/logo.png">`,
    paths: ["/isolated/embed.html", "/assets/logo.png"],
    tries: [["GET", "/isolated/embed.html"]],
    async run(panel) {
      const result = await frameResult(panel, `${S.proxy}/isolated/embed.html?direct=${encodeURIComponent(HERE)}&${fresh()}`, 8000);
      if (!result) return {did: "no answer", detail: "the frame did not report back"};
      return {did: `image without CORP ${result.without_corp}, image with CORP ${result.with_corp}`};
    },
  },
  {
    id: "report-only",
    title: "Report-only: a violation reported, not blocked",
    expect: "image loaded, reported",
    lesson: "Before enforcing COEP, send it as Cross-Origin-Embedder-Policy-Report-Only: the browser loads " +
      "everything but reports what would have been blocked. The frame embeds an image without CORP; the " +
      "report reaches the page at once (ReportingObserver). Reporting-Endpoints: demo=\"/.coxp/reports\" " +
      "also names coxp's report collector, which logs each report it receives as a report event; Chrome " +
      "delivers there when the page is served over https (coxp's tls_cert/tls_key), so on this plain-http " +
      "demo the collector's count stays 0.",
    request: `<iframe src="${S.proxy}/report-only/frame.html">\n  <img src="${HERE}/logo.png">`,
    paths: ["/report-only/frame.html"],
    tries: [["GET", "/report-only/frame.html"]],
    async run(panel, since) {
      const result = await frameResult(panel, `${S.proxy}/report-only/frame.html?direct=${encodeURIComponent(HERE)}&${fresh()}`, 8000);
      if (!result) return {did: "no answer", detail: "the frame did not report back"};
      const collected = (await readLog(0)).reports;
      const seen = result.report?.body || {};
      const report = result.report ? {blocked: seen.blockedURL, disposition: seen.disposition} :
        collected.length ? {blocked: collected.at(-1).blocked_url, disposition: collected.at(-1).disposition} : null;
      return {
        did: `image ${result.image}, ${report ? "reported" : "not reported"}`,
        detail: (report ? `${report.blocked} would be blocked (disposition "${report.disposition}"); ` : "") +
          `coxp's collector has logged ${collected.length} report(s) so far`,
      };
    },
  },
];

function renderPanel(spec) {
  const panel = document.createElement("section");
  panel.className = "panel";
  panel.id = spec.id;
  panel.dataset.expect = spec.expect;
  panel.innerHTML = `
    <h2><span></span><span class="badge">not run yet</span></h2>
    <p class="lesson"></p>
    <dl>
      <dt>request</dt><dd class="request"></dd>
      <dt>coxp decided</dt><dd class="decision">&ndash;</dd>
      <dt>headers set</dt><dd class="headers">&ndash;</dd>
      <dt>the browser</dt><dd><span class="did">&ndash;</span> <span class="detail"></span></dd>
      <dt>expected</dt><dd class="expect"></dd>
    </dl>
    <div class="visual"></div>
    <div><button class="run"></button></div>
    <details><summary>Try it: the exact headers, from a terminal</summary><pre class="try"></pre></details>`;
  panel.querySelector("h2 span").textContent = spec.title;
  panel.querySelector(".lesson").textContent = spec.lesson;
  panel.querySelector(".request").textContent = spec.request;
  panel.querySelector(".expect").textContent = spec.expect;
  panel.querySelector(".try").textContent = spec.tries.map(explainCommand).join("\n");
  const button = panel.querySelector(".run");
  button.textContent = spec.manual || "Run again";
  button.onclick = () => runPanel(spec, panel);
  return panel;
}

function describe(decision) {
  const reason = decision.reason ? ` (${decision.reason})` : "";
  const warnings = (decision.warnings || []).map((w) => `\n  ⚠ coxp warns: ${w}`).join("");
  return `${decision.method} ${decision.path} → ${decision.status}, route ${decision.route}, cors ${decision.cors}${reason}${warnings}`;
}

async function runPanel(spec, panel) {
  const since = (await readLog(0)).seq;
  panel.querySelector(".visual").replaceChildren();
  panel.querySelector(".badge").textContent = "running…";
  let result;
  try {
    result = await spec.run(panel, since);
  } catch (error) {
    result = {did: "blocked", detail: `${error.name}: ${error.message} (the browser's console says why)`};
  }
  // The decision log line is written when the response is complete: wait for it briefly.
  const mine = (log) => log.decisions.filter((d) => spec.paths.includes(d.path));
  const decisions = mine(await waitFor(async () => {
    const log = await readLog(since);
    return mine(log).length ? log : null;
  }, 3000) || {decisions: []});
  panel.querySelector(".decision").textContent = decisions.map(describe).join("\n") || "(no request reached coxp)";
  panel.querySelector(".headers").textContent = decisions.map((d) =>
    `${d.method} ${d.path}: ${d.headers_set.join(", ") || "none"}` +
    (d.headers_removed.length ? `; removed ${d.headers_removed.join(", ")}` : "")).join("\n") || "–";
  panel.querySelector(".did").textContent = result.did;
  panel.querySelector(".detail").textContent = result.detail || "";
  const expected = result.did === spec.expect;
  panel.dataset.verdict = expected ? "expected" : "unexpected";
  panel.dataset.did = result.did;
  panel.querySelector(".badge").textContent = expected ? "✔ as expected" : "✘ unexpected";
}

async function runAll() {
  for (const spec of PANELS) {
    if (!spec.manual) await runPanel(spec, document.getElementById(spec.id));
  }
  document.body.dataset.ran = "all";
}

document.getElementById("here").textContent = HERE;
document.getElementById("proxy").textContent = S.proxy;
document.getElementById("config").textContent = S.config;
document.getElementById("run-all").onclick = runAll;
document.getElementById("panels").append(...PANELS.map(renderPanel));
runAll();
