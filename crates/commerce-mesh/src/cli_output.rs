//! How the operator commands (`fulfillments`, `dead-letters`, `refund`) reach
//! a component and print: the channel to it as the caller's token says,
//! aligned tables, pretty JSON, timestamps, and a refusal's field violations.

use crate::{Component, MeshConfig};

/// A channel to `component` at `address` (default: where `config` has it listen), carrying
/// `token` or, without one, a development token with `scopes` minted from `config`.
pub(crate) fn channel_to<E>(
    config: &MeshConfig,
    component: Component,
    address: Option<&str>,
    token: Option<String>,
    scopes: &[&str],
) -> Result<kit::client::TracedChannel, E>
where
    E: From<crate::dev_tokens::DevTokenError> + From<kit::client::ClientError>,
{
    let endpoint = address.map_or_else(|| format!("http://{}", config.listen(component)), str::to_owned);
    let credential = crate::dev_tokens::tool_credential(config, token, scopes)?;
    Ok(kit::client::channel_as(&endpoint, credential)?)
}

/// A service's refusal as a tool prints it: the code's name (`ALREADY_EXISTS`,
/// not tonic's sentence), the message, the field violations, and for a
/// missing or refused token where a tool's token comes from.
pub(crate) fn answered(status: &tonic::Status) -> String {
    let hint = match status.code() {
        tonic::Code::Unauthenticated => {
            "\n  (a tool's token: --token or COMMERCE_MESH_TOKEN; without one it mints a development token with \
             MESH_AUTH__DEVELOPMENT_SECRET, or with the secret `up` keeps under its data directory)"
        }
        _ => "",
    };
    format!("{}: {}{}{hint}", code_name(status.code()), status.message(), violations(status))
}

/// A gRPC code's canonical name: `AlreadyExists` → `ALREADY_EXISTS`.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// A status's field violations, one indented line each, to follow its message.
pub(crate) fn violations(status: &tonic::Status) -> String {
    kit::error::field_violations(status).iter().map(|(field, reason)| format!("\n  {field}: {reason}")).collect()
}

/// `value` as indented JSON and a final newline, as `--json` prints it.
pub(crate) fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// A timestamp in RFC 3339 UTC to the second; empty when unset or out of range.
pub(crate) fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    formatted(timestamp, "%Y-%m-%dT%H:%M:%SZ")
}

/// A timestamp in RFC 3339 UTC to the millisecond (events a second apart matter).
pub(crate) fn time_millis(timestamp: Option<&prost_types::Timestamp>) -> String {
    formatted(timestamp, "%Y-%m-%dT%H:%M:%S%.3fZ")
}

fn formatted(timestamp: Option<&prost_types::Timestamp>, format: &str) -> String {
    timestamp.and_then(|t| kit::time::from_timestamp(t).ok()).map(|t| t.format(format).to_string()).unwrap_or_default()
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let mut text = padded.join("  ").trim_end().to_string();
        text.push('\n');
        text
    };
    let mut out = line(header);
    for row in rows {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_the_widest_cell_and_lines_end_without_spaces() {
        let text = table(&["ID", "STATE"], &[vec!["f-1".into(), "FAILED".into()], vec!["f-22".into(), "".into()]]);
        assert_eq!(text, "ID    STATE\nf-1   FAILED\nf-22\n");
    }

    #[test]
    fn timestamps_print_to_the_second_or_the_millisecond() {
        let t = prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 };
        assert_eq!(time(Some(&t)), "2023-11-14T22:13:20Z");
        assert_eq!(time_millis(Some(&t)), "2023-11-14T22:13:20.005Z");
        assert_eq!(time(None), "");
    }

    #[test]
    fn a_refusal_names_its_code_as_grpc_does_and_where_a_token_comes_from() {
        let refused = answered(&tonic::Status::already_exists("line item 1 of order EDX-1 was already refunded"));
        assert_eq!(refused, "ALREADY_EXISTS: line item 1 of order EDX-1 was already refunded");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
        let unauthenticated = answered(&tonic::Status::unauthenticated("no bearer token"));
        assert!(unauthenticated.starts_with("UNAUTHENTICATED: no bearer token\n"), "{unauthenticated}");
        assert!(unauthenticated.contains("--token or COMMERCE_MESH_TOKEN"), "{unauthenticated}");
    }
}
