//! The messages of PostgreSQL's `pgoutput` logical decoding plugin
//! (protocol version 1, text values), decoded from the bytes a replication
//! stream carries. The format is PostgreSQL's "Logical Replication Message
//! Formats" page; this module only reads bytes, it never touches a socket.

use bytes::Buf;

/// A column value as pgoutput sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed value: the new tuple of an update leaves it out.
    Unchanged,
    /// The value in the type's text output format.
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the table's replica identity.
    pub key: bool,
}

/// A table's shape, sent before its first change in a session and again
/// after it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// The old row an update or delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    /// Only the replica identity's columns (the others are `Null`).
    Key(Vec<Value>),
    /// Every column (`REPLICA IDENTITY FULL`).
    Full(Vec<Value>),
}

impl OldRow {
    pub fn values(&self) -> &[Value] {
        match self {
            OldRow::Key(v) | OldRow::Full(v) => v,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin { final_lsn: u64, commit_micros: i64, xid: u32 },
    Commit { commit_lsn: u64, end_lsn: u64, commit_micros: i64 },
    Relation(Relation),
    Insert { relation: u32, new: Vec<Value> },
    Update { relation: u32, old: Option<OldRow>, new: Vec<Value> },
    Delete { relation: u32, old: OldRow },
    Truncate { relations: Vec<u32> },
    /// Origin, type and logical-message records: nothing to copy.
    Ignored(u8),
}

#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message ({0}); is the slot's plugin pgoutput?")]
pub struct DecodeError(String);

fn need(buf: &[u8], n: usize, what: &str) -> Result<(), DecodeError> {
    if buf.remaining() < n { Err(DecodeError(format!("{what} cut short"))) } else { Ok(()) }
}

fn u8_of(buf: &mut &[u8], what: &str) -> Result<u8, DecodeError> {
    need(buf, 1, what)?;
    Ok(buf.get_u8())
}

fn i16_of(buf: &mut &[u8], what: &str) -> Result<i16, DecodeError> {
    need(buf, 2, what)?;
    Ok(buf.get_i16())
}

fn i32_of(buf: &mut &[u8], what: &str) -> Result<i32, DecodeError> {
    need(buf, 4, what)?;
    Ok(buf.get_i32())
}

fn i64_of(buf: &mut &[u8], what: &str) -> Result<i64, DecodeError> {
    need(buf, 8, what)?;
    Ok(buf.get_i64())
}

/// A NUL-terminated string.
fn string_of(buf: &mut &[u8], what: &str) -> Result<String, DecodeError> {
    let end = buf.iter().position(|&b| b == 0).ok_or_else(|| DecodeError(format!("{what} not terminated")))?;
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Ok(text)
}

fn tuple_of(buf: &mut &[u8]) -> Result<Vec<Value>, DecodeError> {
    let count = i16_of(buf, "tuple column count")?;
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        values.push(match u8_of(buf, "tuple column kind")? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                let len = i32_of(buf, "value length")?;
                let len = usize::try_from(len).map_err(|_| DecodeError("negative value length".into()))?;
                need(buf, len, "value")?;
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                buf.advance(len);
                Value::Text(text)
            }
            b'b' => return Err(DecodeError("a binary value: the stream must be started without `binary`".into())),
            other => return Err(DecodeError(format!("unknown tuple column kind {:?}", other as char))),
        });
    }
    Ok(values)
}

/// Decode one message.
pub fn decode(mut buf: &[u8]) -> Result<Message, DecodeError> {
    let buf = &mut buf;
    let tag = u8_of(buf, "message tag")?;
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: i64_of(buf, "begin lsn")? as u64,
            commit_micros: i64_of(buf, "begin timestamp")?,
            xid: i32_of(buf, "begin xid")? as u32,
        },
        b'C' => {
            u8_of(buf, "commit flags")?;
            Message::Commit {
                commit_lsn: i64_of(buf, "commit lsn")? as u64,
                end_lsn: i64_of(buf, "commit end lsn")? as u64,
                commit_micros: i64_of(buf, "commit timestamp")?,
            }
        }
        b'R' => {
            let id = i32_of(buf, "relation id")? as u32;
            let schema = string_of(buf, "relation schema")?;
            let name = string_of(buf, "relation name")?;
            let replica_identity = u8_of(buf, "replica identity")?;
            let count = i16_of(buf, "relation column count")?;
            let mut columns = Vec::with_capacity(count.max(0) as usize);
            for _ in 0..count {
                let flags = u8_of(buf, "column flags")?;
                columns.push(RelationColumn {
                    name: string_of(buf, "column name")?,
                    type_oid: i32_of(buf, "column type")? as u32,
                    type_modifier: i32_of(buf, "column type modifier")?,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation { id, schema, name, replica_identity, columns })
        }
        b'I' => {
            let relation = i32_of(buf, "insert relation")? as u32;
            match u8_of(buf, "insert tuple tag")? {
                b'N' => Message::Insert { relation, new: tuple_of(buf)? },
                other => return Err(DecodeError(format!("insert without a new tuple (tag {:?})", other as char))),
            }
        }
        b'U' => {
            let relation = i32_of(buf, "update relation")? as u32;
            let (old, tag) = match u8_of(buf, "update tuple tag")? {
                b'K' => (Some(OldRow::Key(tuple_of(buf)?)), u8_of(buf, "update tuple tag")?),
                b'O' => (Some(OldRow::Full(tuple_of(buf)?)), u8_of(buf, "update tuple tag")?),
                tag => (None, tag),
            };
            if tag != b'N' {
                return Err(DecodeError(format!("update without a new tuple (tag {:?})", tag as char)));
            }
            Message::Update { relation, old, new: tuple_of(buf)? }
        }
        b'D' => {
            let relation = i32_of(buf, "delete relation")? as u32;
            let old = match u8_of(buf, "delete tuple tag")? {
                b'K' => OldRow::Key(tuple_of(buf)?),
                b'O' => OldRow::Full(tuple_of(buf)?),
                other => return Err(DecodeError(format!("delete without an old tuple (tag {:?})", other as char))),
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let count = i32_of(buf, "truncate relation count")?;
            u8_of(buf, "truncate options")?;
            let mut relations = Vec::with_capacity(count.max(0) as usize);
            for _ in 0..count {
                relations.push(i32_of(buf, "truncate relation")? as u32);
            }
            Message::Truncate { relations }
        }
        b'O' | b'Y' | b'M' => Message::Ignored(tag),
        other => return Err(DecodeError(format!("unknown message tag {:?}", other as char))),
    })
}
