// The record's text, page by page, for the JavaScript generators (see record_text.py).
import { readFileSync } from "node:fs";

export const FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

export function pages() {
  const text = readFileSync(new URL("record.txt", import.meta.url), "utf8");
  return text.split("\f").map((page) => page.replace(/^\n+|\n+$/g, "").split("\n"));
}
