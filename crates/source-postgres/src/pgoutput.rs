//! Decoding of pgoutput (protocol version 1) row messages and their conversion into Sequin
//! envelopes. Begin/Commit arrive already parsed from pgwire-replication.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::decode::{decode, pg_micros_to_iso};

/// One column of a relation, as the latest Relation message describes it.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// A table as pgoutput describes it, plus its primary key columns from the catalog.
#[derive(Debug, Clone)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Primary key column names in key order (from `pg_index`, not the relation's key flags:
    /// with `REPLICA IDENTITY FULL` every column carries the key flag).
    pub pk: Vec<String>,
}

/// One column value in a TupleData.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    /// An unchanged TOASTed value that was not sent.
    Unchanged,
    Text(String),
}

/// A pgoutput message this crate acts on.
#[derive(Debug)]
pub enum Message {
    Relation {
        id: u32,
        schema: String,
        name: String,
        columns: Vec<Column>,
    },
    Insert {
        rel: u32,
        new: Vec<Cell>,
    },
    Update {
        rel: u32,
        /// `(is_full_old_tuple, cells)`: `O` (REPLICA IDENTITY FULL) or `K` (key only).
        old: Option<(bool, Vec<Cell>)>,
        new: Vec<Cell>,
    },
    Delete {
        rel: u32,
        old: (bool, Vec<Cell>),
    },
    /// Anything else (Type, Origin, Truncate, Begin/Commit copies, logical messages).
    Other(u8),
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err("truncated pgoutput message".into());
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let end = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or("unterminated string in pgoutput message")?;
        let s = String::from_utf8_lossy(&self.b[..end]).into_owned();
        self.b = &self.b[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Cell>, String> {
        let n = self.i16()?;
        let mut cells = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Cell::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                b'b' => return Err("binary tuple data (binary mode is not used)".into()),
                k => return Err(format!("unknown tuple cell kind {k:#x}")),
            });
        }
        Ok(cells)
    }
}

/// Parses one pgoutput message.
pub fn parse(data: &[u8]) -> Result<Message, String> {
    let mut r = Reader { b: data };
    let tag = r.u8()?;
    Ok(match tag {
        b'R' => {
            let id = r.u32()?;
            let mut schema = r.cstr()?;
            if schema.is_empty() {
                schema = "pg_catalog".into();
            }
            let name = r.cstr()?;
            let _replident = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let _flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push(Column { name, type_oid });
            }
            Message::Relation {
                id,
                schema,
                name,
                columns,
            }
        }
        b'I' => {
            let rel = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    rel,
                    new: r.tuple()?,
                },
                k => return Err(format!("Insert: unexpected tuple kind {k:#x}")),
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some((kind == b'O', r.tuple()?));
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(format!("Update: unexpected tuple kind {kind:#x}"));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(format!("Delete: unexpected tuple kind {kind:#x}"));
            }
            Message::Delete {
                rel,
                old: (kind == b'O', r.tuple()?),
            }
        }
        other => Message::Other(other),
    })
}

/// Transaction context shared by the changes of one transaction.
pub struct TxContext<'a> {
    pub commit_lsn: u64,
    pub commit_idx: u64,
    pub commit_time_micros: i64,
    pub database: &'a str,
}

fn cell_value(col: &Column, cell: &Cell) -> Value {
    match cell {
        Cell::Null | Cell::Unchanged => Value::Null,
        Cell::Text(t) => decode(col.type_oid, t),
    }
}

/// Builds `record` from a new tuple; an unchanged TOAST cell takes the old tuple's value if
/// the old tuple has one, else the column is left out of `record`.
fn build_record(rel: &Relation, new: &[Cell], old: Option<&[Cell]>) -> Map<String, Value> {
    let mut record = Map::new();
    for (i, col) in rel.columns.iter().enumerate() {
        let cell = new.get(i).unwrap_or(&Cell::Null);
        match cell {
            Cell::Unchanged => {
                if let Some(c @ (Cell::Text(_) | Cell::Null)) = old.and_then(|o| o.get(i)) {
                    record.insert(col.name.clone(), cell_value(col, c));
                }
            }
            c => {
                record.insert(col.name.clone(), cell_value(col, c));
            }
        }
    }
    record
}

/// The primary key values as strings, in key order (from the tuple's text forms).
fn record_pks(rel: &Relation, cells: &[Cell], fallback: Option<&[Cell]>) -> Vec<String> {
    rel.pk
        .iter()
        .map(|k| {
            let i = rel.columns.iter().position(|c| &c.name == k);
            let pick = |cells: &[Cell]| match i.and_then(|i| cells.get(i)) {
                Some(Cell::Text(t)) => Some(t.clone()),
                _ => None,
            };
            pick(cells)
                .or_else(|| fallback.and_then(pick))
                .unwrap_or_default()
        })
        .collect()
}

/// Base64 (standard alphabet, padded) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn metadata(
    rel: &Relation,
    commit_timestamp: String,
    commit_lsn: Value,
    commit_idx: Value,
    pks: Vec<String>,
    idempotency_key: String,
    database: &str,
) -> Value {
    json!({
        "table_schema": rel.schema,
        "table_name": rel.name,
        "commit_timestamp": commit_timestamp,
        "commit_lsn": commit_lsn,
        "commit_idx": commit_idx,
        "record_pks": pks,
        "idempotency_key": idempotency_key,
        "database_name": database,
        "transaction_annotations": null,
        "enrichment": null,
    })
}

fn stream_metadata(rel: &Relation, tx: &TxContext<'_>, pks: Vec<String>) -> Value {
    metadata(
        rel,
        pg_micros_to_iso(tx.commit_time_micros),
        json!(tx.commit_lsn),
        json!(tx.commit_idx),
        pks,
        base64(format!("{}:{}", tx.commit_lsn, tx.commit_idx).as_bytes()),
        tx.database,
    )
}

/// The envelope of an insert.
pub fn insert_envelope(rel: &Relation, new: &[Cell], tx: &TxContext<'_>) -> Value {
    let record = build_record(rel, new, None);
    json!({
        "action": "insert",
        "record": record,
        "changes": null,
        "metadata": stream_metadata(rel, tx, record_pks(rel, new, None)),
    })
}

/// The envelope of an update. `changes`: with an old tuple, the old values of the columns
/// that changed (a key-only `K` tuple covers only key columns; unchanged-TOAST columns are
/// never listed); `{}` without one.
pub fn update_envelope(
    rel: &Relation,
    old: Option<&(bool, Vec<Cell>)>,
    new: &[Cell],
    tx: &TxContext<'_>,
) -> Value {
    let old_cells = old.map(|(_, cells)| cells.as_slice());
    let record = build_record(rel, new, old_cells);
    let mut changes = Map::new();
    if let Some((full, old_cells)) = old {
        for (i, col) in rel.columns.iter().enumerate() {
            let (Some(o), Some(n)) = (old_cells.get(i), new.get(i)) else {
                continue;
            };
            if matches!(o, Cell::Unchanged) || matches!(n, Cell::Unchanged) {
                continue;
            }
            if !full && !rel.pk.contains(&col.name) {
                continue;
            }
            if o != n {
                changes.insert(col.name.clone(), cell_value(col, o));
            }
        }
    }
    json!({
        "action": "update",
        "record": record,
        "changes": changes,
        "metadata": stream_metadata(rel, tx, record_pks(rel, new, old_cells)),
    })
}

/// The envelope of a delete: `record` is the old tuple (key columns only, others null,
/// unless REPLICA IDENTITY FULL).
pub fn delete_envelope(rel: &Relation, old: &[Cell], tx: &TxContext<'_>) -> Value {
    let mut record = Map::new();
    for (i, col) in rel.columns.iter().enumerate() {
        record.insert(
            col.name.clone(),
            cell_value(col, old.get(i).unwrap_or(&Cell::Null)),
        );
    }
    json!({
        "action": "delete",
        "record": record,
        "changes": null,
        "metadata": stream_metadata(rel, tx, record_pks(rel, old, None)),
    })
}

/// The envelope of a backfilled row: `commit_lsn`/`commit_idx` null, `commit_timestamp` the
/// read time, `idempotency_key` = base64(`<backfill id>:<pk values joined by ':'>`).
pub fn read_envelope(
    rel: &Relation,
    row: &[Cell],
    read_time: &str,
    backfill_id: &str,
    database: &str,
) -> Value {
    let record = build_record(rel, row, None);
    let pks = record_pks(rel, row, None);
    let key = base64(format!("{backfill_id}:{}", pks.join(":")).as_bytes());
    json!({
        "action": "read",
        "record": record,
        "changes": null,
        "metadata": metadata(rel, read_time.to_string(), Value::Null, Value::Null, pks, key, database),
    })
}

/// Relations by pgoutput relation id (the table's OID), replaced by each Relation message.
pub type Relations = HashMap<u32, Relation>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"123:0"), "MTIzOjA=");
    }

    fn rel() -> Relation {
        Relation {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                },
                Column {
                    name: "big".into(),
                    type_oid: 25,
                },
                Column {
                    name: "n".into(),
                    type_oid: 23,
                },
            ],
            pk: vec!["id".into()],
        }
    }

    #[test]
    fn toast_unchanged_takes_the_old_value_or_is_left_out() {
        let tx = TxContext {
            commit_lsn: 9,
            commit_idx: 0,
            commit_time_micros: 0,
            database: "d",
        };
        let new = vec![
            Cell::Text("1".into()),
            Cell::Unchanged,
            Cell::Text("5".into()),
        ];
        let env = update_envelope(&rel(), None, &new, &tx);
        assert_eq!(env["record"], json!({"id": 1, "n": 5}));
        assert_eq!(env["changes"], json!({}));
        let old = (
            true,
            vec![
                Cell::Text("1".into()),
                Cell::Text("x".into()),
                Cell::Text("4".into()),
            ],
        );
        let env = update_envelope(&rel(), Some(&old), &new, &tx);
        assert_eq!(env["record"], json!({"id": 1, "big": "x", "n": 5}));
        assert_eq!(env["changes"], json!({"n": 4}));
        assert_eq!(env["metadata"]["idempotency_key"], json!(base64(b"9:0")));
    }
}
