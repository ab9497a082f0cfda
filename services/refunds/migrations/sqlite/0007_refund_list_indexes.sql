-- Every ListRefunds filter has an index ending in the keyset key (created_at, refund_id), so
-- a filtered page, newest first, is an index range scan at any depth; the last index serves
-- the unfiltered list.
DROP INDEX refunds_by_order;
DROP INDEX refunds_by_buyer;
CREATE INDEX refunds_by_order ON refunds (order_id, created_at, refund_id);
CREATE INDEX refunds_by_buyer ON refunds (buyer_id, created_at, refund_id);
CREATE INDEX refunds_by_dispute ON refunds (dispute_id, created_at, refund_id);
CREATE INDEX refunds_by_status ON refunds (status, created_at, refund_id);
CREATE INDEX refunds_by_created ON refunds (created_at, refund_id);
