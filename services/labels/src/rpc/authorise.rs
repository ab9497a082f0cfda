//! Authorising a return (the message disputes sends when a return is agreed) and quoting the
//! buyer's options for it: partners, postage and whether the return is free.

use returns_domain::dispute::{DisputeReason, PostagePayer, Role};
use returns_domain::ids::{OrderId, PartyId};
use returns_domain::money::{CurrencyCode, Money};
use returns_domain::returns::{self as rules, FreeReturnDecision, FreeReturnFacts};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::db::retry_conflicts;
use returns_platform::outbox::accept_once;
use returns_platform::{ApiError, Caller};
use returns_proto::convert::{self, WireEnum, timestamp_to_proto};
use returns_proto::labels::v1 as pb;

use super::LabelGrpc;
use super::wire::{self, authorisation_message, carrier_message, country_code};
use crate::directory::Carrier;
use crate::store::authorisations::{AuthorisationRow, NewAuthorisation};
use crate::store::{self, counters};

/// The inbox source of authorisations: the disputes service's relay.
const SOURCE: &str = "disputes";

impl LabelGrpc {
    /// AuthoriseReturn: a relayed message, applied once per `message_id` (the inbox, not a
    /// request key: a redelivery answers with the stored authorisation whatever it carries).
    pub(super) async fn authorise(
        &self,
        req: pb::AuthoriseReturnRequest,
    ) -> Result<pb::AuthoriseReturnResponse, ApiError> {
        convert::external_id("message_id", &req.message_id)?;
        let order_id: OrderId = convert::id("order_id", &req.order_id)?;
        let dispute_id = convert::external_id("dispute_id", &req.dispute_id)?;
        let buyer_id: PartyId = convert::id("buyer_id", &req.buyer_id)?;
        let seller_id: PartyId = convert::id("seller_id", &req.seller_id)?;
        let destination = country_code("destination_country", &req.destination_country)?;
        let item_value = convert::money("item_value", req.item_value.as_ref())?;
        let delivered_at = convert::optional_timestamp("delivered_at", req.delivered_at.as_ref())?;
        let ship_by = convert::optional_timestamp("ship_by", req.ship_by.as_ref())?;
        let reason: DisputeReason = convert::enum_value("reason", req.reason)?;
        let payer: Option<PostagePayer> =
            convert::optional_enum_value("postage_payer", req.postage_payer)?;
        let return_to = wire::optional_address("return_to", req.return_to.as_ref())?;
        let new = NewAuthorisation {
            order_id: &order_id,
            dispute_id: &dispute_id,
            buyer_id: &buyer_id,
            seller_id: &seller_id,
            destination_country: &destination,
            item_value,
            delivered_at: delivered_at.map(to_unix_micros),
            free_return: req.free_return,
            postage_payer: payer,
            ship_by: ship_by.map(to_unix_micros),
            reason,
            return_to: return_to.as_ref(),
            authorised_at: 0,
        };
        let authorisation = retry_conflicts(|| async {
            let now = self.now();
            let mut tx = self.db.begin_write().await?;
            let current =
                store::authorisations::load(&mut tx, &order_id, self.db.for_update()).await?;
            let first = accept_once(&mut tx, &req.message_id, SOURCE, now).await?;
            // A redelivery, or a new authorisation while a label is live, changes nothing:
            // the live label already carries the terms it was issued under.
            let stored = if first && !current.as_ref().is_some_and(AuthorisationRow::has_label) {
                let new = NewAuthorisation {
                    authorised_at: to_unix_micros(now),
                    ..new.clone()
                };
                let mut writes = tx.take_writes();
                store::authorisations::replace(&mut writes, &new);
                writes.execute(&mut tx).await?;
                // What was just written, without reading it back.
                new.row()
            } else {
                current
                    .ok_or_else(|| ApiError::not_found("return authorisation", order_id.as_str()))?
            };
            tx.commit().await?;
            Ok(stored)
        })
        .await?;
        Ok(pb::AuthoriseReturnResponse {
            authorisation: Some(authorisation_message(&authorisation)?),
        })
    }

    /// ListReturnOptions: for an authorised order, its delivery country's partners and the
    /// free-return decision; without one, the directory of the asked country and the buyer's
    /// quota.
    pub(super) async fn return_options(
        &self,
        caller: &Caller,
        req: pb::ListReturnOptionsRequest,
    ) -> Result<pb::ListReturnOptionsResponse, ApiError> {
        let order_id: OrderId = convert::id("order_id", &req.order_id)?;
        let now = self.now();
        let mut conn = self.conn().await?;
        let auth = match store::authorisations::load(&mut conn, &order_id, "").await? {
            Some(a) if caller.is(Role::Buyer) && a.buyer_id.as_str() != caller.id => {
                return Err(ApiError::not_found(
                    "return authorisation",
                    order_id.as_str(),
                ));
            }
            other => other,
        };
        // An authorised order is quoted for its delivery country only, the country its label
        // will be issued in; without an authorisation the caller is browsing the directory.
        let country = match (&auth, req.country_code.is_empty()) {
            (Some(a), true) => a.destination_country.clone(),
            (Some(a), false) => {
                let asked = country_code("country_code", &req.country_code)?;
                wire::in_delivery_country("country_code", &asked, &a.destination_country)?;
                asked
            }
            (None, true) => {
                return Err(ApiError::invalid(
                    "country_code",
                    "is required when the order holds no return authorisation",
                ));
            }
            (None, false) => country_code("country_code", &req.country_code)?,
        };
        let partners = self.partners(&country)?;
        let postage = self.postage_for(&country, auth.as_ref().map(|a| a.item_value().currency))?;
        let month = rules::quota_month(now);
        let mut response = pb::ListReturnOptionsResponse {
            order_id: order_id.to_string(),
            country_code: country.clone(),
            drop_off_partners: partners
                .iter()
                .filter(|c| c.offers_drop_off())
                .map(|c| carrier_message(&self.directory, c))
                .collect(),
            pickup_couriers: partners
                .iter()
                .filter(|c| c.offers_pickup())
                .map(|c| carrier_message(&self.directory, c))
                .collect(),
            postage: Some(postage.into()),
            ..Default::default()
        };
        match auth {
            Some(auth) => {
                let used = counters::quota_used(&mut conn, auth.buyer_id.as_str(), &month).await?;
                let decision = self.decide_free_return(&auth, postage, used, now)?;
                let payer = rules::postage_payer(
                    auth.reason,
                    auth.postage_payer()?,
                    decision.is_eligible(),
                );
                response.free_return_eligibility = decision.eligibility.to_wire();
                response.free_return_reason = decision.reason;
                response.free_returns_left_this_month =
                    i32::try_from(decision.left_this_month).unwrap_or(0);
                response.paid_by = payer.to_wire();
                response.return_authorised = true;
                response.ship_by = Some(timestamp_to_proto(rules::ship_by(
                    auth.ship_by()?,
                    auth.authorised_at()?,
                    &self.context.policy,
                )));
            }
            None => {
                response.free_return_reason = format!(
                    "order {order_id} holds no return authorisation yet; open a return dispute first"
                );
                if caller.is(Role::Buyer) {
                    let used = counters::quota_used(&mut conn, &caller.id, &month).await?;
                    let limit = self.context.policy.free_returns_per_month();
                    response.free_returns_left_this_month =
                        i32::try_from(limit.saturating_sub(used)).unwrap_or(0);
                }
            }
        }
        conn.done();
        Ok(response)
    }

    /// The country's flat postage, in the item's currency when the FX table can say (so a
    /// buyer-paid postage can be deducted from the refund), otherwise the local currency.
    pub(super) fn postage_for(
        &self,
        country: &str,
        item_currency: Option<CurrencyCode>,
    ) -> Result<Money, ApiError> {
        let country = self.directory.country(country).ok_or_else(|| {
            ApiError::precondition(
                "no_return_partner",
                format!("there is no return partner in country {country}"),
            )
        })?;
        let local = country.postage();
        Ok(item_currency
            .and_then(|currency| rules::convert_via_usd(&local, currency, &self.fx).ok())
            .unwrap_or(local))
    }

    /// The partners of a country, refusing a country the directory does not serve.
    pub(super) fn partners(&self, country: &str) -> Result<Vec<&Carrier>, ApiError> {
        let partners: Vec<_> = self.directory.in_country(country).collect();
        if partners.is_empty() {
            return Err(ApiError::precondition(
                "no_return_partner",
                format!(
                    "there is no drop-off partner or pickup courier in country {country}; \
                     served countries: {}",
                    self.directory
                        .countries()
                        .map(|c| c.code.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(partners)
    }

    /// Whether the return is free, from the authorisation and the buyer's quota so far.
    pub(super) fn decide_free_return(
        &self,
        auth: &AuthorisationRow,
        postage: Money,
        used: u32,
        now: Timestamp,
    ) -> Result<FreeReturnDecision, ApiError> {
        let facts = FreeReturnFacts {
            free_return_listing: auth.is_free_return_listing(),
            delivered_at: auth.delivered_at()?,
            order_has_label: auth.has_label(),
            item_value: auth.item_value(),
            postage,
            used_this_month: used,
        };
        Ok(rules::free_return_eligibility(
            &facts,
            now,
            &self.context.policy,
            &self.fx,
        )?)
    }
}
