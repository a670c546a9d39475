//! The policy: roles and their grants (config), users' roles and attributes
//! (config), and column tags and masks (specs), checked when it is built.

use std::collections::{BTreeMap, HashMap};

use crate::spec::{ColumnPolicy, Project, Rule, quarantine_table};

#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("role {role}: {message}")]
    Role { role: String, message: String },
    #[error("user {user}: {message}")]
    User { user: String, message: String },
}

/// A list of glob patterns such as `gold.*` or `silver.gl_entries`.
#[derive(Debug, Clone, Default)]
pub struct Grant(Vec<glob::Pattern>);

impl Grant {
    pub fn parse(patterns: &[String]) -> Result<Grant, String> {
        patterns
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| format!("'{p}' is not a valid pattern: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Grant)
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }

    /// Whether some `schema.<table>` could match: a pattern without a dot
    /// (`*`) or whose part before the first dot matches `schema`.
    pub fn reaches_schema(&self, schema: &str) -> bool {
        self.0.iter().any(|p| match p.as_str().split_once('.') {
            None => p.matches(schema) || p.as_str().contains('*'),
            Some((head, _)) => glob::Pattern::new(head).is_ok_and(|h| h.matches(schema)),
        })
    }
}

/// A role's row filter for the tables `table` matches.
#[derive(Debug, Clone)]
pub struct RowFilter {
    pub table: Grant,
    /// The filter with `$1`, `$2`, ... in place of `{{ user.attr }}`.
    pub sql: String,
    /// The attribute each placeholder takes its value from (`name` is the user name).
    pub attributes: Vec<String>,
}

impl RowFilter {
    /// `region = {{ user.region }}` → `region = $1` bound to `region`: the
    /// value is bound when the query is planned, never spliced into SQL text.
    pub fn parse(table: &str, template: &str) -> Result<RowFilter, String> {
        let mut sql = String::with_capacity(template.len());
        let mut attributes: Vec<String> = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            sql.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("row filter for {table}: '{{{{' without a closing '}}}}'"))?;
            let reference = after[..end].trim();
            let attr = reference
                .strip_prefix("user.")
                .filter(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .ok_or_else(|| {
                    format!("row filter for {table}: '{{{{ {reference} }}}}' must be {{{{ user.name }}}} or {{{{ user.<attribute> }}}}")
                })?;
            let index = match attributes.iter().position(|a| a == attr) {
                Some(i) => i,
                None => {
                    attributes.push(attr.to_string());
                    attributes.len() - 1
                }
            };
            sql.push_str(&format!("${}", index + 1));
            rest = &after[end + 2..];
        }
        sql.push_str(rest);
        use datafusion::sql::sqlparser::{dialect::PostgreSqlDialect, parser::Parser};
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| format!("row filter for {table} is not a SQL condition: {e}"))?;
        Ok(RowFilter {
            table: Grant::parse(&[table.to_string()])?,
            sql,
            attributes,
        })
    }
}

/// What one role may do.
#[derive(Debug, Clone, Default)]
pub struct RoleGrants {
    pub read: Grant,
    pub run: Grant,
    pub landing: Grant,
    pub upload: Grant,
    pub validate: Grant,
    /// Column tags this role sees in clear (`*`: every tag).
    pub unmask: Vec<String>,
    pub row_filters: Vec<RowFilter>,
    pub admin: bool,
    pub audit: bool,
}

/// What a spec says of one of the tables it makes.
#[derive(Debug, Clone, Default)]
pub struct TableDoc {
    pub description: Option<String>,
    pub owner: Option<String>,
    /// The dataset (or gold model) that makes it.
    pub dataset: String,
}

impl TableDoc {
    /// The text `obj_description` and `\dt+` show: the description, then
    /// who owns the data.
    pub fn text(&self) -> Option<String> {
        match (&self.description, &self.owner) {
            (Some(d), Some(o)) => Some(format!("{d} (owner: {o})")),
            (Some(d), None) => Some(d.clone()),
            (None, Some(o)) => Some(format!("owner: {o}")),
            (None, None) => None,
        }
    }
}

/// A configured user's roles and attributes.
#[derive(Debug, Clone, Default)]
pub struct UserGrants {
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}

/// Everything access decisions need, built once at start-up.
#[derive(Debug, Default)]
pub struct Policy {
    roles: BTreeMap<String, RoleGrants>,
    users: HashMap<String, UserGrants>,
    /// `schema.table` → its columns' tags and masks.
    columns: HashMap<String, Vec<ColumnPolicy>>,
    /// `schema.table` → its description and owner from the spec.
    tables: HashMap<String, TableDoc>,
    /// Key of the `hash` mask.
    mask_key: Vec<u8>,
}

impl Policy {
    /// Checks that every user's roles exist.
    pub fn new(
        roles: BTreeMap<String, RoleGrants>,
        users: HashMap<String, UserGrants>,
        mask_key: Vec<u8>,
    ) -> Result<Policy, PolicyError> {
        for (user, grants) in &users {
            for role in &grants.roles {
                if !roles.contains_key(role) {
                    let known: Vec<&str> = roles.keys().map(String::as_str).collect();
                    return Err(PolicyError::User {
                        user: user.clone(),
                        message: format!(
                            "role '{role}' is not defined under `roles:` (defined: {})",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    });
                }
            }
        }
        Ok(Policy {
            roles,
            users,
            columns: HashMap::new(),
            tables: HashMap::new(),
            mask_key,
        })
    }

    /// Take column tags and masks from the specs: a dataset's columns apply
    /// to its silver and quarantine tables and, under their names before any
    /// `rename`, to its bronze table; a gold model's to the model.
    pub fn with_project(mut self, project: &Project) -> Policy {
        for dataset in &project.datasets {
            let doc = TableDoc {
                description: dataset.description.clone(),
                owner: dataset.owner.clone(),
                dataset: dataset.name.clone(),
            };
            for table in [
                format!("bronze.{}", dataset.name),
                format!("silver.{}", dataset.name),
                format!("silver.{}", quarantine_table(&dataset.name)),
            ] {
                self.tables.insert(table, doc.clone());
            }
            if dataset.columns.is_empty() {
                continue;
            }
            self.columns.insert(format!("silver.{}", dataset.name), dataset.columns.clone());
            self.columns.insert(format!("silver.{}", quarantine_table(&dataset.name)), dataset.columns.clone());
            let renames: Vec<(String, String)> = dataset
                .silver
                .iter()
                .flat_map(|s| &s.rules)
                .filter_map(|r| match &r.value {
                    Rule::Rename(pairs) => Some(pairs.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            let bronze = dataset
                .columns
                .iter()
                .map(|c| {
                    let mut name = c.name.clone();
                    // Follow renames backwards to the name the source uses.
                    for (from, to) in renames.iter().rev() {
                        if *to == name {
                            name = from.clone();
                        }
                    }
                    ColumnPolicy { name, ..c.clone() }
                })
                .collect();
            self.columns.insert(format!("bronze.{}", dataset.name), bronze);
        }
        for model in &project.gold {
            let owner = model.dataset.as_ref().and_then(|d| project.datasets.iter().find(|s| &s.name == d));
            self.tables.insert(
                format!("gold.{}", model.name),
                TableDoc {
                    description: model.description.clone(),
                    owner: owner.and_then(|s| s.owner.clone()),
                    dataset: model.dataset.clone().unwrap_or_else(|| model.name.clone()),
                },
            );
            if !model.columns.is_empty() {
                self.columns.insert(format!("gold.{}", model.name), model.columns.clone());
            }
        }
        self
    }

    /// Whether roles are enforced: without `roles:` every user is an administrator.
    pub fn enforced(&self) -> bool {
        !self.roles.is_empty()
    }

    pub fn role(&self, name: &str) -> Option<&RoleGrants> {
        self.roles.get(name)
    }

    /// The configured users' names, sorted.
    pub fn user_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort();
        names
    }

    pub fn user(&self, name: &str) -> Option<&UserGrants> {
        self.users.get(name)
    }

    pub fn columns(&self, schema: &str, table: &str) -> &[ColumnPolicy] {
        self.columns.get(&format!("{schema}.{table}")).map_or(&[], Vec::as_slice)
    }

    /// What the specs say of `schema.table`, if a spec declares it.
    pub fn table_doc(&self, schema: &str, table: &str) -> Option<&TableDoc> {
        self.tables.get(&format!("{schema}.{table}"))
    }

    /// Every table's column policies (for catalog descriptions and `search`).
    pub fn all_columns(&self) -> impl Iterator<Item = (&str, &[ColumnPolicy])> {
        self.columns.iter().map(|(t, c)| (t.as_str(), c.as_slice()))
    }

    pub fn mask_key(&self) -> &[u8] {
        &self.mask_key
    }
}
