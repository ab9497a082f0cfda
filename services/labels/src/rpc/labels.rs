//! Issuing, reading, listing and voiding return labels.

use returns_domain::dispute::{PostagePayer, Role};
use returns_domain::ids::{LabelId, OrderId};
use returns_domain::returns::{self as rules, LabelStatus, PickupStatus, ReturnMethod};
use returns_domain::time::to_unix_micros;
use returns_platform::db::Tx;
use returns_platform::mutation::{RequestKey, mutate};
use returns_platform::paging::PageRequest;
use returns_platform::{ApiError, Caller};
use returns_proto::common::v1 as common;
use returns_proto::convert;
use returns_proto::disputes::v1 as disputes_pb;
use returns_proto::labels::v1 as pb;
use returns_proto::refunds::v1 as refunds_pb;

use super::wire::{self, label_message, new_label_message};
use super::{LabelGrpc, caller_carrier, outbox};
use crate::directory::Carrier;
use crate::store::labels::{LabelFilter, LabelRow};
use crate::store::{self, Encoded, counters};

/// What a CreateReturnLabel asks for, parsed.
struct LabelOrder<'a> {
    order_id: OrderId,
    dispute_id: &'a str,
    method: ReturnMethod,
    provider_code: &'a str,
    sender: common::Address,
}

/// A text filter: `None` when left empty.
fn given(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

impl LabelGrpc {
    pub(super) async fn create_label(
        &self,
        caller: &Caller,
        req: pb::CreateReturnLabelRequest,
    ) -> Result<pb::CreateReturnLabelResponse, ApiError> {
        let request_id = convert::request_id(&req.request_id)?;
        let order = &LabelOrder {
            order_id: convert::id("order_id", &req.order_id)?,
            dispute_id: &req.dispute_id,
            method: convert::enum_value("method", req.method)?,
            provider_code: &req.provider_code,
            sender: wire::address("sender", req.sender.as_ref())?,
        };
        let key = RequestKey::new("CreateReturnLabel", caller, request_id.as_str(), &req);
        let serial = &self.serial_for(caller, order).await?;
        mutate(&self.db, &self.context, &key, |mut tx| async move {
            let label = self.issue_label(&mut tx, caller, order, serial).await?;
            Ok((
                tx,
                pb::CreateReturnLabelResponse {
                    label: Some(new_label_message(&label)),
                },
            ))
        })
        .await
    }

    /// The tracking serial of the label `order` asks for, taken before its transaction (see
    /// [`counters::SerialBlocks`]): the carrier follows from the order's authorisation, read
    /// here without a lock and checked again inside. `None` when the request will be refused
    /// anyway (no authorisation the caller may use, a live label, no carrier), so a refused
    /// request takes no serial.
    async fn serial_for(
        &self,
        caller: &Caller,
        order: &LabelOrder<'_>,
    ) -> Result<Option<(String, u64)>, ApiError> {
        let mut conn = self.conn().await?;
        let auth = store::authorisations::load(&mut conn, &order.order_id, "").await?;
        conn.done();
        let Some(auth) = auth.filter(|a| {
            !a.has_label() && (!caller.is(Role::Buyer) || a.buyer_id.as_str() == caller.id)
        }) else {
            return Ok(None);
        };
        let Ok(carrier) = self.carrier_for(&auth.destination_country, order) else {
            return Ok(None);
        };
        let serial = self.serials.next(&self.db, &carrier.code).await?;
        Ok(Some((carrier.code.clone(), serial)))
    }

    /// CreateReturnLabel inside its transaction: the authorisation row is locked first (read
    /// with the buyer's quota use), then the buyer's quota row (counting a free return), in
    /// that order. The serial is `taken` before the transaction for the carrier it names; only
    /// when the carrier turns out to be another (the authorisation changed in between) is one
    /// taken from the carrier's row inside it. The label, its claim on the order and its
    /// messages are deferred writes: one statement with the request's key.
    async fn issue_label(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        order: &LabelOrder<'_>,
        taken: &Option<(String, u64)>,
    ) -> Result<LabelRow, ApiError> {
        let now = self.now();
        let order_id = &order.order_id;
        let month = rules::quota_month(now);
        let (auth, used) = store::authorisations::load_with_quota_used(
            tx,
            order_id,
            &month,
            self.db.for_update(),
        )
        .await?
        .filter(|(a, _)| !caller.is(Role::Buyer) || a.buyer_id.as_str() == caller.id)
        .ok_or_else(|| {
            ApiError::precondition(
                "return_not_authorised",
                format!(
                    "order {order_id} holds no return authorisation; a label is issued only \
                         after the return is authorised through its dispute"
                ),
            )
        })?;
        if !order.dispute_id.is_empty() && order.dispute_id != auth.dispute_id {
            return Err(ApiError::precondition(
                "return_not_authorised",
                format!(
                    "dispute {} did not authorise the return of order {order_id} (dispute {} did)",
                    order.dispute_id, auth.dispute_id
                ),
            ));
        }
        let ship_by = rules::ship_by(auth.ship_by()?, auth.authorised_at()?, &self.context.policy);
        if now > ship_by {
            return Err(ApiError::precondition(
                "ship_by_passed",
                format!(
                    "the return of order {order_id} had to be shipped by {}; it is now {}",
                    ship_by.format("%Y-%m-%d %H:%M UTC"),
                    now.format("%Y-%m-%d %H:%M UTC")
                ),
            ));
        }
        if let Some(existing) = &auth.label_id {
            return Err(ApiError::precondition(
                "one_label_per_order",
                format!("order {order_id} already has return label {existing}"),
            ));
        }
        // The return starts where the order was delivered, a fact disputes sent with the
        // authorisation; the buyer's address only has to agree with it. Letting the sender's
        // country choose would let a buyer pick another country's partner and postage.
        let country = auth.destination_country.clone();
        wire::in_delivery_country("sender.country_code", &order.sender.country_code, &country)?;
        let carrier = self.carrier_for(&country, order)?;
        let item_value = auth.item_value();
        let postage = self.postage_for(&country, Some(item_value.currency))?;
        let buyer = auth.buyer_id.as_str();
        let decision = self.decide_free_return(&auth, postage, used, now)?;
        // The decision above read the counter; the conditional update is what makes it hold
        // under concurrency: only a request that moves the counter below the limit is free.
        let limit = self.context.policy.free_returns_per_month();
        let free =
            decision.is_eligible() && counters::take_free_return(tx, buyer, &month, limit).await?;
        let paid_by = rules::postage_payer(auth.reason, auth.postage_payer()?, free);
        if paid_by == PostagePayer::Buyer && postage.currency != item_value.currency {
            // Buyer-paid postage is deducted from the refund, which is in the item's currency;
            // a label priced in another currency could never be deducted, so none is issued.
            return Err(ApiError::precondition(
                "buyer_postage_currency",
                format!(
                    "the buyer pays the return postage of order {order_id}, but the {} postage of \
                     {country} cannot be expressed in the item's currency {} to deduct it from \
                     the refund",
                    postage.currency, item_value.currency
                ),
            ));
        }
        let serial = match taken {
            Some((code, serial)) if *code == carrier.code => *serial,
            _ => counters::next_tracking_serial(tx, &carrier.code).await?,
        };
        let tracking_number = carrier.tracking_number(serial)?;
        let label_id = LabelId::new();
        let at = to_unix_micros(now);
        let label = LabelRow {
            label_id,
            order_id: auth.order_id.clone(),
            dispute_id: auth.dispute_id.clone(),
            buyer_id: auth.buyer_id.clone(),
            seller_id: auth.seller_id.clone(),
            method: order.method,
            provider_code: carrier.code.clone(),
            qr_payload: format!(
                "RETURNS-LABEL:1;label={label_id};carrier={};tracking={tracking_number}",
                carrier.code
            ),
            tracking_number,
            ship_by: to_unix_micros(ship_by),
            paid_by,
            postage_currency: postage.currency,
            postage_minor: postage.minor_units,
            free_return: i64::from(free),
            quota_month: free.then(|| month.clone()),
            status: LabelStatus::Created,
            status_at: None,
            sender: Encoded(order.sender.clone()),
            return_to: auth.return_to.clone(),
            inspection: None,
            created_at: at,
            updated_at: at,
            accepted_at: None,
            delivered_at: None,
            voided_at: None,
        };
        store::labels::insert(tx.writes(), &label);
        store::authorisations::claim_label(
            tx.writes(),
            &auth.order_id,
            &label_id,
            ApiError::precondition(
                "one_label_per_order",
                format!("order {order_id} already has a return label"),
            ),
        );
        outbox::return_event(
            tx.writes(),
            &label,
            disputes_pb::ReturnEventType::LabelCreated,
            now,
            &decision.reason,
        )?;
        if label.paid_by == PostagePayer::Buyer {
            // Refunds withholds the postage from the order's refunds not yet submitted. Seller-
            // or platform-paid labels cost the buyer nothing, so they send refunds nothing here.
            // A void of a buyer-paid label before use is rare and sends no reversal: the next
            // label's deduction replaces nothing, as refunds ignores a second RETURN_POSTAGE
            // deduction for the order.
            let deduction = refunds_pb::Deduction {
                kind: refunds_pb::DeductionKind::ReturnPostage.into(),
                amount: Some(postage.into()),
                note: format!("buyer-paid return postage ({})", label.provider_code),
            };
            outbox::return_progress(
                tx.writes(),
                &label,
                refunds_pb::ReturnProgress::LabelCreated,
                now,
                "",
                vec![deduction],
            )?;
        }
        Ok(label)
    }

    /// The partner the label goes through: the one asked for, or the country's first that
    /// offers the method; refused with what the country does offer.
    fn carrier_for(&self, country: &str, order: &LabelOrder<'_>) -> Result<&Carrier, ApiError> {
        let partners = self.partners(country)?;
        let found = if order.provider_code.is_empty() {
            partners.iter().find(|c| c.serves(order.method)).copied()
        } else {
            partners
                .iter()
                .find(|c| c.code == order.provider_code)
                .copied()
        };
        match found {
            Some(carrier) if carrier.serves(order.method) => Ok(carrier),
            _ => {
                let offered: Vec<String> = partners
                    .iter()
                    .map(|c| {
                        let kinds = if c.offers_pickup() {
                            "pickup"
                        } else {
                            "drop-off"
                        };
                        format!("{} ({kinds})", c.code)
                    })
                    .collect();
                Err(ApiError::precondition(
                    "return_method_unavailable",
                    format!(
                        "no {} partner{} in {country}; it offers: {}",
                        order.method.code().replace('_', "-").to_lowercase(),
                        if order.provider_code.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", order.provider_code)
                        },
                        offered.join(", ")
                    ),
                ))
            }
        }
    }

    pub(super) async fn get_label(
        &self,
        caller: &Caller,
        req: pb::GetReturnLabelRequest,
    ) -> Result<pb::GetReturnLabelResponse, ApiError> {
        let label_id: LabelId = convert::id("label_id", &req.label_id)?;
        let mut conn = self.conn().await?;
        let label = self.visible_label(&mut conn, caller, &label_id, "").await?;
        let label = label_message(&mut conn, &label).await?;
        conn.done();
        Ok(pb::GetReturnLabelResponse { label: Some(label) })
    }

    /// ListReturnLabels: the caller's labels (parties their own, carriers theirs, the
    /// platform every one), newest first, by keyset pages.
    pub(super) async fn list_labels(
        &self,
        caller: &Caller,
        req: pb::ListReturnLabelsRequest,
    ) -> Result<pb::ListReturnLabelsResponse, ApiError> {
        let status: Option<LabelStatus> = convert::optional_enum_value("status", req.status)?;
        let mut filter = LabelFilter {
            buyer_id: given(&req.buyer_id),
            seller_id: given(&req.seller_id),
            provider_code: given(&req.provider_code),
            order_id: given(&req.order_id),
            dispute_id: given(&req.dispute_id),
            status,
        };
        // The caller's scope: parties see their own labels, carriers their own. A filter
        // naming someone else matches nothing.
        let scope = match caller.role {
            Role::Buyer => Some((&mut filter.buyer_id, caller.id.as_str())),
            Role::Seller => Some((&mut filter.seller_id, caller.id.as_str())),
            Role::Carrier => Some((&mut filter.provider_code, caller_carrier(caller)?)),
            Role::Platform | Role::Arbiter => None,
        };
        let mut outside_scope = false;
        if let Some((scoped, own)) = scope {
            outside_scope = scoped.is_some_and(|asked| asked != own);
            *scoped = Some(own);
        }
        let page = PageRequest::parse(
            req.page_size,
            &req.page_token,
            &[
                filter.buyer_id.unwrap_or_default(),
                filter.seller_id.unwrap_or_default(),
                filter.provider_code.unwrap_or_default(),
                filter.order_id.unwrap_or_default(),
                filter.dispute_id.unwrap_or_default(),
                status.map_or("", |s| s.code()),
            ],
        )?;
        if outside_scope {
            return Ok(pb::ListReturnLabelsResponse::default());
        }
        let mut conn = self.conn().await?;
        let mut rows = store::labels::list(&mut conn, &filter, &page).await?;
        let next_page_token = page.finish(&mut rows, LabelRow::cursor);
        let mut labels = Vec::with_capacity(rows.len());
        for row in &rows {
            labels.push(label_message(&mut conn, row).await?);
        }
        conn.done();
        Ok(pb::ListReturnLabelsResponse {
            labels,
            next_page_token,
        })
    }

    /// VoidLabel: an unused label is withdrawn; the order may get a new one, a free return
    /// goes back to its month's quota and a booked pickup is cancelled.
    pub(super) async fn void(
        &self,
        caller: &Caller,
        req: pb::VoidLabelRequest,
    ) -> Result<pb::VoidLabelResponse, ApiError> {
        let request_id = convert::request_id(&req.request_id)?;
        let label_id = &convert::id::<LabelId>("label_id", &req.label_id)?;
        let reason = req.reason.as_str();
        let key = RequestKey::new("VoidLabel", caller, request_id.as_str(), &req);
        mutate(&self.db, &self.context, &key, |mut tx| async move {
            let now = self.now();
            let at = to_unix_micros(now);
            let mut label = self.locked_label(&mut tx, caller, label_id).await?;
            rules::check_void(label.status)?;
            label.status = LabelStatus::Voided;
            label.voided_at = Some(at);
            label.updated_at = at;
            store::labels::save(tx.writes(), &label);
            store::authorisations::release_label(&mut tx, &label.order_id, &label.label_id).await?;
            if let (true, Some(month)) = (label.is_free_return(), &label.quota_month) {
                // The free return is given back to the month it was counted in.
                counters::give_back_free_return(&mut tx, label.buyer_id.as_str(), month).await?;
            }
            store::pickups::close_open(&mut tx, &label.label_id, PickupStatus::Cancelled, at)
                .await?;
            // Refunds hears nothing: a buyer-paid label's postage deduction stays (a void
            // before use is rare, and the next label's deduction is ignored as a second one).
            outbox::return_event(
                tx.writes(),
                &label,
                disputes_pb::ReturnEventType::LabelVoided,
                now,
                reason,
            )?;
            let label = label_message(&mut tx, &label).await?;
            Ok((tx, pb::VoidLabelResponse { label: Some(label) }))
        })
        .await
    }
}
