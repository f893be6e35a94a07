-- Same index as the Postgres migration of the same number.
CREATE INDEX fulfillments_course_run
    ON fulfillments (json_extract(spec, '$.line.product.course_run_key'), update_time DESC, fulfillment_id DESC);
