//! `COPY landing.<dataset> FROM STDIN (FORMAT csv, HEADER)` — psql's
//! `\copy landing.gl_entries from 'ledger.csv' csv header` — stores what the
//! client sends as a new landing file of the dataset. The bytes are held
//! until the client says the copy is done, checked, then stored in one put;
//! a copy the client aborts, or a connection that drops, stores nothing.
//! Uploads over `upload_max_size` are refused. Only roles with `upload` rights on the dataset may (local trust may).

use std::fmt::Debug;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::BytesMut;
use datafusion::sql::sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement};
use futures::{Sink, SinkExt};
use pgwire::api::copy::CopyHandler;
use pgwire::api::results::{CopyResponse, Response, Tag};
use pgwire::api::ClientInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};

use super::errors;
use super::session::Session;
use crate::pipeline::CsvFraming;

/// The schema clients copy into.
pub const LANDING: &str = "landing";

/// A `COPY landing.<dataset> FROM STDIN`.
#[derive(Debug, Clone)]
pub struct CopyIn {
    pub dataset: String,
    pub framing: CsvFraming,
}

/// A copy in progress on a connection.
#[derive(Debug)]
pub struct Pending {
    copy: CopyIn,
    received: BytesMut,
    /// More than [`MAX_UPLOAD_BYTES`] arrived: the rest is discarded.
    too_big: bool,
}

/// The connection's copy in progress, if any.
#[derive(Debug, Default)]
pub struct Uploads(Mutex<Option<Pending>>);

fn refuse(code: &str, message: impl Into<String>, hint: &str) -> PgWireError {
    errors::user(errors::with_hint(errors::error(code, message), hint))
}

/// `Some` when `statement` copies into something from STDIN.
pub fn parse(statement: &Statement) -> Option<PgWireResult<CopyIn>> {
    let Statement::Copy { source, to: false, target, options, legacy_options, .. } = statement else {
        return None;
    };
    Some(build(source, target, options, legacy_options))
}

fn build(source: &CopySource, target: &CopyTarget, options: &[CopyOption], legacy: &[CopyLegacyOption]) -> PgWireResult<CopyIn> {
    let hint = "upload a landing file with COPY landing.<dataset> FROM STDIN (FORMAT csv, HEADER), or psql's \\copy landing.<dataset> from 'file.csv' csv header";
    let CopySource::Table { table_name, columns } = source else {
        return Err(refuse("0A000", "COPY FROM needs a table", hint));
    };
    let parts: Vec<String> = table_name.0.iter().map(|p| p.to_string().trim_matches('"').to_string()).collect();
    let dataset = match parts.as_slice() {
        [schema, dataset] if schema.eq_ignore_ascii_case(LANDING) => dataset.clone(),
        _ => {
            return Err(refuse(
                "0A000",
                format!("COPY {table_name} FROM is not supported: the lake's tables are written by pipelines"),
                hint,
            ));
        }
    };
    if !columns.is_empty() {
        return Err(refuse("0A000", "COPY landing.<dataset> takes whole files: no column list", hint));
    }
    if !matches!(target, CopyTarget::Stdin) {
        return Err(refuse("42501", "COPY FROM a file on the server is not allowed: send the file from the client", hint));
    }
    let mut csv = false;
    let mut binary = false;
    let mut header = false;
    let mut delimiter = None;
    for option in options {
        match option {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "csv" => csv = true,
                "binary" => binary = true,
                "text" => csv = false,
                other => return Err(refuse("22023", format!("COPY format \"{other}\" not recognized"), hint)),
            },
            CopyOption::Header(h) => header = *h,
            CopyOption::Delimiter(d) => delimiter = Some(*d),
            CopyOption::Encoding(e) if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => return Err(refuse("0A000", format!("COPY option {other} is not supported for uploads"), hint)),
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Binary => binary = true,
            CopyLegacyOption::Delimiter(d) => delimiter = Some(*d),
            CopyLegacyOption::Csv(more) => {
                csv = true;
                for c in more {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        other => return Err(refuse("0A000", format!("COPY option {other} is not supported for uploads"), hint)),
                    }
                }
            }
            other => return Err(refuse("0A000", format!("COPY option {other} is not supported for uploads"), hint)),
        }
    }
    if binary {
        return Err(refuse(
            "0A000",
            "COPY landing.<dataset> FROM STDIN takes CSV, not FORMAT binary: a landing file is the file as your source system wrote it",
            hint,
        ));
    }
    if !csv {
        return Err(refuse("0A000", "COPY landing.<dataset> FROM STDIN takes CSV: say FORMAT csv (psql: \\copy ... csv header)", hint));
    }
    let delimiter = delimiter.unwrap_or(',');
    if !delimiter.is_ascii() {
        return Err(refuse("22023", "COPY delimiter must be a single one-byte character", hint));
    }
    Ok(CopyIn { dataset, framing: CsvFraming { delimiter: delimiter as u8, header } })
}

impl Session {
    /// Start `copy`: check who asks and what, then switch the connection to
    /// copy-in.
    pub(super) fn start_upload(&self, copy: CopyIn) -> PgWireResult<Response> {
        let Some(landing) = self.landing() else {
            return Err(refuse("0A000", "this server runs without specs: there is no dataset to upload to", "start it with --specs DIR"));
        };
        if let Some(access) = self.access()
            && !access.principal().is_some_and(|p| p.can_upload(&copy.dataset))
        {
            return Err(refuse(
                errors::INSUFFICIENT_PRIVILEGE,
                format!("permission denied: user {} may not upload landing files of dataset {}", access.user(), copy.dataset),
                "ask an administrator for `upload: [<dataset>]` in one of your roles",
            ));
        }
        landing.check_upload(&copy.dataset, copy.framing).map_err(|e| errors::user(errors::pipeline(&e)))?;
        *self.uploads().0.lock().expect("uploads") = Some(Pending { copy, received: BytesMut::new(), too_big: false });
        Ok(Response::CopyIn(CopyResponse::new(0, 0, futures::stream::empty())))
    }
}

#[async_trait]
impl CopyHandler for Session {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let limit = self.landing().map(|l| l.upload_limit()).unwrap_or(0);
        let mut uploads = self.uploads().0.lock().expect("uploads");
        if let Some(pending) = uploads.as_mut()
            && !pending.too_big
        {
            if pending.received.len() + copy_data.data.len() > limit {
                pending.too_big = true;
                pending.received = BytesMut::new();
            } else {
                pending.received.extend_from_slice(&copy_data.data);
            }
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let pending = self.uploads().0.lock().expect("uploads").take();
        let Some(pending) = pending else {
            return Err(refuse("08P01", "COPY data without a COPY FROM STDIN", "start with COPY landing.<dataset> FROM STDIN"));
        };
        let Some(landing) = self.landing() else {
            return Err(refuse("0A000", "this server runs without specs", "start it with --specs DIR"));
        };
        if pending.too_big {
            return Err(refuse(
                errors::PROGRAM_LIMIT,
                format!("upload larger than upload_max_size ({} bytes); nothing was stored", landing.upload_limit()),
                "copy a file this large into the lake's landing path directly, or raise upload_max_size",
            ));
        }
        let stored = landing
            .upload(&pending.copy.dataset, pending.copy.framing, pending.received.freeze())
            .await
            .map_err(|e| errors::user(errors::pipeline(&e)))?;
        let note = format!(
            "stored {} ({} rows, {} bytes, sha256 {}){}",
            stored.path,
            stored.rows,
            stored.bytes,
            stored.sha256,
            if stored.already_ingested { "; the same content was already ingested, so a run will skip it" } else { "" }
        );
        client.send(PgWireBackendMessage::NoticeResponse(errors::notice(&note).into())).await?;
        client.send(PgWireBackendMessage::CommandComplete(Tag::new("COPY").with_rows(stored.rows).into())).await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.uploads().0.lock().expect("uploads").take();
        refuse(errors::QUERY_CANCELED, format!("COPY from stdin failed: {}; nothing was stored", fail.message), "send the file again")
    }
}
