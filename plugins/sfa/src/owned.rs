//! Records with an owner, listed as far as the user's reach goes: everyone's through an index
//! that does not start with the owner, or owner by owner through one that does.

use keel_sdk::storage::{Collection, Page};
use keel_sdk::{Error, Reach, Request};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Items a list answers with when the caller names no `limit`, and at most.
pub const LIST_LIMIT_DEFAULT: u32 = 50;
pub const LIST_LIMIT_MAX: u32 = 500;

/// `limit` and `after` of a list request.
pub struct Paging {
    pub limit: u32,
    pub after: Option<String>,
}

impl Paging {
    pub fn of(request: &Request) -> Result<Self, Error> {
        let limit = match request.query_param("limit") {
            None => LIST_LIMIT_DEFAULT,
            Some(text) => match text.parse::<u32>() {
                Ok(limit) if (1..=LIST_LIMIT_MAX).contains(&limit) => limit,
                _ => {
                    return Err(Error::invalid(
                        "limit",
                        format!("is a whole number from 1 to {LIST_LIMIT_MAX}"),
                    ));
                }
            },
        };
        Ok(Self {
            limit,
            after: request.query_param("after").filter(|a| !a.is_empty()),
        })
    }
}

/// One page of a list, as the API answers it.
#[derive(Debug, Serialize)]
pub struct Listed<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// How to find a collection's records by owner.
pub struct OwnerIndexes {
    /// An index whose first field is `owner`, then the fields of `equals`.
    pub by_owner: &'static str,
    /// An index over the fields of `equals` alone, for a reach over everyone.
    pub by_rest: &'static str,
}

/// Records within `reach` (and of `owner` when one is asked for) whose next index fields equal
/// `equals`, a page at a time. The cursor remembers which owner it was at.
pub fn list<T: Serialize + DeserializeOwned>(
    collection: Collection<T>,
    indexes: &OwnerIndexes,
    reach: &Reach,
    owner: Option<i64>,
    equals: &[Value],
    paging: &Paging,
) -> Result<Listed<T>, Error> {
    let owners: Vec<i64> = match (owner, reach.owners()) {
        (Some(owner), _) if reach.covers(Some(owner)) => vec![owner],
        (Some(_), _) => {
            return Ok(Listed {
                items: Vec::new(),
                next: None,
            });
        }
        (None, Some(owners)) => owners.to_vec(),
        (None, None) => {
            let page = collection.find(
                indexes.by_rest,
                equals,
                paging.after.as_deref(),
                paging.limit,
            )?;
            return Ok(listed(page, |next| next));
        }
    };
    let (mut position, mut inner) = match paging.after.as_deref() {
        None => (0, None),
        Some(cursor) => parse_cursor(cursor)?,
    };
    let mut items = Vec::new();
    while position < owners.len() {
        let mut fields = vec![Value::from(owners[position])];
        fields.extend_from_slice(equals);
        let wanted = paging.limit - items.len() as u32;
        let page = collection.find(indexes.by_owner, &fields, inner.as_deref(), wanted)?;
        items.extend(page.items.into_iter().map(|(_, record)| record));
        match page.next {
            Some(next) if items.len() as u32 >= paging.limit => {
                return Ok(Listed {
                    items,
                    next: Some(format!("{position}:{next}")),
                });
            }
            Some(next) => inner = Some(next),
            None => {
                position += 1;
                inner = None;
                if items.len() as u32 >= paging.limit && position < owners.len() {
                    return Ok(Listed {
                        items,
                        next: Some(format!("{position}:")),
                    });
                }
            }
        }
    }
    Ok(Listed { items, next: None })
}

fn listed<T>(page: Page<T>, cursor: impl Fn(String) -> String) -> Listed<T> {
    Listed {
        items: page.items.into_iter().map(|(_, record)| record).collect(),
        next: page.next.map(cursor),
    }
}

fn parse_cursor(cursor: &str) -> Result<(usize, Option<String>), Error> {
    let invalid = || Error::invalid("after", "is not a cursor this list gave out");
    let (position, inner) = cursor.split_once(':').ok_or_else(invalid)?;
    let position = position.parse().map_err(|_| invalid())?;
    Ok((position, (!inner.is_empty()).then(|| inner.to_owned())))
}

/// The user's reach under `permission`, or `Denied` naming it.
pub fn reach(permission: &str) -> Result<Reach, Error> {
    Reach::of(permission)
        .ok_or_else(|| Error::Denied(format!("this needs the permission {permission}")))
}

/// The owner a query string asks for (`owner=7`, or `owner=me`).
pub fn owner_param(request: &Request) -> Result<Option<i64>, Error> {
    match request.query_param("owner").as_deref() {
        None | Some("") => Ok(None),
        Some("me") => Ok(keel_sdk::user_id()),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid("owner", "is a user id or `me`")),
    }
}
