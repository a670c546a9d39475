//! Uploads: bytes a client sends (`COPY landing.<dataset> FROM STDIN`)
//! stored as a new landing file of a dataset, named so its source glob
//! matches, checked before anything is written (a file cut short or in
//! another shape is refused), and written in one put so that no run ever
//! reads half of it.

use sha2::{Digest, Sha256};

use super::{Pipeline, PipelineError};
use crate::spec::SourceFormat;


/// A stored upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// Relative to the lake root.
    pub path: String,
    pub sha256: String,
    pub bytes: usize,
    /// Data rows (after the header).
    pub rows: usize,
    /// A file with the same content was already ingested: a run skips it.
    pub already_ingested: bool,
}

/// How the client framed the rows it sends.
#[derive(Debug, Clone, Copy)]
pub struct CsvFraming {
    pub delimiter: u8,
    pub header: bool,
}

impl Pipeline {
    /// Refuse an upload `dataset` cannot take in `framing`, before any byte
    /// is sent: unknown dataset, a source that is not CSV, a delimiter or
    /// header that does not match the spec.
    pub fn check_upload(&self, dataset: &str, framing: CsvFraming) -> Result<(), PipelineError> {
        let spec = self.project.dataset(dataset).ok_or_else(|| PipelineError::UnknownDataset(dataset.to_string()))?;
        let upload = |message: String| PipelineError::Upload { dataset: dataset.to_string(), message };
        let SourceFormat::Csv(csv) = &spec.source.format else {
            return Err(upload(format!(
                "its source reads {} files, and COPY carries CSV: copy the file into the lake's landing path instead",
                spec.source.format.name()
            )));
        };
        if framing.delimiter != csv.delimiter {
            return Err(upload(format!(
                "the spec reads '{}'-delimited files, the COPY says '{}': use DELIMITER '{}'",
                csv.delimiter as char, framing.delimiter as char, csv.delimiter as char
            )));
        }
        if csv.header_row >= 1 && !framing.header {
            return Err(upload("the spec's files start with a header row: send it and say HEADER (psql: \\copy ... csv header)".into()));
        }
        if spec.source.path.is_none() {
            return Err(upload("its source has no landing path".into()));
        }
        Ok(())
    }

    /// Check `bytes` and store them as a new landing file of `dataset`.
    pub async fn upload(&self, dataset: &str, framing: CsvFraming, bytes: bytes::Bytes) -> Result<Uploaded, PipelineError> {
        self.check_upload(dataset, framing)?;
        let spec = self.project.dataset(dataset).expect("checked");
        let upload = |message: String| PipelineError::Upload { dataset: dataset.to_string(), message };
        let pattern = spec.source.path.clone().expect("checked");
        let checked = bytes.clone();
        let delimiter = framing.delimiter;
        let (rows, sha256) = tokio::task::spawn_blocking(move || -> Result<(usize, String), String> {
            let rows = check_csv(&checked, delimiter)?;
            Ok((rows, hex::encode(Sha256::digest(&checked))))
        })
        .await
        .map_err(|e| upload(e.to_string()))?
        .map_err(upload)?;
        let path = landing_name(&pattern, &sha256).map_err(upload)?;
        self.store_upload(dataset, path, bytes, rows, sha256).await
    }

    /// Put checked `bytes` at `path` (never over an existing file) and say
    /// what was stored.
    async fn store_upload(&self, dataset: &str, path: String, bytes: bytes::Bytes, rows: usize, sha256: String) -> Result<Uploaded, PipelineError> {
        let upload = |message: String| PipelineError::Upload { dataset: dataset.to_string(), message };
        let already_ingested = self.ingested_hashes(dataset).await?.contains(&sha256);
        let size = bytes.len();
        self.lake.put_new(&path, bytes).await.map_err(|e| match e {
            object_store::Error::AlreadyExists { .. } => upload(format!("{path} exists already; upload under another name")),
            other => upload(format!("storing {path}: {other}")),
        })?;
        tracing::info!(%dataset, %path, %sha256, bytes = size, rows, "landing file uploaded");
        Ok(Uploaded { path, sha256, bytes: size, rows, already_ingested })
    }
}

impl Pipeline {
    /// Store `bytes`, a whole file named `file_name` by the client (an
    /// Excel workbook, a CSV, ...), as a new landing file of `dataset`: the
    /// name is cleaned to letters, digits, `.`, `-` and `_` (no folders),
    /// must be one the dataset's glob matches in its folder, must not exist
    /// yet, and the file must read as the dataset's format.
    pub async fn upload_file(&self, dataset: &str, file_name: &str, bytes: bytes::Bytes) -> Result<Uploaded, PipelineError> {
        let spec = self.project.dataset(dataset).ok_or_else(|| PipelineError::UnknownDataset(dataset.to_string()))?;
        let upload = |message: String| PipelineError::Upload { dataset: dataset.to_string(), message };
        let pattern = spec.source.path.clone().ok_or_else(|| upload("its source has no landing files".into()))?;
        if file_name.contains(['/', '\\']) || file_name.contains("..") || file_name.starts_with('.') {
            return Err(upload(format!("'{file_name}' is not a plain file name (no folders, no '..', no leading dot)")));
        }
        let clean: String = file_name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
            .collect();
        if clean.is_empty() || clean.len() > 200 {
            return Err(upload("the file name is empty or longer than 200 characters".into()));
        }
        let (dir, _) = pattern.rsplit_once('/').unwrap_or(("", &pattern));
        if dir.contains(['*', '?', '[']) {
            return Err(upload(format!("the source path '{pattern}' has wildcards in its folders: no single folder to put an upload in")));
        }
        let path = if dir.is_empty() { clean.clone() } else { format!("{dir}/{clean}") };
        let glob = glob::Pattern::new(&pattern).map_err(|e| upload(e.to_string()))?;
        if !glob.matches(&path) {
            return Err(upload(format!("the dataset reads files like '{pattern}'; '{clean}' is not one of them (check its extension)")));
        }
        if bytes.is_empty() {
            return Err(upload("nothing was sent".into()));
        }
        // The whole file must read as the dataset's format.
        let format = spec.source.format.clone();
        let (checked, name) = (bytes.clone(), path.clone());
        let (rows, sha256) = tokio::task::spawn_blocking(move || -> Result<(usize, String), String> {
            let batches = super::sources::read_file(&format, &name, &checked).map_err(|e| e.to_string())?;
            Ok((batches.iter().map(|b| b.num_rows()).sum(), hex::encode(Sha256::digest(&checked))))
        })
        .await
        .map_err(|e| upload(e.to_string()))?
        .map_err(|e| upload(format!("{e}; nothing was stored")))?;
        self.store_upload(dataset, path, bytes, rows, sha256).await
    }
}

/// Every record of a CSV has as many fields as its first (the header or the
/// first row): a file cut short ends in a shorter record, or inside quotes.
/// Returns the records after the first.
fn check_csv(bytes: &[u8], delimiter: u8) -> Result<usize, String> {
    if bytes.is_empty() {
        return Err("nothing was sent".into());
    }
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(false).flexible(false).from_reader(bytes);
    let mut records = 0usize;
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => records += 1,
            Ok(false) => break,
            Err(err) => {
                let line = err.position().map(|p| p.line()).unwrap_or(0);
                return Err(match err.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!(
                        "line {line} has {len} field(s) where the first has {expected_len}: the file is cut short or not in the dataset's shape; nothing was stored"
                    ),
                    _ => format!("line {line}: {err}; nothing was stored"),
                });
            }
        }
    }
    // A last field left inside an open quote is read to the end of the file.
    let quotes = bytes.iter().filter(|b| **b == b'"').count();
    if quotes % 2 == 1 {
        return Err("the file ends inside a quoted field: it is cut short; nothing was stored".into());
    }
    Ok(records.saturating_sub(1))
}

/// A new file name the dataset's glob matches: the glob's directory, and its
/// last part with the first `*` (or the whole name) taken by
/// `upload-<UTC time>-<hash prefix>`.
fn landing_name(pattern: &str, sha256: &str) -> Result<String, String> {
    let stamp = format!("upload-{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), &sha256[..12]);
    let (dir, last) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    if dir.contains(['*', '?', '[']) {
        let fixed: String = dir.split('/').take_while(|p| !p.contains(['*', '?', '['])).collect::<Vec<_>>().join("/");
        return Err(format!(
            "the source path '{pattern}' has wildcards in its folders: no single folder to put an upload in (e.g. use {fixed}/*.csv)"
        ));
    }
    let name = match last.find('*') {
        Some(star) => format!("{}{stamp}{}", &last[..star], last[star + 1..].replace('*', "").replace('?', "x")),
        None => return Err(format!("the source path '{pattern}' names one file; an upload needs a glob such as {dir}/*.csv")),
    };
    let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
    let glob = glob::Pattern::new(pattern).map_err(|e| e.to_string())?;
    if !glob.matches(&path) {
        return Err(format!("cannot name an upload so that '{pattern}' matches it (tried {path}); use a glob such as landing/<dataset>/*.csv"));
    }
    Ok(path)
}
