//! Upload bodies written to a temporary file as they arrive, so a slow or
//! large upload holds no memory while it transfers, and one larger than
//! `upload_max_size` is refused (413) as soon as it passes the limit. The
//! file (readable by this user only) is deleted when the upload is done.

use std::path::PathBuf;

use axum::http::StatusCode;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::api::ApiError;

/// An upload's bytes on local disk.
pub struct Spooled {
    path: PathBuf,
    pub bytes: usize,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Spooled {
    /// The whole upload, for the format check and the store.
    pub async fn read(&self) -> Result<Bytes, ApiError> {
        tokio::fs::read(&self.path)
            .await
            .map(Bytes::from)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the spooled upload back: {e}")))
    }
}

/// Copy `body` to a new temporary file, refusing it once more than `limit`
/// bytes arrived.
pub async fn spool<S, E>(mut body: S, limit: usize) -> Result<Spooled, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let failed = |what: &str, e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what} the upload's temporary file: {e}"));
    let path = std::env::temp_dir().join(format!("workbench-upload-{}", uuid::Uuid::new_v4()));
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| failed("creating", e))?
    };
    // From here the file is removed however this ends.
    let mut spooled = Spooled { path, bytes: 0 };
    let mut file = tokio::fs::File::from_std(file);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("reading the upload: {e}")))?;
        spooled.bytes += chunk.len();
        if spooled.bytes > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the file is larger than upload_max_size ({} bytes); nothing was stored", limit),
            ));
        }
        file.write_all(&chunk).await.map_err(|e| failed("writing", e))?;
    }
    file.flush().await.map_err(|e| failed("writing", e))?;
    Ok(spooled)
}
