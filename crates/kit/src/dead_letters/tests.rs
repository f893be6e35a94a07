//! Unit tests of the dead-letter operations.

use super::*;

fn ops() -> DeadLetterOps {
    let dir = std::env::temp_dir().join(format!("dead-letters-{}", uuid::Uuid::new_v4().simple()));
    let bus = crate::bus::open(None, &dir.join("events.db")).unwrap();
    DeadLetterOps::new(bus, vec![ConsumedStream::new("commerce.customers.v1", "fulfillment")])
}

fn fields(status: &Status) -> Vec<String> {
    crate::error::field_violations(status).into_iter().map(|(field, _)| field).collect()
}

// The lazy log pool is made inside a runtime.
#[tokio::test]
async fn a_stream_not_consumed_is_refused_naming_the_field() {
    let ops = ops();
    let bad = ops
        .parse_list(&pb::ListDeadLettersRequest { stream: "commerce.orders.v1".into(), ..Default::default() })
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(fields(&bad), ["stream"]);
    assert!(bad.message().contains("commerce.customers.v1"), "{}", bad.message());
    let bad = ops.parse_list(&pb::ListDeadLettersRequest::default()).unwrap_err();
    assert_eq!(fields(&bad), ["stream"]);
}

// The lazy log pool is made inside a runtime.
#[tokio::test]
async fn a_listing_is_parsed_with_its_page_and_filter() {
    let ops = ops();
    let listed = ops
        .parse_list(&pb::ListDeadLettersRequest {
            stream: "commerce.customers.v1".into(),
            reason: "invalid".into(),
            page_size: 0,
            page_token: "12".into(),
            discarded: false,
        })
        .unwrap();
    assert_eq!(listed.query.max, DEFAULT_PAGE_SIZE);
    assert_eq!(listed.query.after, Some(EntryId("12".into())));
    assert_eq!(listed.query.reason.as_deref(), Some("invalid"));
    assert_eq!(listed.query.group.as_deref(), Some("fulfillment"));
    let bad = ops
        .parse_list(&pb::ListDeadLettersRequest {
            stream: "commerce.customers.v1".into(),
            page_size: 501,
            page_token: "1-2-3".into(),
            reason: "a\u{0}b".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(fields(&bad), ["reason", "page_size", "page_token"]);
}

// The lazy log pool is made inside a runtime.
#[tokio::test]
async fn a_replay_names_ids_or_asks_for_all_matching_a_reason() {
    let ops = ops();
    let stream = "commerce.customers.v1".to_string();
    let (_, selection) = ops
        .parse_replay(&pb::ReplayDeadLettersRequest {
            stream: stream.clone(),
            ids: vec!["1700000000000-0".into(), "7".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(selection, ReplaySelection::Ids(vec![EntryId("1700000000000-0".into()), EntryId("7".into())]));
    let (_, selection) = ops
        .parse_replay(&pb::ReplayDeadLettersRequest {
            stream: stream.clone(),
            reason: "timeout".into(),
            all_matching_reason: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(selection, ReplaySelection::Matching { reason: Some("timeout".into()), limit: DEFAULT_REPLAY_LIMIT });

    let refused = |request: pb::ReplayDeadLettersRequest| fields(&ops.parse_replay(&request).unwrap_err());
    assert_eq!(refused(pb::ReplayDeadLettersRequest { stream: stream.clone(), ..Default::default() }), ["ids"]);
    assert_eq!(
        refused(pb::ReplayDeadLettersRequest {
            stream: stream.clone(),
            ids: vec!["5".into(), "x".into(), "5".into()],
            ..Default::default()
        }),
        ["ids[1]", "ids[2]"]
    );
    assert_eq!(
        refused(pb::ReplayDeadLettersRequest {
            stream: stream.clone(),
            ids: vec!["5".into()],
            all_matching_reason: true,
            limit: 1001,
            ..Default::default()
        }),
        ["ids", "limit"]
    );
}

// The lazy log pool is made inside a runtime.
#[tokio::test]
async fn a_discard_needs_a_reason() {
    let ops = ops();
    let request = pb::DiscardDeadLettersRequest {
        stream: "commerce.customers.v1".into(),
        ids: vec!["3".into()],
        reason: "  ".into(),
    };
    assert_eq!(fields(&ops.parse_discard(&request).unwrap_err()), ["reason"]);
    let (_, ids, reason) =
        ops.parse_discard(&pb::DiscardDeadLettersRequest { reason: " test data ".into(), ..request }).unwrap();
    assert_eq!((ids, reason.as_str()), (vec![EntryId("3".into())], "test data"));
}

const CUSTOMERS: &str = "commerce.customers.v1";

/// A bus with `count` of PurchaseHistory's dead letters on the customers stream, and
/// the dead-letter services of Fulfillment and PurchaseHistory over it.
async fn two_components(count: usize) -> (Arc<dyn EventBus>, DeadLetterOps, DeadLetterOps) {
    let dir = std::env::temp_dir().join(format!("dead-letters-{}", uuid::Uuid::new_v4().simple()));
    let bus = crate::bus::open(None, &dir.join("events.db")).unwrap();
    bus.ensure_group(CUSTOMERS, "purchase-history").await.unwrap();
    for n in 0..count {
        bus.publish(CUSTOMERS, &format!("evt-{n}"), b"not an envelope").await.unwrap();
    }
    for delivery in bus.read(CUSTOMERS, "purchase-history", "c", count, Duration::ZERO).await.unwrap() {
        bus.dead_letter(CUSTOMERS, "purchase-history", &delivery, "refused").await.unwrap();
    }
    let ops = |group: &str| DeadLetterOps::new(bus.clone(), vec![ConsumedStream::new(CUSTOMERS, group)]);
    let (fulfillment, history) = (ops("fulfillment"), ops("purchase-history"));
    (bus, fulfillment, history)
}

fn replay_request(ids: &[&EntryId]) -> Request<pb::ReplayDeadLettersRequest> {
    Request::new(pb::ReplayDeadLettersRequest {
        stream: CUSTOMERS.into(),
        ids: ids.iter().map(|id| id.0.clone()).collect(),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_component_replays_only_its_own_dead_letters() {
    let (bus, fulfillment, history) = two_components(1).await;
    let theirs = bus.dead_letters(CUSTOMERS, 10).await.unwrap()[0].id.clone();

    let refused = fulfillment.replay(replay_request(&[&theirs])).await.unwrap().into_inner();
    assert_eq!(
        refused.outcomes,
        [pb::DeadLetterOutcome { id: theirs.0.clone(), found: false, new_entry_id: String::new() }],
        "PurchaseHistory's dead letter is not Fulfillment's to replay"
    );
    let discard = Request::new(pb::DiscardDeadLettersRequest {
        stream: CUSTOMERS.into(),
        ids: vec![theirs.0.clone()],
        reason: "not ours".into(),
    });
    assert!(!fulfillment.discard(discard).await.unwrap().into_inner().outcomes[0].found);
    assert_eq!(bus.dead_letters(CUSTOMERS, 10).await.unwrap().len(), 1, "still there");

    let replayed = history.replay(replay_request(&[&theirs])).await.unwrap().into_inner();
    assert!(replayed.outcomes[0].found, "{replayed:?}");
    assert_ne!(replayed.outcomes[0].new_entry_id, "");
    assert!(bus.dead_letters(CUSTOMERS, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn discarded_dead_letters_are_listed_in_pages() {
    let (bus, fulfillment, history) = two_components(3).await;
    let dead = bus.dead_letters(CUSTOMERS, 10).await.unwrap();
    let ids: Vec<String> = dead.iter().map(|letter| letter.id.0.clone()).collect();
    let discard = Request::new(pb::DiscardDeadLettersRequest {
        stream: CUSTOMERS.into(),
        ids: ids.clone(),
        reason: "test data".into(),
    });
    assert!(history.discard(discard).await.unwrap().into_inner().outcomes.iter().all(|outcome| outcome.found));

    let list = |ops: &DeadLetterOps, page_token: String| {
        let request = pb::ListDeadLettersRequest {
            stream: CUSTOMERS.into(),
            page_size: 2,
            page_token,
            discarded: true,
            ..Default::default()
        };
        let ops = ops.clone();
        async move { ops.list(Request::new(request)).await.unwrap().into_inner() }
    };
    let first = list(&history, String::new()).await;
    assert_eq!(first.dead_letters.iter().map(|letter| &letter.id).collect::<Vec<_>>(), [&ids[0], &ids[1]]);
    assert!(first.dead_letters.iter().all(|letter| letter.discard.is_some()));
    assert_ne!(first.next_page_token, "", "more than a page");
    let second = list(&history, first.next_page_token).await;
    assert_eq!(second.dead_letters.iter().map(|letter| &letter.id).collect::<Vec<_>>(), [&ids[2]]);
    assert_eq!(second.next_page_token, "");
    assert!(list(&fulfillment, String::new()).await.dead_letters.is_empty(), "only the group's own");
}

#[test]
fn an_envelope_is_decoded_to_json_by_its_event_type() {
    use prost::Message;
    let envelope = proto::commerce::events::v1::EventEnvelope {
        event_id: "evt-1".into(),
        event_type: "commerce.events.v1.CustomerRetired".into(),
        payload: Some(proto::commerce::events::v1::event_envelope::Payload::CustomerRetired(
            proto::commerce::events::v1::CustomerRetired {
                customer_id: "c-1".into(),
                lms_user_id: "42".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let decoded = envelope_decoder()(&envelope.encode_to_vec());
    assert_eq!(decoded.error, "");
    assert_eq!(decoded.event_type, "commerce.events.v1.CustomerRetired");
    let json = decoded.json.unwrap();
    assert_eq!(json["customer_retired"]["customer_id"], "c-1");
    let payload = to_struct(json.clone()).unwrap();
    assert!(payload.fields.contains_key("event_id"));
    assert_eq!(struct_to_json(&payload), json, "the JSON survives the Struct");

    let garbage = envelope_decoder()(&[0xff, 0xff, 0xff]);
    assert!(garbage.json.is_none());
    assert!(garbage.error.starts_with("not a commerce.events.v1.EventEnvelope"), "{}", garbage.error);
}
