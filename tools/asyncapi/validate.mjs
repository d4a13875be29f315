// Parses an AsyncAPI document (with its $refs into schemas/) and exits 1 on any error.
import { resolve } from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";

const path = resolve(process.argv[2] ?? "../../docs/asyncapi.yaml");
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const ERROR = 0; // DiagnosticSeverity.Error
let errors = 0;
for (const d of diagnostics) {
  const where = (d.path ?? []).join(".");
  const level = d.severity === ERROR ? "error" : "warning";
  if (d.severity === ERROR) errors += 1;
  console.log(`${level}: ${d.code}: ${d.message}${where ? ` at ${where}` : ""}`);
}
if (!document || errors > 0) {
  console.log(`${path}: ${errors} error(s)`);
  process.exit(1);
}
console.log(`${path}: valid AsyncAPI ${document.version()}, ${document.channels().length} channels, ${document.messages().length} messages`);
