//! The shapes nearly every module's storage takes (as Prosody's stores do): a value per
//! account ([`KeyVal`]), a map per account ([`Map`]), and a queue per account ordered by a
//! sequence number ([`Queue`]). Each is a redb table whose key starts with the account's
//! localpart, so deleting an account is one range per table, done for every declared table.
//!
//! Values are text (TOML records or XML) unless a module needs otherwise; the shapes' reads and
//! writes are written for text, and a module with another value type uses the table directly.

use super::{Error, Op, Store, Table, Txn, Write};
use redb::{ReadableTable, TableDefinition, TableHandle, Value, WriteTransaction};

/// localpart → value.
pub struct KeyVal<V: Value + 'static>(pub TableDefinition<'static, &'static str, V>);
/// (localpart, key) → value.
pub struct Map<V: Value + 'static>(pub TableDefinition<'static, (&'static str, &'static str), V>);
/// (localpart, sequence) → value, oldest first.
pub struct Queue<V: Value + 'static>(pub TableDefinition<'static, (&'static str, u64), V>);

macro_rules! named_debug {
    ($($t:ident),*) => {$(
        impl<V: Value + 'static> std::fmt::Debug for $t<V> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0.name())
            }
        }
    )*};
}
named_debug!(KeyVal, Map, Queue);

/// (localpart, key, sequence) → value: an index of another table by a key, in sequence order.
pub struct Index<V: Value + 'static>(
    pub TableDefinition<'static, (&'static str, &'static str, u64), V>,
);

named_debug!(Index);

/// A table in one of the shapes whose keys do not start with an account's localpart but with
/// something else's name (a chat room's): deleting an account leaves it alone, since a row of
/// it is not the account's even when the names are equal.
pub struct Unowned<S>(pub S);

impl<S: Table> Table for Unowned<S> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn create(&self, txn: &WriteTransaction) -> Result<(), Error> {
        self.0.create(txn)
    }
    fn delete_user(&self, _txn: &WriteTransaction, _user: &str) -> Result<(), Error> {
        Ok(())
    }
    #[cfg(test)]
    fn count_user(&self, _txn: &redb::ReadTransaction, _user: &str) -> Result<usize, Error> {
        Ok(0)
    }
}

/// The key ranges holding every row of `user`, for each shape.
fn keyval_range(user: &str) -> std::ops::RangeInclusive<&str> {
    user..=user
}
fn map_range(user: &str) -> std::ops::Range<(&str, &str)> {
    (user, "")..(user, "\u{10ffff}")
}
fn queue_range(user: &str) -> std::ops::RangeInclusive<(&str, u64)> {
    (user, 0)..=(user, u64::MAX)
}
fn index_range(user: &str) -> std::ops::Range<(&str, &str, u64)> {
    (user, "", 0)..(user, "\u{10ffff}", 0)
}

/// A shape's [`Table`]: every key starts with the localpart, so an account is one key range.
macro_rules! per_user_table {
    ($($shape:ident: $range:ident),*) => {$(
        impl<V: Value + Sync + 'static> Table for $shape<V> {
            fn name(&self) -> &str {
                self.0.name()
            }
            fn create(&self, txn: &WriteTransaction) -> Result<(), Error> {
                txn.open_table(self.0)?;
                Ok(())
            }
            fn delete_user(&self, txn: &WriteTransaction, user: &str) -> Result<(), Error> {
                txn.open_table(self.0)?.retain_in($range(user), |_, _| false)?;
                Ok(())
            }
            #[cfg(test)]
            fn count_user(&self, txn: &redb::ReadTransaction, user: &str) -> Result<usize, Error> {
                Ok(txn.open_table(self.0)?.range($range(user))?.count())
            }
        }
    )*};
}
per_user_table!(KeyVal: keyval_range, Map: map_range, Queue: queue_range, Index: index_range);

impl KeyVal<&'static str> {
    pub fn get(&self, store: &Store, user: &str) -> Result<Option<String>, Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.0)?;
        Ok(t.get(user)?.map(|v| v.value().to_owned()))
    }

    /// Every account that has a value, in key order.
    pub fn users(&self, store: &Store) -> Result<Vec<String>, Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.0)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            out.push(row?.0.value().to_owned());
        }
        Ok(out)
    }

    pub fn put(&'static self, user: &str, value: String) -> Write {
        Box::new(KvPut {
            table: self,
            user: user.to_owned(),
            value: Some(value),
        })
    }

    pub fn delete(&'static self, user: &str) -> Write {
        Box::new(KvPut {
            table: self,
            user: user.to_owned(),
            value: None,
        })
    }
}

impl Map<&'static str> {
    pub fn get(&self, store: &Store, user: &str, key: &str) -> Result<Option<String>, Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.0)?;
        Ok(t.get((user, key))?.map(|v| v.value().to_owned()))
    }

    /// Every (key, value) of `user`, in key order.
    pub fn all(&self, store: &Store, user: &str) -> Result<Vec<(String, String)>, Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.0)?;
        let mut out = Vec::new();
        for row in t.range(map_range(user))? {
            let (k, v) = row?;
            out.push((k.value().1.to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    pub fn put(&'static self, user: &str, key: &str, value: String) -> Write {
        Box::new(MapPut {
            table: self,
            user: user.to_owned(),
            key: key.to_owned(),
            value: Some(value),
        })
    }

    pub fn delete(&'static self, user: &str, key: &str) -> Write {
        Box::new(MapPut {
            table: self,
            user: user.to_owned(),
            key: key.to_owned(),
            value: None,
        })
    }

    /// Removes every key of `user`.
    pub fn clear(&'static self, user: &str) -> Write {
        Box::new(MapClear {
            table: self,
            user: user.to_owned(),
        })
    }
}

/// A queue entry: (milliseconds since the epoch when stored, text).
pub type Stamped = (u64, &'static str);

/// One entry of a [`Queue`] as read.
pub struct Entry {
    pub seq: u64,
    pub stamp_ms: u64,
    pub text: String,
}

impl Queue<Stamped> {
    /// How many entries `user` has, and the bytes of their text.
    pub fn usage(&self, store: &Store, user: &str) -> Result<(usize, usize), Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.0)?;
        let (mut n, mut bytes) = (0, 0);
        for row in t.range(queue_range(user))? {
            n += 1;
            bytes += row?.1.value().1.len();
        }
        Ok((n, bytes))
    }

    /// Up to `limit` of the oldest entries of `user`.
    pub fn peek(&self, store: &Store, user: &str, limit: usize) -> Result<Vec<Entry>, Error> {
        let txn = store.read()?;
        let t = txn.open_table(self.0)?;
        let mut out = Vec::new();
        for row in t.range(queue_range(user))?.take(limit) {
            let (k, v) = row?;
            let (stamp_ms, text) = v.value();
            out.push(Entry {
                seq: k.value().1,
                stamp_ms,
                text: text.to_owned(),
            });
        }
        Ok(out)
    }

    /// Appends an entry after the newest of `user`.
    pub fn push(&'static self, user: &str, stamp_ms: u64, text: String) -> Write {
        Box::new(QueuePush {
            table: self,
            user: user.to_owned(),
            stamp_ms,
            text,
        })
    }

    /// Removes the entries of `user` with a sequence number up to `upto`, inclusive.
    pub fn delete_upto(&'static self, user: &str, upto: u64) -> Write {
        Box::new(QueueDelete {
            table: self,
            user: user.to_owned(),
            upto,
        })
    }
}

#[derive(Debug)]
struct KvPut {
    table: &'static KeyVal<&'static str>,
    user: String,
    /// None deletes the key.
    value: Option<String>,
}

impl Op for KvPut {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let mut t = txn.txn.open_table(self.table.0)?;
        match &self.value {
            Some(v) => drop(t.insert(self.user.as_str(), v.as_str())?),
            None => drop(t.remove(self.user.as_str())?),
        }
        Ok(())
    }
}

#[derive(Debug)]
struct MapPut {
    table: &'static Map<&'static str>,
    user: String,
    key: String,
    /// None deletes the key.
    value: Option<String>,
}

impl Op for MapPut {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let mut t = txn.txn.open_table(self.table.0)?;
        let key = (self.user.as_str(), self.key.as_str());
        match &self.value {
            Some(v) => drop(t.insert(key, v.as_str())?),
            None => drop(t.remove(key)?),
        }
        Ok(())
    }
}

#[derive(Debug)]
struct MapClear {
    table: &'static Map<&'static str>,
    user: String,
}

impl Op for MapClear {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        self.table.delete_user(txn.txn, &self.user)
    }
}

#[derive(Debug)]
struct QueuePush {
    table: &'static Queue<Stamped>,
    user: String,
    stamp_ms: u64,
    text: String,
}

impl Op for QueuePush {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let u = self.user.as_str();
        let mut t = txn.txn.open_table(self.table.0)?;
        let next = match t.range(queue_range(u))?.next_back() {
            Some(r) => r?.0.value().1 + 1,
            None => 1,
        };
        t.insert((u, next), (self.stamp_ms, self.text.as_str()))?;
        Ok(())
    }
}

#[derive(Debug)]
struct QueueDelete {
    table: &'static Queue<Stamped>,
    user: String,
    upto: u64,
}

impl Op for QueueDelete {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let u = self.user.as_str();
        txn.txn
            .open_table(self.table.0)?
            .retain_in((u, 0)..=(u, self.upto), |_, _| false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::temp_store_with;
    use super::*;

    static KV: KeyVal<&str> = KeyVal(TableDefinition::new("test_kv"));
    static MAP: Map<&str> = Map(TableDefinition::new("test_map"));
    static QUEUE: Queue<Stamped> = Queue(TableDefinition::new("test_queue"));

    #[test]
    fn shapes_round_trip_and_forget_an_account() {
        let (dir, store) = temp_store_with(vec![&KV, &MAP, &QUEUE]);
        store
            .commit_blocking(vec![
                KV.put("a", "one".into()),
                KV.put("ab", "two".into()),
                MAP.put("a", "k1", "v1".into()),
                MAP.put("a", "k2", "v2".into()),
                MAP.put("ab", "k1", "x".into()),
                // Three in one batch get three distinct sequence numbers.
                QUEUE.push("a", 1, "q1".into()),
                QUEUE.push("a", 2, "q2".into()),
                QUEUE.push("a", 3, "q3".into()),
            ])
            .unwrap();
        assert_eq!(KV.get(&store, "a").unwrap().as_deref(), Some("one"));
        assert_eq!(KV.users(&store).unwrap(), vec!["a", "ab"]);
        let all = MAP.all(&store, "a").unwrap();
        assert_eq!(
            all,
            vec![("k1".into(), "v1".into()), ("k2".into(), "v2".into())]
        );
        let q: Vec<_> = QUEUE
            .peek(&store, "a", 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.stamp_ms, e.text))
            .collect();
        assert_eq!(
            q,
            vec![
                (1, 1, "q1".into()),
                (2, 2, "q2".into()),
                (3, 3, "q3".into())
            ]
        );
        store
            .commit_blocking(vec![MAP.delete("a", "k1"), QUEUE.delete_upto("a", 2)])
            .unwrap();
        assert_eq!(MAP.get(&store, "a", "k1").unwrap(), None);
        assert_eq!(QUEUE.usage(&store, "a").unwrap().0, 1);
        // Survives a reopen; then the account goes, and only that account.
        store.close();
        drop(store);
        let store = Store::open_with_cache(
            &dir.path().join("hearth.redb"),
            1 << 20,
            vec![&KV, &MAP, &QUEUE],
        )
        .unwrap();
        assert_eq!(QUEUE.usage(&store, "a").unwrap().0, 1);
        store
            .commit_blocking(vec![Box::new(super::super::DeleteAccount("a".into()))])
            .unwrap();
        assert!(store.rows_of("a").is_empty());
        assert_eq!(
            store.rows_of("ab"),
            vec![("test_kv".into(), 1), ("test_map".into(), 1)]
        );
    }
}
