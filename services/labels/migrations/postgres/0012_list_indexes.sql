-- Every list filter has an index ending in its paging key, so a filtered page is an index
-- range scan at any depth. Labels page newest first by (created_at, label_id); drop-off
-- locations by (provider_code, location_id) within a country's active locations.
DROP INDEX return_labels_order;
DROP INDEX return_labels_buyer;
DROP INDEX return_labels_provider;
CREATE INDEX return_labels_by_time ON return_labels (created_at, label_id);
CREATE INDEX return_labels_by_buyer ON return_labels (buyer_id, created_at, label_id);
CREATE INDEX return_labels_by_seller ON return_labels (seller_id, created_at, label_id);
CREATE INDEX return_labels_by_provider ON return_labels (provider_code, created_at, label_id);
CREATE INDEX return_labels_by_order ON return_labels (order_id, created_at, label_id);
CREATE INDEX return_labels_by_dispute ON return_labels (dispute_id, created_at, label_id);
CREATE INDEX return_labels_by_status ON return_labels (status, created_at, label_id);

DROP INDEX drop_off_locations_country;
CREATE INDEX drop_off_locations_by_country
    ON drop_off_locations (country_code, active, provider_code, location_id);
CREATE INDEX drop_off_locations_by_postal_code
    ON drop_off_locations (country_code, active, postal_code, provider_code, location_id);
CREATE INDEX drop_off_locations_by_kind
    ON drop_off_locations (country_code, active, kind, provider_code, location_id);
