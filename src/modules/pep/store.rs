//! PEP storage: each node's configuration in a map per account, and items in a table keyed
//! (account, node, sequence), newest last, so that "the latest N" is one reverse range and a
//! node's items are one range. Which item id has which sequence is kept in memory (read once
//! per account, see `mod.rs`), so that one write carries all of a change: the item, the ones it
//! replaces or pushes out, and the node's configuration.

use crate::error::Error;
use crate::storage::shapes::Map;
use crate::storage::{Op, Store, Table, Txn, Write};
use redb::{TableDefinition, TableHandle, WriteTransaction};

/// (localpart, node) → node configuration (TOML of `node::NodeConfig`).
pub static USER_NODE_TO_CONFIG: Map<&str> = Map(TableDefinition::new("pep_nodes"));
/// (localpart, node, sequence) → (item id, payload XML).
pub static USER_NODE_SEQ_TO_ITEM: Items = Items(TableDefinition::new("pep_items"));

type ItemKey = (&'static str, &'static str, u64);
pub struct Items(TableDefinition<'static, ItemKey, (&'static str, &'static str)>);

/// The first key after every key of `user`: the localpart followed by the smallest
/// character sorts right after it, before any other localpart.
fn after(user: &str) -> String {
    format!("{user}\0")
}

impl Table for Items {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn create(&self, txn: &WriteTransaction) -> Result<(), Error> {
        txn.open_table(self.0)?;
        Ok(())
    }
    fn delete_user(&self, txn: &WriteTransaction, user: &str) -> Result<(), Error> {
        let end = after(user);
        txn.open_table(self.0)?
            .retain_in((user, "", 0)..(end.as_str(), "", 0), |_, _| false)?;
        Ok(())
    }
    #[cfg(test)]
    fn count_user(&self, txn: &redb::ReadTransaction, user: &str) -> Result<usize, Error> {
        let end = after(user);
        Ok(txn
            .open_table(self.0)?
            .range((user, "", 0)..(end.as_str(), "", 0))?
            .count())
    }
}

/// One stored item as loaded: where it is and how big.
pub struct Row {
    pub node: String,
    pub seq: u64,
    pub id: String,
    pub size: usize,
}

/// Every item of `user`, without payloads, by node and sequence.
pub fn rows(store: &Store, user: &str) -> Result<Vec<Row>, Error> {
    let txn = store.read()?;
    let t = txn.open_table(USER_NODE_SEQ_TO_ITEM.0)?;
    let end = after(user);
    let mut out = Vec::new();
    for r in t.range((user, "", 0)..(end.as_str(), "", 0))? {
        let (k, v) = r?;
        let (_, node, seq) = k.value();
        let (id, xml) = v.value();
        out.push(Row {
            node: node.to_owned(),
            seq,
            id: id.to_owned(),
            size: id.len() + xml.len(),
        });
    }
    Ok(out)
}

/// The payload XML of items `seqs` of `node`, in the order asked; a missing one (not
/// committed yet) is None.
pub fn payloads(
    store: &Store,
    user: &str,
    node: &str,
    seqs: &[u64],
) -> Result<Vec<Option<String>>, Error> {
    let txn = store.read()?;
    let t = txn.open_table(USER_NODE_SEQ_TO_ITEM.0)?;
    seqs.iter()
        .map(|&s| Ok(t.get((user, node, s))?.map(|v| v.value().1.to_owned())))
        .collect()
}

/// The payload XML of item `seq` of `node` if one of `writes` (what the current step will
/// commit) inserts it: a module reading a node right after publishing to it.
pub fn pending(writes: &[Write], user: &str, node: &str, seq: u64) -> Option<String> {
    writes.iter().rev().find_map(|w| {
        let op: &dyn std::any::Any = &**w;
        let c = op.downcast_ref::<Change>()?;
        let (s, _, xml) = c.insert.as_ref()?;
        (c.user == user && c.node == node && *s == seq).then(|| xml.clone())
    })
}

/// A change to one node, made in one transaction.
#[derive(Debug, Default)]
pub struct Change {
    pub user: String,
    pub node: String,
    /// Some(Some(toml)) stores the configuration, Some(None) deletes the node.
    pub config: Option<Option<String>>,
    /// Removes every item of the node first.
    pub clear: bool,
    pub remove: Vec<u64>,
    /// (sequence, id, payload XML)
    pub insert: Option<(u64, String, String)>,
}

impl Op for Change {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let (user, node) = (self.user.as_str(), self.node.as_str());
        let mut items = txn.txn.open_table(USER_NODE_SEQ_TO_ITEM.0)?;
        if self.clear {
            items.retain_in((user, node, 0)..=(user, node, u64::MAX), |_, _| false)?;
        }
        for &seq in &self.remove {
            items.remove((user, node, seq))?;
        }
        if let Some((seq, id, xml)) = &self.insert {
            items.insert((user, node, *seq), (id.as_str(), xml.as_str()))?;
        }
        if let Some(config) = &self.config {
            let mut configs = txn.txn.open_table(USER_NODE_TO_CONFIG.0)?;
            match config {
                Some(c) => drop(configs.insert((user, node), c.as_str())?),
                None => drop(configs.remove((user, node))?),
            }
        }
        Ok(())
    }
}
