//! `arbor-jepsen`: command-line front end of the history checkers.
//!
//! `arbor-jepsen check --model MODEL [options] FILE` prints a JSON verdict on stdout and
//! exits 0 (valid), 1 (invalid), 2 (unknown) or 3 (usage or input error).

use anyhow::{anyhow, bail, Context, Result};
use arbor_jepsen::history::{self, Format};
use arbor_jepsen::{check, elle::ElleOptions, CheckOptions, Workload};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "arbor-jepsen", version, about = "Jepsen-style history checkers for Arbor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a history file and print a JSON verdict.
    Check(CheckArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ModelArg {
    Register,
    CasRegister,
    Kv,
    ListAppend,
    Set,
    Bank,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FormatArg {
    Auto,
    Jsonl,
    Edn,
    JepsenLog,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Which checker / model to use.
    #[arg(long, value_enum)]
    model: ModelArg,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatArg,
    /// list-append: consistency model(s) to check (comma separated or repeated), e.g.
    /// strict-serializable, serializable, snapshot-isolation, repeatable-read,
    /// read-committed, strong-session-snapshot-isolation. Default: strict-serializable,
    /// unless --anomalies is given alone.
    #[arg(long = "consistency-model", value_delimiter = ',')]
    consistency_models: Vec<String>,
    /// list-append: specific anomalies to search for (e.g. G0,G1,G-single,G2,internal).
    #[arg(long, value_delimiter = ',')]
    anomalies: Vec<String>,
    /// Give up after this many seconds and answer unknown (linearizability, cycle search).
    #[arg(long = "time-limit")]
    time_limit: Option<f64>,
    /// Linearizability: memory budget for the search memo, in MiB.
    #[arg(long = "memory-limit-mb", default_value_t = 2048)]
    memory_limit_mb: usize,
    /// Linearizability: worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// bank: the expected total of all balances (default: the first read's sum).
    #[arg(long)]
    total: Option<i64>,
    /// Pretty-print the JSON.
    #[arg(long)]
    pretty: bool,
    /// The history file (`-` for stdin).
    file: PathBuf,
}

fn workload(m: ModelArg) -> Workload {
    match m {
        ModelArg::Register => Workload::Register,
        ModelArg::CasRegister => Workload::CasRegister,
        ModelArg::Kv => Workload::Kv,
        ModelArg::ListAppend => Workload::ListAppend,
        ModelArg::Set => Workload::Set,
        ModelArg::Bank => Workload::Bank,
    }
}

fn run(args: CheckArgs) -> Result<i32> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?
    };
    let format = match args.format {
        FormatArg::Auto => history::detect_format(&text),
        FormatArg::Jsonl => Format::Jsonl,
        FormatArg::Edn => Format::Edn,
        FormatArg::JepsenLog => Format::JepsenLog,
    };
    let history = history::parse(&text, format)
        .with_context(|| format!("parsing {} as {}", args.file.display(), format.name()))?;
    drop(text);
    let time_limit = match args.time_limit {
        Some(s) if !(s.is_finite() && s >= 0.0) => bail!("--time-limit must be a non-negative number of seconds"),
        s => s.map(Duration::from_secs_f64),
    };
    let mut opts = CheckOptions {
        elle: ElleOptions::new(args.consistency_models, args.anomalies),
        bank_total: args.total,
        time_limit,
        ..CheckOptions::default()
    };
    opts.linear.memory_limit = args.memory_limit_mb.saturating_mul(1 << 20);
    opts.linear.threads = args.threads;
    let verdict = check(workload(args.model), &history, &opts).map_err(|e| anyhow!(e))?;
    let mut json = verdict.to_json();
    json["format"] = serde_json::json!(format.name());
    json["file"] = serde_json::json!(args.file.display().to_string());
    let out = if args.pretty { serde_json::to_string_pretty(&json) } else { serde_json::to_string(&json) }?;
    // A closed pipe (e.g. `| head`) is not an error worth a panic.
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{out}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(verdict.validity.exit_code())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 3 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check(args) => match run(args) {
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => {
                eprintln!("arbor-jepsen: error: {e:#}");
                ExitCode::from(3)
            }
        },
    }
}
