//! Reads: one dispute (GetDispute), a filtered list newest first (ListDisputes) and a
//! dispute's history oldest first (ListDisputeEvents), both paged by the platform's policy
//! (default 50, at most 200, keyset tokens bound to the filters).

use returns_domain::dispute::Role;
use returns_domain::ids::{OrderId, PartyId};
use returns_domain::negotiation::DisputeState;
use returns_platform::paging::PageRequest;
use returns_platform::{ApiError, Caller};
use returns_proto::convert;
use returns_proto::disputes::v1 as pb;
use tonic::Request;

use super::{DisputeGrpc, wire};
use crate::store::{self, ListFilter};

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn get_dispute(
    service: &DisputeGrpc,
    request: Request<pb::GetDisputeRequest>,
) -> Result<pb::GetDisputeResponse, ApiError> {
    let (_, _, dispute) = service.read(request).await?;
    Ok(pb::GetDisputeResponse {
        dispute: Some(wire::dispute(&dispute)),
    })
}

#[tracing::instrument(skip_all)]
pub(super) async fn list_disputes(
    service: &DisputeGrpc,
    request: Request<pb::ListDisputesRequest>,
) -> Result<pb::ListDisputesResponse, ApiError> {
    let caller = Caller::of(&request)?;
    let req = request.into_inner();
    let buyer = convert::optional_id::<PartyId>("buyer_id", &req.buyer_id)?;
    let seller = convert::optional_id::<PartyId>("seller_id", &req.seller_id)?;
    let order = convert::optional_id::<OrderId>("order_id", &req.order_id)?;
    let state = convert::optional_enum_value::<DisputeState>("state", req.state)?;
    let mut filter = ListFilter {
        buyer_id: buyer.as_ref().map(PartyId::as_str),
        seller_id: seller.as_ref().map(PartyId::as_str),
        order_id: order.as_ref().map(OrderId::as_str),
        state,
    };
    // Parties only ever list their own disputes, whatever the filters ask for.
    let own = match caller.role {
        Role::Buyer => Some(&mut filter.buyer_id),
        Role::Seller => Some(&mut filter.seller_id),
        _ => None,
    };
    if let Some(party) = own {
        if party.is_some_and(|asked| asked != caller.id) {
            return Ok(pb::ListDisputesResponse::default());
        }
        *party = Some(&caller.id);
    }
    let page = PageRequest::parse(req.page_size, &req.page_token, &filter.token_binding())?;
    let mut disputes = store::list_disputes(&service.db, &filter, &page).await?;
    let next_page_token = page.finish(&mut disputes, store::list_cursor);
    Ok(pb::ListDisputesResponse {
        disputes: disputes.iter().map(wire::dispute).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip_all, fields(dispute_id))]
pub(super) async fn list_dispute_events(
    service: &DisputeGrpc,
    request: Request<pb::ListDisputeEventsRequest>,
) -> Result<pb::ListDisputeEventsResponse, ApiError> {
    let (_, req, dispute) = service.read(request).await?;
    let id = dispute.id.to_string();
    let page = PageRequest::parse(req.page_size, &req.page_token, &[&id])?;
    let mut history = store::list_events(&service.db, &dispute.id, &page).await?;
    let next_page_token = page.finish(&mut history, store::event_cursor);
    Ok(pb::ListDisputeEventsResponse {
        events: history
            .iter()
            .map(|stored| wire::event(&stored.event, &id, stored.sequence))
            .collect(),
        next_page_token,
    })
}
