//! `commerce-mesh`: run the whole mesh, one component, or its migrations.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use commerce_mesh::{Component, MeshConfig, MigrateTarget};

/// A commerce coordinator for Open edX-style platforms, as a gRPC mesh.
#[derive(Parser)]
#[command(name = "commerce-mesh", version, about)]
struct Cli {
    /// A TOML configuration file; `MESH_*` environment variables override it.
    #[arg(long, env = "MESH_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every component in this process, each on its own port. With no
    /// configuration, storage is embedded (SQLite files under ./data).
    Up {
        /// Also run the development LMS and point Fulfillment at it (sets `dev_lms.enabled`).
        #[arg(long)]
        with_dev_lms: bool,
        /// Also serve the Jaeger UI over this process's traces, in memory, on
        /// `trace_ui.listen` (127.0.0.1:16686; sets `trace_ui.enabled`). Needs a
        /// build with `--features trace-ui`.
        #[arg(long)]
        with_trace_ui: bool,
    },
    /// Run the development LMS alone: OAuth2, enrollment and entitlement endpoints
    /// kept in memory, for trying the mesh without Open edX. Not for production.
    DevLms {
        /// Where it listens; default: `dev_lms.listen` (127.0.0.1:18000).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run one component. A service applies no migrations: it reports not
    /// ready until `migrate` has applied every one it knows.
    Serve {
        /// Which component.
        component: Component,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// A service, or `all`.
        target: MigrateTarget,
    },
    /// Apply nothing: wait until another process (the migrations Job) has
    /// applied every migration this binary knows, then exit 0.
    WaitForMigrations {
        /// A service, or `all`.
        target: MigrateTarget,
        /// Give up (exit 1) after this long, such as `5m`.
        #[arg(long, default_value = "10m", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print a development token for the gateway, signed with the development
    /// secret (configured, or the one `up` writes under the data directory).
    Token {
        /// Scopes the token carries, comma-separated (see /openapi.json, x-required-scopes);
        /// a scope no RPC requires is refused, and the known ones listed.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Carry every scope any RPC requires.
        #[arg(long)]
        all_scopes: bool,
        /// The token's subject, passed to services as `x-authenticated-subject`.
        #[arg(long, default_value = "developer")]
        subject: String,
        /// How long the token is valid, such as `1h` or `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime_serde::re::humantime::parse_duration)]
        ttl: Duration,
    },
    /// Stream a CSV of customer links (header: customer_id, lms_user_id,
    /// lms_username, email) into a running CustomerIdentity. Exits 0 when every
    /// row is stored (inserted, updated or unchanged), 3 when some rows were
    /// rejected (listed; the others are stored), 1 when the import failed.
    ImportCustomers {
        /// The CSV file.
        file: PathBuf,
        /// CustomerIdentity's gRPC address; default: where this configuration has it listen.
        #[arg(long)]
        identity: Option<String>,
        /// Rows per streamed message.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        /// How many rejected rows to list (the service reports up to 1000).
        #[arg(long, default_value_t = 20)]
        show_rejections: usize,
        /// A bearer token with `identity:import`; default: a development token
        /// minted with the development secret, when there is one.
        #[arg(long, env = "COMMERCE_MESH_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Refund an order (every line at its price), or the lines named; the
    /// workers then take the learner's access away in the LMS.
    Refund {
        /// The order number.
        order_number: String,
        /// A line item to refund (repeatable); default: every line.
        #[arg(long = "line")]
        lines: Vec<String>,
        /// Refund one named line partly, by this amount in its currency, such as `49.00`.
        #[arg(long)]
        amount: Option<String>,
        /// Why, recorded with the refund.
        #[arg(long, default_value = "")]
        reason: String,
        /// Who refunds, recorded as the refund's source.
        #[arg(long, default_value = "support")]
        source: String,
        /// Fulfillment's gRPC address; default: where this configuration has it listen.
        #[arg(long)]
        fulfillment: Option<String>,
        /// A bearer token with `fulfillment:read` and `fulfillment:write`; default:
        /// a development token minted with the development secret, when there is one.
        #[arg(long, env = "COMMERCE_MESH_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Find fulfillments across orders (`list`), or re-drive the failed ones in bulk (`retry`).
    #[command(subcommand)]
    Fulfillments(commerce_mesh::fulfillments_cli::FulfillmentsCommand),
    /// List, replay or discard the dead letters of a stream a component consumes.
    #[command(subcommand)]
    DeadLetters(commerce_mesh::dead_letters_cli::DeadLettersCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("commerce-mesh: {}", report(&error));
            match error.downcast_ref::<commerce_mesh::import::ImportError>() {
                Some(commerce_mesh::import::ImportError::Rejected { .. }) => {
                    ExitCode::from(commerce_mesh::import::REJECTED_EXIT_CODE)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// The error and its causes, each once: our errors already include their
/// cause's text, so a cause already said is not repeated.
fn report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config: MeshConfig = kit::config::load(cli.config.as_deref()).context("loading configuration")?;
    // Moved, not dropped: an old key silently ignored could leave a JWKS unused.
    if kit::config::figment::<MeshConfig>(cli.config.as_deref())?.find_value("gateway.auth").is_ok() {
        anyhow::bail!(
            "gateway.auth (MESH_GATEWAY__AUTH__*) has moved to the top-level [auth] (MESH_AUTH__*), \
             which the gateway and every service share"
        );
    }
    if let Command::Up { with_dev_lms, with_trace_ui } = &cli.command {
        config.dev_lms.enabled |= *with_dev_lms;
        config.trace_ui.enabled |= *with_trace_ui;
    }
    // Only `up` serves the trace UI; made before telemetry, which feeds it.
    let trace_store = match &cli.command {
        Command::Up { .. } => commerce_mesh::trace_ui::TraceStore::for_config(&config.trace_ui)?,
        _ => None,
    };
    let alone = match &cli.command {
        Command::Serve { component } => Some(component.name()),
        Command::DevLms { .. } => Some("dev-lms"),
        _ => None,
    };
    if let Some(name) = alone {
        // One process per component: name its spans after it, unless configured.
        if config.telemetry.service_name == kit::telemetry::TelemetryConfig::default().service_name {
            config.telemetry.service_name = name.to_string();
        }
    }
    // `up` runs every component in one process: each one's spans still carry its own service name.
    let components = match &cli.command {
        Command::Up { .. } => Component::span_components(),
        _ => kit::component_spans::Components::new(),
    };
    let telemetry = commerce_mesh::trace_ui::init_telemetry(&config.telemetry, components, trace_store.as_ref())
        .context("starting telemetry")?;
    let result = match cli.command {
        Command::Up { .. } => {
            let mesh = commerce_mesh::start_with_trace_store(config, kit::shutdown::on_signal(), trace_store).await?;
            print!("{}", mesh.banner());
            mesh.wait().await.map_err(anyhow::Error::from)
        }
        Command::DevLms { listen } => {
            let address = listen.unwrap_or(config.dev_lms.listen);
            let credentials = commerce_mesh::dev_lms::Credentials::development();
            let lms = commerce_mesh::dev_lms::DevLms::bind_and_start(address, credentials, kit::shutdown::on_signal())
                .await?;
            println!(
                "commerce-mesh development LMS on {} (client id {}, secret {}); not for production; Ctrl-C stops it",
                lms.url(),
                commerce_mesh::dev_lms::CLIENT_ID,
                commerce_mesh::dev_lms::CLIENT_SECRET
            );
            lms.wait().await.map_err(anyhow::Error::from)
        }
        Command::Serve { component } => {
            commerce_mesh::serve(component, &config, kit::shutdown::on_signal()).await.map_err(anyhow::Error::from)
        }
        Command::Migrate { target } => {
            commerce_mesh::migrate(target, &config).await.map(drop).map_err(anyhow::Error::from)
        }
        Command::WaitForMigrations { target, timeout } => {
            commerce_mesh::wait_for_migrations(target, &config, timeout, Duration::from_secs(2))
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Token { scopes, all_scopes, subject, ttl } => {
            let scopes = if all_scopes { commerce_mesh::dev_tokens::every_scope() } else { scopes };
            commerce_mesh::dev_tokens::mint(&config, &subject, scopes, ttl)
                .map(|token| println!("{token}"))
                .map_err(anyhow::Error::from)
        }
        Command::ImportCustomers { file, identity, batch_size, show_rejections, token } => {
            let endpoint = identity.unwrap_or_else(|| format!("http://{}", config.listen(Component::CustomerIdentity)));
            let credential = commerce_mesh::dev_tokens::tool_credential(&config, token, &["identity:import"])?;
            commerce_mesh::import::import_customers(&file, &endpoint, credential, batch_size)
                .await
                .and_then(|answer| {
                    print!("{}", commerce_mesh::import::summary(&answer, show_rejections));
                    commerce_mesh::import::outcome(&answer)
                })
                .map_err(anyhow::Error::from)
        }
        Command::Refund { order_number, lines, amount, reason, source, fulfillment, token } => {
            let endpoint = fulfillment.unwrap_or_else(|| format!("http://{}", config.listen(Component::Fulfillment)));
            let args = commerce_mesh::refund::RefundArgs { order_number, lines, amount, reason, source };
            let scopes = ["fulfillment:read", "fulfillment:write"];
            let credential = commerce_mesh::dev_tokens::tool_credential(&config, token, &scopes)?;
            commerce_mesh::refund::refund(&endpoint, credential, &args)
                .await
                .map(|answer| print!("{}", commerce_mesh::refund::summary(&answer)))
                .map_err(anyhow::Error::from)
        }
        Command::Fulfillments(command) => commerce_mesh::fulfillments_cli::run(&config, command)
            .await
            .map(|text| print!("{text}"))
            .map_err(anyhow::Error::from),
        Command::DeadLetters(command) => commerce_mesh::dead_letters_cli::run(&config, command)
            .await
            .map(|text| print!("{text}"))
            .map_err(anyhow::Error::from),
    };
    // Bounded: an unreachable collector must not hold the exit.
    if tokio::time::timeout(Duration::from_secs(2), telemetry.shutdown()).await.is_err() {
        eprintln!("commerce-mesh: span export did not finish in 2 s; some spans may be lost");
    }
    result
}
