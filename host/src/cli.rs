//! The `keel` command line: the server, migrations, and the ledger commands a finance user
//! scripts with. Every command works on the same data directory or database URL as the server.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::{self, AppState};
use crate::audit::{self, Origin};
use crate::authz::{Authz, Grant, RoleDefinition, Scope};
use crate::company::{Companies, Company};
use crate::db::{Database, Location};
use crate::error::Error;
use crate::idempotency::{RequestKey, StoredResponse};
use crate::identity::{Identity, NewToken, NewUser, UserKind};
use crate::ledger::model::{EntryInput, LineInput, SourceRef, parse_date};
use crate::ledger::periods::CloseFiscalYear;
use crate::ledger::reports::TrialBalance;
use crate::ledger::{Ledger, chart};
use crate::parties::search::PartyQuery;
use crate::parties::{Parties, Viewer, transfer};

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: one ledger and one customer master for the whole company"
)]
struct Cli {
    /// Log lines as text for people or JSON for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KEEL_LOG_FORMAT", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct DatabaseArgs {
    /// Folder of the embedded SQLite database.
    #[arg(
        long,
        env = "KEEL_DATA_DIR",
        default_value = "./keel-data",
        global = true
    )]
    data_dir: PathBuf,
    /// A postgres:// URL; when given, Keel uses PostgreSQL instead of SQLite.
    #[arg(long, env = "KEEL_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Base currency of the company created on first start (ISO 4217). Cannot change later.
    #[arg(long, env = "KEEL_BASE_CURRENCY", global = true)]
    base_currency: Option<String>,
}

impl DatabaseArgs {
    /// Where compiled plugins are kept: under the data directory, also when the data itself
    /// is in PostgreSQL.
    fn compiled_plugins(&self) -> PathBuf {
        self.data_dir.join("compiled-plugins")
    }

    fn location(&self) -> anyhow::Result<Location> {
        Location::from_args(self.database_url.as_deref(), &self.data_dir)
    }

    /// Opens the database and picks the company with this code (the default one when absent).
    async fn open_for(&self, company: Option<&str>) -> anyhow::Result<(Database, Company)> {
        let (db, companies) = self.open().await?;
        let company = companies.resolve(company).await?;
        Ok((db, company))
    }

    async fn open(&self) -> anyhow::Result<(Database, Arc<Companies>)> {
        let db = Database::open(&self.location()?).await?;
        let companies = Companies::bootstrap(&db, self.base_currency.as_deref()).await?;
        Ok((db, Arc::new(companies)))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        /// Address to listen on; every route but login needs a token.
        #[arg(long, env = "KEEL_ADDR", default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// Event deliveries this process claims and commits together.
        #[arg(long, env = "KEEL_EVENT_BATCH", default_value_t = crate::runtime::DEFAULT_POLICY.batch,
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        event_batch: u32,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// The general ledger.
    Ledger {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Company code; the default company when absent.
        #[arg(long, global = true)]
        company: Option<String>,
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Users: create the first administrator, add users and service accounts.
    User {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Company code for role grants; the default company when absent.
        #[arg(long, global = true)]
        company: Option<String>,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Roles: list them, grant and revoke them.
    Role {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Company code; the default company when absent.
        #[arg(long, global = true)]
        company: Option<String>,
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// The customer master: import and export parties.
    Parties {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Company code; the default company when absent.
        #[arg(long, global = true)]
        company: Option<String>,
        #[command(subcommand)]
        command: PartiesCommand,
    },
    /// Plugins: install, grant, enable, upgrade, uninstall.
    Plugin {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Company code; the default company when absent.
        #[arg(long, global = true)]
        company: Option<String>,
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// The audit trail: verify its hash chain, export it.
    Audit {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user with a role and print a new API token (the last line of the output).
    Add {
        /// Username: lowercase letters, digits, '.', '-', '_', '@'.
        name: String,
        /// Role to grant in the company, e.g. admin, accountant, auditor.
        #[arg(long)]
        role: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// A service account (API tokens only) instead of a person.
        #[arg(long)]
        service: bool,
        /// Read a password for password login from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
}

#[derive(Debug, Subcommand)]
enum RoleCommand {
    /// List the roles of the company with their permissions.
    List,
    /// Create a custom role, e.g. `keel role create payables-clerk --permission ledger.entries:post
    /// --permission ledger.accounts:read --permission parties:read:own`.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// RESOURCE:ACTION[:SCOPE], scope all (default), team or own; repeat for each permission.
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
    },
    /// Grant ROLE to USER in the company.
    Grant { user: String, role: String },
    /// Revoke ROLE from USER in the company.
    Revoke { user: String, role: String },
}

#[derive(Debug, Subcommand)]
enum PartiesCommand {
    /// Import parties from a CSV or XLSX file (the columns of `keel parties export`). A row
    /// whose external id is known updates that party; the others create one. Bad rows are
    /// reported by line; the exit code is 1 when there are any.
    Import {
        file: PathBuf,
        /// Check every row and report, writing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write nothing if any row is bad (otherwise the good rows are written).
        #[arg(long)]
        all_or_nothing: bool,
        /// Create rows that look like existing parties instead of reporting them.
        #[arg(long)]
        allow_duplicates: bool,
        /// The system the file's external ids belong to (`import` when absent).
        #[arg(long)]
        system: Option<String>,
    },
    /// Write every party as CSV to standard output or a file.
    Export {
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Install a plugin from its component (a .wasm file) and show what it asks for. It starts
    /// disabled with nothing granted.
    Install { file: PathBuf },
    /// List the installed plugins.
    List,
    /// Grant capabilities the plugin's manifest requests (e.g. `storage ledger:post`).
    Grant {
        name: String,
        #[arg(required = true)]
        capabilities: Vec<String>,
    },
    /// Take back capabilities.
    Revoke {
        name: String,
        #[arg(required = true)]
        capabilities: Vec<String>,
    },
    /// Enable a plugin, running its migration first when needed.
    Enable { name: String },
    /// Disable a plugin: its routes and operations stop answering.
    Disable { name: String },
    /// Upgrade a plugin to a newer component; on a failed migration nothing changes.
    Upgrade { name: String, file: PathBuf },
    /// Uninstall a plugin, keeping its data.
    Uninstall { name: String },
    /// Delete the data of an uninstalled plugin, for good.
    Purge { name: String },
    /// Test a plugin on a throwaway host (SQLite in a temporary folder, default chart, the
    /// plugin granted what it asks for and enabled), then run a scenario: one JSON object per
    /// line, `{"method": "POST", "path": "/claims", "body": {...}, "status": 201, "expect":
    /// {...}}`. Exit code 1 when a step fails.
    Test {
        file: PathBuf,
        scenario: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; name the first broken record and exit 1 if there is one.
    Verify,
    /// Write every record as JSON Lines to standard output or a file.
    Export {
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Load the default small-business chart of accounts (adds only missing accounts).
    InitChart,
    /// List the chart of accounts.
    Accounts,
    /// Post entries from a JSON file (an entry, a list of entries, or {"entries": [...]}) or a
    /// CSV file with columns entry,date,memo,account,debit,credit[,currency,rate,party,line_memo,
    /// source_module,source_document]; rows with the same `entry` form one entry. All or nothing.
    Post {
        file: PathBuf,
        /// Makes the posting exactly-once: running the same file with the same key again
        /// changes nothing.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Print the trial balance.
    TrialBalance {
        /// YYYY-MM-DD; today when absent.
        #[arg(long)]
        as_of: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
    /// List fiscal periods.
    Periods,
    /// Open the fiscal year starting on START (YYYY-MM-DD).
    OpenYear { start: String },
    /// Close the period NAME (YYYY-MM).
    ClosePeriod { name: String },
    /// Reopen the period NAME (YYYY-MM).
    ReopenPeriod { name: String },
    /// Close the fiscal year NAME, moving income and expense to retained earnings.
    CloseYear {
        name: String,
        #[arg(long, default_value = chart::DEFAULT_RETAINED_EARNINGS)]
        retained_earnings: String,
    },
    /// Reopen the fiscal year NAME.
    ReopenYear { name: String },
}

/// Runs the command line; the exit code is 0 on success, 1 on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<Error>() {
                Some(Error::Invalid(errors)) => {
                    eprintln!("error: the input is invalid; nothing was written");
                    for e in errors {
                        eprintln!("  {}: {}", e.field, e.message);
                    }
                }
                _ => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            addr,
            event_batch,
            database,
        } => serve(addr, event_batch, &database).await,
        Command::Migrate { database } => {
            let (db, companies) = database.open().await?;
            let company = companies.default_company();
            db.close().await;
            println!(
                "database is up to date; company {:?} keeps its books in {}",
                company.code, company.base_currency.code
            );
            Ok(())
        }
        Command::User {
            database,
            company,
            command,
        } => {
            let (db, company) = database.open_for(company.as_deref()).await?;
            let result = user_command(&db, &company, command).await;
            db.close().await;
            result
        }
        Command::Role {
            database,
            company,
            command,
        } => {
            let (db, company) = database.open_for(company.as_deref()).await?;
            let result = role_command(&db, &company, command).await;
            db.close().await;
            result
        }
        Command::Parties {
            database,
            company,
            command,
        } => {
            let (db, company) = database.open_for(company.as_deref()).await?;
            // An import writes in bulk: its commits leave copying the WAL back to another
            // connection, as the server's do.
            db.checkpoint_in_background();
            let result = parties_command(&db, &company, command).await;
            db.close().await;
            result
        }
        Command::Plugin {
            command: PluginCommand::Test { file, scenario },
            ..
        } => plugin_test(&file, scenario.as_deref()).await,
        Command::Plugin {
            database,
            company,
            command,
        } => {
            let (db, company) = database.open_for(company.as_deref()).await?;
            let result = plugin_command(&db, &company, &database.compiled_plugins(), command).await;
            db.close().await;
            result
        }
        Command::Audit { database, command } => {
            let db = Database::open(&database.location()?).await?;
            let result = audit_command(&db, command).await;
            db.close().await;
            result
        }
        Command::Ledger {
            database,
            company,
            command,
        } => {
            let (db, company) = database.open_for(company.as_deref()).await?;
            // Posting a file writes in bulk: as for an import, checkpoints run beside it.
            db.checkpoint_in_background();
            let result = ledger_command(&Ledger::new(db.clone()), &company, command).await;
            db.close().await;
            result
        }
    }
}

async fn serve(addr: SocketAddr, event_batch: u32, database: &DatabaseArgs) -> anyhow::Result<()> {
    let (db, companies) = database.open().await?;
    db.checkpoint_in_background();
    let state = AppState::new(db.clone(), companies, &database.compiled_plugins()).await?;
    let started = std::time::Instant::now();
    let loaded = state.runtime.load_installed().await?;
    if loaded > 0 {
        tracing::info!(
            plugins = loaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugins loaded"
        );
    }
    // Delivers published events to subscribed plugins for as long as the server runs.
    state
        .runtime
        .set_dispatch_policy(crate::runtime::DispatchPolicy {
            batch: event_batch,
            ..crate::runtime::DEFAULT_POLICY
        });
    let _dispatcher = state.runtime.spawn_dispatcher();
    if state.identity.count_users().await? == 0 {
        let location = match (&database.database_url, &database.data_dir) {
            (Some(_), _) => "--database-url <the same URL>".to_owned(),
            (None, dir) => format!("--data-dir {}", dir.display()),
        };
        let message = format!(
            "No users exist yet, so every request will be refused. Create the first administrator with\n\n    \
             keel user add admin --role admin {location}\n\n\
             It prints an API token; send it as `Authorization: Bearer <token>`."
        );
        tracing::warn!("{message}");
        println!("{message}");
    }
    let authz = state.authz.clone();
    tokio::spawn(async move {
        // Pick up role and grant changes made by other processes (the CLI, other servers).
        loop {
            tokio::time::sleep(crate::authz::POLICY_POLL_INTERVAL).await;
            if let Err(error) = authz.refresh_if_stale().await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reloading the authorization policy failed"
                );
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, backend = ?db.backend(), "Keel is serving");
    println!("Keel listening on http://{local}");
    axum::serve(
        listener,
        api::app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("serving HTTP")?;
    db.close().await;
    tracing::info!("Keel stopped");
    Ok(())
}

/// Where CLI changes come from in the audit trail: the command line and the operating-system
/// user who ran it (the CLI works with the database's own access, not a Keel login).
fn cli_origin() -> Origin {
    let os_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    Origin {
        request_id: Some(format!("cli ({os_user})")),
        ..Origin::system()
    }
}

async fn user_command(
    db: &Database,
    company: &Company,
    command: UserCommand,
) -> anyhow::Result<()> {
    let identity = Identity::new(db.clone());
    let authz = Authz::load(db).await?;
    match command {
        UserCommand::Add {
            name,
            role,
            display_name,
            email,
            service,
            password_stdin,
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            let new = NewUser {
                username: name,
                display_name,
                email,
                kind: Some(if service {
                    UserKind::Service
                } else {
                    UserKind::Person
                }),
                password,
                manager: None,
            };
            let origin = cli_origin();
            let mut tx = db.begin_write().await?;
            let user = identity
                .create_user(&mut tx, &new, &origin)
                .await
                .map_err(into_anyhow)?;
            authz
                .grant(&mut tx, company.id, user.id, &role, None, &origin)
                .await
                .map_err(into_anyhow)?;
            let token = identity
                .create_api_token(
                    &mut tx,
                    user.id,
                    &NewToken {
                        name: "created by keel user add".into(),
                        expires_in_days: None,
                    },
                    &origin,
                )
                .await
                .map_err(into_anyhow)?;
            tx.commit().await?;
            println!(
                "created user {} (id {}) with role {role} in company {:?}",
                user.username, user.id, company.code
            );
            println!("API token (shown once; send it as Authorization: Bearer <token>):");
            println!("{}", token.token);
        }
        UserCommand::List => {
            for user in identity.users().await.map_err(into_anyhow)? {
                let roles = authz
                    .roles_of(user.id, company.id)
                    .await
                    .map_err(into_anyhow)?;
                println!(
                    "{:<6} {:<24} {:<8} {:<9} {}",
                    user.id,
                    user.username,
                    format!("{:?}", user.kind).to_lowercase(),
                    format!("{:?}", user.status).to_lowercase(),
                    roles.join(",")
                );
            }
        }
    }
    Ok(())
}

async fn user_id(identity: &Identity, username: &str) -> anyhow::Result<i64> {
    identity
        .user_by_username(username)
        .await
        .map_err(into_anyhow)?
        .map(|user| user.id)
        .ok_or_else(|| {
            anyhow::anyhow!("there is no user {username:?}; `keel user list` lists them")
        })
}

async fn role_command(
    db: &Database,
    company: &Company,
    command: RoleCommand,
) -> anyhow::Result<()> {
    let identity = Identity::new(db.clone());
    let authz = Authz::load(db).await?;
    match command {
        RoleCommand::List => {
            for role in authz.roles(company.id).await.map_err(into_anyhow)? {
                let permissions: Vec<String> = role
                    .permissions
                    .iter()
                    .map(|g| format!("{}:{}({})", g.resource, g.action, g.scope.as_str()))
                    .collect();
                println!(
                    "{:<16} {:<9} {}",
                    role.name,
                    if role.built_in { "built-in" } else { "custom" },
                    permissions.join(" ")
                );
            }
        }
        RoleCommand::Create {
            name,
            description,
            permissions,
        } => {
            let grants = permissions
                .iter()
                .map(|text| parse_grant(text))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let definition = RoleDefinition {
                name: name.clone(),
                description,
                permissions: grants,
            };
            let mut tx = db.begin_write().await?;
            authz
                .create_role(&mut tx, company.id, None, &definition, &cli_origin())
                .await
                .map_err(into_anyhow)?;
            tx.commit().await?;
            println!("created role {name} in company {:?}", company.code);
        }
        RoleCommand::Grant { user, role } => {
            let id = user_id(&identity, &user).await?;
            let mut tx = db.begin_write().await?;
            authz
                .grant(&mut tx, company.id, id, &role, None, &cli_origin())
                .await
                .map_err(into_anyhow)?;
            tx.commit().await?;
            println!("granted {role} to {user} in company {:?}", company.code);
        }
        RoleCommand::Revoke { user, role } => {
            let id = user_id(&identity, &user).await?;
            let mut tx = db.begin_write().await?;
            authz
                .revoke(&mut tx, company.id, id, &role, &cli_origin())
                .await
                .map_err(into_anyhow)?;
            tx.commit().await?;
            println!("revoked {role} from {user} in company {:?}", company.code);
        }
    }
    Ok(())
}

/// `resource:action[:scope]` as a role permission.
fn parse_grant(text: &str) -> anyhow::Result<Grant> {
    let mut parts = text.split(':');
    let (Some(resource), Some(action)) = (parts.next(), parts.next()) else {
        anyhow::bail!("{text:?} is not RESOURCE:ACTION[:SCOPE]");
    };
    let scope = match parts.next() {
        None | Some("all") => Scope::All,
        Some("team") => Scope::Team,
        Some("own") => Scope::Own,
        Some(other) => anyhow::bail!("{other:?} is not a scope: use all, team or own"),
    };
    anyhow::ensure!(
        parts.next().is_none(),
        "{text:?} is not RESOURCE:ACTION[:SCOPE]"
    );
    Ok(Grant {
        resource: resource.to_owned(),
        action: action.to_owned(),
        scope,
    })
}

async fn parties_command(
    db: &Database,
    company: &Company,
    command: PartiesCommand,
) -> anyhow::Result<()> {
    let authz = Arc::new(Authz::load(db).await?);
    let parties = Parties::new(db.clone(), authz);
    // The CLI works with the database's own access: every party is within reach.
    let viewer = Viewer {
        user_id: 0,
        scope: Scope::All,
        team: Vec::new(),
    };
    match command {
        PartiesCommand::Import {
            file,
            dry_run,
            all_or_nothing,
            allow_duplicates,
            system,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let is_xlsx = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("xlsx"));
            let text = if is_xlsx {
                transfer::xlsx_to_csv(&bytes)?
            } else {
                String::from_utf8(bytes).map_err(|_| {
                    anyhow::anyhow!(
                        "{} is not UTF-8 text; save the CSV as UTF-8",
                        file.display()
                    )
                })?
            };
            let options = transfer::ImportOptions {
                dry_run,
                all_or_nothing,
                allow_duplicates,
                system,
            };
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} rows, {per_sec}, {eta} left",
                )
                .context("the progress bar style")?,
            );
            let progress = |done: usize, total: usize| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            };
            let report = parties
                .import_csv(company, &viewer, &text, &options, &cli_origin(), &progress)
                .await;
            bar.finish_and_clear();
            let report = report?;
            let verb = if report.dry_run {
                "would create"
            } else {
                "created"
            };
            println!(
                "{} rows: {verb} {}, {} {}, {} bad{}",
                report.rows,
                report.created,
                if report.dry_run {
                    "would update"
                } else {
                    "updated"
                },
                report.updated,
                report.failed,
                if report.rolled_back {
                    "; nothing was written (--all-or-nothing)"
                } else {
                    ""
                }
            );
            for row in &report.errors {
                for error in &row.errors {
                    println!("  line {}: {}: {}", row.row, error.field, error.message);
                }
            }
            if report.failed > 0 {
                anyhow::bail!("{} rows of {} are bad", report.failed, file.display());
            }
            Ok(())
        }
        PartiesCommand::Export { output } => {
            let csv =
                transfer::export_csv(&parties, company, &viewer, &PartyQuery::default()).await?;
            match output {
                Some(path) => std::fs::write(&path, csv)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(csv.as_bytes())?,
            }
            Ok(())
        }
    }
}

async fn audit_command(db: &Database, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify => {
            let started = std::time::Instant::now();
            let verification = audit::verify(db).await?;
            match verification.first_broken {
                None => {
                    println!(
                        "the audit trail is intact: {} records verified in {:.1} s",
                        verification.records,
                        started.elapsed().as_secs_f64()
                    );
                    Ok(())
                }
                Some(broken) => anyhow::bail!(
                    "the audit trail is broken at record {}: {} ({} records before it verified)",
                    broken.seq,
                    broken.reason,
                    verification.records
                ),
            }
        }
        AuditCommand::Export { output } => {
            let count = match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let mut writer = std::io::BufWriter::new(file);
                    let count = audit::export(db, &mut writer).await?;
                    writer.flush()?;
                    count
                }
                None => {
                    let mut writer = std::io::BufWriter::new(std::io::stdout().lock());
                    let count = audit::export(db, &mut writer).await?;
                    writer.flush()?;
                    count
                }
            };
            eprintln!("exported {count} audit records");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

fn into_anyhow(error: Error) -> anyhow::Error {
    anyhow::Error::new(error)
}

async fn ledger_command(
    ledger: &Ledger,
    company: &Company,
    command: LedgerCommand,
) -> anyhow::Result<()> {
    match command {
        LedgerCommand::InitChart => {
            let added = ledger
                .init_default_chart(company, &cli_origin())
                .await
                .map_err(into_anyhow)?;
            println!(
                "added {added} accounts to the chart of company {:?}",
                company.code
            );
        }
        LedgerCommand::Accounts => {
            let mut out = std::io::stdout().lock();
            for account in ledger.accounts(company).await.map_err(into_anyhow)? {
                writeln!(
                    out,
                    "{:<12} {:<10} {:<45} {}{}",
                    account.code,
                    account.account_type.as_str(),
                    account.name,
                    account
                        .parent
                        .map(|p| format!("under {p}"))
                        .unwrap_or_default(),
                    if account.active { "" } else { " (inactive)" }
                )?;
            }
        }
        LedgerCommand::Post {
            file,
            idempotency_key,
        } => {
            let entries = read_entries(&file)?;
            let key = idempotency_key.map(|key| RequestKey {
                principal: String::new(),
                fingerprint: crate::idempotency::fingerprint(
                    "POST /ledger/entries:batch",
                    &entries,
                ),
                key,
            });
            let response = ledger
                .post(company, &entries, true, key, &cli_origin())
                .await
                .map_err(into_anyhow)?;
            print_posted(&response);
        }
        LedgerCommand::TrialBalance { as_of, format } => {
            let as_of = match as_of {
                Some(text) => parse_date(&text).map_err(anyhow::Error::msg)?,
                None => Utc::now().date_naive(),
            };
            let report = ledger
                .trial_balance(company, as_of)
                .await
                .map_err(into_anyhow)?;
            print_trial_balance(&report, format)?;
        }
        LedgerCommand::Periods => {
            for year in ledger.fiscal_years(company).await.map_err(into_anyhow)? {
                println!(
                    "fiscal year {} ({} to {}): {:?}",
                    year.name, year.start, year.end, year.status
                );
                for period in year.periods {
                    println!(
                        "  {}  {} to {}  {:?}",
                        period.name, period.start, period.end, period.status
                    );
                }
            }
        }
        LedgerCommand::OpenYear { start } => {
            let response = ledger
                .open_fiscal_year(
                    company,
                    &crate::ledger::periods::NewFiscalYear { start },
                    None,
                    &cli_origin(),
                )
                .await
                .map_err(into_anyhow)?;
            println!(
                "opened fiscal year {}",
                response.body["name"].as_str().unwrap_or_default()
            );
        }
        LedgerCommand::ClosePeriod { name } => {
            let period = ledger
                .period_by_name(company, &name)
                .await
                .map_err(into_anyhow)?;
            ledger
                .close_period(company, period.id, None, &cli_origin())
                .await
                .map_err(into_anyhow)?;
            println!("closed period {name}");
        }
        LedgerCommand::ReopenPeriod { name } => {
            let period = ledger
                .period_by_name(company, &name)
                .await
                .map_err(into_anyhow)?;
            ledger
                .reopen_period(company, period.id, None, &cli_origin())
                .await
                .map_err(into_anyhow)?;
            println!("reopened period {name}");
        }
        LedgerCommand::CloseYear {
            name,
            retained_earnings,
        } => {
            let year = fiscal_year_by_name(ledger, company, &name).await?;
            let response = ledger
                .close_fiscal_year(
                    company,
                    year,
                    &CloseFiscalYear {
                        retained_earnings_account: retained_earnings,
                    },
                    None,
                    &cli_origin(),
                )
                .await
                .map_err(into_anyhow)?;
            match response.body["closing_entry"].as_i64() {
                Some(entry) => println!("closed fiscal year {name}; closing entry {entry}"),
                None => println!("closed fiscal year {name}; it had no income or expense to close"),
            }
        }
        LedgerCommand::ReopenYear { name } => {
            let year = fiscal_year_by_name(ledger, company, &name).await?;
            ledger
                .reopen_fiscal_year(company, year, None, &cli_origin())
                .await
                .map_err(into_anyhow)?;
            println!("reopened fiscal year {name}");
        }
    }
    Ok(())
}

async fn fiscal_year_by_name(
    ledger: &Ledger,
    company: &Company,
    name: &str,
) -> anyhow::Result<i64> {
    ledger
        .fiscal_years(company)
        .await
        .map_err(into_anyhow)?
        .into_iter()
        .find(|y| y.name == name)
        .map(|y| y.id)
        .ok_or_else(|| {
            anyhow::anyhow!("no fiscal year named {name:?}; `keel ledger periods` lists them")
        })
}

fn print_posted(response: &StoredResponse) {
    let ids: Vec<String> = response.body["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["id"].as_i64())
        .map(|id| id.to_string())
        .collect();
    let verb = if response.replayed || response.status == 200 {
        "already posted"
    } else {
        "posted"
    };
    println!("{verb} {} entries: {}", ids.len(), ids.join(", "));
}

/// Reads entries from a .json or .csv file.
fn read_entries(path: &Path) -> anyhow::Result<Vec<EntryInput>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            #[derive(serde::Deserialize)]
            #[serde(untagged)]
            enum File {
                Batch { entries: Vec<EntryInput> },
                Many(Vec<EntryInput>),
                One(Box<EntryInput>),
            }
            let file: File = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not an entry, a list of entries or {{\"entries\": [...]}}",
                    path.display()
                )
            })?;
            Ok(match file {
                File::Batch { entries } | File::Many(entries) => entries,
                File::One(entry) => vec![*entry],
            })
        }
        Some("csv") => entries_from_csv(&text),
        _ => anyhow::bail!("{} is neither a .json nor a .csv file", path.display()),
    }
}

/// One CSV row per line; consecutive rows with the same `entry` value form one entry.
fn entries_from_csv(text: &str) -> anyhow::Result<Vec<EntryInput>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers()?.clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let required = ["entry", "date", "account", "debit", "credit"];
    for name in required {
        anyhow::ensure!(
            column(name).is_some(),
            "the CSV file has no {name:?} column; it needs {}",
            required.join(", ")
        );
    }
    let mut entries: Vec<(String, EntryInput)> = Vec::new();
    for (row_number, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("reading CSV row {}", row_number + 2))?;
        let field = |name: &str| -> Option<String> {
            column(name)
                .and_then(|i| record.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let entry_key = field("entry")
            .with_context(|| format!("CSV row {}: the entry column is empty", row_number + 2))?;
        let party = field("party")
            .map(|p| p.parse::<i64>())
            .transpose()
            .with_context(|| format!("CSV row {}: party is not a number", row_number + 2))?;
        let line = LineInput {
            account: field("account").unwrap_or_default(),
            debit: field("debit"),
            credit: field("credit"),
            currency: field("currency"),
            rate: field("rate"),
            party,
            memo: field("line_memo"),
            dimensions: None,
        };
        match entries.last_mut() {
            Some((key, entry)) if *key == entry_key => entry.lines.push(line),
            _ => {
                let source = match (field("source_module"), field("source_document")) {
                    (Some(module), Some(document)) => Some(SourceRef { module, document }),
                    _ => None,
                };
                entries.push((
                    entry_key,
                    EntryInput {
                        date: field("date").unwrap_or_default(),
                        memo: field("memo").unwrap_or_default(),
                        source,
                        lines: vec![line],
                        idempotency_key: None,
                    },
                ));
            }
        }
    }
    Ok(entries.into_iter().map(|(_, entry)| entry).collect())
}

fn print_trial_balance(report: &TrialBalance, format: ReportFormat) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        ReportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(report)?)?,
        ReportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(["account", "name", "type", "debit", "credit"])?;
            for row in &report.rows {
                writer.write_record([
                    row.account.as_str(),
                    row.name.as_str(),
                    row.account_type.as_str(),
                    row.debit.as_deref().unwrap_or(""),
                    row.credit.as_deref().unwrap_or(""),
                ])?;
            }
            writer.write_record(["", "Total", "", &report.total_debit, &report.total_credit])?;
            writer.flush()?;
        }
        ReportFormat::Table => {
            writeln!(
                out,
                "Trial balance as of {} ({})",
                report.as_of, report.currency
            )?;
            writeln!(
                out,
                "{:<10} {:<40} {:>18} {:>18}",
                "account", "name", "debit", "credit"
            )?;
            for row in &report.rows {
                writeln!(
                    out,
                    "{:<10} {:<40} {:>18} {:>18}",
                    row.account,
                    row.name,
                    row.debit.as_deref().unwrap_or(""),
                    row.credit.as_deref().unwrap_or("")
                )?;
            }
            writeln!(
                out,
                "{:<10} {:<40} {:>18} {:>18}",
                "", "Total", report.total_debit, report.total_credit
            )?;
            if !report.balanced {
                writeln!(out, "WARNING: debits and credits differ")?;
            }
        }
    }
    Ok(())
}

async fn plugin_command(
    db: &Database,
    company: &Company,
    compiled: &std::path::Path,
    command: PluginCommand,
) -> anyhow::Result<()> {
    use crate::runtime::registry::{PluginChanges, PluginView, Status};
    let authz = Arc::new(Authz::load(db).await?);
    let runtime = crate::runtime::Runtime::new(db.clone(), authz, compiled)?;
    // The operator has the database itself; changes are recorded as the host's own.
    let origin = Origin::system();
    let read = |file: &std::path::Path| {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))
    };
    let show = |view: &PluginView| {
        let names = |list: &[crate::runtime::capability::Capability]| {
            if list.is_empty() {
                "(none)".to_owned()
            } else {
                list.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        println!(
            "{} {} ({:?}, keel:platform@{})\n  {}\n  requests: {}\n  granted:  {}\n  hash: {}",
            view.name,
            view.version,
            view.status,
            view.api_version,
            view.description,
            names(&view.requested),
            names(&view.granted),
            view.hash
        );
    };
    let change = async |name: &str, changes: PluginChanges| -> anyhow::Result<()> {
        let view = runtime
            .change(company, name, &changes, None, &origin)
            .await?;
        show(&view);
        Ok(())
    };
    match command {
        PluginCommand::Install { file } => {
            let view = runtime.install(company, &read(&file)?, &origin).await?;
            show(&view);
            println!(
                "Installed, disabled. Grant what it needs and enable it:\n  keel plugin grant {} {}\n  keel plugin enable {}",
                view.name,
                view.requested
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                view.name
            );
        }
        PluginCommand::List => {
            for view in runtime.list(company).await? {
                show(&view);
            }
        }
        PluginCommand::Grant { name, capabilities } => {
            let view = runtime.get(company, &name).await?;
            let mut granted: Vec<String> = view.granted.iter().map(ToString::to_string).collect();
            granted.extend(capabilities);
            change(
                &name,
                PluginChanges {
                    granted: Some(granted),
                    ..PluginChanges::default()
                },
            )
            .await?;
        }
        PluginCommand::Revoke { name, capabilities } => {
            let view = runtime.get(company, &name).await?;
            let granted = view
                .granted
                .iter()
                .map(ToString::to_string)
                .filter(|c| !capabilities.contains(c))
                .collect();
            change(
                &name,
                PluginChanges {
                    granted: Some(granted),
                    ..PluginChanges::default()
                },
            )
            .await?;
        }
        PluginCommand::Enable { name } => {
            change(
                &name,
                PluginChanges {
                    status: Some(Status::Enabled),
                    ..PluginChanges::default()
                },
            )
            .await?;
        }
        PluginCommand::Disable { name } => {
            change(
                &name,
                PluginChanges {
                    status: Some(Status::Disabled),
                    ..PluginChanges::default()
                },
            )
            .await?;
        }
        PluginCommand::Upgrade { name, file } => {
            let view = runtime
                .upgrade(company, &name, &read(&file)?, None, &origin)
                .await?;
            show(&view);
        }
        PluginCommand::Uninstall { name } => {
            runtime.uninstall(company, &name, &origin).await?;
            println!(
                "Uninstalled {name}; its data is kept (`keel plugin purge {name}` deletes it)."
            );
        }
        PluginCommand::Purge { name } => {
            let records = runtime.purge(company, &name, &origin).await?;
            println!("Purged {name}: {records} records deleted.");
        }
        PluginCommand::Test { .. } => unreachable!("runs without a database"),
    }
    Ok(())
}

async fn plugin_test(
    file: &std::path::Path,
    scenario: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use crate::testing::{PluginHost, Step, contains};
    let component = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let host = PluginHost::start(&component).await?;
    let plugin = host.plugin();
    println!(
        "ok: {} {} installed, granted {}, enabled (migration ran)",
        plugin.name,
        plugin.version,
        plugin
            .granted
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let Some(scenario) = scenario else {
        return Ok(());
    };
    let text = std::fs::read_to_string(scenario)
        .with_context(|| format!("reading {}", scenario.display()))?;
    let mut failures = 0;
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let step: Step = serde_json::from_str(line)
            .with_context(|| format!("{}:{number}: not a scenario step", scenario.display()))?;
        let (status, body) = host
            .request(&step.method, &step.path, step.body.as_ref())
            .await?;
        let matched = status == step.status
            && step
                .expect
                .as_ref()
                .is_none_or(|expected| contains(&body, expected));
        if matched {
            println!(
                "ok: line {number}: {} {} -> {status}",
                step.method, step.path
            );
        } else {
            failures += 1;
            println!(
                "FAILED: line {number}: {} {} -> {status} (expected {}): {body}",
                step.method, step.path, step.status
            );
        }
    }
    anyhow::ensure!(failures == 0, "{failures} scenario steps failed");
    Ok(())
}
