//! The store contract: the same checks against every backend.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;

use customer_identity::domain::{CustomerId, CustomerKey, CustomerLink, Email, LmsUserId, LmsUsername, RetirementKey};
use customer_identity::store::first_load::{FirstLoaded, StagedBatches};
use customer_identity::store::{Store, StoreError, TakenKey, for_database};
use kit::db::{Backend, Database};
use kit::outbox::{OutboxStore, SqlOutbox};
use kit::testing::TestDatabase;
use kit::trace::TextContext;
use prost::Message;
use proto::commerce::events::v1::{EventEnvelope, event_envelope::Payload};

struct Fixture {
    store: Arc<dyn Store>,
    outbox: SqlOutbox,
    _db: TestDatabase,
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::new(backend, customer_identity::NAME).await;
    kit::db::migrate(db.config(), &customer_identity::MIGRATIONS).await.expect("migrate");
    let database = Database::open(db.config()).expect("open");
    let store = for_database(&database);
    Fixture { store, outbox: SqlOutbox::new(database), _db: db }
}

fn salt() -> RetirementKey {
    RetirementKey::new("salt")
}

fn link(customer: &str, lms_user_id: &str, username: &str) -> CustomerLink {
    CustomerLink::new(
        CustomerId::parse(customer).unwrap(),
        LmsUserId::parse(lms_user_id).unwrap(),
        LmsUsername::parse(username).unwrap(),
        Email::parse(&format!("{username}@example.org")).unwrap(),
    )
}

fn by_id(customer: &str) -> CustomerKey {
    CustomerKey::CustomerId(CustomerId::parse(customer).unwrap())
}

async fn upsert_creates_then_updates_then_changes_nothing(f: Fixture) {
    let created = f.store.upsert(&link("c1", "1", "ada"), None).await.unwrap();
    assert!(created.previous.is_none());
    assert_eq!((created.customer.version, created.customer.lms_username.as_str()), (1, "ada"));
    let updated = f.store.upsert(&link("c1", "1", "Countess"), None).await.unwrap();
    assert_eq!(updated.customer.version, 2);
    assert_eq!(updated.previous.unwrap().lms_username, "ada");
    let same = f.store.upsert(&link("c1", "1", "Countess"), None).await.unwrap();
    assert_eq!(same.customer.version, 2, "storing what is stored changes nothing");
}

async fn expected_versions_are_checked(f: Fixture) {
    let fresh = f.store.upsert(&link("c1", "1", "ada"), Some(0)).await.unwrap();
    assert_eq!(fresh.customer.version, 1);
    match f.store.upsert(&link("c1", "1", "ada2"), Some(0)).await {
        Err(StoreError::VersionMismatch { expected: 0, stored: Some(1) }) => {}
        other => panic!("expected a mismatch, got {other:?}"),
    }
    match f.store.upsert(&link("c1", "1", "ada2"), Some(7)).await {
        Err(StoreError::VersionMismatch { expected: 7, stored: Some(1) }) => {}
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(f.store.upsert(&link("c1", "1", "ada2"), Some(1)).await.unwrap().customer.version, 2);
    match f.store.upsert(&link("c9", "9", "nobody"), Some(3)).await {
        Err(StoreError::VersionMismatch { expected: 3, stored: None }) => {}
        other => panic!("expected a mismatch for a missing customer, got {other:?}"),
    }
    assert!(f.store.get(&by_id("c9")).await.unwrap().is_none(), "a refused write writes nothing");
}

async fn keys_held_by_another_customer_are_refused_naming_the_owner(f: Fixture) {
    f.store.upsert(&link("c1", "1", "ada"), None).await.unwrap();
    match f.store.upsert(&link("c2", "1", "grace"), None).await {
        Err(StoreError::Taken { key: TakenKey::LmsUserId, value, owner }) => {
            assert_eq!((value.as_str(), owner.as_str()), ("1", "c1"));
        }
        other => panic!("expected the lms_user_id taken, got {other:?}"),
    }
    match f.store.upsert(&link("c2", "2", "ADA"), None).await {
        Err(StoreError::Taken { key: TakenKey::LmsUsername, owner, .. }) => assert_eq!(owner, "c1"),
        other => panic!("usernames compare case-insensitively, got {other:?}"),
    }
    assert!(f.store.get(&by_id("c2")).await.unwrap().is_none());
}

async fn lookups_by_every_key(f: Fixture) {
    f.store.upsert(&link("c1", "41", "Ada"), None).await.unwrap();
    f.store.upsert(&link("c2", "42", "grace"), None).await.unwrap();
    let by_name = f.store.get(&CustomerKey::LmsUsername(LmsUsername::parse("aDA").unwrap())).await.unwrap();
    assert_eq!(by_name.unwrap().customer_id, "c1");
    let by_lms = f.store.get(&CustomerKey::LmsUserId(LmsUserId::parse("42").unwrap())).await.unwrap();
    assert_eq!(by_lms.unwrap().customer_id, "c2");
    let many = f
        .store
        .get_many(&[
            CustomerKey::LmsUserId(LmsUserId::parse("42").unwrap()),
            by_id("missing"),
            CustomerKey::LmsUsername(LmsUsername::parse("ADA").unwrap()),
            by_id("c1"),
        ])
        .await
        .unwrap();
    let ids: Vec<Option<&str>> = many.iter().map(|c| c.as_ref().map(|c| c.customer_id.as_str())).collect();
    assert_eq!(ids, [Some("c2"), None, Some("c1"), Some("c1")]);
}

async fn retirement_replaces_the_name_keeps_the_id_and_is_idempotent(f: Fixture) {
    f.store.upsert(&link("c1", "77", "ada"), None).await.unwrap();
    let old_name = CustomerKey::LmsUsername(LmsUsername::parse("ada").unwrap());
    let retired = f.store.retire(&old_name, &salt(), &TextContext::default()).await.unwrap().unwrap().customer;
    assert!(retired.retired);
    assert_eq!(retired.lms_username, LmsUsername::parse("ada").unwrap().retired(&salt()).as_str());
    assert_eq!((retired.email.as_str(), retired.lms_user_id), ("", 77));
    assert!(f.store.get(&old_name).await.unwrap().is_none(), "the old username finds nobody");
    let again = f.store.retire(&by_id("c1"), &salt(), &TextContext::default()).await.unwrap().unwrap().customer;
    assert_eq!(again, retired, "retiring again changes nothing");
    assert!(matches!(f.store.upsert(&link("c1", "77", "ada"), None).await, Err(StoreError::Retired(_))));
    assert!(f.store.retire(&by_id("nobody"), &salt(), &TextContext::default()).await.unwrap().is_none());
    // One CustomerRetired in the outbox, written with the retirement: by id and placeholder, never the old name.
    let events = f.outbox.unpublished(10).await.unwrap();
    assert_eq!(events.len(), 1, "retiring again wrote no second event");
    let envelope = EventEnvelope::decode(events[0].event.payload.as_slice()).unwrap();
    let Some(Payload::CustomerRetired(event)) = envelope.payload else { panic!("a CustomerRetired") };
    assert_eq!((event.lms_user_id.as_str(), event.retired_username.as_str()), ("77", retired.lms_username.as_str()));
}

async fn import_upserts_and_rejects_with_reasons(f: Fixture) {
    f.store.upsert(&link("owner", "100", "taken_name"), None).await.unwrap();
    f.store.upsert(&link("existing", "200", "old_name"), None).await.unwrap();
    f.store.upsert(&link("gone", "300", "gone_name"), None).await.unwrap();
    f.store.retire(&by_id("gone"), &salt(), &TextContext::default()).await.unwrap();
    let rows = [
        link("new1", "1", "new_one"),        // 0 inserted
        link("existing", "200", "new_name"), // 1 updated
        link("thief", "100", "thief"),       // 2 lms_user_id belongs to owner
        link("thief2", "2", "TAKEN_NAME"),   // 3 username belongs to owner
        link("new1", "3", "again"),          // 4 repeats row 0's customer
        link("gone", "300", "back"),         // 5 retired
        link("new2", "4", "new_two"),        // 6 inserted
    ];
    let outcome = f.store.import(&rows).await.unwrap();
    assert_eq!((outcome.inserted, outcome.updated, outcome.unchanged), (2, 1, 0));
    let rejected: Vec<(usize, &str)> = outcome.rejected.iter().map(|r| (r.index, r.field)).collect();
    assert_eq!(rejected, [(2, "lms_user_id"), (3, "lms_username"), (4, "customer_id"), (5, "")]);
    assert!(outcome.rejected[0].reason.contains("owner"), "{:?}", outcome.rejected[0]);
    assert_eq!(outcome.previous.iter().map(|c| c.lms_username.as_str()).collect::<Vec<_>>(), ["old_name"]);
    let updated = f.store.get(&by_id("existing")).await.unwrap().unwrap();
    assert_eq!((updated.lms_username.as_str(), updated.version), ("new_name", 2));
    assert!(f.store.get(&by_id("thief")).await.unwrap().is_none());
    // Importing the same rows again changes nothing and reports them unchanged, not updated.
    let again = f.store.import(&rows[..2]).await.unwrap();
    assert_eq!((again.inserted, again.updated, again.unchanged, again.rejected.len()), (0, 0, 2, 0));
    let still = f.store.get(&by_id("existing")).await.unwrap().unwrap();
    assert_eq!(still.version, 2, "an unchanged row keeps its version");
    // One row changed among unchanged ones: only it counts as updated.
    let changed = [link("new1", "1", "new_one"), link("existing", "200", "newer_name")];
    let outcome = f.store.import(&changed).await.unwrap();
    assert_eq!((outcome.inserted, outcome.updated, outcome.unchanged), (0, 1, 1));
}

async fn two_rows_of_one_batch_claiming_one_key_the_first_wins(f: Fixture) {
    let rows = [link("a", "10", "first"), link("b", "10", "second"), link("c", "11", "FIRST"), link("d", "12", "ok")];
    let outcome = f.store.import(&rows).await.unwrap();
    assert_eq!((outcome.inserted, outcome.updated), (2, 0));
    let rejected: Vec<(usize, &str, &str)> =
        outcome.rejected.iter().map(|r| (r.index, r.field, r.reason.as_str())).collect();
    assert_eq!(rejected, [(1, "lms_user_id", "belongs to customer a"), (2, "lms_username", "belongs to customer a")]);
}

/// Rows `from..to` of a generated load: customer `load-<i>`, LMS user id i+1, username `user<i>`.
fn generated(from: usize, to: usize, username_prefix: &str) -> Vec<CustomerLink> {
    (from..to).map(|i| link(&format!("load-{i}"), &(i + 1).to_string(), &format!("{username_prefix}{i}"))).collect()
}

async fn import_into_a_filled_table_merges_row_by_row_outcomes(f: Fixture) {
    // More rows than one staging chunk, and not a multiple of it.
    let first = generated(0, 1234, "user");
    let loaded = f.store.import(&first).await.unwrap();
    assert_eq!((loaded.inserted, loaded.updated, loaded.unchanged, loaded.rejected.len()), (1234, 0, 0, 0));
    assert!(loaded.previous.is_empty());

    // Half the rows again: every tenth renamed, the rest as stored; then new rows.
    let mut second: Vec<CustomerLink> = generated(617, 1234, "user");
    for (n, row) in second.iter_mut().enumerate().filter(|(n, _)| n % 10 == 0) {
        let renamed = LmsUsername::parse(&format!("renamed{n}")).unwrap();
        *row = CustomerLink::new(row.customer_id().clone(), row.lms_user_id(), renamed, row.email().clone());
    }
    second.extend(generated(1234, 2000, "user"));
    let merged = f.store.import(&second).await.unwrap();
    // 62 renamed (every tenth of 617), 555 as stored.
    assert_eq!((merged.inserted, merged.updated, merged.unchanged, merged.rejected.len()), (766, 62, 555, 0));
    assert_eq!(merged.previous.len(), 617, "every stored customer the batch named, as it was");
    assert!(merged.previous.iter().all(|c| c.version == 1 && c.lms_username.starts_with("user")));

    let renamed = f.store.get(&by_id("load-617")).await.unwrap().unwrap();
    assert_eq!((renamed.lms_username.as_str(), renamed.version), ("renamed0", 2));
    let same = f.store.get(&by_id("load-618")).await.unwrap().unwrap();
    assert_eq!((same.lms_username.as_str(), same.version), ("user618", 1), "a row as stored changes nothing");
    let untouched = f.store.get(&by_id("load-3")).await.unwrap().unwrap();
    assert_eq!((untouched.lms_user_id, untouched.version), (4, 1));
    let new = f.store.get(&CustomerKey::LmsUserId(LmsUserId::parse("2000").unwrap())).await.unwrap().unwrap();
    assert_eq!(new.customer_id, "load-1999");
    assert!(f.store.get(&CustomerKey::LmsUsername(LmsUsername::parse("user617").unwrap())).await.unwrap().is_none());

    // The unique rules hold after a bulk load, for upserts and imports alike.
    match f.store.upsert(&link("intruder", "5", "intruder"), None).await {
        Err(StoreError::Taken { key: TakenKey::LmsUserId, owner, .. }) => assert_eq!(owner, "load-4"),
        other => panic!("the LMS user id index holds after a load, got {other:?}"),
    }
    match f.store.upsert(&link("intruder", "999999", "USER5"), None).await {
        Err(StoreError::Taken { key: TakenKey::LmsUsername, owner, .. }) => assert_eq!(owner, "load-5"),
        other => panic!("the username index holds after a load, got {other:?}"),
    }
}

async fn duplicate_keys_within_a_large_batch_reject_only_the_later_rows(f: Fixture) {
    f.store.upsert(&link("owner", "900000", "owned"), None).await.unwrap();
    let mut rows = generated(0, 1100, "user");
    // 600 repeats row 10's customer; 700 claims row 20's LMS user id; 800 row 30's username (other case);
    // 900 claims the stored owner's id, and its username, free, stays free for 1000.
    rows[600] = link("load-10", "600601", "dup_customer");
    rows[700] = link("load-700", "21", "dup_id");
    rows[800] = link("load-800", "801", "USER30");
    rows[900] = link("load-900", "900000", "free_name");
    rows[1000] = link("load-1000", "1001", "FREE_name");
    let outcome = f.store.import(&rows).await.unwrap();
    let rejected: Vec<(usize, &str, &str)> =
        outcome.rejected.iter().map(|r| (r.index, r.field, r.reason.as_str())).collect();
    assert_eq!(
        rejected[1..],
        [
            (700, "lms_user_id", "belongs to customer load-20"),
            (800, "lms_username", "belongs to customer load-30"),
            (900, "lms_user_id", "belongs to customer owner"),
        ]
    );
    assert_eq!((rejected[0].0, rejected[0].1), (600, "customer_id"));
    assert_eq!((outcome.inserted, outcome.updated), (1096, 0));
    let later = f.store.get(&CustomerKey::LmsUsername(LmsUsername::parse("free_NAME").unwrap())).await.unwrap();
    assert_eq!(later.unwrap().customer_id, "load-1000", "a rejected row claims nothing");
    let first = f.store.get(&by_id("load-10")).await.unwrap().unwrap();
    assert_eq!(first.lms_username, "user10", "the first row of a customer stands");
}

async fn concurrent_claims_of_one_lms_user_id_have_one_winner(f: Fixture) {
    let store = f.store.clone();
    let claims = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.upsert(&link(&format!("c{i}"), "5000", &format!("user{i}")), None).await })
    });
    let results = futures::future::join_all(claims).await;
    let winners: Vec<_> = results.iter().filter(|r| r.as_ref().unwrap().is_ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    let winner = winners[0].as_ref().unwrap().as_ref().unwrap().customer.customer_id.clone();
    for result in &results {
        match result.as_ref().unwrap() {
            Ok(_) => {}
            Err(StoreError::Taken { key: TakenKey::LmsUserId, owner, .. }) => assert_eq!(owner, &winner),
            Err(other) => panic!("a losing claim is told who owns the id, got {other:?}"),
        }
    }
}

/// `links` numbered from `first_row`.
fn numbered(first_row: i64, links: Vec<CustomerLink>) -> Vec<(i64, CustomerLink)> {
    (first_row..).zip(links).collect()
}

/// Every batch a first load handed back, as (row, customer id) lists.
async fn batches_of(mut staged: Box<dyn StagedBatches>) -> Vec<Vec<(i64, String)>> {
    let mut batches = Vec::new();
    while let Some(batch) = staged.next_batch().await.unwrap() {
        batches.push(batch.into_iter().map(|(row, link)| (row, link.customer_id().as_str().to_string())).collect());
    }
    assert!(staged.next_batch().await.unwrap().is_none(), "the end stays the end");
    batches
}

async fn a_first_load_inserts_every_row_and_the_unique_keys_hold_after(f: Fixture) {
    let mut load = f.store.begin_first_load().await.unwrap().expect("the table is empty");
    load.stage(&numbered(1, generated(0, 700, "first"))).await.unwrap();
    load.stage(&numbered(701, generated(700, 1200, "first"))).await.unwrap();
    assert!(f.store.get(&by_id("load-5")).await.unwrap().is_none(), "nothing is visible before the end");
    let FirstLoaded::Inserted(inserted) = load.finish().await.unwrap() else { panic!("no two rows share a key") };
    assert_eq!(inserted, 1200);
    let stored = f.store.get(&by_id("load-1199")).await.unwrap().expect("stored");
    assert_eq!((stored.lms_user_id, stored.lms_username.as_str(), stored.version), (1200, "first1199", 1));
    let by_name = CustomerKey::LmsUsername(LmsUsername::parse("FIRST7").unwrap());
    assert_eq!(f.store.get(&by_name).await.unwrap().expect("by username").customer_id, "load-7");
    // The indexes were built again: every key is still unique.
    let taken_id = f.store.upsert(&link("newcomer", "7", "newcomer"), None).await.unwrap_err();
    assert!(
        matches!(taken_id, StoreError::Taken { key: TakenKey::LmsUserId, ref owner, .. } if owner == "load-6"),
        "{taken_id:?}"
    );
    let taken_name = f.store.upsert(&link("newcomer", "99999", "First8"), None).await.unwrap_err();
    assert!(
        matches!(taken_name, StoreError::Taken { key: TakenKey::LmsUsername, ref owner, .. } if owner == "load-8"),
        "{taken_name:?}"
    );
    let created_again = f.store.upsert(&link("load-9", "10", "first9"), Some(0)).await.unwrap_err();
    assert!(matches!(created_again, StoreError::VersionMismatch { stored: Some(1), .. }), "{created_again:?}");
    assert!(f.store.begin_first_load().await.unwrap().is_none(), "the table has rows now");
}

async fn a_first_load_whose_rows_share_a_key_writes_nothing_and_hands_its_batches_back(f: Fixture) {
    let mut load = f.store.begin_first_load().await.unwrap().expect("the table is empty");
    load.stage(&[(1, link("a", "1", "ann")), (3, link("b", "2", "bob"))]).await.unwrap();
    // Row 5 claims bob's LMS user id; row 6 repeats a customer id.
    load.stage(&[(5, link("c", "2", "cat")), (6, link("a", "1", "ann2"))]).await.unwrap();
    let FirstLoaded::Conflicted(staged) = load.finish().await.unwrap() else { panic!("two rows share a key") };
    assert!(f.store.get(&by_id("a")).await.unwrap().is_none(), "nothing was written");
    let batches = batches_of(staged).await;
    let expected = [vec![(1, "a".to_string()), (3, "b".to_string())], vec![(5, "c".to_string()), (6, "a".to_string())]];
    assert_eq!(batches, expected, "in stream order, with their numbers");
    // The indexes are back as they were: the ordinary import refuses what they refuse.
    f.store.upsert(&link("b", "2", "bob"), None).await.unwrap();
    let refused = f.store.upsert(&link("c", "2", "cat"), None).await.unwrap_err();
    assert!(matches!(refused, StoreError::Taken { key: TakenKey::LmsUserId, .. }), "{refused:?}");
}

async fn a_first_load_into_a_table_filled_meanwhile_hands_its_batches_back(f: Fixture) {
    let mut load = f.store.begin_first_load().await.unwrap().expect("the table is empty");
    load.stage(&[(1, link("a", "1", "ann"))]).await.unwrap();
    f.store.upsert(&link("meanwhile", "50", "meanwhile"), None).await.unwrap();
    let FirstLoaded::Conflicted(staged) = load.finish().await.unwrap() else { panic!("the table is not empty") };
    assert_eq!(batches_of(staged).await, [vec![(1, "a".to_string())]]);
    assert!(f.store.get(&by_id("meanwhile")).await.unwrap().is_some(), "the other writer's row stays");
    assert!(f.store.get(&by_id("a")).await.unwrap().is_none());
}

async fn a_first_load_abandoned_half_way_leaves_the_table_as_it_was(f: Fixture) {
    let mut load = f.store.begin_first_load().await.unwrap().expect("the table is empty");
    load.stage(&[(1, link("a", "1", "ann"))]).await.unwrap();
    drop(load);
    let mut again = f.store.begin_first_load().await.unwrap().expect("still empty");
    again.stage(&[(1, link("b", "1", "ann"))]).await.unwrap();
    let FirstLoaded::Inserted(1) = again.finish().await.unwrap() else { panic!("only the second load's row") };
    assert!(f.store.get(&by_id("a")).await.unwrap().is_none());
}

async fn two_first_loads_at_once_the_first_to_end_writes_the_other_merges(f: Fixture) {
    let mut one = f.store.begin_first_load().await.unwrap().expect("the table is empty");
    let mut other = f.store.begin_first_load().await.unwrap().expect("still empty");
    one.stage(&[(1, link("a", "1", "ann"))]).await.unwrap();
    other.stage(&[(1, link("b", "2", "bob"))]).await.unwrap();
    // The other load, still staging, holds nothing that makes this one wait.
    let FirstLoaded::Inserted(1) = one.finish().await.unwrap() else { panic!("the first to end writes") };
    let FirstLoaded::Conflicted(staged) = other.finish().await.unwrap() else { panic!("the table has rows now") };
    assert_eq!(batches_of(staged).await, [vec![(1, "b".to_string())]]);
    assert!(f.store.get(&by_id("a")).await.unwrap().is_some());
}

async fn a_first_load_that_staged_nothing_changes_nothing(f: Fixture) {
    let load = f.store.begin_first_load().await.unwrap().expect("the table is empty");
    let FirstLoaded::Inserted(0) = load.finish().await.unwrap() else { panic!("nothing to write") };
    let mut again = f.store.begin_first_load().await.unwrap().expect("still empty");
    again.stage(&[(1, link("a", "1", "ann"))]).await.unwrap();
    let FirstLoaded::Inserted(1) = again.finish().await.unwrap() else { panic!("a load after it works") };
}

macro_rules! contract {
    ($backend:ident, $kind:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn upsert_creates_then_updates_then_changes_nothing() {
                super::upsert_creates_then_updates_then_changes_nothing(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn expected_versions_are_checked() {
                super::expected_versions_are_checked(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn keys_held_by_another_customer_are_refused_naming_the_owner() {
                super::keys_held_by_another_customer_are_refused_naming_the_owner(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn lookups_by_every_key() {
                super::lookups_by_every_key(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn retirement_replaces_the_name_keeps_the_id_and_is_idempotent() {
                super::retirement_replaces_the_name_keeps_the_id_and_is_idempotent(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn import_upserts_and_rejects_with_reasons() {
                super::import_upserts_and_rejects_with_reasons(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn two_rows_of_one_batch_claiming_one_key_the_first_wins() {
                super::two_rows_of_one_batch_claiming_one_key_the_first_wins(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn import_into_a_filled_table_merges_row_by_row_outcomes() {
                super::import_into_a_filled_table_merges_row_by_row_outcomes(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn duplicate_keys_within_a_large_batch_reject_only_the_later_rows() {
                super::duplicate_keys_within_a_large_batch_reject_only_the_later_rows(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_first_load_inserts_every_row_and_the_unique_keys_hold_after() {
                super::a_first_load_inserts_every_row_and_the_unique_keys_hold_after(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_first_load_whose_rows_share_a_key_writes_nothing_and_hands_its_batches_back() {
                super::a_first_load_whose_rows_share_a_key_writes_nothing_and_hands_its_batches_back(
                    fixture($kind).await,
                )
                .await;
            }
            #[tokio::test]
            async fn a_first_load_into_a_table_filled_meanwhile_hands_its_batches_back() {
                super::a_first_load_into_a_table_filled_meanwhile_hands_its_batches_back(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn two_first_loads_at_once_the_first_to_end_writes_the_other_merges() {
                super::two_first_loads_at_once_the_first_to_end_writes_the_other_merges(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_first_load_that_staged_nothing_changes_nothing() {
                super::a_first_load_that_staged_nothing_changes_nothing(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_first_load_abandoned_half_way_leaves_the_table_as_it_was() {
                super::a_first_load_abandoned_half_way_leaves_the_table_as_it_was(fixture($kind).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_claims_of_one_lms_user_id_have_one_winner() {
                super::concurrent_claims_of_one_lms_user_id_have_one_winner(fixture($kind).await).await;
            }
        }
    };
}

contract!(postgres, Backend::Postgres);
contract!(sqlite, Backend::Sqlite);
