//! `commerce-mesh import-customers FILE.csv`: streams a CSV of customer links
//! into CustomerIdentity's `ImportCustomers`, with a progress bar.
//!
//! The CSV has a header row naming `customer_id`, `lms_user_id`,
//! `lms_username` and optionally `email`, in any order. Data row N (line N+1)
//! is row N in the answer's rejections. A row with missing fields is sent as
//! it is and rejected by the service, naming the field.
//!
//! Exit status: 0 when every row was stored (inserted, updated or unchanged),
//! [`REJECTED_EXIT_CODE`] when the import ran to its end but some rows were
//! rejected (listed), 1 when it could not run to its end (2 is clap's: bad usage).

use std::fs::File;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use proto::commerce::identity::v1::customer_identity_service_client::CustomerIdentityServiceClient;
use proto::commerce::identity::v1::{CustomerRecord, ImportCustomersRequest, ImportCustomersResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Why an import could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CSV is malformed or lacks a required column.
    #[error("{path}: {message}")]
    Csv {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// The service address is invalid.
    #[error(transparent)]
    Client(#[from] kit::client::ClientError),
    /// No connection to CustomerIdentity could be made: nothing answered, nothing was imported.
    #[error("could not connect to CustomerIdentity at {endpoint}: {cause}")]
    Unreachable {
        /// The address tried.
        endpoint: String,
        /// Why, in the words of the deepest cause (`Connection refused (os error 111)`).
        cause: String,
    },
    /// The import ran to its end, but some rows were rejected (the summary lists them).
    #[error("{rejected} row(s) rejected; the others are stored")]
    Rejected {
        /// How many.
        rejected: i64,
    },
    /// The service refused or failed the import; rows before the failure are stored.
    #[error("CustomerIdentity answered {}", crate::cli_output::answered(.0))]
    Service(tonic::Status),
}

/// Column positions in the CSV.
struct Columns {
    customer_id: usize,
    lms_user_id: usize,
    lms_username: usize,
    email: Option<usize>,
}

impl Columns {
    fn from_headers(headers: &csv::StringRecord) -> Result<Self, String> {
        let find = |name: &str| headers.iter().position(|h| h.trim() == name);
        let require = |name: &str| find(name).ok_or_else(|| format!("the header row has no {name} column"));
        Ok(Self {
            customer_id: require("customer_id")?,
            lms_user_id: require("lms_user_id")?,
            lms_username: require("lms_username")?,
            email: find("email"),
        })
    }

    fn record(&self, row: &csv::StringRecord) -> CustomerRecord {
        let field = |index: usize| row.get(index).unwrap_or_default().trim().to_string();
        CustomerRecord {
            customer_id: field(self.customer_id),
            lms_user_id: field(self.lms_user_id),
            lms_username: field(self.lms_username),
            email: self.email.map(field).unwrap_or_default(),
        }
    }
}

/// Streams `path` to the CustomerIdentity at `endpoint`, presenting
/// `credential`, in batches of `batch_size` rows; answers the service's summary.
pub async fn import_customers(
    path: &Path,
    endpoint: &str,
    credential: kit::credential::Credential,
    batch_size: usize,
) -> Result<ImportCustomersResponse, ImportError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| ImportError::File { path: shown.clone(), source })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
    let headers =
        reader.headers().map_err(|e| ImportError::Csv { path: shown.clone(), message: e.to_string() })?.clone();
    let columns =
        Columns::from_headers(&headers).map_err(|message| ImportError::Csv { path: shown.clone(), message })?;

    let progress = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} [{bar:40}] {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (batches, receiver) = mpsc::channel::<ImportCustomersRequest>(4);
    let batch_size = batch_size.max(1);
    let reading = {
        let progress = progress.clone();
        let shown = shown.clone();
        // csv reads synchronously: off the async workers.
        tokio::task::spawn_blocking(move || -> Result<u64, ImportError> {
            let mut rows = 0u64;
            let mut batch = Vec::with_capacity(batch_size);
            let mut record = csv::StringRecord::new();
            loop {
                let more = reader.read_record(&mut record).map_err(|e| ImportError::Csv {
                    path: shown.clone(),
                    message: format!("line {}: {e}", reader.position().line()),
                })?;
                if more {
                    batch.push(columns.record(&record));
                    rows += 1;
                }
                if batch.len() == batch_size || (!more && !batch.is_empty()) {
                    let customers = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                    // The service has stopped reading: its answer says why.
                    if batches.blocking_send(ImportCustomersRequest { customers }).is_err() {
                        break;
                    }
                    progress.set_position(reader.position().byte());
                    progress.set_message(format!("{rows} rows"));
                }
                if !more {
                    break;
                }
            }
            Ok(rows)
        })
    };

    let mut client = CustomerIdentityServiceClient::new(kit::client::channel_as(endpoint, credential)?);
    let answer = client.import_customers(ReceiverStream::new(receiver)).await;
    let read = reading.await.map_err(|e| ImportError::Csv { path: shown, message: e.to_string() })?;
    progress.finish_and_clear();
    read?;
    answer.map(tonic::Response::into_inner).map_err(|status| match kit::error::connection_failure(&status) {
        Some(cause) => ImportError::Unreachable { endpoint: endpoint.to_string(), cause },
        None => ImportError::Service(status),
    })
}

/// The exit status of an import that ran to its end with rows rejected: a
/// script tells it from success (0), failure (1) and bad usage (2, clap's).
pub const REJECTED_EXIT_CODE: u8 = 3;

/// `Ok` when every row was stored; else [`ImportError::Rejected`], whose
/// exit status is [`REJECTED_EXIT_CODE`].
pub fn outcome(answer: &ImportCustomersResponse) -> Result<(), ImportError> {
    if answer.rejected > 0 { Err(ImportError::Rejected { rejected: answer.rejected }) } else { Ok(()) }
}

/// The summary printed after an import: counts, then up to `shown` rejections.
pub fn summary(answer: &ImportCustomersResponse, shown: usize) -> String {
    let mut text = format!(
        "imported: {} inserted, {} updated, {} unchanged, {} rejected\n",
        answer.inserted, answer.updated, answer.unchanged, answer.rejected
    );
    for rejection in answer.rejections.iter().take(shown) {
        let field = if rejection.field.is_empty() { String::new() } else { format!("{}: ", rejection.field) };
        text.push_str(&format!(
            "  row {} (line {}) customer {:?}: {field}{}\n",
            rejection.row,
            rejection.row + 1,
            rejection.customer_id,
            rejection.reason
        ));
    }
    let untold = (answer.rejected.max(0) as usize).saturating_sub(answer.rejections.len().min(shown));
    if untold > 0 {
        text.push_str(&format!("  ... and {untold} more rejected row(s)\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::commerce::identity::v1::ImportRejection;

    #[test]
    fn columns_are_found_by_name_in_any_order() {
        let headers = csv::StringRecord::from(vec!["email", "lms_username", "customer_id", "lms_user_id"]);
        let columns = Columns::from_headers(&headers).unwrap();
        let record = columns.record(&csv::StringRecord::from(vec!["a@x.org", "ada", "c1", " 42 "]));
        assert_eq!(
            (record.customer_id.as_str(), record.lms_user_id.as_str(), record.lms_username.as_str()),
            ("c1", "42", "ada")
        );
        let short = columns.record(&csv::StringRecord::from(vec!["a@x.org"]));
        assert_eq!(short.customer_id, "", "a short row is sent as is and rejected by the service");
    }

    #[test]
    fn a_missing_column_is_named() {
        let headers = csv::StringRecord::from(vec!["customer_id", "lms_username"]);
        assert_eq!(Columns::from_headers(&headers).err().as_deref(), Some("the header row has no lms_user_id column"));
    }

    #[test]
    fn the_summary_lists_rejections_with_lines() {
        let answer = ImportCustomersResponse {
            inserted: 5,
            updated: 1,
            unchanged: 7,
            rejected: 3,
            rejections: vec![
                ImportRejection { row: 2, customer_id: "c2".into(), field: "lms_user_id".into(), reason: "bad".into() },
                ImportRejection { row: 4, customer_id: "c4".into(), field: String::new(), reason: "retired".into() },
                ImportRejection { row: 9, customer_id: "c9".into(), field: "email".into(), reason: "bad".into() },
            ],
        };
        let text = summary(&answer, 2);
        assert!(text.starts_with("imported: 5 inserted, 1 updated, 7 unchanged, 3 rejected"));
        assert!(text.contains("row 2 (line 3) customer \"c2\": lms_user_id: bad"));
        assert!(text.contains("row 4 (line 5) customer \"c4\": retired"));
        assert!(text.contains("... and 1 more rejected row(s)"));
    }
}
