use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = devin_etl::cli::Cli::parse();
    match devin_etl::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
