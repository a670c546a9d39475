//! `has_table_privilege`, `has_any_column_privilege`, `has_column_privilege`
//! and `has_schema_privilege` answered from the session's grants, so BI
//! tools that grey out what a user may not query (DBeaver, pgAdmin, psql
//! scripts) tell the truth. Workbench is read-only over SQL: only `SELECT`
//! (tables) and `USAGE` (schemas) can ever be held, and nobody holds a
//! grant option.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use super::descriptions::SessionDocs;
use crate::governance::Principal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Object {
    Table,
    /// `has_any_column_privilege` and `has_column_privilege`: a column of a
    /// readable table is readable (masked or not).
    Column,
    Schema,
}

/// The four functions, bound to one session.
pub fn functions(docs: &SessionDocs) -> Vec<ScalarUDF> {
    [
        ("has_table_privilege", Object::Table),
        ("has_any_column_privilege", Object::Column),
        ("has_column_privilege", Object::Column),
        ("has_schema_privilege", Object::Schema),
    ]
    .into_iter()
    .map(|(name, object)| {
        ScalarUDF::new_from_impl(HasPrivilege {
            name,
            object,
            docs: docs.clone(),
            signature: Signature::variadic_any(Volatility::Stable),
        })
    })
    .collect()
}

#[derive(Debug)]
struct HasPrivilege {
    name: &'static str,
    object: Object,
    docs: SessionDocs,
    signature: Signature,
}

impl PartialEq for HasPrivilege {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.docs.same_session(&other.docs)
    }
}
impl Eq for HasPrivilege {}
impl Hash for HasPrivilege {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// One argument, row by row: text or an oid.
enum Arg {
    Text(ArrayRef),
    Oid(ArrayRef),
}

impl Arg {
    fn of(array: ArrayRef) -> Result<Arg> {
        Ok(match array.data_type() {
            t if t.is_integer() => Arg::Oid(datafusion::arrow::compute::cast(&array, &DataType::Int64)?),
            _ => Arg::Text(datafusion::arrow::compute::cast(&array, &DataType::Utf8)?),
        })
    }

    fn text(&self, row: usize) -> Option<String> {
        match self {
            Arg::Text(a) => (!a.is_null(row)).then(|| a.as_string::<i32>().value(row).to_string()),
            Arg::Oid(a) => (!a.is_null(row)).then(|| a.as_primitive::<Int64Type>().value(row).to_string()),
        }
    }
}

/// `"Silver".orders` → `["silver", "orders"]`: identifiers unquoted, unquoted ones folded.
fn identifiers(name: &str) -> Vec<String> {
    name.split('.')
        .map(|part| {
            let part = part.trim();
            match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                Some(quoted) => quoted.replace("\"\"", "\""),
                None => part.to_lowercase(),
            }
        })
        .collect()
}

impl HasPrivilege {
    /// Whether `principal` holds any of the comma-separated `privileges` on `object`.
    fn holds(&self, principal: &Principal, object: &Arg, row: usize, privileges: &str) -> Result<Option<bool>> {
        let mut wanted = Vec::new();
        for privilege in privileges.split(',') {
            let privilege = privilege.trim().to_uppercase();
            let (privilege, grant_option) = match privilege.strip_suffix("WITH GRANT OPTION") {
                Some(p) => (p.trim().to_string(), true),
                None => (privilege, false),
            };
            let known: &[&str] = match self.object {
                Object::Table => &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"],
                Object::Column => &["SELECT", "INSERT", "UPDATE", "REFERENCES"],
                Object::Schema => &["USAGE", "CREATE"],
            };
            if !known.contains(&privilege.as_str()) {
                return exec_err!("unrecognized privilege type: \"{privilege}\" ({}() knows {})", self.name, known.join(", "));
            }
            wanted.push((privilege, grant_option));
        }
        let readable = |wanted: &[(String, bool)], read: &str| wanted.iter().any(|(p, g)| p == read && !g);
        match self.object {
            Object::Schema => {
                let schema = match object {
                    Arg::Oid(_) => match object.text(row).and_then(|o| o.parse().ok()).and_then(|o| self.docs.namespace(o)) {
                        Some(schema) => schema,
                        None => return Ok(None),
                    },
                    Arg::Text(_) => match object.text(row) {
                        Some(name) => identifiers(&name).join("."),
                        None => return Ok(None),
                    },
                };
                Ok(Some(readable(&wanted, "USAGE") && principal.can_use_schema(&schema)))
            }
            Object::Table | Object::Column => {
                let (schema, table) = match object {
                    Arg::Oid(_) => match object.text(row).and_then(|o| o.parse().ok()).and_then(|o| self.docs.relation(o)) {
                        Some(relation) => relation,
                        None => return Ok(None),
                    },
                    Arg::Text(_) => {
                        let Some(name) = object.text(row) else { return Ok(None) };
                        match identifiers(&name).as_slice() {
                            [schema, table] | [_, schema, table] => (schema.clone(), table.clone()),
                            [table] => match self.docs.unqualified(table) {
                                Some(relation) => relation,
                                None => return Ok(Some(false)),
                            },
                            _ => return exec_err!("{}(): '{name}' is not a table name", self.name),
                        }
                    }
                };
                Ok(Some(readable(&wanted, "SELECT") && principal.can_read(&schema, &table)))
            }
        }
    }
}

impl ScalarUDFImpl for HasPrivilege {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let range = if self.name == "has_column_privilege" { 3..=4 } else { 2..=3 };
        if !range.contains(&args.len()) {
            return plan_err!(
                "{}() takes {}: e.g. {}",
                self.name,
                if self.name == "has_column_privilege" { "[user,] table, column, privilege" } else { "[user,] object, privilege" },
                match self.object {
                    Object::Schema => "has_schema_privilege('gold', 'USAGE')",
                    Object::Column => "has_column_privilege('gold.sales', 'amount', 'SELECT')",
                    Object::Table => "has_table_privilege('gold.sales', 'SELECT')",
                }
            );
        }
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut arrays: Vec<Arg> = arrays.into_iter().map(Arg::of).collect::<Result<_>>()?;
        // has_column_privilege(table, column, privilege): the column does not change the answer.
        if self.name == "has_column_privilege" {
            arrays.remove(arrays.len() - 2);
        }
        let Some(current) = self.docs.principal() else {
            return exec_err!("{}(): no user is logged in", self.name);
        };
        let mut out = BooleanBuilder::with_capacity(rows);
        for row in 0..rows {
            let (user, object, privileges) = match arrays.as_slice() {
                [object, privileges] => (None, object, privileges),
                [user, object, privileges] => (Some(user), object, privileges),
                _ => return exec_err!("{}(): wrong number of arguments", self.name),
            };
            let principal = match user.map(|u| u.text(row)) {
                None => current.clone(),
                Some(None) => {
                    out.append_null();
                    continue;
                }
                Some(Some(name)) if name == current.user => current.clone(),
                Some(Some(name)) => Arc::new(Principal::new(current.policy().clone(), &name)),
            };
            let Some(privileges) = privileges.text(row) else {
                out.append_null();
                continue;
            };
            out.append_option(self.holds(&principal, object, row, &privileges)?);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
