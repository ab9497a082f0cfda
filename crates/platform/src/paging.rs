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
