// A Node `http` origin for the interop tests: chunked responses, uploads, cookies, gzip,
// redirects, and a 413 answered before the upload was read (then the socket is reset).
// Usage: node node_http.js PORT  -- prints "ready" once listening.
"use strict";
const http = require("http");
const zlib = require("zlib");
const crypto = require("crypto");

const port = Number(process.argv[2]);
const origin = `http://127.0.0.1:${port}`;

function pattern(size) {
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i++) out[i] = (i * 7 + 3) & 0xff;
  return out;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, origin);
  const path = url.pathname;
  if (path === "/limit") {
    // Answers without reading the body, then resets: the way an upload limit is often written.
    res.writeHead(413, { "Content-Type": "text/plain", Connection: "close" });
    res.end("too large\n", () => req.socket.resetAndDestroy());
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    if (path === "/size") {
      // Chunked: no Content-Length, written in 16 KiB pieces.
      const data = pattern(Number(url.searchParams.get("n")));
      res.writeHead(200, { "Content-Type": "application/octet-stream", "X-Origin": "node" });
      for (let i = 0; i < data.length; i += 16384) res.write(data.subarray(i, i + 16384));
      res.end();
    } else if (path === "/echo") {
      const digest = crypto.createHash("sha256").update(body).digest("hex");
      res.writeHead(200, { "Content-Type": "text/plain", "X-Body-Length": String(body.length) });
      res.end(`${req.method} ${body.length} ${digest}\n`);
    } else if (path === "/status") {
      res.writeHead(Number(url.searchParams.get("code")), { "X-Origin": "node" });
      res.end();
    } else if (path === "/cookies") {
      res.setHeader("Set-Cookie", [
        "sid=abc123; Path=/; HttpOnly; Domain=127.0.0.1",
        "theme=dark; Max-Age=3600; SameSite=Lax",
        "pref=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Secure",
      ]);
      res.end("cookies\n");
    } else if (path === "/gzip") {
      const data = zlib.gzipSync(Buffer.from("compressed ".repeat(2000)));
      res.writeHead(200, { "Content-Encoding": "gzip", "Content-Type": "text/plain", Vary: "Accept-Encoding" });
      res.end(data);
    } else if (path === "/redirect") {
      res.writeHead(302, { Location: `${origin}/target?from=redirect`, "Content-Location": `${origin}/redirect`,
                           Refresh: `0; url=${origin}/refreshed` });
      res.end();
    } else {
      res.writeHead(200, { "Content-Type": "text/plain" });
      res.end(`${req.method} ${path}\n`);
    }
  });
});
server.keepAliveTimeout = 60000;
server.listen(port, "127.0.0.1", () => console.log("ready"));
process.on("SIGTERM", () => process.exit(0));
