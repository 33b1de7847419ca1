//! The schema version and the store's own table. Every other table is declared by the module
//! that owns it, beside the code that reads and writes it, and listed in the module registry
//! (`modules::REGISTRY`); `modules::schema()` is the whole list, and a unit test there checks
//! that no two tables share a name.
//!
//! Names follow `KEY_TO_VALUE`. Stanzas are stored as XML text in the `jabber:client` namespace;
//! records are TOML text. Both are easy to inspect and stable across versions.

use redb::TableDefinition;

/// Bumped whenever a table's key or value encoding changes. Version 1: the first schema.
pub const SCHEMA_VERSION: u64 = 1;

/// "schema_version" → [`SCHEMA_VERSION`] of the hearth that created the file; modules keep
/// their high-water marks here too ("archive_last_id": the highest XEP-0313 archive id).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
