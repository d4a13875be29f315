// Apache PDFBox 2: two pages, DejaVu Sans as a Type 0 subset.
//   java -cp pdfbox2.jar:fontbox2.jar:commons-logging.jar MakePdfBox.java record.txt FONT OUT.pdf
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Calendar;
import java.util.GregorianCalendar;
import java.util.TimeZone;
import org.apache.pdfbox.pdmodel.PDDocument;
import org.apache.pdfbox.pdmodel.PDPage;
import org.apache.pdfbox.pdmodel.PDPageContentStream;
import org.apache.pdfbox.pdmodel.common.PDRectangle;
import org.apache.pdfbox.pdmodel.font.PDType0Font;

public class MakePdfBox {
    public static void main(String[] args) throws Exception {
        String text = Files.readString(Path.of(args[0]), StandardCharsets.UTF_8);
        try (PDDocument doc = new PDDocument()) {
            PDType0Font font = PDType0Font.load(doc, new File(args[1]));
            Calendar fixed = new GregorianCalendar(TimeZone.getTimeZone("UTC"));
            fixed.set(2025, Calendar.SEPTEMBER, 1, 8, 0, 0);
            doc.getDocumentInformation().setTitle("Học bạ số — Nguyễn Thị Hồng Nhung");
            doc.getDocumentInformation().setCreationDate(fixed);
            for (String pageText : text.split("\f")) {
                PDPage page = new PDPage(PDRectangle.A4);
                doc.addPage(page);
                try (PDPageContentStream content = new PDPageContentStream(doc, page)) {
                    content.beginText();
                    content.setFont(font, 11);
                    content.setLeading(18);
                    content.newLineAtOffset(60, 780);
                    for (String line : pageText.strip().split("\n")) {
                        content.showText(line);
                        content.newLine();
                    }
                    content.endText();
                }
            }
            doc.save(args[2]);
        }
    }
}
