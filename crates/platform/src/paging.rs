//! The one paging policy of every list RPC: page sizes (a default and a maximum, the same in
//! every service) and opaque keyset page tokens.
//!
//! A token carries the sort key of the last row served, so the next page is an index range
//! scan that starts where the previous one stopped (`(created_at, id) > (last_key, last_id)`)
//! and costs the same a million rows deep as on page one; offsets would re-read every earlier
//! row. Tokens also carry a fingerprint of the filters they were issued for, so a token
//! replayed with other filters is refused rather than silently skipping rows.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use sqlx::Any;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::{Query, QueryAs};

use crate::error::ApiError;

/// Rows in a page when the request leaves `page_size` at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest page served; larger requests are served this many (AIP-158).
pub const MAX_PAGE_SIZE: u32 = 200;

/// Where a keyset page starts: after the row with this sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The sort column of the last row served (microseconds since the epoch).
    pub sort_key: i64,
    /// The tie-breaker: the last row's id.
    pub id: String,
}

/// A parsed page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Rows to return.
    pub size: u32,
    /// `None` for the first page.
    pub after: Option<Cursor>,
    filters: [u8; 8],
}

const TOKEN_VERSION: &str = "k1";

/// A short fingerprint of the filters a token is valid for.
fn fingerprint(filters: &[&str]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for filter in filters {
        hasher.update((filter.len() as u64).to_le_bytes());
        hasher.update(filter.as_bytes());
    }
    let digest = hasher.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn bad_token() -> ApiError {
    ApiError::invalid(
        "page_token",
        "is not a token from a previous page of this list with these filters",
    )
}

impl PageRequest {
    /// Reads `page_size` and `page_token` of a list request. `filters` are the request's
    /// filter values in a fixed order (empty strings for unset ones).
    pub fn parse(page_size: i32, page_token: &str, filters: &[&str]) -> Result<Self, ApiError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(ApiError::invalid("page_size", "must not be negative")),
            n => u32::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
        };
        let filters = fingerprint(filters);
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode(page_token, &filters)?)
        };
        Ok(PageRequest {
            size,
            after,
            filters,
        })
    }

    /// Rows to fetch: one more than the page, to know whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }

    /// Trims the one extra row fetched and returns the token of the next page (empty when
    /// this was the last), given how to read a row's sort key.
    pub fn finish<T>(&self, rows: &mut Vec<T>, key: impl Fn(&T) -> Cursor) -> String {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if rows.len() <= size {
            return String::new();
        }
        rows.truncate(size);
        rows.last()
            .map(|last| encode(&key(last), &self.filters))
            .unwrap_or_default()
    }
}

/// A value bound to a list statement built at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    Text(String),
    Int(i64),
}

impl From<&str> for SqlValue {
    fn from(text: &str) -> Self {
        SqlValue::Text(text.to_owned())
    }
}

impl From<i64> for SqlValue {
    fn from(int: i64) -> Self {
        SqlValue::Int(int)
    }
}

/// A list statement built from the filters a request gave, the one way every list query is
/// written: only the filters given appear in the WHERE clause (`($1 IS NULL OR col = $1)`
/// makes both planners scan the table), so each can use its own index, and
/// [`KeysetQuery::newest_first`] adds the keyset condition, the order and the limit.
#[derive(Debug, Clone)]
pub struct KeysetQuery {
    sql: String,
    params: Vec<SqlValue>,
    has_where: bool,
}

impl KeysetQuery {
    /// A statement starting with `select_from` (`SELECT <columns> FROM <table>`).
    pub fn select(select_from: impl Into<String>) -> Self {
        KeysetQuery {
            sql: select_from.into(),
            params: Vec::new(),
            has_where: false,
        }
    }

    /// The placeholder of `value`, bound as the next parameter.
    pub fn param(&mut self, value: impl Into<SqlValue>) -> String {
        self.params.push(value.into());
        format!("${}", self.params.len())
    }

    /// Adds `condition` (which may use placeholders from [`Self::param`]) to the WHERE clause.
    pub fn and(&mut self, condition: &str) {
        self.sql
            .push_str(if self.has_where { " AND " } else { " WHERE " });
        self.has_where = true;
        self.sql.push_str(condition);
    }

    /// Adds `column = value` when the filter was given.
    pub fn equals(&mut self, column: &str, value: Option<impl Into<SqlValue>>) {
        if let Some(value) = value {
            let placeholder = self.param(value);
            self.and(&format!("{column} = {placeholder}"));
        }
    }

    /// Newest first by `(sort_column, id_column)`, from after the page's cursor, one row
    /// more than the page. The cursor is one row-value comparison, which both backends take
    /// as the bound of an index range on those two columns (every list index ends in them):
    /// the scan starts at the cursor itself. Written as `sort <= k AND (sort < k OR id < i)`
    /// it bounded only the sort key, so PostgreSQL, which checks such a filter on the table
    /// row rather than the index entry, fetched every row sharing the cursor's sort key
    /// first (2,000 of them for page 100 of a list whose rows share an instant).
    pub fn newest_first(mut self, page: &PageRequest, sort_column: &str, id_column: &str) -> Self {
        if let Some(after) = &page.after {
            let key = self.param(after.sort_key);
            let id = self.param(after.id.as_str());
            self.and(&format!("({sort_column}, {id_column}) < ({key}, {id})"));
        }
        let limit = self.param(page.fetch_limit());
        self.sql.push_str(&format!(
            " ORDER BY {sort_column} DESC, {id_column} DESC LIMIT {limit}"
        ));
        self
    }

    /// Appends `tail` (an ORDER BY / LIMIT of a list with another order) as it is.
    pub fn push(&mut self, tail: &str) {
        self.sql.push_str(tail);
    }

    /// The statement's SQL, with `$n` placeholders.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// `query` (this statement, or one wrapping it such as an EXPLAIN) with every
    /// parameter bound in order.
    pub fn bind_to<'q>(
        &'q self,
        mut query: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        for param in &self.params {
            query = match param {
                SqlValue::Text(text) => query.bind(text.as_str()),
                SqlValue::Int(int) => query.bind(*int),
            };
        }
        query
    }

    /// The statement with its parameters bound.
    pub fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        self.bind_to(sqlx::query(&self.sql))
    }

    /// The statement with its parameters bound, read into typed rows.
    pub fn query_as<T>(&self) -> QueryAs<'_, Any, T, AnyArguments<'_>>
    where
        T: for<'r> sqlx::FromRow<'r, AnyRow>,
    {
        let mut query = sqlx::query_as(&self.sql);
        for param in &self.params {
            query = match param {
                SqlValue::Text(text) => query.bind(text.as_str()),
                SqlValue::Int(int) => query.bind(*int),
            };
        }
        query
    }
}

fn encode(cursor: &Cursor, filters: &[u8; 8]) -> String {
    let text = format!(
        "{TOKEN_VERSION}:{}:{}:{}",
        hex::encode(filters),
        cursor.sort_key,
        cursor.id
    );
    URL_SAFE_NO_PAD.encode(text)
}

fn decode(token: &str, filters: &[u8; 8]) -> Result<Cursor, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad_token())?;
    let text = String::from_utf8(bytes).map_err(|_| bad_token())?;
    let mut parts = text.splitn(4, ':');
    let (Some(version), Some(fingerprint), Some(at), Some(id)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_token());
    };
    if version != TOKEN_VERSION || fingerprint != hex::encode(filters) || id.is_empty() {
        return Err(bad_token());
    }
    let sort_key = at.parse().map_err(|_| bad_token())?;
    Ok(Cursor {
        sort_key,
        id: id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyset_query_names_only_the_filters_given_then_the_cursor_order_and_limit() {
        let mut query = KeysetQuery::select("SELECT id FROM t");
        query.equals("buyer_id", Some("b-1"));
        query.equals("state", None::<&str>);
        let first = PageRequest::parse(10, "", &[]).expect("page");
        let sql = query.clone().newest_first(&first, "created_at", "id");
        assert_eq!(
            sql.sql(),
            "SELECT id FROM t WHERE buyer_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let mut deep = first.clone();
        deep.after = Some(Cursor {
            sort_key: 5,
            id: "x".into(),
        });
        assert_eq!(
            query.newest_first(&deep, "created_at", "id").sql(),
            "SELECT id FROM t WHERE buyer_id = $1 AND (created_at, id) < ($2, $3) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        );
        let bare = KeysetQuery::select("SELECT id FROM t").newest_first(&first, "at", "id");
        assert_eq!(
            bare.sql(),
            "SELECT id FROM t ORDER BY at DESC, id DESC LIMIT $1"
        );
    }

    #[test]
    fn sizes_default_clamp_and_refuse_negative() {
        assert_eq!(
            PageRequest::parse(0, "", &[]).expect("default").size,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(
            PageRequest::parse(10_000, "", &[]).expect("clamped").size,
            MAX_PAGE_SIZE
        );
        assert!(PageRequest::parse(-1, "", &[]).is_err());
    }

    #[test]
    fn a_token_resumes_after_the_last_row_and_only_with_the_same_filters() {
        let first = PageRequest::parse(2, "", &["buyer-1", ""]).expect("first page");
        let mut rows = vec![(10, "a"), (20, "b"), (30, "c")];
        let token = first.finish(&mut rows, |(at, id)| Cursor {
            sort_key: *at,
            id: (*id).to_owned(),
        });
        assert_eq!(rows, vec![(10, "a"), (20, "b")]);
        let next = PageRequest::parse(2, &token, &["buyer-1", ""]).expect("next page");
        assert_eq!(
            next.after,
            Some(Cursor {
                sort_key: 20,
                id: "b".into()
            })
        );
        assert!(PageRequest::parse(2, &token, &["buyer-2", ""]).is_err());
        assert!(PageRequest::parse(2, "garbage!", &["buyer-1", ""]).is_err());
        let mut last = vec![(40, "d")];
        assert_eq!(next.finish(&mut last, |_| unreachable!()), "");
    }
}
