//! Values on the wire, byte for byte as PostgreSQL sends them: the same
//! query runs on Workbench and on the real PostgreSQL on 5432, and the text
//! results (simple protocol), binary results (extended protocol) and binary
//! COPY output must be identical.

use futures::TryStreamExt;
use tokio_postgres::types::{FromSql, Type};

use crate::harness::Server;

const POSTGRES: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// One value per type written by Workbench's own encoder, edge cases included
/// (zero and negative numerics of several scales, dates and timestamps around
/// the epochs and before year 1, fractional seconds, empty and non-ASCII text).
const EDGE_CASES: &str = "
SELECT
  CAST(b AS BOOLEAN) AS b,
  CAST(i AS SMALLINT) AS i2,
  CAST(i * 1000 AS INT) AS i4,
  CAST(i AS BIGINT) * 1000000000 AS i8,
  CAST(n AS NUMERIC(15,2)) AS n2,
  CAST(z AS NUMERIC(20,0)) AS n0,
  CAST(n AS NUMERIC(12,5)) AS n5,
  CAST(n AS NUMERIC(38,10)) AS n10,
  CAST(big AS NUMERIC(30,4)) AS n4,
  CAST(d AS DATE) AS d,
  CAST(ts AS TIMESTAMP) AS ts,
  CAST(t AS TEXT) AS t,
  CAST(f AS DOUBLE PRECISION) AS f8,
  CAST(g AS DOUBLE PRECISION) AS g8,
  CAST(f AS REAL) AS f4,
  CAST(g AS REAL) AS g4
FROM (VALUES
  (1, 'true',  '0',          '0',                   '0',                         '2000-01-01', '2000-01-01 00:00:00',        '',          '0', '-0'),
  (2, 'false', '-0.01',      '-7',                  '-1.5',                      '1970-01-01', '1970-01-01 00:00:00.5',      'a b',       '1.5', '1e15'),
  (3, 'true',  '12345.67',   '123456789012345678',  '12345678901234567890.1234', '1999-12-31', '1999-12-31 23:59:59.999999', 'Zürich ✓', '-2.25', '1e14'),
  (4, NULL,    '100',        '10000',               '-99999999999999999999.9999','2024-02-29', '2024-02-29 12:34:56.000100', NULL,        '1e20', 'NaN'),
  (5, 'false', '-10000.10',  NULL,                  '0.0001',                    '1900-03-01', '1900-03-01 01:02:03.04',     'x',         '0.1', 'Infinity'),
  (6, 'true',  NULL,         '1',                   '10000',                     '9999-12-31', '2262-04-11 23:47:16',        'tab\there', '123456789.125', '-1.2345678901234568e+17'),
  (7, 'true',  '0.10',       '-100000000',          '-0.0001',                   '0001-01-01', '1677-09-22 00:00:00',        'end',       '1e-5', '1.17549435e-30')
) AS v(i, b, n, z, big, d, ts, t, f, g)
ORDER BY i";

/// Values at the edges of their printed width: the extreme 64-bit integers,
/// numerics of 38 digits and around 2^64 (where the encoder leaves 64-bit
/// arithmetic), and dates around the years with fewer or more than four digits.
const WIDTHS: &str = "
SELECT
  CAST(i AS BIGINT) AS i8,
  CAST(i AS NUMERIC(20,0)) AS n0,
  CAST(n AS NUMERIC(38,18)) AS n18,
  CAST(m AS NUMERIC(38,0)) AS n38,
  CAST(d AS DATE) AS d
FROM (VALUES
  (1, '-9223372036854775808', '-12345678901234567890.012345678901234567', '99999999999999999999999999999999999999', '1000-01-01'),
  (2, '9223372036854775807',  '0.000000000000000001',                     '-10000000000000000000',                  '0999-12-31'),
  (3, '-1',                   '-0.1',                                     '18446744073709551616',                   '0100-03-01'),
  (4, '99999',                '1',                                        '-18446744073709551615',                  '9999-12-31'),
  (5, '-100000',              '18446744073709551615.5',                   '0',                                      '0010-10-10'),
  (6, '0',                    '-99999999999999999999.999999999999999999', '-99999999999999999999999999999999999999', '0001-01-01')
) AS v(k, i, n, m, d)
ORDER BY k";

/// Many rows (several engine batches), a NULL every seventh row.
fn bulk(series: &str) -> String {
    format!(
        "SELECT CAST(g AS BIGINT) AS id, CAST(g * 3 AS INT) AS x,
           CASE WHEN g % 7 = 0 THEN NULL ELSE CAST(CAST(g AS VARCHAR) || '.' || CAST(g % 100 AS VARCHAR) AS NUMERIC(12,2)) END AS amount,
           CAST(CAST(1000 + g % 9000 AS VARCHAR) || '-0' || CAST(1 + g % 9 AS VARCHAR) || '-1' || CAST(g % 10 AS VARCHAR) AS DATE) AS day,
           CAST('2020-01-0' || CAST(1 + g % 9 AS VARCHAR) || ' 0' || CAST(g % 10 AS VARCHAR) || ':00:00.' || CAST(g % 1000 AS VARCHAR) AS TIMESTAMP) AS at,
           'row ' || CAST(g AS VARCHAR) AS label
         FROM {series} ORDER BY g"
    )
}

const PG_SERIES: &str = "generate_series(1, 20000) AS s(g)";
const WB_SERIES: &str = "(SELECT value AS g FROM generate_series(1, 20000)) AS s";

async fn postgres() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(POSTGRES, tokio_postgres::NoTls)
        .await
        .expect("the local PostgreSQL on 5432");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Every field of every row, as the text the simple protocol returned.
async fn text_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect()),
            _ => None,
        })
        .collect()
}

/// A field's raw binary value, whatever its type.
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Every field of every row in binary (tokio-postgres asks for binary results),
/// with each column's type name.
async fn binary_rows(client: &tokio_postgres::Client, sql: &str) -> (Vec<String>, Vec<Vec<Option<Vec<u8>>>>) {
    let rows = client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let types = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.type_().name().to_string()).collect())
        .unwrap_or_default();
    let values = rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i).0).collect())
        .collect();
    (types, values)
}

async fn binary_copy(client: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
    let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
    let stream = client.copy_out(copy.as_str()).await.unwrap_or_else(|e| panic!("{copy}: {e:?}"));
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.expect("copy data");
    chunks.concat()
}

/// The first row and column where two results differ, for a readable failure.
fn first_difference<T: PartialEq + std::fmt::Debug>(ours: &[Vec<T>], theirs: &[Vec<T>]) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!("{} rows vs PostgreSQL's {}", ours.len(), theirs.len()));
    }
    ours.iter().zip(theirs).enumerate().find_map(|(row, (a, b))| {
        a.iter()
            .zip(b)
            .enumerate()
            .find(|(_, (x, y))| x != y)
            .map(|(col, (x, y))| format!("row {row}, column {col}: Workbench {x:?}, PostgreSQL {y:?}"))
    })
}

#[tokio::test]
async fn values_are_encoded_exactly_as_postgres_encodes_them() {
    let server = Server::start();
    let wb = server.connect().await;
    let pg = postgres().await;
    let bulk_wb = bulk(WB_SERIES);
    let bulk_pg = bulk(PG_SERIES);
    for (what, ours, theirs) in
        [("edge cases", EDGE_CASES, EDGE_CASES), ("widths", WIDTHS, WIDTHS), ("20000 rows", bulk_wb.as_str(), bulk_pg.as_str())]
    {
        let (text_wb, text_pg) = (text_rows(&wb, ours).await, text_rows(&pg, theirs).await);
        assert!(!text_pg.is_empty());
        if let Some(diff) = first_difference(&text_wb, &text_pg) {
            panic!("{what}, text: {diff}");
        }

        let ((types_wb, bin_wb), (types_pg, bin_pg)) = (binary_rows(&wb, ours).await, binary_rows(&pg, theirs).await);
        assert_eq!(types_wb, types_pg, "{what}: column types");
        if let Some(diff) = first_difference(&bin_wb, &bin_pg) {
            panic!("{what}, binary: {diff}");
        }

        let (copy_wb, copy_pg) = (binary_copy(&wb, ours).await, binary_copy(&pg, theirs).await);
        assert_eq!(copy_wb.len(), copy_pg.len(), "{what}: binary COPY length");
        assert!(copy_wb == copy_pg, "{what}: binary COPY bytes differ");
    }
}
