//! Offline messages (XEP-0160): an archive-shaped queue per user, oldest first.

use super::{Store, tables::*};
use crate::error::Error;

pub struct OfflineMessage {
    pub seq: u64,
    pub stamp_ms: u64,
    pub xml: String,
}

impl Store {
    pub fn offline_count(&self, user: &str) -> Result<usize, Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_SEQ_TO_OFFLINE)?;
        let mut n = 0;
        for row in t.range((user, 0)..=(user, u64::MAX))? {
            row?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `limit` of the user's oldest offline messages.
    pub fn offline_peek(&self, user: &str, limit: usize) -> Result<Vec<OfflineMessage>, Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_SEQ_TO_OFFLINE)?;
        let mut out = Vec::new();
        for row in t.range((user, 0)..=(user, u64::MAX))?.take(limit) {
            let (k, v) = row?;
            let (stamp_ms, xml) = v.value();
            out.push(OfflineMessage {
                seq: k.value().1,
                stamp_ms,
                xml: xml.to_owned(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Store, Write, temp_store};

    #[test]
    fn push_peek_reopen_delete() {
        let (dir, store) = temp_store();
        let push = |n: u64| Write::OfflinePush {
            user: "b".into(),
            stamp_ms: n,
            xml: format!("<message>{n}</message>"),
        };
        // Three in one batch must get three distinct sequence numbers.
        store
            .commit_blocking(vec![push(1), push(2), push(3)])
            .unwrap();
        store.close();
        drop(store);
        let store = Store::open(&dir.path().join("hearth.redb")).unwrap();
        let msgs = store.offline_peek("b", 10).unwrap();
        let got: Vec<_> = msgs.iter().map(|m| (m.seq, m.xml.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (1, "<message>1</message>"),
                (2, "<message>2</message>"),
                (3, "<message>3</message>")
            ]
        );
        assert_eq!(store.offline_count("b").unwrap(), 3);
        store
            .commit_blocking(vec![Write::OfflineDelete {
                user: "b".into(),
                upto: 2,
            }])
            .unwrap();
        assert_eq!(store.offline_count("b").unwrap(), 1);
        assert_eq!(store.offline_count("a").unwrap(), 0);
    }
}
