-- ListDisputes pages by the platform's keyset (created_at, dispute_id), newest first: every
-- filter has an index ending in that key, so a filtered page at any depth is one index range
-- scan, and the unfiltered list has its own.
DROP INDEX disputes_by_buyer;
DROP INDEX disputes_by_seller;
DROP INDEX disputes_by_order;
DROP INDEX disputes_by_state;
CREATE INDEX disputes_by_buyer ON disputes (buyer_id, created_at, dispute_id);
CREATE INDEX disputes_by_seller ON disputes (seller_id, created_at, dispute_id);
CREATE INDEX disputes_by_order ON disputes (order_id, created_at, dispute_id);
CREATE INDEX disputes_by_state ON disputes (state, created_at, dispute_id);
CREATE INDEX disputes_by_created ON disputes (created_at, dispute_id);
