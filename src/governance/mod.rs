//! Who may see and do what, declared as code: roles and grants from the
//! config file, column tags and masks from the specs. The [`Policy`] is built
//! once at start-up; each logged-in connection gets a [`Principal`] (its user,
//! roles and attributes) that the engine asks, table by table, what to show.
//!
//! Nothing here touches data: `engine::governed` turns a [`TablePolicy`] into
//! the masked, row-filtered view a query scans.

pub mod audit;
mod policy;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub use policy::{Grant, Policy, PolicyError, RoleGrants, RowFilter, TableDoc, UserGrants};

use crate::spec::{Mask, QUARANTINE_SUFFIX};

/// Refused: SQLSTATE 42501 (insufficient_privilege) for the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    #[error("permission denied for table {table}")]
    Table { table: String, user: String },
    #[error("permission denied for {what}")]
    Action { what: String, user: String },
}

impl AccessError {
    /// What the user can do about it.
    pub fn hint(&self) -> String {
        let user = match self {
            AccessError::Table { user, .. } | AccessError::Action { user, .. } => user,
        };
        format!("user {user} has no role that grants this; ask an administrator to add it to a role's grants in the server config")
    }
}

/// What a table looks like to one principal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TablePolicy {
    /// Columns shown masked, with their mask.
    pub masks: Vec<(String, Mask)>,
    /// Rows the principal may see: `None` = all rows; otherwise any row
    /// matching one of the filters (roles' filters combine with OR).
    pub row_filters: Option<Vec<BoundFilter>>,
}

impl TablePolicy {
    /// Whether the table is shown as it is stored.
    pub fn is_clear(&self) -> bool {
        self.masks.is_empty() && self.row_filters.is_none()
    }
}

/// A row filter with the user's attribute values to bind to its `$n`
/// placeholders (`None`: the user has no such attribute, so NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct BoundFilter {
    /// SQL over the table's columns with `$1`, `$2`, ... where the config said
    /// `{{ user.attr }}`.
    pub sql: String,
    pub values: Vec<Option<String>>,
}

/// A logged-in user as policy sees them.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    policy: Arc<Policy>,
}

impl Principal {
    /// `user` as the policy knows them; a user the config does not list (the
    /// local user under trust authentication) is an administrator when the
    /// policy is not enforced, and has no grants otherwise.
    pub fn new(policy: Arc<Policy>, user: &str) -> Principal {
        let (roles, attributes) = match policy.user(user) {
            Some(grants) => (grants.roles.clone(), grants.attributes.clone()),
            None => (vec![], BTreeMap::new()),
        };
        Principal {
            user: user.to_string(),
            roles,
            attributes,
            policy,
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    fn grants(&self) -> impl Iterator<Item = &RoleGrants> {
        self.roles.iter().filter_map(|r| self.policy.role(r))
    }

    /// Sees and does everything (no `roles:` configured, or an `admin` role).
    pub fn is_admin(&self) -> bool {
        !self.policy.enforced() || self.grants().any(|g| g.admin)
    }

    /// May read `workbench.audit`.
    pub fn can_audit(&self) -> bool {
        self.is_admin() || self.grants().any(|g| g.audit)
    }

    /// May read `schema.table` (bronze/silver/gold and the `workbench` metadata).
    pub fn can_read(&self, schema: &str, table: &str) -> bool {
        if self.is_admin() {
            return true;
        }
        if schema == "workbench" && table == "audit" {
            return self.can_audit();
        }
        self.grants().any(|g| g.read.matches(&format!("{schema}.{table}")))
    }

    /// May use `schema` (`has_schema_privilege(s, 'USAGE')`): the catalog
    /// schemas always; a lake or metadata schema when a read grant reaches it.
    pub fn can_use_schema(&self, schema: &str) -> bool {
        if self.is_admin() || matches!(schema, "pg_catalog" | "information_schema" | "public") {
            return true;
        }
        (schema == "workbench" && self.can_audit()) || self.grants().any(|g| g.read.reaches_schema(schema))
    }

    /// May start a run of `dataset` (`run()`, the CLI).
    pub fn can_run(&self, dataset: &str) -> bool {
        self.is_admin() || self.grants().any(|g| g.run.matches(dataset))
    }

    /// May read the landing files of `dataset` (`preview`, `preview_raw`).
    pub fn can_read_landing(&self, dataset: &str) -> bool {
        self.is_admin() || self.grants().any(|g| g.landing.matches(dataset))
    }

    /// May add landing files to `dataset` (`COPY landing.<dataset> FROM STDIN`).
    pub fn can_upload(&self, dataset: &str) -> bool {
        self.is_admin() || self.grants().any(|g| g.upload.matches(dataset))
    }

    /// May check `schema.table` against an ad-hoc suite (`validate(t, suite)`).
    pub fn can_validate(&self, schema: &str, table: &str) -> bool {
        self.is_admin() || self.grants().any(|g| g.validate.matches(&format!("{schema}.{table}")))
    }

    /// May see `tag`-tagged columns in clear.
    fn unmasks(&self, tags: &[String]) -> bool {
        self.grants().any(|g| tags.iter().any(|t| g.unmask.iter().any(|u| u == t || u == "*")))
    }

    /// How `schema.table` is shown to this principal (assumes `can_read`).
    pub fn table_policy(&self, schema: &str, table: &str) -> TablePolicy {
        if self.is_admin() {
            return TablePolicy::default();
        }
        let masks = self
            .policy
            .columns(schema, table)
            .iter()
            .filter_map(|c| c.mask.clone().map(|m| (c, m)))
            .filter(|(c, _)| !self.unmasks(&c.tags))
            .map(|(c, m)| (c.name.clone(), m))
            .collect();
        let qualified = format!("{schema}.{table}");
        let mut filters = Vec::new();
        let mut unrestricted = false;
        // A dataset's quarantine table holds rows of its silver table: the
        // silver table's filter binds it too, unless a filter names it.
        let filtered_as = table
            .strip_suffix(QUARANTINE_SUFFIX)
            .filter(|_| schema == "silver")
            .map(|base| format!("silver.{base}"));
        for grants in self.grants().filter(|g| g.read.matches(&qualified)) {
            let filter = grants
                .row_filters
                .iter()
                .find(|f| f.table.matches(&qualified))
                .or_else(|| filtered_as.as_ref().and_then(|base| grants.row_filters.iter().find(|f| f.table.matches(base))));
            match filter {
                None => unrestricted = true,
                Some(filter) => filters.push(BoundFilter {
                    sql: filter.sql.clone(),
                    values: filter
                        .attributes
                        .iter()
                        .map(|a| match a.as_str() {
                            "name" => Some(self.user.clone()),
                            attr => self.attributes.get(attr).cloned(),
                        })
                        .collect(),
                }),
            }
        }
        TablePolicy {
            masks,
            row_filters: (!unrestricted && !filters.is_empty()).then_some(filters),
        }
    }
}

/// The principal of one connection: nobody until it logs in.
#[derive(Debug, Default)]
pub struct Access {
    principal: RwLock<Option<Arc<Principal>>>,
}

impl Access {
    pub fn set(&self, principal: Principal) {
        *self.principal.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(principal));
    }

    pub fn principal(&self) -> Option<Arc<Principal>> {
        self.principal.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The user name, or `""` before login.
    pub fn user(&self) -> String {
        self.principal().map(|p| p.user.clone()).unwrap_or_default()
    }

    /// `Ok` when `check` holds for the logged-in principal; 42501 naming `what` otherwise.
    pub fn require(&self, what: impl Into<String>, check: impl FnOnce(&Principal) -> bool) -> Result<(), AccessError> {
        match self.principal() {
            Some(p) if check(&p) => Ok(()),
            p => Err(AccessError::Action {
                what: what.into(),
                user: p.map(|p| p.user.clone()).unwrap_or_default(),
            }),
        }
    }
}
