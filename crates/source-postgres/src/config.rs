//! The `[[sources]]` entry of a PostgreSQL source, its validation, and the connection
//! parameters both clients (replication and query) are built from.

use std::fmt;

use crate::error::SourceError;

/// Default largest number of changes handed to one `ChangeSink::store` call.
pub const DEFAULT_MAX_BATCH: usize = 1000;

/// One PostgreSQL source: which database, which tables, and through which publication and
/// slot their changes are read. The server deserializes `[[sources]]` TOML entries into it.
///
/// `Debug` redacts the URL's password: configs end up in logs.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Unique name of the source (in logs, errors, status and the slot's application name).
    pub name: String,
    /// `postgres://user:pass@host:port/db` (or libpq `key=value` form). Exactly one of `url`
    /// and `url_env`.
    pub url: Option<String>,
    /// Name of an environment variable holding the URL, so the password stays out of files.
    pub url_env: Option<String>,
    /// Publication to stream; created `FOR TABLE <tables>` when missing.
    pub publication: String,
    /// Logical slot (plugin `pgoutput`); created when missing, never dropped automatically
    /// (dropping it is the only way to make PostgreSQL release the WAL it retains).
    pub slot: String,
    /// `schema.table`, or `table` for `public.table`, matched exactly as the catalog spells it.
    pub tables: Vec<String>,
    /// The sink these changes go to (carried for the server; unused here).
    pub sink: String,
    /// Read the tables' existing rows (as `read` changes) before streaming, once.
    #[serde(default)]
    pub backfill: bool,
    /// Most changes per `ChangeSink::store` call (default 1000).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

fn default_max_batch() -> usize {
    DEFAULT_MAX_BATCH
}

impl fmt::Debug for PostgresSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSourceConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("url_env", &self.url_env)
            .field("publication", &self.publication)
            .field("slot", &self.slot)
            .field("tables", &self.tables)
            .field("sink", &self.sink)
            .field("backfill", &self.backfill)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

/// A connection string with its password replaced by `***` (URL userinfo and `password=`).
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let mut out = url[..scheme_end + 3].to_string();
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        } else {
            out.push_str(authority);
        }
        let tail = &rest[authority_end..];
        out.push_str(&redact_kv(tail, '&'));
        out
    } else {
        redact_kv(url, ' ')
    }
}

/// Replaces the value of `password=` pairs separated by `sep`.
fn redact_kv(s: &str, sep: char) -> String {
    s.split(sep)
        .map(|part| {
            let trimmed = part.trim_start_matches('?');
            if trimmed.to_ascii_lowercase().starts_with("password=") {
                let prefix_len = part.len() - trimmed.len();
                format!("{}password=***", &part[..prefix_len])
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

/// A configured table, split into schema and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// `schema.table` or `table` (→ `public.table`).
    pub fn parse(s: &str) -> Option<TableName> {
        let (schema, name) = match s.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => ("public", s),
        };
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return None;
        }
        Some(TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        })
    }

    /// `"schema"."name"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// `"ident"` with embedded quotes doubled.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'` with embedded quotes doubled.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Where and as whom to connect, resolved from `url`/`url_env`.
#[derive(Clone)]
pub(crate) struct ConnParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    pub pg: tokio_postgres::Config,
}

impl PostgresSourceConfig {
    fn err(&self, field: &'static str, message: impl Into<String>) -> SourceError {
        SourceError::Config {
            source_name: self.name.clone(),
            field,
            message: message.into(),
        }
    }

    /// Checks every field (and that `url_env` is set), naming the source and the field.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.name.trim().is_empty() {
            return Err(self.err("name", "must not be empty"));
        }
        self.conn_params()?;
        if self.publication.is_empty() || self.publication.len() > 63 {
            return Err(self.err("publication", "must be 1 to 63 characters"));
        }
        if self.slot.is_empty()
            || self.slot.len() > 63
            || !self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(self.err(
                "slot",
                format!(
                    "`{}`: slot names are 1 to 63 characters of a-z, 0-9 and _",
                    self.slot
                ),
            ));
        }
        if self.tables.is_empty() {
            return Err(self.err("tables", "must name at least one table"));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tables {
            let Some(parsed) = TableName::parse(t) else {
                return Err(self.err("tables", format!("`{t}` is not `schema.table` or `table`")));
            };
            if !seen.insert(parsed) {
                return Err(self.err("tables", format!("`{t}` is listed twice")));
            }
        }
        if self.sink.trim().is_empty() {
            return Err(self.err("sink", "must not be empty"));
        }
        if self.max_batch == 0 {
            return Err(self.err("max_batch", "must be at least 1"));
        }
        Ok(())
    }

    /// The configured tables, parsed (call after `validate`).
    pub(crate) fn table_names(&self) -> Vec<TableName> {
        self.tables
            .iter()
            .filter_map(|t| TableName::parse(t))
            .collect()
    }

    /// Resolves `url`/`url_env` into connection parameters; errors never contain the URL's
    /// password.
    pub(crate) fn conn_params(&self) -> Result<ConnParams, SourceError> {
        let (field, url) = match (&self.url, &self.url_env) {
            (Some(_), Some(_)) => {
                return Err(self.err("url", "set exactly one of `url` and `url_env`, not both"))
            }
            (None, None) => return Err(self.err("url", "set one of `url` and `url_env`")),
            (Some(url), None) => ("url", url.clone()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(url) if !url.trim().is_empty() => ("url_env", url),
                _ => {
                    return Err(self.err(
                        "url_env",
                        format!("environment variable `{var}` is not set (or empty)"),
                    ))
                }
            },
        };
        let pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            // tokio-postgres parse errors name the bad part, not the whole string.
            self.err(
                field,
                format!("not a valid PostgreSQL URL ({}): {e}", redact_url(&url)),
            )
        })?;
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => return Err(self.err(field, "the URL names no host")),
        };
        if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            // Connecting without TLS where the URL demands it would be wrong, and retrying
            // would never help: say so at load.
            return Err(self.err(
                field,
                "sslmode=require: TLS connections to PostgreSQL are not supported yet; \
                 connect over a trusted network or a local TLS tunnel with sslmode=disable",
            ));
        }
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let Some(user) = pg.get_user().map(str::to_string) else {
            return Err(self.err(field, "the URL names no user"));
        };
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dbname = pg
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        Ok(ConnParams {
            host,
            port,
            user,
            password,
            dbname,
            pg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?sslmode=disable&password=x"),
            "postgres://u:***@h:5432/db?sslmode=disable&password=***"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("host=h user=u password=secret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
    }

    #[test]
    fn tls_required_is_refused_at_load() {
        let cfg = PostgresSourceConfig {
            name: "db".into(),
            url: Some("postgres://u:secret@h/db?sslmode=require".into()),
            url_env: None,
            publication: "p".into(),
            slot: "s".into(),
            tables: vec!["t".into()],
            sink: "k".into(),
            backfill: false,
            max_batch: 1000,
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("sslmode=require") && e.contains("`db`"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn parses_tables() {
        assert_eq!(
            TableName::parse("orders").unwrap().to_string(),
            "public.orders"
        );
        assert_eq!(TableName::parse("s.t").unwrap().quoted(), "\"s\".\"t\"");
        assert!(TableName::parse("a.b.c").is_none());
        assert!(TableName::parse(".b").is_none());
    }
}
