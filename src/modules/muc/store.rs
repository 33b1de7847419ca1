//! What the room service keeps: each persistent room's record (configuration, subject, and
//! the affiliations of addresses that are not this server's accounts), each account's
//! affiliations in a table keyed by the account (so that deleting the account forgets them,
//! as it forgets everything else of it), and each room's archive.
//!
//! Tables keyed by a room's name are [`Unowned`]: a room called like an account is not the
//! account's.

use super::room::{Affiliated, RoomConfig, Subject};
use crate::error::Error;
use crate::modules::mam::store::{Archive, Rows, Sizes};
use crate::storage::shapes::{KeyVal, Map, Queue, Unowned};
use crate::storage::{Op, Store, Txn, Write};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Room name → the room's record (TOML of [`Record`]).
pub static ROOM_TO_RECORD: Unowned<KeyVal<&str>> =
    Unowned(KeyVal(TableDefinition::new("muc_rooms")));
/// (localpart, room name) → the account's affiliation with the room (TOML of `Affiliated`).
pub static USER_ROOM_TO_AFFILIATION: Map<&str> = Map(TableDefinition::new("muc_affiliations"));

const ROOM_ROWS: Rows = TableDefinition::new("muc_archive");
const ROOM_SIZES: Sizes = TableDefinition::new("muc_archive_bytes");
/// (room name, archive id) → (milliseconds since the epoch, the sender's bare JID, the message
/// as the room reflected it).
pub static ROOM_ID_TO_ARCHIVED: Unowned<Queue<(u64, &str, &str)>> = Unowned(Queue(ROOM_ROWS));
/// Room name → bytes of the room's archive, kept by every append, expiry and clearing: what
/// the per-room quota is checked against.
pub static ROOM_TO_ARCHIVE_BYTES: Unowned<KeyVal<u64>> = Unowned(KeyVal(ROOM_SIZES));
/// The rooms' archives.
pub static ROOM_ARCHIVE: Archive = Archive::new(ROOM_ROWS, None, ROOM_SIZES, "muc_archive_last_id");

/// A persistent room as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    pub config: RoomConfig,
    pub subject: Subject,
    /// Affiliations of addresses that are not accounts here (another domain, a whole domain).
    pub others: Vec<Other>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Other {
    pub jid: String,
    pub entry: Affiliated,
}

impl Record {
    pub fn encode(&self) -> String {
        toml::to_string(self).expect("a room record serialises")
    }
}

/// Every stored room, with the accounts' affiliations: (room name, record) and (localpart,
/// room name, affiliation). A record that cannot be read is skipped with a log line.
pub type Loaded = (Vec<(String, Record)>, Vec<(String, String, Affiliated)>);

pub fn load(store: &Store) -> Result<Loaded, Error> {
    let txn = store.read()?;
    let mut rooms = Vec::new();
    for row in txn.open_table(ROOM_TO_RECORD.0.0)?.iter()? {
        let (k, v) = row?;
        match toml::from_str::<Record>(v.value()) {
            Ok(r) => rooms.push((k.value().to_owned(), r)),
            Err(e) => log::error!(
                "the stored room {} is unreadable ({e}); skipping it",
                k.value()
            ),
        }
    }
    let mut affiliations = Vec::new();
    for row in txn.open_table(USER_ROOM_TO_AFFILIATION.0)?.iter()? {
        let (k, v) = row?;
        let (user, room) = k.value();
        match toml::from_str::<Affiliated>(v.value()) {
            Ok(a) => affiliations.push((user.to_owned(), room.to_owned(), a)),
            Err(e) => log::error!("an unreadable affiliation of {user} with {room} ({e})"),
        }
    }
    Ok((rooms, affiliations))
}

pub fn save(room: &str, record: &Record) -> Write {
    ROOM_TO_RECORD.0.put(room, record.encode())
}

pub fn set_affiliation(user: &str, room: &str, entry: Option<&Affiliated>) -> Write {
    match entry {
        Some(a) => USER_ROOM_TO_AFFILIATION.put(
            user,
            room,
            toml::to_string(a).expect("an affiliation serialises"),
        ),
        None => USER_ROOM_TO_AFFILIATION.delete(user, room),
    }
}

/// Forgets a room: its record, every account's affiliation with it, and its archive.
pub fn forget(room: &str) -> Vec<Write> {
    let mut w = unpersist(room);
    w.push(ROOM_ARCHIVE.clear(room));
    w
}

/// Forgets a room's record and affiliations (it stays, as a temporary room, with its archive).
pub fn unpersist(room: &str) -> Vec<Write> {
    vec![
        ROOM_TO_RECORD.0.delete(room),
        Box::new(ForgetAffiliations(room.to_owned())),
    ]
}

/// Deletes every account's affiliation with one room: the table is keyed by account, so this
/// reads it all (a few rows per account).
#[derive(Debug)]
struct ForgetAffiliations(String);

impl Op for ForgetAffiliations {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let room = self.0.as_str();
        txn.txn
            .open_table(USER_ROOM_TO_AFFILIATION.0)?
            .retain(|k, _| k.1 != room)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::muc::room::Affiliation;
    use crate::storage::{accounts, temp_store};

    #[test]
    fn rooms_and_affiliations_round_trip_and_go_their_ways() {
        let (_dir, store) = temp_store();
        let member = Affiliated {
            affiliation: Affiliation::Member,
            nick: Some("Ann".into()),
        };
        let mut record = Record::default();
        record.config.name = "Family".into();
        record.config.password = Some("secret".into());
        record.subject.text = "Sunday lunch".into();
        record.others.push(Other {
            jid: "spam.example".into(),
            entry: Affiliated {
                affiliation: Affiliation::Outcast,
                nick: None,
            },
        });
        store
            .commit_blocking(vec![
                save("family", &record),
                save("ann", &Record::default()),
                set_affiliation("ann", "family", Some(&member)),
                set_affiliation("ann", "ann", Some(&member)),
                set_affiliation("bob", "family", Some(&member)),
                ROOM_ARCHIVE.append("family", 1, "ann@localhost", "<message/>".into()),
                ROOM_ARCHIVE.append("ann", 2, "bob@localhost", "<message/>".into()),
            ])
            .unwrap();
        let (rooms, affs) = load(&store).unwrap();
        assert_eq!(rooms.len(), 2);
        let family = &rooms.iter().find(|(n, _)| n == "family").unwrap().1;
        assert_eq!(family.config.name, "Family");
        assert_eq!(family.config.password.as_deref(), Some("secret"));
        assert_eq!(family.subject.text, "Sunday lunch");
        assert_eq!(family.others[0].entry.affiliation, Affiliation::Outcast);
        assert_eq!(affs.len(), 3);
        assert!(affs.contains(&("ann".into(), "family".into(), member.clone())));
        // Deleting the account ann forgets its affiliations, not the room named ann.
        store
            .commit_blocking(vec![accounts::delete("ann")])
            .unwrap();
        let (rooms, affs) = load(&store).unwrap();
        assert_eq!(rooms.len(), 2);
        assert_eq!(affs, vec![("bob".into(), "family".into(), member)]);
        assert_eq!(ROOM_ARCHIVE.owners(&store).unwrap(), vec!["ann", "family"]);
        assert_eq!(ROOM_ARCHIVE.bytes(&store, "ann").unwrap(), 13 + 10);
        assert!(ROOM_ARCHIVE.keeps_bytes_of(&store, "ann"));
        // Forgetting the room takes everything of it.
        store.commit_blocking(forget("family")).unwrap();
        let (rooms, affs) = load(&store).unwrap();
        assert_eq!((rooms.len(), affs.len()), (1, 0));
        assert_eq!(ROOM_ARCHIVE.owners(&store).unwrap(), vec!["ann"]);
        assert!(!ROOM_ARCHIVE.keeps_bytes_of(&store, "family"));
    }
}
