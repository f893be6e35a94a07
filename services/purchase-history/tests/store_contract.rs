//! The store contract: the same checks against every backend.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kit::db::{Backend, Database};
use kit::testing::TestDatabase;
use purchase_history::domain::{LearnerKey, PageCursor, Purchase};
use purchase_history::refund::PurchaseRefund;
use purchase_history::store::{Store, for_database};
use vocab::{
    LmsUserId, LmsUsername, OrderNumber, Price, ProductKey, PurchaseId, RefundReason, Retirement, SourceSystem, Title,
};

struct Fixture {
    store: Arc<dyn Store>,
    _db: TestDatabase,
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::new(backend, purchase_history::NAME).await;
    kit::db::migrate(db.config(), &purchase_history::MIGRATIONS).await.expect("migrate");
    let store = for_database(&Database::open(db.config()).expect("open"));
    Fixture { store, _db: db }
}

/// A time with microseconds, to show they are kept.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(seconds)
}

fn purchase(id: &str, lms_user_id: i64, username: &str, purchased_at: DateTime<Utc>) -> Purchase {
    Purchase {
        purchase_id: PurchaseId::parse(id).unwrap(),
        lms_user_id: uid(lms_user_id),
        username: name(username),
        order_number: Some(OrderNumber::parse(&format!("EDX-{id}")).unwrap()),
        product_key: Some(ProductKey::parse("course-v1:edX+DemoX+T1").unwrap()),
        title: Title::parse("Demo: “quotes” and ünïcode").unwrap(),
        price: Price::parse("USD", "149.00").unwrap(),
        purchased_at,
        source: Some(SourceSystem::parse("fulfillment").unwrap()),
    }
}

fn uid(id: i64) -> LmsUserId {
    LmsUserId::new(id).unwrap()
}

fn name(username: &str) -> LmsUsername {
    LmsUsername::parse(username).unwrap()
}

fn ids(purchases: &[Purchase]) -> Vec<&str> {
    purchases.iter().map(|p| p.purchase_id.as_str()).collect()
}

async fn all(store: &dyn Store, learner: &LearnerKey) -> Vec<Purchase> {
    store.list(learner, None, 10_000).await.unwrap()
}

fn refund(id: &str, amount: &str, refunded_at: DateTime<Utc>) -> PurchaseRefund {
    PurchaseRefund::new(
        PurchaseId::parse(id).unwrap(),
        uid(7),
        Price::parse("USD", amount).unwrap(),
        RefundReason::parse("requested_by_customer").unwrap(),
        SourceSystem::parse("stripe").unwrap(),
        refunded_at,
    )
}

async fn a_refund_marks_its_purchase_whichever_arrives_first(f: Fixture) {
    let learner = LearnerKey::LmsUserId(uid(7));
    f.store.insert_batch(&[purchase("p-1", 7, "ada", at(1)), purchase("p-2", 7, "ada", at(2))]).await.unwrap();
    // p-3's refund is delivered before p-3 itself.
    let refunds = [refund("p-1", "149.00", at(10)), refund("p-3", "49.5", at(11))];
    assert_eq!(f.store.insert_refunds(&refunds).await.unwrap(), 2);
    assert_eq!(f.store.insert_refunds(&[refund("p-1", "1.00", at(12))]).await.unwrap(), 0, "the first refund stays");
    f.store.insert_batch(&[purchase("p-3", 7, "ada", at(3))]).await.unwrap();

    let listed = f.store.list_page(&learner, None, 10, false).await.unwrap();
    let seen: Vec<(&str, Option<&PurchaseRefund>)> =
        listed.iter().map(|l| (l.purchase.purchase_id.as_str(), l.refund.as_ref())).collect();
    assert_eq!(seen, [("p-3", Some(&refunds[1])), ("p-2", None), ("p-1", Some(&refunds[0]))]);
    assert_eq!(listed[2].purchase, purchase("p-1", 7, "ada", at(1)), "the purchase is kept as bought");

    let unrefunded = f.store.list_page(&learner, None, 10, true).await.unwrap();
    assert_eq!(unrefunded.iter().map(|l| l.purchase.purchase_id.as_str()).collect::<Vec<_>>(), ["p-2"]);
    let after = PageCursor::after(&listed[0].purchase);
    let next = f.store.list_page(&learner, Some(&after), 1, true).await.unwrap();
    assert_eq!(
        next.iter().map(|l| l.purchase.purchase_id.as_str()).collect::<Vec<_>>(),
        ["p-2"],
        "pages skip them too"
    );
}

async fn a_batch_stores_each_purchase_once(f: Fixture) {
    let mut empty = purchase("p-empty", 7, "ada", at(3));
    (empty.order_number, empty.product_key, empty.title, empty.source) = Default::default();
    let batch = vec![purchase("p-1", 7, "ada", at(1)), purchase("p-2", 7, "ada", at(2)), empty.clone()];
    assert_eq!(f.store.insert_batch(&batch).await.unwrap(), 3);
    assert_eq!(f.store.insert_batch(&batch).await.unwrap(), 0, "a repeat of the whole batch stores nothing");
    let overlapping = vec![purchase("p-2", 7, "ada", at(2)), purchase("p-3", 7, "ada", at(4)), batch[0].clone()];
    assert_eq!(f.store.insert_batch(&overlapping).await.unwrap(), 1, "only the new purchase of an overlapping batch");
    assert_eq!(f.store.insert_batch(&[]).await.unwrap(), 0);

    let stored = all(&*f.store, &LearnerKey::LmsUserId(uid(7))).await;
    assert_eq!(ids(&stored), ["p-3", "p-empty", "p-2", "p-1"]);
    assert_eq!(stored[3], batch[0], "every field reads back as written, microseconds and exact amount included");
    assert_eq!(stored[1], empty, "absent optional fields read back empty");
}

async fn a_repeated_id_keeps_its_first_content(f: Fixture) {
    let first = purchase("p-1", 7, "ada", at(1));
    let mut other = purchase("p-1", 8, "bob", at(9));
    other.price = Price::parse("USD", "1.00").unwrap();
    let mut in_batch_repeat = first.clone();
    in_batch_repeat.title = Title::parse("a later copy in the same batch").unwrap();
    assert_eq!(f.store.insert_batch(&[first.clone(), in_batch_repeat]).await.unwrap(), 1);
    assert_eq!(f.store.insert_batch(&[other]).await.unwrap(), 0);
    assert_eq!(all(&*f.store, &LearnerKey::LmsUserId(uid(7))).await, [first]);
    assert!(all(&*f.store, &LearnerKey::LmsUserId(uid(8))).await.is_empty());
}

async fn lists_newest_first_by_lms_user_id(f: Fixture) {
    let batch = vec![
        purchase("p-old", 7, "ada", at(-100)),
        purchase("p-new", 7, "ada", at(100)),
        purchase("p-mid", 7, "ada_renamed", at(0)),
        purchase("p-other", 8, "bob", at(50)),
    ];
    f.store.insert_batch(&batch).await.unwrap();
    let listed = all(&*f.store, &LearnerKey::LmsUserId(uid(7))).await;
    assert_eq!(ids(&listed), ["p-new", "p-mid", "p-old"], "a rename does not split the history by id");
    let first_two = f.store.list(&LearnerKey::LmsUserId(uid(7)), None, 2).await.unwrap();
    assert_eq!(ids(&first_two), ["p-new", "p-mid"]);
    assert!(all(&*f.store, &LearnerKey::LmsUserId(uid(9))).await.is_empty());
}

async fn lists_by_username_case_insensitively(f: Fixture) {
    let batch = vec![
        purchase("p-1", 7, "Ada_L", at(1)),
        purchase("p-2", 7, "ada_l", at(2)),
        purchase("p-3", 8, "ada_lx", at(3)),
        purchase("p-4", 9, "bob", at(4)),
    ];
    f.store.insert_batch(&batch).await.unwrap();
    for key in ["ada_l", "ADA_L", "Ada_L"] {
        let listed = all(&*f.store, &LearnerKey::Username(name(key))).await;
        assert_eq!(ids(&listed), ["p-2", "p-1"], "{key}");
        assert_eq!(listed[1].username.as_str(), "Ada_L", "the username is kept as written");
    }
    assert!(all(&*f.store, &LearnerKey::Username(name("ada"))).await.is_empty(), "no prefix match");
}

async fn pages_cover_every_purchase_once_in_order(f: Fixture) {
    // 23 purchases, some sharing a time, inserted in no particular order.
    let batch: Vec<Purchase> =
        (0..23).map(|n| purchase(&format!("p-{:02}", (n * 7) % 23), 7, "ada", at(((n * 7) % 23) / 3))).collect();
    f.store.insert_batch(&batch).await.unwrap();
    let learner = LearnerKey::LmsUserId(uid(7));
    let everything = all(&*f.store, &learner).await;
    assert_eq!(everything.len(), 23);
    let mut paged = Vec::new();
    let mut after: Option<PageCursor> = None;
    loop {
        let page = f.store.list(&learner, after.as_ref(), 5).await.unwrap();
        assert!(page.len() <= 5);
        let Some(last) = page.last() else { break };
        // Through the token, as a caller carries it.
        after = Some(PageCursor::decode(&PageCursor::after(last).encode()).unwrap());
        paged.extend(page);
    }
    assert_eq!(paged, everything, "the pages together are the whole list, each purchase once, in order");
    let keys: Vec<(DateTime<Utc>, &str)> = paged.iter().map(|p| (p.purchased_at, p.purchase_id.as_str())).collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "strictly descending: {keys:?}");
}

async fn pages_stay_stable_while_newer_purchases_arrive(f: Fixture) {
    for (learner, lms_user_id, username) in
        [(LearnerKey::LmsUserId(uid(7)), 7, "ada"), (LearnerKey::Username(name("BOB")), 8, "bob")]
    {
        let batch: Vec<Purchase> =
            (0..12).map(|n| purchase(&format!("{username}-{n:02}"), lms_user_id, username, at(n))).collect();
        f.store.insert_batch(&batch).await.unwrap();
        let first = f.store.list(&learner, None, 5).await.unwrap();
        let expected_first: Vec<Purchase> = batch[7..].iter().rev().cloned().collect();
        assert_eq!(first, expected_first);
        let token = PageCursor::after(first.last().unwrap()).encode();
        let second = f.store.list(&learner, Some(&PageCursor::decode(&token).unwrap()), 5).await.unwrap();
        let expected_second: Vec<Purchase> = batch[2..7].iter().rev().cloned().collect();
        assert_eq!(second, expected_second);

        // Newer purchases arrive between page fetches.
        let newer: Vec<Purchase> =
            (0..3).map(|n| purchase(&format!("{username}-new-{n}"), lms_user_id, username, at(100 + n))).collect();
        assert_eq!(f.store.insert_batch(&newer).await.unwrap(), 3);
        let again = f.store.list(&learner, Some(&PageCursor::decode(&token).unwrap()), 5).await.unwrap();
        assert_eq!(again, second, "the second page is unchanged");
        let tail = f.store.list(&learner, Some(&PageCursor::after(second.last().unwrap())), 5).await.unwrap();
        assert_eq!(tail, [batch[1].clone(), batch[0].clone()]);
        let first_now = f.store.list(&learner, None, 5).await.unwrap();
        let newest: Vec<Purchase> = newer.iter().rev().cloned().collect();
        assert_eq!(first_now[..3], newest[..], "the first page shows the newer purchases");
    }
}

async fn equal_times_are_ordered_by_purchase_id(f: Fixture) {
    // Byte order on both backends: upper case before lower case, '-' before digits.
    let batch: Vec<Purchase> =
        ["p-b", "p-D", "p-a", "p-c", "p-E", "p-0"].iter().map(|id| purchase(id, 7, "ada", t0())).collect();
    f.store.insert_batch(&batch).await.unwrap();
    f.store
        .insert_batch(&[purchase("p-later", 7, "ada", at(1)), purchase("p-earlier", 7, "ada", at(-1))])
        .await
        .unwrap();
    let learner = LearnerKey::LmsUserId(uid(7));
    let expected = ["p-later", "p-c", "p-b", "p-a", "p-E", "p-D", "p-0", "p-earlier"];
    assert_eq!(ids(&all(&*f.store, &learner).await), expected);
    // A page boundary inside the tie continues with the next id, skipping and repeating none.
    let mut paged = Vec::new();
    let mut after: Option<PageCursor> = None;
    loop {
        let page = f.store.list(&learner, after.as_ref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(PageCursor::after(last));
        paged.extend(page.iter().map(|p| p.purchase_id.to_string()));
    }
    assert_eq!(paged, expected);
}

async fn concurrent_inserts_of_one_batch_store_each_purchase_once(f: Fixture) {
    let batch: Vec<Purchase> = (0..200).map(|n| purchase(&format!("c-{n:03}"), 7, "ada", at(n % 50))).collect();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&f.store);
            // Each writer sends the batch in its own order, as redeliveries might.
            let mut mine = batch.clone();
            mine.rotate_left(w * 50);
            if w % 2 == 1 {
                mine.reverse();
            }
            tokio::spawn(async move { store.insert_batch(&mine).await.unwrap() })
        })
        .collect();
    let mut stored = 0;
    for writer in writers {
        stored += writer.await.unwrap();
    }
    assert_eq!(stored, 200, "the writers' counts of new purchases add up to the batch");
    let listed = all(&*f.store, &LearnerKey::LmsUserId(uid(7))).await;
    let mut listed_ids: Vec<&str> = ids(&listed);
    listed_ids.sort_unstable();
    listed_ids.dedup();
    assert_eq!((listed.len(), listed_ids.len()), (200, 200), "each purchase once");
}

async fn a_retirement_renames_the_learners_purchases_and_later_ones(f: Fixture) {
    f.store.insert_batch(&[purchase("p-1", 7, "ada", at(1)), purchase("p-2", 8, "bob", at(1))]).await.unwrap();
    let placeholder = name(&format!("retired__user_{}", "5e".repeat(20)));
    let retirement = Retirement { customer_id: None, lms_user_id: uid(7), retired_username: placeholder.clone() };
    assert_eq!(f.store.retire_learners(std::slice::from_ref(&retirement)).await.unwrap(), 1);
    assert_eq!(f.store.retire_learners(std::slice::from_ref(&retirement)).await.unwrap(), 0, "idempotent");
    // A purchase of the retired learner that arrives later still names the old username.
    f.store.insert_batch(&[purchase("p-3", 7, "ada", at(2))]).await.unwrap();
    let listed = all(&*f.store, &LearnerKey::LmsUserId(uid(7))).await;
    assert_eq!(ids(&listed), ["p-3", "p-1"], "still listed by lms_user_id");
    assert!(listed.iter().all(|p| p.username == placeholder), "{listed:?}");
    assert!(all(&*f.store, &LearnerKey::Username(name("ada"))).await.is_empty(), "the old name finds nothing");
    assert_eq!(all(&*f.store, &LearnerKey::LmsUserId(uid(8))).await[0].username, name("bob"), "others untouched");
    assert_eq!(f.store.retired_username(uid(7)).await.unwrap(), Some(placeholder));
    assert_eq!(f.store.retired_username(uid(8)).await.unwrap(), None);
}

macro_rules! contract {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn a_retirement_renames_the_learners_purchases_and_later_ones() {
                super::a_retirement_renames_the_learners_purchases_and_later_ones(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_batch_stores_each_purchase_once() {
                super::a_batch_stores_each_purchase_once(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_repeated_id_keeps_its_first_content() {
                super::a_repeated_id_keeps_its_first_content(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn lists_newest_first_by_lms_user_id() {
                super::lists_newest_first_by_lms_user_id(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn lists_by_username_case_insensitively() {
                super::lists_by_username_case_insensitively(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn a_refund_marks_its_purchase_whichever_arrives_first() {
                super::a_refund_marks_its_purchase_whichever_arrives_first(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn pages_cover_every_purchase_once_in_order() {
                super::pages_cover_every_purchase_once_in_order(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn pages_stay_stable_while_newer_purchases_arrive() {
                super::pages_stay_stable_while_newer_purchases_arrive(fixture($kind).await).await;
            }
            #[tokio::test]
            async fn equal_times_are_ordered_by_purchase_id() {
                super::equal_times_are_ordered_by_purchase_id(fixture($kind).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_inserts_of_one_batch_store_each_purchase_once() {
                super::concurrent_inserts_of_one_batch_store_each_purchase_once(fixture($kind).await).await;
            }
        }
    };
}

contract!(postgres, Backend::Postgres);
contract!(sqlite, Backend::Sqlite);
