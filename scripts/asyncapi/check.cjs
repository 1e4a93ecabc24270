// Parse and validate an AsyncAPI document with the reference parser (@asyncapi/parser, which runs
// the AsyncAPI JSON Schemas and Spectral's AsyncAPI rules, resolving relative $refs such as
// ../schemas/*.json). Prints the diagnostics as JSON lines; exits 1 on any error.
// Usage: NODE_PATH=<cache>/node_modules node scripts/asyncapi/check.cjs docs/asyncapi.yaml
"use strict";
const fs = require("fs");
const path = require("path");
const { Parser, fromFile, DiagnosticSeverity } = require("@asyncapi/parser");

async function main() {
  const file = path.resolve(process.argv[2] || "docs/asyncapi.yaml");
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, file).parse();
  const names = { 0: "error", 1: "warning", 2: "information", 3: "hint" };
  for (const d of diagnostics) {
    console.log(JSON.stringify({
      severity: names[d.severity], code: d.code, message: d.message, path: d.path.join("."),
    }));
  }
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  if (!document || errors.length) {
    console.error(`${file}: ${errors.length} error(s)`);
    process.exit(1);
  }
  const channels = document.channels().all().map((c) => c.address());
  console.log(JSON.stringify({ ok: true, version: document.version(), channels }));
}

main().catch((err) => { console.error(err.stack || String(err)); process.exit(2); });
