//! Slowly changing dimension type 2: silver keeps every version of a row.
//! A key whose values changed gets its current version closed (`_valid_to`
//! set, `_is_current` false) and a new current version; new keys are
//! inserted; unchanged rows are left as they are. The new table state is
//! computed as one plan and written in one commit.

use datafusion::error::Result;
use datafusion::prelude::{DataFrame, SessionContext};

pub const VALID_FROM: &str = "_valid_from";
pub const VALID_TO: &str = "_valid_to";
pub const IS_CURRENT: &str = "_is_current";

/// Columns that record where a version came from rather than what it says.
const NOT_COMPARED: [&str; 5] = ["_run_id", "_source_file", VALID_FROM, VALID_TO, IS_CURRENT];

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The next state of an SCD2 table given its `current` state (None when it
/// does not exist yet) and the `incoming` rows (one per key).
pub async fn next_state(
    ctx: &SessionContext,
    current: Option<DataFrame>,
    incoming: DataFrame,
    key: &[String],
    now_micros: i64,
) -> Result<DataFrame> {
    let now = format!("CAST(to_timestamp_micros({now_micros}) AS TIMESTAMP)");
    let null_ts = "CAST(NULL AS TIMESTAMP)";
    let columns: Vec<String> = incoming.schema().fields().iter().map(|f| f.name().clone()).collect();
    let select_incoming = columns.iter().map(|c| format!("i.{}", quote(c))).collect::<Vec<_>>().join(", ");
    let Some(current) = current else {
        ctx.register_table("__scd2_incoming", incoming.into_view())?;
        let df = ctx
            .sql(&format!(
                "SELECT {select_incoming}, {now} AS {VALID_FROM}, {null_ts} AS {VALID_TO}, true AS {IS_CURRENT} FROM __scd2_incoming i"
            ))
            .await?;
        return Ok(df);
    };
    ctx.register_table("__scd2_incoming", incoming.into_view())?;
    ctx.register_table("__scd2_current", current.into_view())?;
    let on = key
        .iter()
        .map(|k| format!("c.{q} = i.{q}", q = quote(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let differs = columns
        .iter()
        .filter(|c| !key.contains(c) && !NOT_COMPARED.contains(&c.as_str()))
        .map(|c| format!("c.{q} IS DISTINCT FROM i.{q}", q = quote(c)))
        .collect::<Vec<_>>();
    let differs = if differs.is_empty() { "false".to_string() } else { differs.join(" OR ") };
    let key_list = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    // Keys whose incoming row is new or differs from the current version.
    let changed = format!(
        "SELECT i.* FROM __scd2_incoming i LEFT JOIN __scd2_current c ON {on} AND c.{IS_CURRENT} \
         WHERE c.{IS_CURRENT} IS NULL OR ({differs})"
    );
    ctx.register_table("__scd2_changed", ctx.sql(&changed).await?.into_view())?;
    let keys_changed = format!("SELECT DISTINCT {key_list} FROM __scd2_changed");
    let current_columns: Vec<String> = ctx
        .table("__scd2_current")
        .await?
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let close = current_columns
        .iter()
        .map(|c| match c.as_str() {
            VALID_TO => format!("CASE WHEN c.{IS_CURRENT} AND k.__hit THEN {now} ELSE c.{VALID_TO} END AS {VALID_TO}"),
            IS_CURRENT => format!("CASE WHEN c.{IS_CURRENT} AND k.__hit THEN false ELSE c.{IS_CURRENT} END AS {IS_CURRENT}"),
            other => format!("c.{}", quote(other)),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key_join = key
        .iter()
        .map(|k| format!("c.{q} = k.{q}", q = quote(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let new_versions = current_columns
        .iter()
        .map(|c| match c.as_str() {
            VALID_FROM => format!("{now} AS {VALID_FROM}"),
            VALID_TO => format!("{null_ts} AS {VALID_TO}"),
            IS_CURRENT => format!("true AS {IS_CURRENT}"),
            other if columns.contains(&other.to_string()) => format!("i.{}", quote(other)),
            other => format!("NULL AS {}", quote(other)),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {close} FROM __scd2_current c LEFT JOIN (SELECT {key_list}, true AS __hit FROM ({keys_changed})) k ON {key_join} \
         UNION ALL \
         SELECT {new_versions} FROM __scd2_changed i"
    );
    ctx.sql(&sql).await
}
