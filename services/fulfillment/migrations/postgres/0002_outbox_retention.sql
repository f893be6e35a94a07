-- Published outbox rows are deleted after the retention window (kit::outbox::Relay::prune):
-- this index finds them without reading the rows still kept.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
