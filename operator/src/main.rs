//! `switchboard-operator`: runs the controller, or prints the CRD.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use switchboard_operator::config::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            let yaml = switchboard_operator::crd_yaml().context("rendering the CRD")?;
            std::io::Write::write_all(&mut std::io::stdout(), yaml.as_bytes())?;
            Ok(())
        }
        Some(Command::Run) | None => {
            init_tracing(cli.run.log_format);
            switchboard_operator::run::run(cli.run, Arc::default()).await
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,rocketmq=warn,rocketmq_client_rust=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
