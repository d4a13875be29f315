// PDFKit: two pages, DejaVu Sans subset, a link on the first page.
//   node make_pdfkit.mjs OUT.pdf
import { createWriteStream } from "node:fs";
import PDFDocument from "pdfkit";
import { FONT, pages } from "./record_text.mjs";

const fixed = new Date(Date.UTC(2025, 8, 1, 8, 0, 0));
const doc = new PDFDocument({
  size: "A4",
  autoFirstPage: false,
  info: { Title: "Học bạ số — Nguyễn Thị Hồng Nhung", CreationDate: fixed },
});
doc.pipe(createWriteStream(process.argv[2]));
pages().forEach((lines, n) => {
  doc.addPage().font(FONT).fontSize(11);
  for (const line of lines) doc.text(line);
  if (n === 0) doc.moveDown().text("Tra cứu: moet.gov.vn", { link: "https://moet.gov.vn" });
});
doc.end();
