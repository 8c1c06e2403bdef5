//! The plugin's own records: typed collections of JSON values under string keys, written in
//! the call's transaction. Needs the capability `storage`.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::keel::platform::storage as host;

/// Items fetched per host call when iterating.
const PAGE_ITEMS: u32 = 500;

/// One page of an index query: `(key, record)` pairs, and where the next page starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<(String, T)>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// A collection of records of type `T`.
#[derive(Debug, Clone, Copy)]
pub struct Collection<T> {
    name: &'static str,
    records: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Collection<T> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            records: PhantomData,
        }
    }

    /// The collection's name, as the manifest declares its indexes.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    pub fn put(&self, key: &str, value: &T) -> Result<(), Error> {
        let json = serde_json::to_string(value)
            .map_err(|e| Error::Internal(format!("serializing a record: {e}")))?;
        host::put(self.name, key, &json)
    }

    pub fn get(&self, key: &str) -> Result<Option<T>, Error> {
        host::get(self.name, key)?
            .map(|json| decode(self.name, &json))
            .transpose()
    }

    /// The records under `keys`, in their order, in one host call (at most 1,000 keys).
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<T>>, Error> {
        host::get_many(self.name, keys)?
            .into_iter()
            .map(|json| json.map(|json| decode(self.name, &json)).transpose())
            .collect()
    }

    /// The record under `key`, reserved until the call ends: a concurrent call asking for it
    /// waits, then reads what this one wrote. For read-modify-write; reserve several keys in
    /// one order so that two calls never wait for each other. Not in GET or HEAD calls.
    pub fn get_for_update(&self, key: &str) -> Result<Option<T>, Error> {
        host::get_for_update(self.name, key)?
            .map(|json| decode(self.name, &json))
            .transpose()
    }

    /// Removes the record; true when there was one.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        host::delete(self.name, key)
    }

    /// Records with keys from `start` (inclusive) to `end` (exclusive), in key order, at most
    /// `limit` after the key `after`.
    pub fn range(
        &self,
        start: Option<&str>,
        end: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, T)>, Error> {
        let range = host::KeyRange {
            start: start.map(str::to_owned),
            end: end.map(str::to_owned),
            after: after.map(str::to_owned),
            limit: Some(limit),
        };
        host::query(self.name, &range)?
            .into_iter()
            .map(|item| Ok((item.key, decode(self.name, &item.value)?)))
            .collect()
    }

    /// Records whose index `index` starts with the values `equals`, in index order; `after`
    /// is the `next` of the previous page.
    pub fn find(
        &self,
        index: &str,
        equals: &[serde_json::Value],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<T>, Error> {
        self.find_range(index, equals, None, None, false, after, limit)
    }

    /// Like [`Collection::find`], with the field after `equals` in [`from`, `to`).
    #[allow(clippy::too_many_arguments, reason = "mirrors the index query")]
    pub fn find_range(
        &self,
        index: &str,
        equals: &[serde_json::Value],
        from: Option<&serde_json::Value>,
        to: Option<&serde_json::Value>,
        descending: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<T>, Error> {
        let query = host::IndexQuery {
            index: index.to_owned(),
            equals: equals.iter().map(ToString::to_string).collect(),
            from: from.map(ToString::to_string),
            to: to.map(ToString::to_string),
            descending,
            after: after.map(str::to_owned),
            limit: Some(limit),
        };
        let page = host::find(self.name, &query)?;
        let items = page
            .items
            .into_iter()
            .map(|item| Ok((item.key, decode(self.name, &item.value)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// Every record, in key order, fetched a page at a time.
    pub fn all(&self) -> Result<Vec<(String, T)>, Error> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map(|(key, _): &(String, T)| key.clone());
            let page = self.range(None, None, after.as_deref(), PAGE_ITEMS)?;
            let done = page.len() < PAGE_ITEMS as usize;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }
}

fn decode<T: DeserializeOwned>(collection: &str, json: &str) -> Result<T, Error> {
    serde_json::from_str(json).map_err(|e| {
        Error::Internal(format!(
            "a record of {collection} does not have the expected shape: {e}"
        ))
    })
}

/// Where the plugin's numbering sequences live.
const SEQUENCES: Collection<u64> = Collection::new("sequences");

/// The next number of a sequence without gaps, e.g. quote numbers: 1, then 2 … It is taken in
/// the call's transaction, so a call that fails gives its number back, and concurrent calls
/// take theirs one after the other (the sequence is read with `get_for_update`).
pub fn next_number(sequence: &str) -> Result<u64, Error> {
    Ok(*next_numbers(sequence, 1)?.start())
}

/// The next `count` numbers of a sequence at once (at least one), e.g. for a batch of
/// documents: one read and one write of the sequence instead of one per document. The same
/// guarantees as [`next_number`]; numbers the call does not use are gaps, so take only as
/// many as it will use.
pub fn next_numbers(sequence: &str, count: u64) -> Result<std::ops::RangeInclusive<u64>, Error> {
    let count = count.max(1);
    let first = SEQUENCES.get_for_update(sequence)?.unwrap_or(0) + 1;
    let last = first + count - 1;
    SEQUENCES.put(sequence, &last)?;
    Ok(first..=last)
}
