#!/usr/bin/env bash
# Writes this folder's PDFs again, each with the producer README.md names for it.
#
#   GEN_PYTHON=/tmp/gen-venv/bin/python GEN_NODE_MODULES=/tmp/gen-npm/node_modules \
#     bash tests/corpus/producers/generate.sh
#
# Not run by the tests or CI: the generators are installed for this once, never into
# the project (README.md says how). Output differs from the committed files wherever a
# producer writes the time or a random /ID; that is expected.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project_python="${PROJECT_PYTHON:-$here/../../../.venv/bin/python}"
python="${GEN_PYTHON:?a venv with reportlab, pymupdf, pikepdf, pypdf, weasyprint, fonttools}"
node_modules="${GEN_NODE_MODULES:?node_modules with pdf-lib, @pdf-lib/fontkit, pdfkit, jspdf}"
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
java_lib=/usr/share/java

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$here/sources/." "$work/"
ln -s "$node_modules" "$work/node_modules"  # ES modules resolve packages from their folder
export HOME="$work/home"  # LibreOffice writes its profile there
cd "$work"

# HTML renderers and LibreOffice (Writer, opening the HTML as a text document)
soffice_pdf() {  # soffice_pdf SOURCE OUTPUT [FILTER_OPTIONS]
  local filter="pdf:writer_pdf_Export${3:+:$3}"
  soffice --headless --infilter="HTML (StarWriter)" --convert-to "$filter" \
    --outdir "lo-$2" "$1" >/dev/null
  mv "lo-$2/$(basename "${1%.html}").pdf" "$2"
}
soffice_pdf record.html libreoffice.pdf
soffice_pdf record.html libreoffice_pdfa2b.pdf '{"SelectPdfVersion":{"type":"long","value":"2"}}'
soffice_pdf record_form.html libreoffice_form.pdf
chromium --headless --no-sandbox --disable-gpu --no-pdf-header-footer \
  --print-to-pdf=chromium.pdf "file://$work/record.html" 2>/dev/null
QT_QPA_PLATFORM=offscreen wkhtmltopdf --quiet --enable-local-file-access \
  record.html wkhtmltopdf.pdf 2>/dev/null
"$python" -m weasyprint record.html weasyprint.pdf

# Ghostscript, distilling LibreOffice's file, and from PostScript
gs_pdf() {  # gs_pdf OUTPUT OPTIONS...
  local out="$1"
  shift
  gs -q -dNOPAUSE -dBATCH -dSAFER -sDEVICE=pdfwrite "$@" -o "$out" libreoffice.pdf
}
gs_pdf ghostscript_pdf14.pdf -dCompatibilityLevel=1.4
gs_pdf ghostscript_pdf17.pdf -dCompatibilityLevel=1.7
gs_pdf ghostscript_pdfa2b.pdf -dPDFA=2 -dPDFACompatibilityPolicy=1 \
  -sColorConversionStrategy=RGB 2>/dev/null
pdftops libreoffice.pdf record.ps
ps2pdf -dCompatibilityLevel=1.5 record.ps ghostscript_ps2pdf15.pdf

# Libraries that draw the record themselves
"$python" make_reportlab.py reportlab.pdf
"$python" make_pymupdf.py new pymupdf.pdf
node make_pdflib.mjs pdflib.pdf
node make_pdflib.mjs pdflib_form.pdf --form
node make_pdfkit.mjs pdfkit.pdf
"$python" -m fontTools.subset "$font" --text-file=record.txt --output-file=subset.ttf
node make_jspdf.mjs subset.ttf jspdf.pdf
java -cp "$java_lib/pdfbox2.jar:$java_lib/fontbox2.jar:$java_lib/commons-logging.jar" \
  MakePdfBox.java record.txt "$font" pdfbox.pdf
java -cp "$java_lib/itext5.jar" MakeIText.java record.txt "$font" itext5.pdf
java -cp "$java_lib/itext5.jar" MakeIText.java record.txt "$font" \
  itext5_full_compression.pdf --full-compression

# Tools that write another producer's file again
pdftocairo -pdf libreoffice.pdf cairo.pdf
pdftoppm -r 60 -gray -jpeg -jpegopt quality=50 -f 1 -l 1 libreoffice.pdf scan
img2pdf --title "Học bạ số (bản quét)" -o img2pdf.pdf scan-1.jpg
pdfseparate -f 1 -l 1 reportlab.pdf poppler_pdfseparate.pdf
pdfseparate -f 2 -l 2 pymupdf.pdf pymupdf-page2.pdf
pdfunite poppler_pdfseparate.pdf pymupdf-page2.pdf poppler_pdfunite.pdf
pdftk A=reportlab.pdf B=weasyprint.pdf cat A1 B2 output pdftk.pdf
qpdf --linearize chromium.pdf qpdf_linearized.pdf
"$python" make_pikepdf.py reportlab.pdf pikepdf_object_streams.pdf
"$python" make_pikepdf.py libreoffice.pdf pikepdf_linearized.pdf --linearize

# Incremental updates on another producer's file
cp reportlab.pdf pymupdf_incremental.pdf
"$python" make_pymupdf.py stamp pymupdf_incremental.pdf
"$python" make_pypdf.py pymupdf.pdf pypdf_incremental.pdf

# What intake refuses: someone else's signature, and encryption
"$project_python" sign_elsewhere.py libreoffice.pdf refused_signed_elsewhere.pdf
qpdf --encrypt "" owner-secret 256 --print=full --modify=none -- \
  libreoffice.pdf refused_encrypted.pdf

rm -f "$here"/*.pdf
cp libreoffice*.pdf chromium.pdf wkhtmltopdf.pdf weasyprint.pdf ghostscript_*.pdf \
  reportlab.pdf pymupdf.pdf pdflib.pdf pdflib_form.pdf pdfkit.pdf jspdf.pdf pdfbox.pdf \
  itext5*.pdf cairo.pdf img2pdf.pdf poppler_*.pdf pdftk.pdf qpdf_linearized.pdf \
  pikepdf_*.pdf pymupdf_incremental.pdf pypdf_incremental.pdf refused_*.pdf "$here/"
ls -l "$here"/*.pdf
