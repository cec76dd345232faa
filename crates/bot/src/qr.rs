//! QR codes as PNG images, the form every VLESS app (v2rayNG, Hiddify, Streisand) scans.

use image::{ImageFormat, Luma};
use qrcode::{EcLevel, QrCode};

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("the link does not fit in a QR code: {0}")]
    TooLong(#[from] qrcode::types::QrError),
    #[error("cannot encode the QR code as PNG: {0}")]
    Png(#[from] image::ImageError),
}

/// A PNG of `text` as a QR code. Medium error correction and a quiet zone, at a size a
/// phone camera reads off another screen.
pub fn png(text: &str) -> Result<Vec<u8>, QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)?;
    let image = code
        .render::<Luma<u8>>()
        .min_dimensions(480, 480)
        .quiet_zone(true)
        .build();
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_link_becomes_a_png_that_reads_back() {
        let link = "vless://2b6f0cc9-4a3e-4c1a-9d8e-1f2a3b4c5d6e@ams.example.com:443?type=tcp&security=reality#tg1-ams";
        let png = super::png(link).expect("png");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let image = image::load_from_memory(&png).expect("decodes").to_luma8();
        let mut prepared = rqrr::PreparedImage::prepare(image);
        let grids = prepared.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, content) = grids[0].decode().expect("reads");
        assert_eq!(content, link);
    }
}
