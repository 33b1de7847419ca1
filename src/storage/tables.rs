//! The schema: every redb table hearth uses, and the schema version. Nothing else lives here.
//!
//! Names follow `KEY_TO_VALUE`. Stanzas are stored as XML text in the `jabber:client` namespace;
//! records are TOML text. Both are easy to inspect and stable across versions.

use redb::TableDefinition;

/// Bumped whenever a table's key or value encoding changes. Version 1: the first schema.
pub const SCHEMA_VERSION: u64 = 1;

/// "schema_version" → [`SCHEMA_VERSION`] of the hearth that created the file;
/// "archive_last_id" → the highest XEP-0313 archive id stored so far.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Normalised localpart → SCRAM credentials (TOML of `accounts::Credentials`).
pub const USER_TO_CREDENTIALS: TableDefinition<&str, &str> = TableDefinition::new("credentials");
/// (localpart, contact bare JID) → roster item (TOML of `roster::RosterItem`).
pub const USER_CONTACT_TO_ROSTER_ITEM: TableDefinition<(&str, &str), &str> =
    TableDefinition::new("roster");
/// Localpart → roster version (RFC 6121 §2.6), strictly increasing across the server.
pub const USER_TO_ROSTER_VERSION: TableDefinition<&str, u64> =
    TableDefinition::new("roster_version");
/// (localpart, sequence) → (milliseconds since the epoch when stored, message XML).
pub const USER_SEQ_TO_OFFLINE: TableDefinition<(&str, u64), (u64, &str)> =
    TableDefinition::new("offline");
/// (localpart, archive id) → (milliseconds since the epoch, the other party's JID as
/// addressed, message XML). XEP-0313 user archives. The id is the microsecond the message
/// was archived, bumped to stay strictly increasing server-wide (see `modules::mam`), so id
/// order is time order and a time range is an id range.
pub const USER_ID_TO_ARCHIVED: TableDefinition<(&str, u64), (u64, &str, &str)> =
    TableDefinition::new("archive");
/// (localpart, the other party's bare JID, archive id) → nothing. The index that makes a
/// query `with` one contact (scrolling back through one conversation) a range scan.
pub const USER_WITH_ID_TO_NOTHING: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("archive_by_contact");
/// Localpart → XEP-0313 §6 archiving preferences (TOML of `archive::Prefs`).
pub const USER_TO_ARCHIVE_PREFS: TableDefinition<&str, &str> =
    TableDefinition::new("archive_prefs");
