//! `search_path` name resolution, as Postgres does it: an unqualified table
//! name is looked up in `pg_catalog` first, then in each schema of the path
//! in order; the first schema holding it wins. DataFusion knows one default
//! schema only, so before planning every unqualified table reference (that
//! is not a CTE) is qualified with the schema that holds it.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::catalog::CatalogProvider;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    Ident, ObjectName, ObjectNamePart, Query, Statement, TableFactor, Visit, VisitMut, Visitor, VisitorMut,
};

use super::settings::Settings;
use crate::engine::DATABASE;

/// The schemas of the path that exist, in order (what `current_schemas(false)` returns).
pub fn existing_schemas(settings: &Settings, catalog: &dyn CatalogProvider) -> Vec<String> {
    let names: HashSet<String> = catalog.schema_names().into_iter().collect();
    settings
        .search_path()
        .into_iter()
        .filter(|s| names.contains(s) && s != "pg_catalog")
        .collect()
}

/// `current_schema()`: the first existing schema of the path.
pub fn current_schema(settings: &Settings, catalog: &dyn CatalogProvider) -> Option<String> {
    existing_schemas(settings, catalog).into_iter().next()
}

/// Qualify the unqualified table references of `statement` per the path.
pub fn qualify(statement: &mut Statement, settings: &Settings, ctx: &SessionContext) {
    let Some(catalog) = ctx.catalog(DATABASE) else {
        return;
    };
    let mut ctes = CteNames::default();
    let _ = Visit::visit(&*statement, &mut ctes);
    let mut path = vec!["pg_catalog".to_string()];
    path.extend(existing_schemas(settings, catalog.as_ref()));
    let mut qualifier = Qualifier {
        ctes: ctes.0,
        path: path
            .into_iter()
            .filter_map(|name| catalog.schema(&name).map(|schema| (name, schema)))
            .collect(),
    };
    let _ = statement.visit(&mut qualifier);
}

#[derive(Default)]
struct CteNames(HashSet<String>);

impl Visitor for CteNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.0.insert(cte.alias.name.value.to_lowercase());
            }
        }
        ControlFlow::Continue(())
    }
}

struct Qualifier {
    ctes: HashSet<String>,
    path: Vec<(String, std::sync::Arc<dyn datafusion::catalog::SchemaProvider>)>,
}

impl VisitorMut for Qualifier {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table { name, args: None, .. } = factor
            && let [ObjectNamePart::Identifier(ident)] = name.0.as_slice()
        {
            let lookup = if ident.quote_style.is_some() {
                ident.value.clone()
            } else {
                ident.value.to_lowercase()
            };
            if self.ctes.contains(&lookup) {
                return ControlFlow::Continue(());
            }
            if let Some((schema, _)) = self.path.iter().find(|(_, s)| s.table_exist(&lookup)) {
                *name = ObjectName(vec![
                    ObjectNamePart::Identifier(Ident::new(schema.clone())),
                    ObjectNamePart::Identifier(ident.clone()),
                ]);
            }
        }
        ControlFlow::Continue(())
    }
}
