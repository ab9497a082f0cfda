//! Printable labels are real files: the PDF parses (and renders with `pdftoppm` when it is
//! installed), and the Code 128 barcode and QR code decode back to what the label says.

mod support;

use returns_platform::testing::authorized;
use returns_proto::labels::v1 as pb;
use support::*;
use tonic::Code;

/// Greyscale pixels of a PNG, whatever its colour type.
fn luma(png_bytes: &[u8]) -> (Vec<u8>, usize, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => panic!("indexed PNGs are not produced here"),
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let pixels = buf[..w * h * channels]
        .chunks(channels)
        .map(|p| {
            p[..channels.min(3)]
                .iter()
                .map(|v| u32::from(*v))
                .sum::<u32>()
                / channels.min(3) as u32
        })
        .map(|v| u8::try_from(v).expect("a byte"))
        .collect();
    (pixels, w, h)
}

fn decode_qr(pixels: &[u8], w: usize, h: usize) -> String {
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the label");
    grids[0].decode().expect("the QR code decodes").1
}

fn decode_code128(pixels: Vec<u8>, w: usize, h: usize) -> String {
    let result = rxing::helpers::detect_in_luma(
        pixels,
        u32::try_from(w).expect("width"),
        u32::try_from(h).expect("height"),
        Some(rxing::BarcodeFormat::CODE_128),
    )
    .expect("the Code 128 barcode decodes");
    result.getText().to_owned()
}

async fn label(h: &Harness) -> pb::ReturnLabel {
    h.authorise(&Auth::new("o-1", "GB")).await;
    h.create("o-1", "b-1", "GB", pb::ReturnMethod::DropOff)
        .await
        .expect("label")
}

async fn document(
    h: &Harness,
    label_id: &str,
    format: pb::DocumentFormat,
    token: &str,
) -> Result<pb::GetLabelDocumentResponse, tonic::Status> {
    h.client
        .clone()
        .get_label_document(authorized(
            pb::GetLabelDocumentRequest {
                label_id: label_id.into(),
                format: format.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn the_png_label_carries_a_code128_of_the_tracking_number_and_the_qr_payload() {
    let h = harness().await;
    let label = label(&h).await;
    let png = document(&h, &label.label_id, pb::DocumentFormat::Png, &buyer("b-1"))
        .await
        .expect("png");
    assert_eq!(png.content_type, "image/png");
    assert_eq!(png.file_name, format!("{}.png", label.tracking_number));
    let (pixels, w, hgt) = luma(&png.content);
    assert_eq!((w, hgt), (812, 1218), "4x6 inches at 203 dpi");
    assert_eq!(decode_qr(&pixels, w, hgt), label.qr_payload);
    assert_eq!(decode_code128(pixels, w, hgt), label.tracking_number);
}

#[tokio::test]
async fn the_pdf_label_is_a_4x6_inch_page_that_parses_and_renders() {
    let h = harness().await;
    let label = label(&h).await;
    let pdf = document(
        &h,
        &label.label_id,
        pb::DocumentFormat::Pdf,
        &carrier("ROYAL_MAIL"),
    )
    .await
    .expect("the label's carrier may print it");
    assert_eq!(pdf.content_type, "application/pdf");
    let parsed = lopdf::Document::load_mem(&pdf.content).expect("a PDF reader opens it");
    let pages = parsed.get_pages();
    assert_eq!(pages.len(), 1);
    let page_id = *pages.get(&1).expect("page 1");
    let page = parsed.get_dictionary(page_id).expect("page dictionary");
    let media_box: Vec<f32> = page
        .get(b"MediaBox")
        .and_then(lopdf::Object::as_array)
        .expect("media box")
        .iter()
        .map(|v| v.as_float().expect("number"))
        .collect();
    assert_eq!(
        media_box,
        [0.0, 0.0, 288.0, 432.0],
        "4 x 6 inches in points"
    );
    let text = parsed.extract_text(&[1]).expect("text");
    assert!(text.contains(&label.tracking_number), "{text}");
    assert!(text.contains("Seller Ltd"), "the return address is printed");

    // Render it like a viewer would, when poppler's pdftoppm is installed, and scan it.
    if std::process::Command::new("pdftoppm")
        .arg("-v")
        .output()
        .is_ok()
    {
        let dir = std::env::temp_dir().join(format!("label-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let input = dir.join("label.pdf");
        std::fs::write(&input, &pdf.content).expect("write pdf");
        let status = std::process::Command::new("pdftoppm")
            .args(["-r", "203", "-gray", "-png", "-singlefile"])
            .arg(&input)
            .arg(dir.join("label"))
            .status()
            .expect("run pdftoppm");
        assert!(status.success());
        let rendered = std::fs::read(dir.join("label.png")).expect("rendered png");
        let (pixels, w, hgt) = luma(&rendered);
        assert_eq!(decode_qr(&pixels, w, hgt), label.qr_payload);
        assert_eq!(decode_code128(pixels, w, hgt), label.tracking_number);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn the_zpl_label_prints_the_symbols_natively() {
    let h = harness().await;
    let label = label(&h).await;
    let zpl = document(&h, &label.label_id, pb::DocumentFormat::Zpl, &platform())
        .await
        .expect("zpl");
    assert_eq!(zpl.content_type, "application/x-zpl");
    let text = String::from_utf8(zpl.content).expect("ZPL is text");
    assert!(text.starts_with("^XA"));
    assert!(text.contains(&format!("^BCN,170,N,N,N^FD{}^FS", label.tracking_number)));
    assert!(text.contains(&format!("^FDMA,{}^FS", label.qr_payload)));
}

#[tokio::test]
async fn only_the_labels_parties_and_carrier_may_print_it_and_never_once_voided() {
    let h = harness().await;
    let label = label(&h).await;
    let other_carrier = document(
        &h,
        &label.label_id,
        pb::DocumentFormat::Pdf,
        &carrier("USPS"),
    )
    .await;
    assert_eq!(
        other_carrier.map(|_| ()).expect_err("not its label").code(),
        Code::NotFound
    );
    let other_buyer = document(&h, &label.label_id, pb::DocumentFormat::Pdf, &buyer("b-2")).await;
    assert_eq!(
        other_buyer.map(|_| ()).expect_err("not theirs").code(),
        Code::NotFound
    );
    let seller_call = document(&h, &label.label_id, pb::DocumentFormat::Pdf, &seller("s-1")).await;
    assert_eq!(
        seller_call.map(|_| ()).expect_err("role").code(),
        Code::PermissionDenied
    );
    let no_format = document(
        &h,
        &label.label_id,
        pb::DocumentFormat::Unspecified,
        &buyer("b-1"),
    )
    .await;
    assert_eq!(
        no_format.map(|_| ()).expect_err("format").code(),
        Code::InvalidArgument
    );
    h.client
        .clone()
        .void_label(authorized(
            pb::VoidLabelRequest {
                request_id: "v-1".into(),
                label_id: label.label_id.clone(),
                reason: String::new(),
            },
            &buyer("b-1"),
        ))
        .await
        .expect("voided");
    let voided = document(&h, &label.label_id, pb::DocumentFormat::Pdf, &buyer("b-1")).await;
    assert_eq!(
        voided.map(|_| ()).expect_err("voided").code(),
        Code::FailedPrecondition
    );
}

#[test]
fn the_sample_label_scans_back_to_the_s10_example() {
    let doc = returns_labels::document::sample();
    let (pixels, w, h) = luma(&returns_labels::document::render_png(&doc).expect("png"));
    assert_eq!(decode_code128(pixels, w, h), "RR473124829GB");
}
