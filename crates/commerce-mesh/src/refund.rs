//! `commerce-mesh refund ORDER [--line ID [--amount X]]`: support staff
//! refund an order, or some of its lines, through Fulfillment's
//! `RefundOrder`; the workers then revoke each refunded line in the LMS.
//!
//! Without `--line` every line of the order is refunded at its price. An
//! `--amount` refunds one named line partly, in the currency it was paid in.
//! The answer is printed as a table of the lines and where each stands.

use kit::client::TracedChannel;
use proto::commerce::fulfillment::v1 as pb;
use proto::commerce::fulfillment::v1::fulfillment_service_client::FulfillmentServiceClient;
use proto::commerce::r#type::v1::Money;

use crate::cli_output::answered;

/// What to refund.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundArgs {
    /// The order number.
    pub order_number: String,
    /// The line items; empty for every line of the order.
    pub lines: Vec<String>,
    /// A partial amount, for exactly one line.
    pub amount: Option<String>,
    /// Why.
    pub reason: String,
    /// Who refunds, recorded as the refund's source.
    pub source: String,
}

/// Why a refund could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// `--amount` names no single line.
    #[error("--amount refunds one line partly: name exactly one --line")]
    AmountWithoutOneLine,
    /// The service address is invalid.
    #[error(transparent)]
    Client(#[from] kit::client::ClientError),
    /// Fulfillment refused or failed; its message names the field or the line.
    #[error("Fulfillment answered {}", answered(.0))]
    Service(tonic::Status),
}

/// Refunds what `args` names through Fulfillment at `endpoint`, presenting
/// `credential`; answers its answer.
pub async fn refund(
    endpoint: &str,
    credential: kit::credential::Credential,
    args: &RefundArgs,
) -> Result<pb::RefundOrderResponse, RefundError> {
    if args.amount.is_some() && args.lines.len() != 1 {
        return Err(RefundError::AmountWithoutOneLine);
    }
    let mut client = FulfillmentServiceClient::new(kit::client::channel_as(endpoint, credential)?);
    let lines = match args.lines.as_slice() {
        [] => order_lines(&mut client, &args.order_number).await?,
        named => named.iter().map(|id| pb::RefundedLine { line_item_id: id.clone(), refunded_amount: None }).collect(),
    };
    let lines = match (&args.amount, lines.as_slice()) {
        (Some(amount), [line]) => {
            // In the currency the line was paid in, which the caller need not know.
            let currency = line_currency(&mut client, &args.order_number, &line.line_item_id).await?;
            vec![pb::RefundedLine {
                line_item_id: line.line_item_id.clone(),
                refunded_amount: Some(Money { currency_code: currency, amount: amount.clone() }),
            }]
        }
        _ => lines,
    };
    let request = pb::RefundOrderRequest {
        order_number: args.order_number.clone(),
        lines,
        reason: args.reason.clone(),
        source: args.source.clone(),
    };
    client.refund_order(request).await.map(tonic::Response::into_inner).map_err(RefundError::Service)
}

async fn listed(
    client: &mut FulfillmentServiceClient<TracedChannel>,
    order_number: &str,
) -> Result<Vec<pb::Fulfillment>, RefundError> {
    let request = pb::ListOrderFulfillmentsRequest {
        order_number: order_number.into(),
        page_size: 500,
        page_token: String::new(),
    };
    let listed = client.list_order_fulfillments(request).await.map_err(RefundError::Service)?.into_inner();
    if listed.fulfillments.is_empty() {
        return Err(RefundError::Service(tonic::Status::not_found(format!("no order {order_number}"))));
    }
    Ok(listed.fulfillments)
}

async fn order_lines(
    client: &mut FulfillmentServiceClient<TracedChannel>,
    order_number: &str,
) -> Result<Vec<pb::RefundedLine>, RefundError> {
    Ok(listed(client, order_number)
        .await?
        .into_iter()
        .map(|f| pb::RefundedLine { line_item_id: f.line_item_id, refunded_amount: None })
        .collect())
}

async fn line_currency(
    client: &mut FulfillmentServiceClient<TracedChannel>,
    order_number: &str,
    line_item_id: &str,
) -> Result<String, RefundError> {
    let price = listed(client, order_number)
        .await?
        .into_iter()
        .find(|f| f.line_item_id == line_item_id)
        .and_then(|f| f.line_item.and_then(|line| line.price));
    match price {
        Some(price) => Ok(price.currency_code),
        None => Err(RefundError::Service(tonic::Status::not_found(format!(
            "order {order_number} has no line item {line_item_id}"
        )))),
    }
}

/// The answer as a table: each line, its fulfillment, its state and refund.
pub fn summary(answer: &pb::RefundOrderResponse) -> String {
    let mut out = format!(
        "{}\n{:<14} {:<38} {:<16} {}\n",
        if answer.created { "refund recorded" } else { "already refunded so: nothing changed" },
        "LINE",
        "FULFILLMENT",
        "STATE",
        "REFUNDED"
    );
    for f in &answer.fulfillments {
        let state = pb::FulfillmentState::try_from(f.state)
            .map(|s| s.as_str_name().trim_start_matches("FULFILLMENT_STATE_").to_string())
            .unwrap_or_else(|_| f.state.to_string());
        let refunded = f
            .refund
            .as_ref()
            .and_then(|r| r.refunded_amount.as_ref())
            .map(|m| format!("{} {}", m.amount, m.currency_code))
            .unwrap_or_default();
        out.push_str(&format!("{:<14} {:<38} {:<16} {refunded}\n", f.line_item_id, f.fulfillment_id, state));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_a_table_of_lines() {
        let answer = pb::RefundOrderResponse {
            created: true,
            fulfillments: vec![pb::Fulfillment {
                fulfillment_id: "f-1".into(),
                line_item_id: "1".into(),
                state: pb::FulfillmentState::Revoking as i32,
                refund: Some(pb::Refund {
                    refunded_amount: Some(Money { currency_code: "USD".into(), amount: "49.00".into() }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let table = summary(&answer);
        assert!(table.starts_with("refund recorded\nLINE"), "{table}");
        assert!(table.contains("REVOKING") && table.contains("49.00 USD"), "{table}");
    }
}
