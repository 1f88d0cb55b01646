//! Writing generated images: unique names, temp file + rename so a reader never sees a
//! half-written file, and nothing outside the engine's output root.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::api::ImageFormat;
use crate::error::{Error, Result};

/// Encodes `image`; `quality` (1–100) applies to JPEG and lossy WebP, `lossless` to WebP.
pub fn encode(image: &image::RgbImage, format: ImageFormat, quality: u8, lossless: bool) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let cursor = std::io::Cursor::new(&mut bytes);
    match format {
        ImageFormat::Png => image
            .write_to(&mut std::io::BufWriter::new(cursor), image::ImageFormat::Png)
            .map_err(|e| Error::Io(format!("png encode: {e}")))?,
        ImageFormat::Jpeg => {
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(cursor, quality);
            encoder.encode_image(image).map_err(|e| Error::Io(format!("jpeg encode: {e}")))?
        }
        // libwebp: lossy at `quality`, or lossless (the image crate writes lossless only).
        ImageFormat::Webp => {
            let encoder = webp::Encoder::from_rgb(image.as_raw(), image.width(), image.height());
            let encoded = encoder.encode_simple(lossless, quality as f32).map_err(|e| Error::Io(format!("webp encode: {e:?}")))?;
            bytes.extend_from_slice(&encoded);
        }
    }
    Ok(bytes)
}

/// `<request_id>_<index>_<seed>.<ext>` with the request id reduced to safe characters.
pub fn file_name(request_id: &str, index: usize, seed: u64, format: ImageFormat) -> String {
    let safe: String = request_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(64)
        .collect();
    format!("{safe}_{index}_{seed}.{}", format.extension())
}

/// `output_dir/relative`, refused when a symbolic link on the way leads out of `output_dir`
/// (`relative` itself is already free of `..` and absolute parts). Only the part of the path
/// that exists is checked, so it holds before and after the folders are created.
pub fn confined_dir(output_dir: &Path, relative: &Path) -> Result<PathBuf> {
    let dir = output_dir.join(relative);
    let root = output_dir.canonicalize().map_err(|e| Error::Io(format!("output_dir {}: {e}", output_dir.display())))?;
    let existing = dir.ancestors().find(|ancestor| ancestor.exists()).unwrap_or(output_dir);
    let resolved = existing.canonicalize().map_err(|e| Error::Io(format!("{}: {e}", existing.display())))?;
    if !resolved.starts_with(&root) {
        return Err(Error::validation(
            "output.save_path",
            format!("{} leads to {} through a symbolic link, outside the engine's output_dir", existing.display(), resolved.display()),
        ));
    }
    Ok(dir)
}

/// Writes `bytes` to `dir/name` atomically and returns the final path.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    let final_path = dir.join(name);
    let temp_path = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp_path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp_path, &final_path)
    })();
    if let Err(err) = result {
        let _ = std::fs::remove_file(&temp_path);
        return Err(Error::Io(format!("cannot write {}: {err}", final_path.display())));
    }
    Ok(final_path)
}
