use std::sync::OnceLock;

use proptest::prelude::*;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage as _, Value};
use serde_json::json;

use super::*;
use crate::template::Binding;

fn mesh(name: &str) -> MessageDescriptor {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    let pool = POOL.get_or_init(|| proto::descriptor_pool().expect("the mesh's descriptors decode"));
    pool.get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the mesh"))
}

/// `gateway.test.v1.Probe` from tests/protos: the forms the mesh lacks.
fn probe() -> MessageDescriptor {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");
        let files = protox::compile(["transcode_probe.proto"], [dir]).expect("the test proto compiles");
        DescriptorPool::from_file_descriptor_set(files).expect("the test descriptors are valid")
    });
    pool.get_message_by_name("gateway.test.v1.Probe").expect("Probe is described")
}

fn bind(field: &str, value: &str) -> Binding {
    Binding { field: field.into(), value: value.into() }
}

/// The fields a message has set, proto names, defaults left out.
fn set_fields(message: &DynamicMessage) -> serde_json::Value {
    let options = SerializeOptions::new().use_proto_field_name(true);
    message.serialize_with_options(serde_json::value::Serializer, &options).expect("serializes")
}

fn query(descriptor: &MessageDescriptor, query: &str) -> Result<DynamicMessage, TranscodeError> {
    request_message(descriptor, "", &[], Some(query), b"")
}

fn refused(result: Result<DynamicMessage, TranscodeError>) -> TranscodeError {
    match result {
        Ok(message) => panic!("expected an error, got {}", set_fields(&message)),
        Err(error) => error,
    }
}

// ---- rule forms -------------------------------------------------------

#[test]
fn body_star_reads_the_whole_order_and_the_path_fills_order_number() {
    let body = br#"{
        "orderId": "0f6c", "order_version": 3, "dateplaced": "2026-01-01T10:00:00Z",
        "learner": {"lmsUserId": "4242", "lms_username": "ada"}, "emailOptIn": true,
        "lineItems": [{"lineItemId": "1", "courseRun": {"courseRunKey": "course-v1:X+Y+Z", "mode": "verified"},
                       "price": {"currencyCode": "USD", "amount": "49.00"}}]
    }"#;
    let body = std::str::from_utf8(body).unwrap().replace("dateplaced", "datePlaced");
    let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
    let message =
        request_message(&descriptor, "*", &[bind("order_number", "EDX-100042")], None, body.as_bytes()).unwrap();
    assert_eq!(
        set_fields(&message),
        json!({
            "order_number": "EDX-100042", "order_id": "0f6c", "order_version": "3",
            "date_placed": "2026-01-01T10:00:00Z",
            "learner": {"lms_user_id": "4242", "lms_username": "ada"}, "email_opt_in": true,
            "line_items": [{"line_item_id": "1",
                            "course_run": {"course_run_key": "course-v1:X+Y+Z", "mode": "verified"},
                            "price": {"currency_code": "USD", "amount": "49.00"}}]
        })
    );
}

#[test]
fn a_path_value_the_body_repeats_unchanged_is_accepted() {
    let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
    let body = br#"{"order_number": "EDX-1", "order_id": "o"}"#;
    let message = request_message(&descriptor, "*", &[bind("order_number", "EDX-1")], None, body).unwrap();
    assert_eq!(set_fields(&message), json!({"order_number": "EDX-1", "order_id": "o"}));
}

#[test]
fn an_empty_or_blank_body_with_body_star_is_an_empty_message() {
    let descriptor = mesh("commerce.fulfillment.v1.RetryFulfillmentRequest");
    for body in [&b""[..], b" \r\n\t"] {
        let message = request_message(&descriptor, "*", &[bind("fulfillment_id", "f-1")], None, body).unwrap();
        assert_eq!(set_fields(&message), json!({"fulfillment_id": "f-1"}));
    }
}

#[test]
fn a_body_field_rule_reads_the_body_as_that_field() {
    let descriptor = mesh("commerce.purchases.v1.RecordPurchaseRequest");
    let body = br#"{"purchaseId": "p-1", "lms_user_id": "42", "username": "ada",
                    "price": {"currencyCode": "USD", "amount": "19.99"}, "purchasedAt": "2026-01-01T00:00:00Z"}"#;
    let message = request_message(&descriptor, "purchase", &[], None, body).unwrap();
    assert_eq!(
        set_fields(&message),
        json!({"purchase": {"purchase_id": "p-1", "lms_user_id": "42", "username": "ada",
                            "price": {"currency_code": "USD", "amount": "19.99"},
                            "purchased_at": "2026-01-01T00:00:00Z"}})
    );
    // No body leaves the field unset rather than refusing.
    let empty = request_message(&descriptor, "purchase", &[], None, b"").unwrap();
    assert_eq!(set_fields(&empty), json!({}));
}

#[test]
fn a_body_field_may_be_a_scalar_or_a_list() {
    let descriptor = probe();
    let message = request_message(&descriptor, "tags", &[], None, br#"["a", "b"]"#).unwrap();
    assert_eq!(set_fields(&message), json!({"tags": ["a", "b"]}));
    let message = request_message(&descriptor, "big", &[], None, b"\"-12\"").unwrap();
    assert_eq!(set_fields(&message), json!({"big": "-12"}));
}

#[test]
fn the_legacy_buy_body_reads_as_record_purchase_request() {
    let descriptor = mesh("commerce.purchases.v1.RecordPurchaseRequest");
    let body = br#"{"username":"ada","userid":42,"price":19.99,"timestamp":"2026-01-01T00:00:00Z"}"#;
    let message = request_message(&descriptor, "*", &[], None, body).unwrap();
    assert_eq!(
        set_fields(&message),
        json!({"username": "ada", "userid": "42", "price": 19.99, "timestamp": "2026-01-01T00:00:00Z"})
    );
}

#[test]
fn a_get_without_body_reads_the_query_by_proto_or_json_name() {
    let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
    let message = query(&descriptor, "lms_user_id=42&page_size=20&pageToken=abc").unwrap();
    assert_eq!(set_fields(&message), json!({"lms_user_id": "42", "page_size": 20, "page_token": "abc"}));
}

#[test]
fn the_legacy_buy_list_path_fills_the_username() {
    let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
    let message =
        request_message(&descriptor, "", &[bind("username", "ada lovelace")], Some("page_size=5"), b"").unwrap();
    assert_eq!(set_fields(&message), json!({"username": "ada lovelace", "page_size": 5}));
}

#[test]
fn nested_path_variables_create_their_intermediate_messages() {
    let bindings = [bind("shelf.shelf_id", "s-9"), bind("shelf.location.aisle", "A7")];
    let message =
        request_message(&probe(), "", &bindings, Some("shelf.location.bay=3&shelf.location.colour=1"), b"").unwrap();
    assert_eq!(
        set_fields(&message),
        json!({"shelf": {"shelf_id": "s-9", "location": {"aisle": "A7", "bay": 3, "colour": "COLOUR_RED"}}})
    );
}

#[test]
fn a_path_variable_inside_a_star_body_joins_the_body_fields() {
    let body = br#"{"shelf": {"location": {"bay": 2}}}"#;
    let message = request_message(&probe(), "*", &[bind("shelf.location.aisle", "B")], None, body).unwrap();
    assert_eq!(set_fields(&message), json!({"shelf": {"location": {"aisle": "B", "bay": 2}}}));
}

#[test]
fn query_values_convert_by_the_field_type() {
    let text = "count=-7&small=4000000000&big=-9007199254740993&huge=18446744073709551615&delta=-3\
                &ratio=NaN&weight=-Infinity&active=true&colour=COLOUR_GREEN&colours=1&colours=COLOUR_GREEN\
                &blob=aGk-Pz8_&at=2026-01-01T00%3A00%3A00Z&timeout=1.5s&limit=5&note=a+b%26c&flag=false\
                &update_mask=shelf.shelfId,count&tags=x&tags=y&times=1970-01-01T00:00:01Z&times=2026-01-01T00:00:00Z";
    let message = query(&probe(), text).unwrap();
    assert_eq!(
        set_fields(&message),
        json!({
            "count": -7, "small": 4_000_000_000_u32, "big": "-9007199254740993", "huge": "18446744073709551615",
            "delta": -3, "ratio": "NaN", "weight": "-Infinity", "active": true, "colour": "COLOUR_GREEN",
            "colours": ["COLOUR_RED", "COLOUR_GREEN"], "blob": "aGk+Pz8/", "at": "2026-01-01T00:00:00Z",
            "timeout": "1.500s", "limit": 5, "note": "a b&c", "flag": false, "update_mask": "shelf.shelfId,count",
            "tags": ["x", "y"], "times": ["1970-01-01T00:00:01Z", "2026-01-01T00:00:00Z"]
        })
    );
}

#[test]
fn query_bytes_take_standard_base64_percent_encoded_and_unpadded_url_safe() {
    let standard = query(&probe(), "blob=aGk%2BPz8%2F").unwrap();
    let url_safe = query(&probe(), "blob=aGk-Pz8_").unwrap();
    assert_eq!(set_fields(&standard), json!({"blob": "aGk+Pz8/"}));
    assert_eq!(set_fields(&standard), set_fields(&url_safe));
    let unpadded = query(&probe(), "blob=aGk").unwrap();
    assert_eq!(set_fields(&unpadded), json!({"blob": "aGk="}));
}

#[test]
fn query_floats_take_infinity_and_a_wrapper_takes_an_empty_string() {
    let message = query(&probe(), "ratio=Infinity&weight=2.5e3&note=").unwrap();
    assert_eq!(set_fields(&message), json!({"ratio": "Infinity", "weight": 2500.0, "note": ""}));
}

#[test]
fn body_keys_may_be_json_or_proto_names() {
    let by_json = request_message(&probe(), "*", &[], None, br#"{"shelfName": "n", "updateMask": "shelf.shelfId"}"#);
    let by_proto = request_message(&probe(), "*", &[], None, br#"{"shelf_name": "n", "update_mask": "shelf.shelfId"}"#);
    assert_eq!(set_fields(&by_json.unwrap()), json!({"shelf_name": "n", "update_mask": "shelf.shelfId"}));
    assert_eq!(set_fields(&by_proto.unwrap()), json!({"shelf_name": "n", "update_mask": "shelf.shelfId"}));
}

// ---- errors -----------------------------------------------------------

#[test]
fn malformed_json_names_the_body_with_line_and_column() {
    let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
    let error = refused(request_message(&descriptor, "*", &[], None, b"{\n  not json"));
    assert_eq!(error.field, "body");
    assert!(error.description.contains("line 2 column"), "{error}");

    let error = refused(request_message(&descriptor, "*", &[], None, br#"{"order_id": "o"} trailing"#));
    assert_eq!(error.field, "body");
    assert!(error.description.contains("trailing"), "{error}");

    let error = refused(request_message(&descriptor, "*", &[], None, b"[1, 2]"));
    assert_eq!(error.field, "body");
}

#[test]
fn malformed_json_inside_a_field_names_the_field_reached() {
    let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
    let error = refused(request_message(&descriptor, "*", &[], None, br#"{"learner": {"lmsUserId": tru}}"#));
    assert_eq!(error.field, "learner.lms_user_id");
    assert!(error.description.contains("line 1 column"), "{error}");
}

#[test]
fn a_wrong_type_names_the_field_in_proto_names() {
    let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
    let body = br#"{"lineItems": [{"lineItemId": "1"}, {"lineItemId": "2", "price": {"amount": 5}}]}"#;
    let error = refused(request_message(&descriptor, "*", &[], None, body));
    assert_eq!(error.field, "line_items[1].price.amount");

    let purchases = mesh("commerce.purchases.v1.RecordPurchaseRequest");
    let error = refused(request_message(&purchases, "purchase", &[], None, br#"{"price": {"currencyCode": 1}}"#));
    assert_eq!(error.field, "purchase.price.currency_code");
    let error = refused(request_message(&purchases, "purchase", &[], None, b"\"a string\""));
    assert_eq!(error.field, "purchase");
}

#[test]
fn an_unknown_body_field_is_refused_by_its_path() {
    let purchases = mesh("commerce.purchases.v1.RecordPurchaseRequest");
    let error = refused(request_message(&purchases, "purchase", &[], None, br#"{"purchaseId": "p", "colour": 1}"#));
    assert_eq!(error.field, "purchase.colour");
    let error = refused(request_message(&purchases, "*", &[], None, br#"{"purchase": {"price": {"units": 5}}}"#));
    assert_eq!(error.field, "purchase.price.units");
    let error = refused(request_message(&purchases, "*", &[], None, br#"{"nope": 5}"#));
    assert_eq!(error.field, "nope");
}

#[test]
fn out_of_range_integers_are_refused_in_body_and_query() {
    let error = refused(request_message(&probe(), "*", &[], None, br#"{"count": 3000000000}"#));
    assert_eq!(error.field, "count");
    let error = refused(request_message(&probe(), "*", &[], None, br#"{"counts": {"a": 3000000000}}"#));
    assert_eq!(error.field, "counts.a");
    let error = refused(query(&probe(), "count=3000000000"));
    assert_eq!((error.field.as_str(), error.description.as_str()), ("count", "`3000000000` is out of range for int32"));
    let error = refused(query(&probe(), "small=-1"));
    assert_eq!(error.field, "small");
    let error = refused(query(&probe(), "ratio=1e39"));
    assert_eq!(error.field, "ratio");
    let error = refused(query(&probe(), "count=1.5"));
    assert_eq!(error.field, "count");
}

#[test]
fn a_bad_enum_name_is_refused_in_body_and_query() {
    let body = br#"{"shelf": {"location": {"colour": "PURPLE"}}}"#;
    let error = refused(request_message(&probe(), "*", &[], None, body));
    assert_eq!(error.field, "shelf.location.colour");
    let error = refused(query(&probe(), "colours=COLOUR_RED&colours=PURPLE"));
    assert_eq!(error.field, "colours");
    assert!(error.description.contains("COLOUR_GREEN"), "lists the names: {error}");
}

#[test]
fn a_bad_timestamp_duration_bool_or_base64_names_its_field() {
    let purchases = mesh("commerce.purchases.v1.RecordPurchaseRequest");
    let error = refused(request_message(&purchases, "purchase", &[], None, br#"{"purchasedAt": "yesterday"}"#));
    assert_eq!(error.field, "purchase.purchased_at");
    for (text, field) in
        [("at=yesterday", "at"), ("timeout=soon", "timeout"), ("active=yes", "active"), ("blob=%21%21", "blob")]
    {
        assert_eq!(refused(query(&probe(), text)).field, field, "{text}");
    }
    assert_eq!(refused(query(&probe(), "flag=1")).field, "flag");
    assert_eq!(refused(query(&probe(), "limit=x")).field, "limit");
    for mask in ["a__b", "a_1", "shelf.", "Shelf_id", "a=_b"] {
        assert_eq!(refused(query(&probe(), &format!("update_mask=count,{mask}"))).field, "update_mask", "{mask}");
    }
}

#[test]
fn the_path_and_the_body_may_not_disagree() {
    let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
    let error = refused(request_message(
        &descriptor,
        "*",
        &[bind("order_number", "EDX-1")],
        None,
        br#"{"orderNumber": "EDX-2"}"#,
    ));
    assert_eq!(error.field, "order_number");
    assert_eq!(error.description, r#"set to "EDX-1" by the path and "EDX-2" by the body"#);

    let body = br#"{"shelf": {"location": {"colour": "COLOUR_RED"}}}"#;
    let error = refused(request_message(&probe(), "*", &[bind("shelf.location.colour", "COLOUR_GREEN")], None, body));
    assert_eq!(error.field, "shelf.location.colour");
    assert_eq!(error.description, "set to COLOUR_GREEN by the path and COLOUR_RED by the body");
}

#[test]
fn a_path_value_that_does_not_convert_names_its_field() {
    let error = refused(request_message(&probe(), "", &[bind("shelf.location.bay", "x")], None, b""));
    assert_eq!(error.field, "shelf.location.bay");
}

#[test]
fn a_singular_query_parameter_given_twice_is_refused() {
    let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
    let error = refused(query(&descriptor, "page_size=1&pageSize=2"));
    assert_eq!(error.field, "pageSize");
    let error = refused(query(&descriptor, "page_size=1&page_size=1"));
    assert_eq!(error.field, "page_size");
}

#[test]
fn query_parameters_are_refused_when_the_body_is_everything() {
    let descriptor = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
    let error = refused(request_message(&descriptor, "*", &[], Some("order_id=o"), b"{}"));
    assert_eq!(error.field, "order_id");
    // An empty query string has no parameters.
    assert!(request_message(&descriptor, "*", &[], Some(""), b"{}").is_ok());
}

#[test]
fn a_body_on_a_rule_without_one_is_refused() {
    let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
    let error = refused(request_message(&descriptor, "", &[], None, br#"{"page_size": 1}"#));
    assert_eq!(error.field, "body");
}

#[test]
fn unknown_query_parameters_are_refused() {
    let descriptor = mesh("commerce.purchases.v1.ListPurchasesRequest");
    assert_eq!(refused(query(&descriptor, "colour=red")).field, "colour");
    assert_eq!(refused(query(&probe(), "shelf.location.depth=1")).field, "shelf.location.depth");
    assert_eq!(refused(query(&probe(), "count.value=1")).field, "count.value");
    assert_eq!(refused(query(&probe(), "shelves.shelf_id=1")).field, "shelves.shelf_id");
}

#[test]
fn query_parameters_may_not_touch_the_path_or_the_body_field() {
    let list = mesh("commerce.purchases.v1.ListPurchasesRequest");
    let error = refused(request_message(&list, "", &[bind("username", "ada")], Some("username=bob"), b""));
    assert_eq!(error.field, "username");

    let record = mesh("commerce.purchases.v1.RecordPurchaseRequest");
    let error = refused(request_message(&record, "purchase", &[], Some("purchase.title=x"), b"{}"));
    assert_eq!(error.field, "purchase.title");
    // Fields outside the body field are the query's.
    let message = request_message(&record, "purchase", &[], Some("username=ada"), b"{}").unwrap();
    assert_eq!(set_fields(&message), json!({"purchase": {}, "username": "ada"}));
}

#[test]
fn query_parameters_naming_messages_or_maps_are_refused() {
    assert_eq!(refused(query(&probe(), "shelf=x")).field, "shelf");
    assert_eq!(refused(query(&probe(), "shelf.location=x")).field, "shelf.location");
    assert_eq!(refused(query(&probe(), "counts=1")).field, "counts");
    assert_eq!(refused(query(&probe(), "extra=1")).field, "extra");
}

#[test]
fn two_members_of_one_oneof_are_refused_wherever_they_come_from() {
    let list = mesh("commerce.purchases.v1.ListPurchasesRequest");
    let error = refused(request_message(&list, "", &[bind("username", "ada")], Some("lms_user_id=4"), b""));
    assert_eq!(error.field, "lms_user_id");
    assert!(error.description.contains("oneof `learner`"), "{error}");

    let error = refused(query(&probe(), "shelf_name=a&shelf_number=2"));
    assert_eq!(error.field, "shelf_number");

    let error = refused(request_message(&probe(), "*", &[], None, br#"{"shelfName": "a", "shelf_number": "2"}"#));
    assert_eq!(error.field, "target");

    let error = refused(request_message(&probe(), "*", &[bind("shelf_number", "2")], None, br#"{"shelfName": "a"}"#));
    assert_eq!(error.field, "shelf_number");
}

#[test]
fn query_text_that_is_not_utf8_or_has_no_name_is_refused() {
    assert_eq!(refused(query(&probe(), "note=%FF")).field, "note");
    assert_eq!(refused(query(&probe(), "=x")).field, "query");
    assert_eq!(refused(query(&probe(), "%FF=x")).field, "query");
}

#[test]
fn a_body_rule_naming_no_field_is_refused_per_request() {
    let error = refused(request_message(&probe(), "missing", &[], None, b"{}"));
    assert_eq!(error.field, "body");
}

// ---- responses --------------------------------------------------------

fn purchases_response() -> DynamicMessage {
    let descriptor = mesh("commerce.purchases.v1.ListPurchasesResponse");
    let body = br#"{"purchases": [{"purchaseId": "p-1", "price": {"currencyCode": "USD", "amount": "19.99"},
                                   "purchasedAt": "2026-01-01T00:00:00Z"}], "nextPageToken": "t"}"#;
    request_message(&descriptor, "*", &[], None, body).unwrap()
}

#[test]
fn a_response_has_proto_names_and_every_default() {
    let json: serde_json::Value = serde_json::from_slice(&response_json(&purchases_response(), "").unwrap()).unwrap();
    let purchase = json!({
        "purchase_id": "p-1", "lms_user_id": "", "username": "", "order_number": "", "product_key": "",
        "title": "", "price": {"currency_code": "USD", "amount": "19.99"},
        "purchased_at": "2026-01-01T00:00:00Z", "source": "", "status": "PURCHASE_STATUS_UNSPECIFIED"
    });
    assert_eq!(json, json!({"purchases": [purchase], "next_page_token": "t"}));
}

#[test]
fn a_response_writes_enums_by_name_and_64_bit_integers_as_strings() {
    let message = query(&probe(), "big=5&colour=2").unwrap();
    let json: serde_json::Value = serde_json::from_slice(&response_json(&message, "").unwrap()).unwrap();
    assert_eq!((&json["big"], &json["colour"], &json["count"]), (&json!("5"), &json!("COLOUR_GREEN"), &json!(0)));
    assert_eq!(json["shelves"], json!([]));
    // Message fields have presence: an unset one is left out, as proto3 JSON says.
    assert_eq!(json.get("shelf"), None);
}

#[test]
fn response_body_answers_that_field_alone() {
    let response = purchases_response();
    let list: serde_json::Value = serde_json::from_slice(&response_json(&response, "purchases").unwrap()).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["purchase_id"], json!("p-1"));
    assert_eq!(list[0]["source"], json!(""));
    assert_eq!(response_json(&response, "next_page_token").unwrap(), b"\"t\"");

    let message = query(&probe(), "tags=a&tags=b&big=7&colour=1").unwrap();
    assert_eq!(response_json(&message, "tags").unwrap(), br#"["a","b"]"#);
    assert_eq!(response_json(&message, "big").unwrap(), br#""7""#);
    assert_eq!(response_json(&message, "colour").unwrap(), br#""COLOUR_RED""#);
    assert_eq!(response_json(&message, "shelves").unwrap(), b"[]");
    let shelf: serde_json::Value = serde_json::from_slice(&response_json(&message, "shelf").unwrap()).unwrap();
    // An unset message field answers its default, whose own message fields, having presence, stay out.
    assert_eq!(shelf, json!({"shelf_id": ""}));
}

#[test]
fn a_response_that_cannot_be_json_names_the_field() {
    let descriptor = mesh("commerce.purchases.v1.ListPurchasesResponse");
    let mut response = purchases_response();
    let mut bad_time = DynamicMessage::new(mesh("commerce.purchases.v1.Purchase"));
    let far = prost_types::Timestamp { seconds: i64::MAX, nanos: 0 };
    let mut timestamp = DynamicMessage::new(
        bad_time
            .descriptor()
            .get_field_by_name("purchased_at")
            .map(|f| match f.kind() {
                Kind::Message(m) => m,
                _ => unreachable!(),
            })
            .unwrap(),
    );
    timestamp.transcode_from(&far).unwrap();
    bad_time.set_field_by_name("purchased_at", Value::Message(timestamp));
    let purchases = descriptor.get_field_by_name("purchases").unwrap();
    match response.get_field_mut(&purchases) {
        Value::List(items) => items.push(Value::Message(bad_time)),
        _ => unreachable!(),
    }
    assert_eq!(response_json(&response, "").unwrap_err().field, "purchases[1].purchased_at");
    assert_eq!(response_json(&response, "purchases").unwrap_err().field, "purchases[1].purchased_at");
    assert_eq!(response_json(&response, "colour").unwrap_err().field, "colour");
}

// ---- rules at start-up ------------------------------------------------

#[test]
fn the_mesh_rules_check() {
    let fulfill = mesh("commerce.fulfillment.v1.FulfillOrderRequest");
    let fulfilled = mesh("commerce.fulfillment.v1.FulfillOrderResponse");
    check_rule(&fulfill, &fulfilled, "*", &["order_number"], "").unwrap();
    let record = mesh("commerce.purchases.v1.RecordPurchaseRequest");
    let recorded = mesh("commerce.purchases.v1.RecordPurchaseResponse");
    check_rule(&record, &recorded, "purchase", &[], "").unwrap();
    let list = mesh("commerce.purchases.v1.ListPurchasesRequest");
    let listed = mesh("commerce.purchases.v1.ListPurchasesResponse");
    check_rule(&list, &listed, "", &["username"], "purchases").unwrap();
    // Path variables may reach inside a `*` body and nest.
    check_rule(&probe(), &probe(), "*", &["shelf.location.aisle", "shelf.location.colour", "count"], "tags").unwrap();
}

#[test]
fn bad_rules_are_explained() {
    let p = probe();
    let cases: [(&str, &[&str], &str, &str); 8] = [
        ("missing", &[], "", "body `missing`"),
        ("shelf.location", &[], "", "body `shelf.location`"),
        ("", &["tags"], "", "repeated"),
        ("", &["counts"], "", "repeated"),
        ("", &["shelf"], "", "gateway.test.v1.Shelf"),
        ("", &["at"], "", "google.protobuf.Timestamp"),
        ("", &["shelf.nope"], "", "has no field `nope`"),
        ("", &[], "nope", "response_body `nope`"),
    ];
    for (body, variables, response_body, expected) in cases {
        let error = check_rule(&p, &p, body, variables, response_body).unwrap_err();
        assert!(error.contains(expected), "{error:?} mentions {expected:?}");
    }
    let error = check_rule(&p, &p, "", &["count", "count"], "").unwrap_err();
    assert!(error.contains("twice"), "{error}");
    let error = check_rule(&p, &p, "", &["count.value"], "").unwrap_err();
    assert!(error.contains("not a message field"), "{error}");
}

// ---- properties -------------------------------------------------------

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-zA-Z0-9:._+/=-]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![Just("COLOUR_RED"), Just("2026-01-01T00:00:00Z"), Just("1.5s"), Just("NaN"), Just("-1")]
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("shelf".to_owned()),
            Just("location".to_owned()),
            Just("shelfName".to_owned()),
            Just("shelf_number".to_owned()),
            Just("count".to_owned()),
            Just("tags".to_owned()),
            Just("counts".to_owned()),
            Just("times".to_owned()),
            Just("purchase".to_owned()),
            Just("price".to_owned()),
            Just("lineItems".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key, inner, 0..5)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// The rules the properties exercise: (message, body rule, path bindings).
fn rules() -> Vec<(MessageDescriptor, &'static str, Vec<Binding>)> {
    vec![
        (probe(), "*", vec![bind("shelf.location.aisle", "A")]),
        (probe(), "shelf", vec![bind("count", "1")]),
        (probe(), "tags", vec![]),
        (probe(), "", vec![bind("shelf_name", "n")]),
        (mesh("commerce.fulfillment.v1.FulfillOrderRequest"), "*", vec![bind("order_number", "EDX-1")]),
        (mesh("commerce.purchases.v1.RecordPurchaseRequest"), "purchase", vec![]),
        (mesh("commerce.purchases.v1.RecordPurchaseRequest"), "*", vec![]),
        (mesh("commerce.purchases.v1.ListPurchasesRequest"), "", vec![bind("username", "ada")]),
    ]
}

/// Never a panic; an error always names something; a message always serializes back.
fn holds(result: Result<DynamicMessage, TranscodeError>) -> Result<(), TestCaseError> {
    match result {
        Ok(message) => {
            let json = response_json(&message, "").map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
        }
        Err(error) => prop_assert!(!error.field.is_empty(), "{error:?}"),
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_bytes_as_body_are_a_message_or_a_named_error(body in prop::collection::vec(any::<u8>(), 0..64)) {
        for (descriptor, rule, bindings) in rules() {
            holds(request_message(&descriptor, rule, &bindings, None, &body))?;
        }
    }

    #[test]
    fn any_json_as_body_is_a_message_or_a_named_error(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        for (descriptor, rule, bindings) in rules() {
            holds(request_message(&descriptor, rule, &bindings, None, &body))?;
        }
    }

    #[test]
    fn any_query_is_a_message_or_a_named_error(
        text in prop_oneof![
            "[a-zA-Z_.=&%+0-9]{0,40}",
            "((shelf\\.location\\.|shelf\\.)?(aisle|bay|colour|count|tags|at|timeout|limit|flag|blob|ratio|shelf_name|shelf_number|username|page_size|update_mask)=[a-zA-Z0-9%+._:-]{0,10}&?){0,5}",
            any::<String>(),
        ]
    ) {
        for (descriptor, rule, bindings) in rules() {
            holds(request_message(&descriptor, rule, &bindings, Some(&text), b""))?;
        }
    }
}
