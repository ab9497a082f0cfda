//! Writes a sample return label to a file so a person can look at it:
//! `cargo run -p returns-labels --example sample_label -- label.pdf` (or `.png`, `.zpl`).

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sample-label.pdf".to_owned());
    returns_labels::document::write_sample(std::path::Path::new(&path))?;
    println!("wrote {path}");
    Ok(())
}
