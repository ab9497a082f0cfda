//! `drop_off_locations`: the places carriers publish where buyers hand in parcels, listed
//! by country in (provider, location) order; coordinates in microdegrees.

use returns_domain::returns::LocationKind;
use returns_platform::ApiError;
use returns_platform::db::Tx;
use returns_proto::common::v1 as common;
use sqlx::AnyConnection;

use super::Encoded;
use returns_platform::paging::KeysetQuery;

const COLUMNS: &str = "provider_code, location_id, country_code, name, kind, address, \
     postal_code, latitude_e6, longitude_e6, opening_hours, active, updated_at";

/// A drop-off location as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LocationRow {
    pub provider_code: String,
    pub location_id: String,
    pub country_code: String,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub kind: LocationKind,
    pub address: Encoded<common::Address>,
    /// Upper case without spaces or hyphens, as searched.
    pub postal_code: String,
    pub latitude_e6: i64,
    pub longitude_e6: i64,
    pub opening_hours: String,
    pub active: i64,
    pub updated_at: i64,
}

/// Whether the carrier already published `location_id` (locked for the upsert that follows).
pub async fn exists(
    tx: &mut Tx,
    provider_code: &str,
    location_id: &str,
    lock: &str,
) -> Result<bool, ApiError> {
    let found: Option<String> = sqlx::query_scalar(&format!(
        "SELECT location_id FROM drop_off_locations \
         WHERE provider_code = $1 AND location_id = $2{lock}"
    ))
    .bind(provider_code)
    .bind(location_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(found.is_some())
}

/// Inserts the location, or replaces every field of the one with its key.
pub async fn upsert(tx: &mut Tx, location: &LocationRow) -> Result<(), ApiError> {
    sqlx::query(&format!(
        "INSERT INTO drop_off_locations ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (provider_code, location_id) DO UPDATE SET \
         country_code = excluded.country_code, name = excluded.name, kind = excluded.kind, \
         address = excluded.address, postal_code = excluded.postal_code, \
         latitude_e6 = excluded.latitude_e6, longitude_e6 = excluded.longitude_e6, \
         opening_hours = excluded.opening_hours, active = excluded.active, \
         updated_at = excluded.updated_at"
    ))
    .bind(&location.provider_code)
    .bind(&location.location_id)
    .bind(&location.country_code)
    .bind(&location.name)
    .bind(location.kind.code())
    .bind(location.address.to_bytes())
    .bind(&location.postal_code)
    .bind(location.latitude_e6)
    .bind(location.longitude_e6)
    .bind(&location.opening_hours)
    .bind(location.active)
    .bind(location.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The filters of a location search: a country's active locations, optionally narrowed.
#[derive(Debug, Clone, Copy)]
pub struct LocationFilter<'a> {
    pub country_code: &'a str,
    /// Normalised like [`LocationRow::postal_code`].
    pub postal_code: Option<&'a str>,
    pub provider_code: Option<&'a str>,
    pub kind: Option<LocationKind>,
}

/// Where a page of locations starts: after this (provider, location) key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocationKey<'a> {
    pub provider_code: &'a str,
    pub location_id: &'a str,
}

/// Matching locations in (provider, location) order after `after`, at most `limit` of them
/// (all of them when `None`: a nearest-first search ranks the whole set).
pub async fn list(
    conn: &mut AnyConnection,
    filter: &LocationFilter<'_>,
    after: Option<LocationKey<'_>>,
    limit: Option<i64>,
) -> Result<Vec<LocationRow>, ApiError> {
    Ok(list_query(filter, after, limit)
        .query_as()
        .fetch_all(conn)
        .await?)
}

/// The SQL of a location search; every filter has an index that ends in the paging key.
pub(crate) fn list_query(
    filter: &LocationFilter<'_>,
    after: Option<LocationKey<'_>>,
    limit: Option<i64>,
) -> KeysetQuery {
    let mut query = KeysetQuery::select(format!("SELECT {COLUMNS} FROM drop_off_locations"));
    query.equals("country_code", Some(filter.country_code));
    query.and("active = 1");
    query.equals("postal_code", filter.postal_code);
    query.equals("provider_code", filter.provider_code);
    query.equals("kind", filter.kind.map(|kind| kind.code()));
    if let Some(after) = after {
        // Ascending by (provider, location): a list without a point has no time order. The
        // cursor is one row value, which bounds the index range; within one provider's
        // locations (the filter fixes it, and the page token is bound to the filter) the
        // location alone does, as SQLite does not use a row value whose first column an
        // equality already fixed.
        let location = query.param(after.location_id);
        if filter.provider_code == Some(after.provider_code) {
            query.and(&format!("location_id > {location}"));
        } else {
            let provider = query.param(after.provider_code);
            query.and(&format!(
                "(provider_code, location_id) > ({provider}, {location})"
            ));
        }
    }
    query.push(" ORDER BY provider_code, location_id");
    if let Some(limit) = limit {
        let limit = query.param(limit);
        query.push(&format!(" LIMIT {limit}"));
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::database;
    use returns_platform::testing::{is_index_range, plan_starts_at_cursor, query_plan};

    fn location(
        provider: &str,
        id: &str,
        postal: &str,
        kind: LocationKind,
        active: bool,
    ) -> LocationRow {
        LocationRow {
            provider_code: provider.to_owned(),
            location_id: id.to_owned(),
            country_code: "GB".to_owned(),
            name: format!("{provider} {id}"),
            kind,
            address: Encoded(common::Address {
                name: id.to_owned(),
                postal_code: postal.to_owned(),
                country_code: "GB".to_owned(),
                ..Default::default()
            }),
            postal_code: postal.to_owned(),
            latitude_e6: 51_500_000,
            longitude_e6: -120_000,
            opening_hours: String::new(),
            active: i64::from(active),
            updated_at: 1,
        }
    }

    #[tokio::test]
    async fn filtered_searches_page_by_provider_and_id_and_an_upsert_replaces() {
        let (db, _target) = database().await;
        let rows = [
            location("ROYAL_MAIL", "b", "N19GU", LocationKind::PostOffice, true),
            location("ROYAL_MAIL", "a", "N19GU", LocationKind::PostOffice, true),
            location("EVRI", "z", "N19GU", LocationKind::ParcelShop, true),
            location("EVRI", "y", "SW1A1AA", LocationKind::ParcelShop, true),
            location("INPOST", "x", "N19GU", LocationKind::Locker, false),
            location("ROYAL_MAIL", "c", "SW1A1AA", LocationKind::Locker, true),
        ];
        let mut tx = db.begin_write().await.expect("begin");
        for row in &rows {
            upsert(&mut tx, row).await.expect("insert");
        }
        // The same key again replaces the row rather than adding one.
        let moved = LocationRow {
            postal_code: "E11AA".into(),
            ..rows[0].clone()
        };
        assert!(
            exists(&mut tx, "ROYAL_MAIL", "b", "")
                .await
                .expect("exists")
        );
        upsert(&mut tx, &moved).await.expect("replace");
        tx.commit().await.expect("commit");

        let mut conn = db.pool().acquire().await.expect("connection");
        let key = |row: &LocationRow| (row.provider_code.clone(), row.location_id.clone());
        let cases = [
            (
                LocationFilter {
                    country_code: "GB",
                    postal_code: None,
                    provider_code: None,
                    kind: None,
                },
                vec![
                    ("EVRI", "y"),
                    ("EVRI", "z"),
                    ("ROYAL_MAIL", "a"),
                    ("ROYAL_MAIL", "b"),
                    ("ROYAL_MAIL", "c"),
                ],
            ),
            (
                LocationFilter {
                    country_code: "GB",
                    postal_code: Some("N19GU"),
                    provider_code: None,
                    kind: None,
                },
                vec![("EVRI", "z"), ("ROYAL_MAIL", "a")],
            ),
            (
                LocationFilter {
                    country_code: "GB",
                    postal_code: None,
                    provider_code: Some("ROYAL_MAIL"),
                    kind: Some(LocationKind::PostOffice),
                },
                vec![("ROYAL_MAIL", "a"), ("ROYAL_MAIL", "b")],
            ),
            (
                LocationFilter {
                    country_code: "FR",
                    postal_code: None,
                    provider_code: None,
                    kind: None,
                },
                vec![],
            ),
        ];
        for (filter, expected) in cases {
            let all: Vec<_> = list(&mut conn, &filter, None, None)
                .await
                .expect("all")
                .iter()
                .map(key)
                .collect();
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(p, l)| (p.to_owned(), l.to_owned()))
                .collect();
            assert_eq!(all, expected, "{filter:?}");
            // Two at a time, each page starting after the last key served.
            let mut paged = Vec::new();
            let mut after: Option<(String, String)> = None;
            loop {
                let position = after.as_ref().map(|(p, l)| LocationKey {
                    provider_code: p,
                    location_id: l,
                });
                let page = list(&mut conn, &filter, position, Some(2))
                    .await
                    .expect("page");
                paged.extend(page.iter().map(key));
                match page.last() {
                    Some(last) if page.len() == 2 => after = Some(key(last)),
                    _ => break,
                }
            }
            assert_eq!(paged, expected, "{filter:?} in pages");
        }
    }

    #[tokio::test]
    async fn every_location_filter_is_served_by_an_index_at_any_depth() {
        let (db, _target) = database().await;
        let after = Some(LocationKey {
            provider_code: "EVRI",
            location_id: "m",
        });
        let base = LocationFilter {
            country_code: "GB",
            postal_code: None,
            provider_code: None,
            kind: None,
        };
        let filters = [
            base,
            LocationFilter {
                postal_code: Some("N19GU"),
                ..base
            },
            LocationFilter {
                provider_code: Some("EVRI"),
                ..base
            },
            LocationFilter {
                kind: Some(LocationKind::Locker),
                ..base
            },
        ];
        for filter in &filters {
            for position in [None, after] {
                let query = list_query(filter, position, Some(21));
                let plan = query_plan(&db, &query).await;
                assert!(is_index_range(&plan), "{}\n{plan}", query.sql());
                let one_provider = filter.provider_code.is_some();
                if position.is_some() && !one_provider {
                    assert!(
                        plan_starts_at_cursor(&plan, "provider_code", "location_id"),
                        "{} does not start the range at the cursor:\n{plan}",
                        query.sql()
                    );
                }
                if position.is_some() && one_provider {
                    let bounded = plan.lines().any(|line| {
                        (line.starts_with("SEARCH ") || line.contains("Index Cond"))
                            && (line.contains("location_id>") || line.contains("location_id >"))
                    });
                    assert!(
                        bounded,
                        "{} does not start the range at the cursor:\n{plan}",
                        query.sql()
                    );
                }
            }
        }
    }
}
