use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessiond::{config::Config, startup, telemetry};

/// sessiond: session-management server (users in PostgreSQL or SQLite, sessions in Redis or
/// in-process). Configuration comes from environment variables; see README.md.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration and print it, secrets masked.
    CheckConfig,
    /// Manage accounts directly in the database.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The keys that sign access tokens (JWT_ALGORITHM EdDSA, ES256, RS256).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Show every stored key: kid, algorithm, state, when it signs, until when it is published.
    List,
    /// Rotate now: a new key is published at once and signs once every verifier can know it.
    Rotate,
    /// Retire the keys of other algorithms than JWT_ALGORITHM (the last step of an algorithm
    /// switch, once every pod runs the new setting); they stay published until their tokens
    /// have expired.
    Retire,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account (e.g. the first admin). The password is read from stdin, or prompted
    /// for on a terminal; never from the command line.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
        /// A role to give (repeatable), e.g. `--role admin`; every account also has `user`.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sessiond: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format, &config.log_filter);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::CheckConfig => {
            println!("{}", config.describe());
            Ok(())
        }
        Command::User {
            command: UserCommand::Create { email, name, roles },
        } => create_user(config, email, name, roles).await,
        Command::Keys { command } => keys(config, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sessiond: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn create_user(
    config: Config,
    email: String,
    name: Option<String>,
    roles: Vec<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let password = sessiond::cli::read_password()?;
    let id = sessiond::cli::create_user(&config, &email, name, roles, password).await?;
    println!("{id}");
    Ok(())
}

async fn keys(config: Config, command: KeysCommand) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        KeysCommand::List => print!("{}", sessiond::cli::list_keys(&config).await?),
        KeysCommand::Rotate => println!("{}", sessiond::cli::rotate_keys(&config).await?),
        KeysCommand::Retire => println!(
            "{} keys retired",
            sessiond::cli::retire_keys(&config).await?
        ),
    }
    Ok(())
}

async fn migrate(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let db = startup::connect_database(&config).await?;
    startup::migrate(&db).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let app = startup::Application::build(config).await?;
    let handle = app.handle();
    actix_web::rt::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
        handle.stop(true).await;
    });
    app.run_until_stopped().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
