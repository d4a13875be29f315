// iText 5: two pages, DejaVu Sans (Identity-H, subset); `--full-compression` writes an
// xref stream and object streams.
//   java -cp itext5.jar MakeIText.java record.txt FONT OUT.pdf [--full-compression]
import com.itextpdf.text.Document;
import com.itextpdf.text.Font;
import com.itextpdf.text.PageSize;
import com.itextpdf.text.Paragraph;
import com.itextpdf.text.pdf.BaseFont;
import com.itextpdf.text.pdf.PdfWriter;
import java.io.FileOutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

public class MakeIText {
    public static void main(String[] args) throws Exception {
        String text = Files.readString(Path.of(args[0]), StandardCharsets.UTF_8);
        Document doc = new Document(PageSize.A4);
        PdfWriter writer = PdfWriter.getInstance(doc, new FileOutputStream(args[2]));
        if (args.length > 3 && args[3].equals("--full-compression")) {
            writer.setFullCompression();
        }
        doc.addTitle("Học bạ số — Nguyễn Thị Hồng Nhung");
        doc.open();
        Font font = new Font(BaseFont.createFont(args[1], BaseFont.IDENTITY_H, BaseFont.EMBEDDED), 11);
        boolean first = true;
        for (String pageText : text.split("\f")) {
            if (!first) {
                doc.newPage();
            }
            first = false;
            for (String line : pageText.strip().split("\n")) {
                doc.add(new Paragraph(line, font));
            }
        }
        doc.close();
    }
}
