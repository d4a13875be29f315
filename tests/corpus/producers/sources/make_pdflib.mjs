// pdf-lib with fontkit: two pages, DejaVu Sans subset; `--form` adds an AcroForm text field.
//   node make_pdflib.mjs OUT.pdf [--form]
import { writeFileSync, readFileSync } from "node:fs";
import { PDFDocument } from "pdf-lib";
import fontkit from "@pdf-lib/fontkit";
import { FONT, pages } from "./record_text.mjs";

const [out, option] = process.argv.slice(2);
const doc = await PDFDocument.create();
doc.registerFontkit(fontkit);
const font = await doc.embedFont(readFileSync(FONT), { subset: true });
doc.setTitle("Học bạ số — Nguyễn Thị Hồng Nhung");
const fixed = new Date(Date.UTC(2025, 8, 1, 8, 0, 0));
doc.setCreationDate(fixed);
doc.setModificationDate(fixed);
for (const lines of pages()) {
  const page = doc.addPage([595, 842]);
  lines.forEach((line, n) => page.drawText(line, { x: 60, y: 780 - 18 * n, size: 11, font }));
}
if (option === "--form") {
  const field = doc.getForm().createTextField("NhanXet");
  field.setText("Em chăm chỉ, tích cực.");
  field.addToPage(doc.getPage(0), { x: 60, y: 560, width: 400, height: 20, font });
  field.updateAppearances(font);
}
writeFileSync(out, await doc.save());
