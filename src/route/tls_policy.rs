//! The TLS policy tables (`outbound_tls.policy_maps`, Postfix's
//! `smtp_tls_policy_maps`), opened with [`Syntax::TlsPolicy`] so that every
//! value parses as a policy (a bad line refuses the start; a changed file
//! with one keeps the previous version). `deliver::tls_policy` asks them
//! through its `PolicyTable` trait and decides what the values mean.

use super::table::{Syntax, Table, TableError, fold, open_all};
use crate::config::Config;
use crate::deliver::tls_policy::PolicyTable;
use std::sync::Arc;

/// The configured tables, searched in order for each key in turn.
pub(crate) struct PolicyTables(Vec<Arc<Table>>);

impl PolicyTables {
    /// The tables of `config`; `None` when there are none.
    pub(crate) fn open(config: &Config) -> Result<Option<Arc<dyn PolicyTable>>, String> {
        let specs = &config.outbound_tls.policy_maps;
        if specs.is_empty() {
            return Ok(None);
        }
        let tables =
            open_all(specs, Syntax::TlsPolicy).map_err(|e: TableError| format!("outbound_tls.policy_maps: {e}"))?;
        Ok(Some(Arc::new(PolicyTables(tables))))
    }
}

impl PolicyTable for PolicyTables {
    fn find(&self, keys: &[String]) -> Option<(String, String)> {
        keys.iter().find_map(|key| {
            let key = fold(key);
            self.0.iter().find_map(|t| t.find(&key).map(|e| (e.value, format!("{}:{}", t.name(), e.line))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::tls_policy::domain_keys;

    #[test]
    fn keys_in_order_then_tables_in_order() {
        let a = Table::from_text("a", "example.com encrypt\n", Syntax::TlsPolicy).unwrap();
        let b = Table::from_text("b", ".example.com secure\nexample.com none\n", Syntax::TlsPolicy).unwrap();
        let tables = PolicyTables(vec![Arc::new(a), Arc::new(b)]);
        assert_eq!(tables.find(&domain_keys("example.com")), Some(("encrypt".into(), "a:1".into())));
        assert_eq!(tables.find(&domain_keys("mx.Example.com")), Some(("secure".into(), "b:1".into())));
        assert_eq!(tables.find(&domain_keys("example.org")), None);
    }

    #[test]
    fn a_bad_value_names_its_line() {
        let e = Table::from_text("t", "a.example may\nb.example verify match=\n", Syntax::TlsPolicy).unwrap_err();
        let text = e.to_string();
        assert!(text.contains('2') && text.contains("match= names nothing"), "{text}");
    }
}
