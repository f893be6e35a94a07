//! Fulfillment's rules, pure and unit-tested: what a valid order is, when two
//! acceptances of one line item are "the same", what happens after each
//! LMS attempt (the retry policy), and what a refund does to a line in each
//! state.
//!
//! Parse, don't validate: each value below is built only by its `parse`, so an
//! invalid one cannot exist past `api.rs`.

mod order;
mod refund;
mod retry;
mod state;

pub use order::{
    JobSpec, Learner, LearnerRef, MAX_LINE_ITEMS, Mode, Order, OrderHeader, OrderLine, Product, Repeat, compare_repeat,
};
pub use refund::{
    LearnerKey, Refund, RefundEffect, RefundMismatch, RefundRequest, RefundTerms, RequestTarget, may_have_granted,
    refund_effect, refund_request_target,
};
pub use retry::{AfterFailure, AttemptFailure, ErrorKind, JobError, RetryPolicy};
pub use state::{AttemptEnd, JobState, state_after_attempt};
