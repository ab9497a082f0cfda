//! Printable return labels: one 4x6 inch layout rendered as PDF, PNG (203 dpi) or ZPL.
//!
//! The layout is computed once in printer dots (203 dpi, the common thermal-printer
//! resolution, 812 x 1218 dots for 4x6 inches) with a top-left origin, then drawn by each
//! renderer. Working in dots keeps every barcode module a whole number of pixels in the PNG
//! and of dots in ZPL, which is what scanners need; the PDF scales dots to points (72/203).
//! The barcode is Code 128 (set B) of the tracking number; the QR code carries the label's
//! `qr_payload` for printerless drop-off.

use barcoders::sym::code128::Code128;
use qrcode::{Color, EcLevel, QrCode};
use returns_proto::common::v1::Address;

/// Label size in dots at 203 dpi.
pub const WIDTH_DOTS: u32 = 812;
pub const HEIGHT_DOTS: u32 = 1218;
const DPI: f32 = 203.0;
/// Code 128 module width in dots (0.5 mm): wide enough for any handheld scanner.
const BAR_MODULE: u32 = 3;
const BAR_HEIGHT: u32 = 170;
/// QR module size in dots.
const QR_MODULE: u32 = 6;

/// What goes on a label, already formatted.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelDocument {
    pub tracking_number: String,
    pub carrier_name: String,
    pub method: String,
    pub sender: Address,
    pub return_to: Option<Address>,
    pub qr_payload: String,
    pub ship_by: String,
    pub paid_by: String,
    pub order_id: String,
    pub label_id: String,
}

/// Why a label could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("barcode: {0}")]
    Barcode(String),
    #[error("QR code: {0}")]
    Qr(String),
    #[error("PNG: {0}")]
    Png(String),
}

/// One drawing operation in dots, top-left origin.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// A filled black rectangle (rules and frame).
    Rect { x: u32, y: u32, w: u32, h: u32 },
    /// A bar or module of the barcode or QR code: black like `Rect`, but ZPL prints the
    /// symbols natively instead.
    Symbol { x: u32, y: u32, w: u32, h: u32 },
    /// One line of ASCII text whose top is at `y`, `size` dots tall.
    Text {
        x: u32,
        y: u32,
        size: u32,
        text: String,
    },
}

/// Printable ASCII only: the PDF uses a standard font (WinAnsi) and the PNG an 8x8 bitmap
/// font, so anything else prints as `?` rather than as garbage.
fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

fn address_lines(address: &Address) -> Vec<String> {
    let mut lines = vec![address.name.clone(), address.line1.clone()];
    if !address.line2.is_empty() {
        lines.push(address.line2.clone());
    }
    let mut city = address.city.clone();
    for part in [&address.region, &address.postal_code] {
        if !part.is_empty() {
            city.push(' ');
            city.push_str(part);
        }
    }
    lines.push(city);
    lines.push(address.country_code.clone());
    lines.into_iter().map(|l| ascii(&l)).collect()
}

/// The Code 128 modules (1 = bar) of `data` in character set B.
pub fn code128_modules(data: &str) -> Result<Vec<u8>, RenderError> {
    // barcoders selects the character set with a leading marker: U+0181 is set B.
    let barcode =
        Code128::new(format!("\u{0181}{data}")).map_err(|e| RenderError::Barcode(e.to_string()))?;
    Ok(barcode.encode())
}

/// The QR modules (row-major, true = dark) and the side length.
fn qr_modules(payload: &str) -> Result<(Vec<bool>, u32), RenderError> {
    let code = QrCode::with_error_correction_level(payload.as_bytes(), EcLevel::M)
        .map_err(|e| RenderError::Qr(e.to_string()))?;
    let width = u32::try_from(code.width()).map_err(|e| RenderError::Qr(e.to_string()))?;
    Ok((
        code.to_colors()
            .into_iter()
            .map(|c| c == Color::Dark)
            .collect(),
        width,
    ))
}

fn layout(doc: &LabelDocument) -> Result<Vec<Op>, RenderError> {
    let mut ops = Vec::new();
    let text = |ops: &mut Vec<Op>, x: u32, y: u32, size: u32, t: &str| {
        ops.push(Op::Text {
            x,
            y,
            size,
            text: ascii(t),
        })
    };
    // Frame and header.
    for (x, y, w, h) in [
        (10, 10, 792, 4),
        (10, 1204, 792, 4),
        (10, 10, 4, 1198),
        (798, 10, 4, 1198),
    ] {
        ops.push(Op::Rect { x, y, w, h });
    }
    text(&mut ops, 30, 30, 48, "RETURN");
    text(
        &mut ops,
        30,
        88,
        24,
        &format!("{} - {}", doc.carrier_name, doc.method),
    );
    ops.push(Op::Rect {
        x: 10,
        y: 124,
        w: 792,
        h: 3,
    });

    text(&mut ops, 30, 140, 20, "FROM:");
    let mut y = 168;
    for line in address_lines(&doc.sender) {
        text(&mut ops, 30, y, 20, &line);
        y += 26;
    }
    ops.push(Op::Rect {
        x: 10,
        y: 310,
        w: 792,
        h: 3,
    });
    text(&mut ops, 30, 326, 24, "TO:");
    let mut y = 360;
    match &doc.return_to {
        Some(to) => {
            for line in address_lines(to) {
                text(&mut ops, 30, y, 32, &line);
                y += 40;
            }
        }
        None => text(&mut ops, 30, y, 32, "SELLER RETURN ADDRESS ON FILE"),
    }
    ops.push(Op::Rect {
        x: 10,
        y: 580,
        w: 792,
        h: 3,
    });

    // Code 128 of the tracking number, centred, with its text underneath.
    let modules = code128_modules(&doc.tracking_number)?;
    let bar_width = u32::try_from(modules.len()).unwrap_or(0) * BAR_MODULE;
    let bar_x = WIDTH_DOTS.saturating_sub(bar_width) / 2;
    let bar_y = 610;
    let mut run_start: Option<usize> = None;
    for (i, module) in modules.iter().chain(std::iter::once(&0)).enumerate() {
        match (module, run_start) {
            (1, None) => run_start = Some(i),
            (0, Some(start)) => {
                let start_x = u32::try_from(start).unwrap_or(0) * BAR_MODULE;
                let width = u32::try_from(i - start).unwrap_or(0) * BAR_MODULE;
                ops.push(Op::Symbol {
                    x: bar_x + start_x,
                    y: bar_y,
                    w: width,
                    h: BAR_HEIGHT,
                });
                run_start = None;
            }
            _ => {}
        }
    }
    let tracking_text_width = u32::try_from(doc.tracking_number.len()).unwrap_or(0) * 28;
    text(
        &mut ops,
        WIDTH_DOTS.saturating_sub(tracking_text_width) / 2,
        bar_y + BAR_HEIGHT + 12,
        28,
        &doc.tracking_number,
    );
    ops.push(Op::Rect {
        x: 10,
        y: 840,
        w: 792,
        h: 3,
    });

    // Details on the left, QR on the right, the label id across the bottom. Lines left of
    // the QR are cut to 26 characters so they never run into its quiet zone.
    let short = |t: String| t.chars().take(26).collect::<String>();
    let details = [
        short(format!("SHIP BY: {}", doc.ship_by)),
        short(format!("PAID BY: {}", doc.paid_by)),
        short(format!("ORDER: {}", doc.order_id)),
    ];
    let mut y = 870;
    for line in details {
        text(&mut ops, 30, y, 16, &line);
        y += 30;
    }
    text(&mut ops, 30, 1150, 16, &format!("LABEL: {}", doc.label_id));
    let (qr, side) = qr_modules(&doc.qr_payload)?;
    let qr_x = WIDTH_DOTS.saturating_sub(40 + side * QR_MODULE);
    let qr_y = 860;
    for (i, dark) in qr.iter().enumerate() {
        if *dark {
            let i = u32::try_from(i).unwrap_or(0);
            ops.push(Op::Symbol {
                x: qr_x + (i % side) * QR_MODULE,
                y: qr_y + (i / side) * QR_MODULE,
                w: QR_MODULE,
                h: QR_MODULE,
            });
        }
    }
    text(
        &mut ops,
        qr_x,
        qr_y + side * QR_MODULE + 12,
        16,
        "DROP-OFF QR",
    );
    Ok(ops)
}

/// The label as a one-page 4x6 inch PDF with the standard Helvetica font.
pub fn render_pdf(doc: &LabelDocument) -> Result<Vec<u8>, RenderError> {
    use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
    let ops = layout(doc)?;
    let scale = 72.0 / DPI;
    let page_height = HEIGHT_DOTS as f32 * scale;
    let (catalog, tree, page, font, contents) = (
        Ref::new(1),
        Ref::new(2),
        Ref::new(3),
        Ref::new(4),
        Ref::new(5),
    );
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids([page]).count(1);
    let mut p = pdf.page(page);
    p.media_box(Rect::new(0.0, 0.0, WIDTH_DOTS as f32 * scale, page_height));
    p.parent(tree);
    p.contents(contents);
    p.resources().fonts().pair(Name(b"F1"), font);
    p.finish();
    pdf.type1_font(font)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let mut content = Content::new();
    for op in &ops {
        match op {
            Op::Rect { x, y, w, h } | Op::Symbol { x, y, w, h } => {
                content.rect(
                    *x as f32 * scale,
                    page_height - (*y + *h) as f32 * scale,
                    *w as f32 * scale,
                    *h as f32 * scale,
                );
                content.fill_nonzero();
            }
            Op::Text { x, y, size, text } => {
                let size_pt = *size as f32 * scale;
                content.begin_text();
                content.set_font(Name(b"F1"), size_pt);
                // The baseline sits about 80% down a line of this size.
                content.next_line(
                    *x as f32 * scale,
                    page_height - (*y as f32 + *size as f32 * 0.8) * scale,
                );
                content.show(Str(text.as_bytes()));
                content.end_text();
            }
        }
    }
    pdf.stream(contents, &content.finish());
    Ok(pdf.finish())
}

/// The label as an 8-bit greyscale PNG at 203 dpi (812 x 1218 pixels).
pub fn render_png(doc: &LabelDocument) -> Result<Vec<u8>, RenderError> {
    let pixels = rasterize(doc)?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, WIDTH_DOTS, HEIGHT_DOTS);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_pixel_dims(Some(png::PixelDimensions {
            // 203 dots per inch is 7992 per metre.
            xppu: 7992,
            yppu: 7992,
            unit: png::Unit::Meter,
        }));
        let mut writer = encoder
            .write_header()
            .map_err(|e| RenderError::Png(e.to_string()))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| RenderError::Png(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| RenderError::Png(e.to_string()))?;
    }
    Ok(out)
}

/// The label's greyscale pixels, row-major (0 = black, 255 = white).
pub fn rasterize(doc: &LabelDocument) -> Result<Vec<u8>, RenderError> {
    use font8x8::UnicodeFonts;
    let (w, h) = (WIDTH_DOTS as usize, HEIGHT_DOTS as usize);
    let mut pixels = vec![255u8; w * h];
    let mut fill = |x: usize, y: usize, rw: usize, rh: usize| {
        for row in y.min(h)..(y + rh).min(h) {
            for px in &mut pixels[row * w + x.min(w)..row * w + (x + rw).min(w)] {
                *px = 0;
            }
        }
    };
    for op in layout(doc)? {
        match op {
            Op::Rect { x, y, w: rw, h: rh } | Op::Symbol { x, y, w: rw, h: rh } => {
                fill(x as usize, y as usize, rw as usize, rh as usize)
            }
            Op::Text { x, y, size, text } => {
                // An 8x8 glyph scaled to the line height (at least one pixel per glyph pixel).
                let scale = (size as usize / 8).max(1);
                for (i, c) in text.chars().enumerate() {
                    let Some(glyph) = font8x8::BASIC_FONTS.get(c) else {
                        continue;
                    };
                    for (row, bits) in glyph.iter().enumerate() {
                        for col in 0..8 {
                            if bits & (1 << col) != 0 {
                                fill(
                                    x as usize + (i * 8 + col) * scale,
                                    y as usize + row * scale,
                                    scale,
                                    scale,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(pixels)
}

/// The label as ZPL II for 203 dpi thermal printers.
pub fn render_zpl(doc: &LabelDocument) -> Result<Vec<u8>, RenderError> {
    // ZPL reserves ^ and ~ as command prefixes; field data must not contain them.
    let field = |t: &str| ascii(t).replace(['^', '~'], " ");
    let mut zpl = format!("^XA\n^CI28\n^PW{WIDTH_DOTS}\n^LL{HEIGHT_DOTS}\n");
    for op in layout(doc)? {
        match op {
            Op::Rect { x, y, w, h } => {
                let thickness = w.min(h);
                zpl.push_str(&format!("^FO{x},{y}^GB{w},{h},{thickness}^FS\n"));
            }
            // Barcode bars and QR modules are printed as native symbols below.
            Op::Symbol { .. } => {}
            Op::Text { x, y, size, text } => {
                zpl.push_str(&format!(
                    "^FO{x},{y}^A0N,{size},{size}^FD{}^FS\n",
                    field(&text)
                ));
            }
        }
    }
    let modules = code128_modules(&doc.tracking_number)?;
    let bar_width = u32::try_from(modules.len()).unwrap_or(0) * BAR_MODULE;
    zpl.push_str(&format!(
        "^FO{},610^BY{BAR_MODULE}^BCN,{BAR_HEIGHT},N,N,N^FD{}^FS\n",
        WIDTH_DOTS.saturating_sub(bar_width) / 2,
        field(&doc.tracking_number)
    ));
    let (_, side) = qr_modules(&doc.qr_payload)?;
    zpl.push_str(&format!(
        "^FO{},860^BQN,2,{QR_MODULE}^FDMA,{}^FS\n",
        WIDTH_DOTS.saturating_sub(40 + side * QR_MODULE),
        field(&doc.qr_payload)
    ));
    zpl.push_str("^XZ\n");
    Ok(zpl.into_bytes())
}

/// A sample label with made-up parties, for people who want to look at one
/// (`returns` can write it to a file).
pub fn sample() -> LabelDocument {
    let address = |name: &str, line1: &str, city: &str, postal: &str, country: &str| Address {
        name: name.into(),
        line1: line1.into(),
        line2: String::new(),
        city: city.into(),
        region: String::new(),
        postal_code: postal.into(),
        country_code: country.into(),
        phone: String::new(),
    };
    LabelDocument {
        // The UPU S10 standard's own example number.
        tracking_number: "RR473124829GB".into(),
        carrier_name: "Royal Mail".into(),
        method: "DROP-OFF".into(),
        sender: address("Alex Buyer", "1 High Street", "London", "SW1A 1AA", "GB"),
        return_to: Some(address(
            "Example Seller Returns",
            "88 Harbour Road",
            "Felixstowe",
            "IP11 3AA",
            "GB",
        )),
        qr_payload: "RETURNS-LABEL:1;label=sample;carrier=ROYAL_MAIL;tracking=RR473124829GB".into(),
        ship_by: "2026-03-09".into(),
        paid_by: "SELLER PREPAID".into(),
        order_id: "order-sample".into(),
        label_id: "sample".into(),
    }
}

/// Renders the sample label in the format its extension names (`.pdf`, `.png`, `.zpl`;
/// anything else gets a PDF) and writes it to `path`, for the suite launcher.
pub fn write_sample(
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let doc = sample();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bytes = match extension.as_deref() {
        Some("png") => render_png(&doc)?,
        Some("zpl") => render_zpl(&doc)?,
        _ => render_pdf(&doc)?,
    };
    std::fs::write(path, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_renderer_produces_its_format() {
        let doc = sample();
        assert!(render_pdf(&doc).expect("pdf").starts_with(b"%PDF-"));
        assert!(render_png(&doc).expect("png").starts_with(b"\x89PNG"));
        let zpl = String::from_utf8(render_zpl(&doc).expect("zpl")).expect("utf8");
        assert!(zpl.starts_with("^XA") && zpl.trim_end().ends_with("^XZ"));
        assert!(zpl.contains("^BCN,170,N,N,N^FDRR473124829GB^FS"));
        assert!(zpl.contains("^BQN,2,6^FDMA,RETURNS-LABEL:1;"));
    }

    #[test]
    fn non_ascii_text_prints_as_question_marks() {
        assert_eq!(ascii("Zürich ^1"), "Z?rich ^1");
    }
}
