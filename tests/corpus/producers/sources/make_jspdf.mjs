// jsPDF: two pages, with a DejaVu Sans subset made beforehand (jsPDF embeds a font whole).
//   node make_jspdf.mjs SUBSET.ttf OUT.pdf
import { readFileSync, writeFileSync } from "node:fs";
import { jsPDF } from "jspdf";
import { pages } from "./record_text.mjs";

const [fontPath, out] = process.argv.slice(2);
const doc = new jsPDF({ unit: "pt", format: "a4" });
doc.addFileToVFS("DejaVuSans.ttf", readFileSync(fontPath).toString("base64"));
doc.addFont("DejaVuSans.ttf", "DejaVuSans", "normal");
doc.setProperties({ title: "Học bạ số — Nguyễn Thị Hồng Nhung" });
doc.setCreationDate(new Date(Date.UTC(2025, 8, 1, 8, 0, 0)));
pages().forEach((lines, n) => {
  if (n) doc.addPage();
  doc.setFont("DejaVuSans", "normal").setFontSize(11);
  lines.forEach((line, i) => doc.text(line, 60, 60 + 18 * i));
  if (n === 0) doc.textWithLink("Tra cứu: moet.gov.vn", 60, 60 + 18 * (lines.length + 1), { url: "https://moet.gov.vn" });
});
writeFileSync(out, Buffer.from(doc.output("arraybuffer")));
