//! The PostgreSQL store (`tokio-postgres`): schema created at connect, batched idempotent
//! writes, connection errors told apart from rows the server refuses.
//!
//! Two write methods, chosen by `store.postgres_method` and measured against each other by
//! `cargo bench -p anode --bench ingest`:
//! - `unnest`: one prepared `INSERT … SELECT FROM UNNEST($1::bytea[], …) ON CONFLICT DO
//!   NOTHING` per batch: one round trip, no staging table.
//! - `copy`: binary `COPY` into a per-connection temporary table, then one
//!   `INSERT … SELECT … ON CONFLICT DO NOTHING` from it, in one transaction.

use std::time::Duration;

use futures_util::pin_mut;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use super::log::{LogQuery, Position};
use super::order::{Order, Step};
use super::{
    Backend, CURSORS, DEAD, DeadBounds, PostgresMethod, PostgresTls, Resume, STATES, SinkError,
    StepState, StoreSettings, TABLE, WriteError, Written,
};
use crate::deadletter::{DeadLetter, DeadQuery, StoredDeadLetter};
use crate::record::{Payload, Record, RecordId};

/// Connecting takes at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write or read that takes longer is abandoned and retried on a new connection (a write
/// waiting for one in flight before it has twice as long).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Arbitrary but fixed: serialises schema creation among nodes starting together.
const SCHEMA_LOCK: i64 = 0x616e_6f64_6530;

/// The schema, version 2 (the cursor table was added without a version change: it is
/// created when missing). Times are µs since the epoch; the payload is `jsonb`. Version 2
/// added the log position: `tx`, the id of the transaction that stored the row, and `seq`,
/// its number (see [`super::log`]); a version 1 table gains both when a node connects.
/// `canonical` (added the same way) is false for a record an undo or a final version took
/// back (see [`crate::record::Fork`]): `WHERE canonical` is the chain as it stands.
pub(crate) fn schema_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
            id bytea PRIMARY KEY,
            source text NOT NULL,
            stream text NOT NULL,
            key text,
            upstream_id text,
            event_time_us bigint,
            ingest_time_us bigint NOT NULL,
            node text NOT NULL,
            payload jsonb NOT NULL,
            tx bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
            seq bigserial,
            canonical boolean NOT NULL DEFAULT true
        );
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_attribute
                           WHERE attrelid = '{TABLE}'::regclass AND attname = 'tx') THEN
                ALTER TABLE {TABLE}
                    ADD COLUMN tx bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
                    ADD COLUMN seq bigserial;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_attribute
                           WHERE attrelid = '{TABLE}'::regclass AND attname = 'canonical') THEN
                ALTER TABLE {TABLE} ADD COLUMN canonical boolean NOT NULL DEFAULT true;
            END IF;
        END $$;
        CREATE INDEX IF NOT EXISTS {TABLE}_source_time ON {TABLE} (source, ingest_time_us);
        CREATE INDEX IF NOT EXISTS {TABLE}_log ON {TABLE} (tx, seq);
        CREATE TABLE IF NOT EXISTS {CURSORS} (
            source text PRIMARY KEY,
            cursor text NOT NULL,
            updated_us bigint NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {STATES} (
            source text NOT NULL,
            step bigint NOT NULL,
            plugin text NOT NULL,
            state bytea NOT NULL,
            updated_us bigint NOT NULL,
            PRIMARY KEY (source, step)
        );
        CREATE TABLE IF NOT EXISTS {DEAD} (
            id bigserial PRIMARY KEY,
            source text NOT NULL,
            stage text NOT NULL,
            plugin text,
            step bigint,
            reason text NOT NULL,
            meta text NOT NULL,
            raw bytea NOT NULL,
            at_us bigint NOT NULL,
            replayed_us bigint
        );
        CREATE TABLE IF NOT EXISTS anode_schema (version integer NOT NULL);
        INSERT INTO anode_schema (version) SELECT 2 WHERE NOT EXISTS (SELECT 1 FROM anode_schema);
        UPDATE anode_schema SET version = 2 WHERE version < 2;"
    )
}

const COLUMNS: &str =
    "id, source, stream, key, upstream_id, event_time_us, ingest_time_us, node, payload";
/// [`COLUMNS`] as read back, the payload as text.
const COLUMNS_TEXT: &str =
    "id, source, stream, key, upstream_id, event_time_us, ingest_time_us, node, payload::text";

pub(crate) struct Postgres {
    config: tokio_postgres::Config,
    display: String,
    method: PostgresMethod,
    dead_bounds: DeadBounds,
    /// TLS, when `store.postgres_tls` asks for it.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    live: Option<Live>,
}

struct Live {
    client: Client,
    insert: Statement,
    upsert_cursors: Statement,
    connection: JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Postgres {
    pub(crate) fn new(url: &str, settings: &StoreSettings) -> Result<Self, SinkError> {
        let method = settings.postgres_method;
        let tls = match settings.postgres_tls {
            PostgresTls::Disable => None,
            PostgresTls::VerifyFull => Some(
                super::tls::connector(settings.postgres_ca_file.as_deref())
                    .map_err(SinkError::Tls)?,
            ),
        };
        let mut config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| SinkError::BadUrl {
                    url: redact(url),
                    message: e.to_string(),
                })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("anode");
        let display = describe(&config);
        Ok(Postgres {
            config,
            display,
            method,
            dead_bounds: DeadBounds::from(settings),
            tls,
            live: None,
        })
    }
}

impl Postgres {
    fn client(&self) -> Result<&Client, WriteError> {
        self.live
            .as_ref()
            .map(|live| &live.client)
            .ok_or_else(|| WriteError::Connection("not connected".into()))
    }
}

/// The outcome of a bounded read: a read that took too long drops the connection.
fn settle<T>(
    live: &mut Option<Live>,
    what: &str,
    result: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
) -> Result<T, WriteError> {
    match result {
        Ok(read) => read.map_err(classify),
        Err(_) => {
            *live = None;
            Err(WriteError::Connection(format!(
                "{what} took over {} s",
                WRITE_TIMEOUT.as_secs()
            )))
        }
    }
}

/// Drive a connection until it ends.
async fn run_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!("PostgreSQL connection ended: {e}");
    }
}

/// `user@host:port/db`, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Data the server refused (bad values, constraint other than the id) is `Rejected`; anything
/// else — a closed connection, a server shutting down, a missing table — is a connection
/// problem that a reconnect (which re-creates the schema) can cure.
fn classify(error: tokio_postgres::Error) -> WriteError {
    let rejected = error.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        code.starts_with("22") || code.starts_with("23")
    });
    let message = match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            // The causes say what went wrong (a refused certificate, a reset connection).
            let mut message = error.to_string();
            let mut cause = std::error::Error::source(&error);
            while let Some(e) = cause {
                message.push_str(": ");
                message.push_str(&e.to_string());
                cause = e.source();
            }
            message
        }
    };
    if rejected {
        WriteError::Rejected(message)
    } else {
        WriteError::Connection(message)
    }
}

impl Backend for Postgres {
    async fn connect(&mut self) -> Result<(), WriteError> {
        self.live = None;
        let connected = match &self.tls {
            None => self
                .config
                .connect(NoTls)
                .await
                .map(|(client, connection)| (client, tokio::spawn(run_connection(connection)))),
            Some(tls) => self
                .config
                .connect(tls.clone())
                .await
                .map(|(client, connection)| (client, tokio::spawn(run_connection(connection)))),
        };
        let (mut client, connection) = connected.map_err(|e| {
            WriteError::Connection(format!(
                "cannot connect to {}{}: {}",
                self.display,
                if self.tls.is_some() { " (TLS)" } else { "" },
                classify(e)
            ))
        })?;
        let tx = client.transaction().await.map_err(classify)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(classify)?;
        tx.batch_execute(&schema_sql()).await.map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        let insert = match self.method {
            PostgresMethod::Unnest => client
                .prepare(&format!(
                    "INSERT INTO {TABLE} ({COLUMNS})
                     SELECT id, source, stream, key, upstream_id, event_time_us, ingest_time_us, node, payload::jsonb
                     FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::int8[], $7::int8[], $8::text[], $9::text[])
                          AS t(id, source, stream, key, upstream_id, event_time_us, ingest_time_us, node, payload)
                     ON CONFLICT (id) DO NOTHING"
                ))
                .await
                .map_err(classify)?,
            PostgresMethod::Json => client
                .prepare(&format!(
                    "INSERT INTO {TABLE} ({COLUMNS})
                     SELECT decode(r.id, 'hex'), r.source, r.stream, r.key, r.upstream_id,
                            r.event_time_us, r.ingest_time_us, r.node, r.payload
                     FROM json_to_recordset($1::text::json) AS r(id text, source text,
                          stream text, key text, upstream_id text, event_time_us bigint,
                          ingest_time_us bigint, node text, payload jsonb)
                     ON CONFLICT (id) DO NOTHING"
                ))
                .await
                .map_err(classify)?,
            PostgresMethod::Copy => {
                client
                    .batch_execute(
                        "CREATE TEMP TABLE IF NOT EXISTS anode_stage (
                            id bytea, source text, stream text, key text, upstream_id text,
                            event_time_us bigint, ingest_time_us bigint, node text, payload text
                        ) ON COMMIT DELETE ROWS",
                    )
                    .await
                    .map_err(classify)?;
                client
                    .prepare(&format!(
                        "INSERT INTO {TABLE} ({COLUMNS})
                         SELECT id, source, stream, key, upstream_id, event_time_us, ingest_time_us, node, payload::jsonb
                         FROM anode_stage ON CONFLICT (id) DO NOTHING"
                    ))
                    .await
                    .map_err(classify)?
            }
        };
        let upsert_cursors = client
            .prepare(&format!(
                "INSERT INTO {CURSORS} (source, cursor, updated_us)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[])
                 ON CONFLICT (source) DO UPDATE
                 SET cursor = EXCLUDED.cursor, updated_us = EXCLUDED.updated_us"
            ))
            .await
            .map_err(classify)?;
        self.live = Some(Live {
            client,
            insert,
            upsert_cursors,
            connection,
        });
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &[Record],
        cursors: &[(Arc<str>, String)],
        states: &[(Arc<str>, StepState)],
        dead: &[DeadLetter],
    ) -> Result<Written, WriteError> {
        self.write_ordered(batch, cursors, states, dead, Order::alone())
            .await
    }

    /// With a batch in flight before it (on another connection), this one overlaps it as far
    /// as is safe: it takes its transaction id after the earlier one (so the log keeps
    /// submission order), stages its rows (`copy`) while the earlier inserts, inserts once
    /// the earlier has inserted (so it can only ever wait on the earlier's row locks, never
    /// the other way round: no deadlock), and sets its cursors and commits only once the
    /// earlier has committed.
    async fn write_ordered(
        &mut self,
        batch: &[Record],
        cursors: &[(Arc<str>, String)],
        states: &[(Arc<str>, StepState)],
        dead: &[DeadLetter],
        mut order: Order,
    ) -> Result<Written, WriteError> {
        let method = self.method;
        let bounds = self.dead_bounds;
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| WriteError::Connection("not connected".into()))?;
        let write = async {
            order.earlier(Step::Begun).await?;
            let tx = live.client.transaction().await.map_err(classify)?;
            tx.execute("SELECT pg_current_xact_id()", &[])
                .await
                .map_err(classify)?;
            order.mark(Step::Begun);
            if method == PostgresMethod::Copy && !batch.is_empty() {
                stage_copy(&tx, batch).await?;
            }
            order.earlier(Step::Inserted).await?;
            let inserted = match method {
                _ if batch.is_empty() => 0,
                PostgresMethod::Unnest => write_unnest(&tx, &live.insert, batch).await?,
                PostgresMethod::Copy => tx.execute(&live.insert, &[]).await.map_err(classify)?,
                PostgresMethod::Json => write_json(&tx, &live.insert, batch).await?,
            };
            order.mark(Step::Inserted);
            order.earlier(Step::Committed).await?;
            if !cursors.is_empty() {
                let sources: Vec<&str> = cursors.iter().map(|(s, _)| &**s).collect();
                let values: Vec<&str> = cursors.iter().map(|(_, c)| c.as_str()).collect();
                let now = vec![crate::clock::now_us(); cursors.len()];
                tx.execute(&live.upsert_cursors, &[&sources, &values, &now])
                    .await
                    .map_err(classify)?;
            }
            if !states.is_empty() {
                keep_states(&tx, states).await?;
            }
            retire(&tx, batch).await?;
            if !dead.is_empty() {
                add_dead(&tx, dead, bounds).await?;
            }
            tx.commit().await.map_err(classify)?;
            order.mark(Step::Committed);
            Ok::<u64, WriteError>(inserted)
        };
        // The wait for an earlier write counts too: it has a bound of its own.
        let inserted = match tokio::time::timeout(2 * WRITE_TIMEOUT, write).await {
            Ok(result) => result?,
            Err(_) => {
                self.live = None;
                return Err(WriteError::Connection(format!(
                    "a write of {} rows took over {} s",
                    batch.len(),
                    2 * WRITE_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(Written {
            inserted,
            duplicates: batch.len() as u64 - inserted,
        })
    }

    async fn resume(&mut self, source: &str, recent: usize) -> Result<Resume, WriteError> {
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| WriteError::Connection("not connected".into()))?;
        let read = async {
            let row = live
                .client
                .query_opt(
                    &format!("SELECT cursor, updated_us FROM {CURSORS} WHERE source = $1"),
                    &[&source],
                )
                .await
                .map_err(classify)?;
            let cursor = row.as_ref().map(|row| row.get::<_, String>(0));
            let updated_us = row.as_ref().map(|row| row.get::<_, i64>(1));
            let rows = live
                .client
                .query(
                    &format!(
                        "SELECT id FROM {TABLE} WHERE source = $1 ORDER BY ingest_time_us DESC LIMIT $2"
                    ),
                    &[&source, &(recent as i64)],
                )
                .await
                .map_err(classify)?;
            let recent = rows
                .iter()
                .filter_map(|row| RecordId::from_slice(row.get::<_, &[u8]>(0)))
                .collect();
            let states = live
                .client
                .query(
                    &format!(
                        "SELECT step, plugin, state FROM {STATES} WHERE source = $1 ORDER BY step"
                    ),
                    &[&source],
                )
                .await
                .map_err(classify)?
                .iter()
                .filter_map(|row| {
                    Some(StepState {
                        step: u32::try_from(row.get::<_, i64>(0)).ok()?,
                        plugin: row.get(1),
                        state: row.get(2),
                    })
                })
                .collect();
            Ok::<_, WriteError>(Resume {
                cursor,
                updated_us,
                states,
                recent,
            })
        };
        match tokio::time::timeout(WRITE_TIMEOUT, read).await {
            Ok(result) => result,
            Err(_) => {
                self.live = None;
                Err(WriteError::Connection(format!(
                    "reading the cursor of `{source}` took over {} s",
                    WRITE_TIMEOUT.as_secs()
                )))
            }
        }
    }

    async fn read_log(&mut self, query: &LogQuery) -> Result<Vec<(Position, Record)>, WriteError> {
        let (tx, seq) = match query.after {
            None => (-1, -1),
            Some(Position::Postgres { tx, seq }) => (tx, seq),
            Some(other) => {
                return Err(WriteError::Rejected(format!(
                    "`{other}` is not a PostgreSQL log position"
                )));
            }
        };
        let [sources, streams, keys] = query.filter.lists();
        let since = query.since_us.unwrap_or(i64::MIN);
        let limit = query.limit as i64;
        let client = self.client()?;
        // Only rows of transactions older than every one still running: none can appear
        // later below a position handed out.
        let sql = format!(
            "SELECT tx, seq, {COLUMNS_TEXT} FROM {TABLE}
                 WHERE (tx, seq) > ($1, $2)
                   AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                   AND ingest_time_us >= $3
                   AND (cardinality($4::text[]) = 0 OR source = ANY($4))
                   AND (cardinality($5::text[]) = 0 OR stream = ANY($5))
                   AND (cardinality($6::text[]) = 0 OR key = ANY($6))
                 ORDER BY tx, seq LIMIT $7"
        );
        let params: [&(dyn ToSql + Sync); 7] =
            [&tx, &seq, &since, &sources, &streams, &keys, &limit];
        let read = client.query(&sql, &params);
        let result = tokio::time::timeout(WRITE_TIMEOUT, read).await;
        let rows = settle(&mut self.live, "reading the log", result)?;
        rows.iter()
            .map(|row| {
                let position = Position::Postgres {
                    tx: row.get(0),
                    seq: row.get(1),
                };
                let id: &[u8] = row.get(2);
                let payload: String = row.get(10);
                Ok((
                    position,
                    Record {
                        id: RecordId::from_slice(id).ok_or_else(|| {
                            WriteError::Rejected("a stored id is not 16 bytes".into())
                        })?,
                        source: row.get(3),
                        stream: row.get(4),
                        key: row.get(5),
                        upstream_id: row.get(6),
                        event_time_us: row.get(7),
                        ingest_time_us: row.get(8),
                        node: row.get(9),
                        payload: Payload::stored(payload),
                    },
                ))
            })
            .collect()
    }

    async fn log_head(&mut self) -> Result<Position, WriteError> {
        let read = self.client()?.query_one(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            &[],
        );
        let result = tokio::time::timeout(WRITE_TIMEOUT, read).await;
        let xmin: i64 = settle(&mut self.live, "reading the log's head", result)?.get(0);
        // Every row of a transaction below `xmin` is final: the next ones come after.
        Ok(Position::Postgres {
            tx: xmin - 1,
            seq: i64::MAX,
        })
    }

    async fn dead_letters(
        &mut self,
        query: &DeadQuery,
    ) -> Result<Vec<StoredDeadLetter>, WriteError> {
        let (source, stage, ids, pending, after) = dead_params(query);
        let limit = query.page() as i64;
        let sql = format!(
            "SELECT id, source, stage, plugin, step, reason, meta, raw, at_us, replayed_us
             FROM {DEAD} WHERE {DEAD_WHERE} ORDER BY id LIMIT $6"
        );
        let params: [&(dyn ToSql + Sync); 6] = [&source, &stage, &ids, &pending, &after, &limit];
        let read = self.client()?.query(&sql, &params);
        let result = tokio::time::timeout(WRITE_TIMEOUT, read).await;
        let rows = settle(&mut self.live, "reading dead letters", result)?;
        Ok(rows
            .iter()
            .map(|row| {
                StoredDeadLetter::from_row(
                    row.get(0),
                    row.get(1),
                    row.get::<_, &str>(2),
                    row.get(3),
                    row.get(4),
                    row.get(5),
                    row.get::<_, &str>(6),
                    row.get(7),
                    row.get(8),
                    row.get(9),
                )
            })
            .collect())
    }

    async fn settle_dead(&mut self, query: &DeadQuery, at: Option<i64>) -> Result<u64, WriteError> {
        let (source, stage, ids, pending, after) = dead_params(query);
        let client = self.client()?;
        let changed = match at {
            Some(at) => {
                let sql = format!("UPDATE {DEAD} SET replayed_us = $6 WHERE {DEAD_WHERE}");
                let params: [&(dyn ToSql + Sync); 6] =
                    [&source, &stage, &ids, &pending, &after, &at];
                tokio::time::timeout(WRITE_TIMEOUT, client.execute(&sql, &params)).await
            }
            None => {
                let sql = format!("DELETE FROM {DEAD} WHERE {DEAD_WHERE}");
                let params: [&(dyn ToSql + Sync); 5] = [&source, &stage, &ids, &pending, &after];
                tokio::time::timeout(WRITE_TIMEOUT, client.execute(&sql, &params)).await
            }
        };
        settle(&mut self.live, "updating dead letters", changed)
    }

    async fn forget_cursor(&mut self, source: &str) -> Result<(), WriteError> {
        // One statement, so the cursor and the states go together.
        let sql = format!(
            "WITH c AS (DELETE FROM {CURSORS} WHERE source = $1)
             DELETE FROM {STATES} WHERE source = $1"
        );
        let params: [&(dyn ToSql + Sync); 1] = [&source];
        let done = self.client()?.execute(&sql, &params);
        let result = tokio::time::timeout(WRITE_TIMEOUT, done).await;
        settle(&mut self.live, "forgetting a cursor", result).map(|_| ())
    }

    fn describe(&self) -> String {
        self.display.clone()
    }
}

/// The dead letters a query selects: `$1` source, `$2` stage, `$3` ids, `$4` pending only,
/// `$5` after.
const DEAD_WHERE: &str = "($1::text IS NULL OR source = $1) AND ($2::text IS NULL OR stage = $2)
    AND ($3::int8[] IS NULL OR id = ANY($3)) AND (NOT $4::bool OR replayed_us IS NULL)
    AND id > $5::int8";

/// A query's parameters for [`DEAD_WHERE`].
fn dead_params(
    query: &DeadQuery,
) -> (
    Option<String>,
    Option<&'static str>,
    Option<Vec<i64>>,
    bool,
    i64,
) {
    (
        query.source.clone(),
        query.stage.map(|s| s.as_str()),
        query.ids.clone(),
        query.pending,
        query.after.unwrap_or(0),
    )
}

/// Set the sources' steps' states in the batch's transaction.
/// Mark what the batch's undos and final versions take back as no longer canonical, in
/// the batch's transaction (after the earlier batch committed, so its rows are seen).
async fn retire(tx: &Transaction<'_>, batch: &[Record]) -> Result<(), WriteError> {
    let retired: Vec<RecordId> = batch.iter().flat_map(Record::retires).collect();
    if retired.is_empty() {
        return Ok(());
    }
    let ids: Vec<&[u8]> = retired.iter().map(|id| &id.0[..]).collect();
    tx.execute(
        &format!("UPDATE {TABLE} SET canonical = false WHERE id = ANY($1) AND canonical"),
        &[&ids],
    )
    .await
    .map_err(classify)?;
    Ok(())
}

async fn keep_states(
    tx: &Transaction<'_>,
    states: &[(Arc<str>, StepState)],
) -> Result<(), WriteError> {
    let source: Vec<&str> = states.iter().map(|(s, _)| &**s).collect();
    let step: Vec<i64> = states.iter().map(|(_, s)| i64::from(s.step)).collect();
    let plugin: Vec<&str> = states.iter().map(|(_, s)| s.plugin.as_str()).collect();
    let state: Vec<&[u8]> = states.iter().map(|(_, s)| s.state.as_slice()).collect();
    let now = crate::clock::now_us();
    tx.execute(
        &format!(
            "INSERT INTO {STATES} (source, step, plugin, state, updated_us)
             SELECT s, st, p, b, $5 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::bytea[])
                 AS u(s, st, p, b)
             ON CONFLICT (source, step) DO UPDATE
             SET plugin = EXCLUDED.plugin, state = EXCLUDED.state, updated_us = EXCLUDED.updated_us"
        ),
        &[&source, &step, &plugin, &state, &now],
    )
    .await
    .map_err(classify)?;
    Ok(())
}

/// Add dead letters in the batch's transaction, then drop the oldest past the bounds.
async fn add_dead(
    tx: &Transaction<'_>,
    dead: &[DeadLetter],
    bounds: DeadBounds,
) -> Result<(), WriteError> {
    let source: Vec<&str> = dead.iter().map(|d| d.source.as_str()).collect();
    let stage: Vec<&str> = dead.iter().map(|d| d.stage.as_str()).collect();
    let plugin: Vec<Option<&str>> = dead.iter().map(|d| d.plugin.as_deref()).collect();
    let step: Vec<Option<i64>> = dead.iter().map(|d| d.step.map(i64::from)).collect();
    let reason: Vec<String> = dead
        .iter()
        .map(|d| DeadLetter::text(&d.reason).into_owned())
        .collect();
    let meta: Vec<String> = dead.iter().map(DeadLetter::meta_json).collect();
    let raw: Vec<&[u8]> = dead.iter().map(|d| d.raw.as_slice()).collect();
    let at: Vec<i64> = dead.iter().map(|d| d.at_us).collect();
    tx.execute(
        &format!(
            "INSERT INTO {DEAD} (source, stage, plugin, step, reason, meta, raw, at_us)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[],
                                  $6::text[], $7::bytea[], $8::int8[])"
        ),
        &[&source, &stage, &plugin, &step, &reason, &meta, &raw, &at],
    )
    .await
    .map_err(classify)?;
    let oldest = crate::clock::now_us().saturating_sub(bounds.max_age_us);
    let max = i64::try_from(bounds.max).unwrap_or(i64::MAX);
    tx.execute(
        &format!(
            "DELETE FROM {DEAD} WHERE at_us < $1
                OR id <= (SELECT max(id) FROM {DEAD}) - $2"
        ),
        &[&oldest, &max],
    )
    .await
    .map_err(classify)?;
    Ok(())
}

async fn write_unnest(
    tx: &Transaction<'_>,
    insert: &Statement,
    batch: &[Record],
) -> Result<u64, WriteError> {
    let ids: Vec<&[u8]> = batch.iter().map(|r| &r.id.0[..]).collect();
    let sources: Vec<&str> = batch.iter().map(|r| r.source.as_str()).collect();
    let streams: Vec<&str> = batch.iter().map(|r| r.stream.as_str()).collect();
    let keys: Vec<Option<&str>> = batch.iter().map(|r| r.key.as_deref()).collect();
    let upstream: Vec<Option<&str>> = batch.iter().map(|r| r.upstream_id.as_deref()).collect();
    let event_times: Vec<Option<i64>> = batch.iter().map(|r| r.event_time_us).collect();
    let ingest_times: Vec<i64> = batch.iter().map(|r| r.ingest_time_us).collect();
    let nodes: Vec<&str> = batch.iter().map(|r| r.node.as_str()).collect();
    let payloads: Vec<&str> = batch.iter().map(|r| r.payload.as_str()).collect();
    let params: [&(dyn ToSql + Sync); 9] = [
        &ids,
        &sources,
        &streams,
        &keys,
        &upstream,
        &event_times,
        &ingest_times,
        &nodes,
        &payloads,
    ];
    tx.execute(insert, &params).await.map_err(classify)
}

/// The batch as one JSON array of records as `/ws` sends them.
async fn write_json(
    tx: &Transaction<'_>,
    insert: &Statement,
    batch: &[Record],
) -> Result<u64, WriteError> {
    let mut array = String::with_capacity(batch.len() * 512);
    array.push('[');
    for (i, record) in batch.iter().enumerate() {
        if i > 0 {
            array.push(',');
        }
        array.push_str(&record.to_json());
    }
    array.push(']');
    tx.execute(insert, &[&array]).await.map_err(classify)
}

/// `copy`'s first part: the batch into the connection's staging table (the insert from it
/// follows).
async fn stage_copy(tx: &Transaction<'_>, batch: &[Record]) -> Result<(), WriteError> {
    let sink = tx
        .copy_in("COPY anode_stage FROM STDIN BINARY")
        .await
        .map_err(classify)?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::BYTEA,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
        ],
    );
    pin_mut!(writer);
    for r in batch {
        let id = &r.id.0[..];
        let payload = r.payload.as_str();
        let row: [&(dyn ToSql + Sync); 9] = [
            &id,
            &r.source,
            &r.stream,
            &r.key,
            &r.upstream_id,
            &r.event_time_us,
            &r.ingest_time_us,
            &r.node,
            &payload,
        ];
        writer.as_mut().write(&row).await.map_err(classify)?;
    }
    writer.finish().await.map_err(classify)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(
            redact("postgres://anode:secret@db:5432/x"),
            "postgres://anode:***@db:5432/x"
        );
        let settings = StoreSettings::default();
        let pg = Postgres::new("postgres://anode:secret@db:5433/x", &settings).unwrap();
        assert_eq!(pg.describe(), "postgres://anode@db:5433/x");
        let err = Postgres::new("postgres://a:b@h:notaport/x", &settings)
            .err()
            .unwrap();
        assert!(!err.to_string().contains(":b@"), "{err}");
        let tls = StoreSettings {
            postgres_tls: PostgresTls::VerifyFull,
            postgres_ca_file: Some("/no/such/ca.pem".into()),
            ..StoreSettings::default()
        };
        let err = Postgres::new("postgres://a@h/x", &tls)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("postgres_ca_file") && err.contains("/no/such/ca.pem"),
            "{err}"
        );
    }
}
