//! `compactor plugin check|info|test`: validate a component, describe it,
//! and run it against table-driven fixtures.

use std::process::ExitCode;

use compactor_runtime::PluginLimits;
use compactor_runtime::{ArtifactCache, NodeInfo, PluginSource, World, accepted_wit_versions, host_wit_version};
use serde::Serialize;

use crate::Format;

/// Validate and describe plugin components.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Check that a component loads, fits the contract and accepts a config.
    Check(Args),
    /// Show a component's WIT version, world, imports and tier information.
    Info(Args),
    /// Run a tier policy against fixture files (a partition, `now`, the tier
    /// config and the expected answer or error, one TOML file each).
    Test(TestArgs),
    /// Replay hours of ingestion with the configured tiers (or one plugin)
    /// and check that every tier reaches a fixed point.
    Simulate(SimulateArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Files arrive every hour (optionally late, and a backfill of an old day); each tier runs on\n\
its cron schedule, in configured order, and its outputs replace its inputs as in a real cycle.\n\
After ingestion stops the lake settles, then every tier must select nothing more. Prints the\n\
totals, write amplification and any partition that does not converge; exits 1 if one does not.")]
pub(crate) struct SimulateArgs {
    /// The tiers of this config (default: Arc's hourly and daily).
    #[arg(long, value_name = "FILE", conflicts_with = "plugin")]
    config: Option<std::path::PathBuf>,
    /// Simulate one tier running this component instead.
    #[arg(long, value_name = "PLUGIN")]
    plugin: Option<String>,
    /// The plugin's configuration, as a JSON object.
    #[arg(long = "plugin-config", value_name = "JSON", default_value = "{}", requires = "plugin")]
    plugin_config: String,
    /// The plugin's schedule (5-field cron, UTC).
    #[arg(long, default_value = "5 * * * *", requires = "plugin")]
    schedule: String,
    /// Hours of ingestion.
    #[arg(long, default_value_t = 72)]
    hours: u32,
    /// Hours of cycles after ingestion stops.
    #[arg(long, default_value_t = 48)]
    settle_hours: u32,
    /// Measurements.
    #[arg(long, default_value_t = 1)]
    measurements: usize,
    /// Files per hour and measurement.
    #[arg(long, default_value_t = 12)]
    files_per_hour: u32,
    /// Size of each file, e.g. 1MiB.
    #[arg(long, default_value = "1MiB")]
    file_size: String,
    /// Percent of each hour's files that belong to the previous hour.
    #[arg(long, default_value_t = 0)]
    late_percent: u32,
    /// A backfill of this many files, for the day `--backfill-days-back`
    /// before the start, arriving at `--backfill-at-hour`.
    #[arg(long, default_value_t = 0)]
    backfill_files: u32,
    /// See `--backfill-files`.
    #[arg(long, default_value_t = 10)]
    backfill_days_back: u32,
    /// See `--backfill-files`.
    #[arg(long, default_value_t = 24)]
    backfill_at_hour: u32,
    /// Draw files and bytes rewritten over time into this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Each *.toml file in DIR is one case; see examples/fixtures/README.md for the format.\n\
Prints a pass/fail table with the fuel of each call; exits 1 if any case fails.")]
pub(crate) struct TestArgs {
    /// builtin:NAME or a path to a .wasm component.
    #[arg(value_name = "PLUGIN")]
    plugin: String,
    /// The directory of fixture files.
    #[arg(long, value_name = "DIR")]
    fixtures: std::path::PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "PLUGIN is builtin:NAME (builtin:hourly, builtin:daily, builtin:binpack, builtin:role)\n\
or the path of a .wasm component.")]
pub(crate) struct Args {
    /// builtin:NAME or a path to a .wasm component.
    #[arg(value_name = "PLUGIN")]
    plugin: String,
    /// The plugin's configuration, as a JSON object.
    #[arg(long = "plugin-config", value_name = "JSON", default_value = "{}")]
    plugin_config: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct Report {
    plugin: String,
    world: World,
    wit_version: String,
    host_wit_version: String,
    accepted_wit_versions: String,
    /// Whether it says why it selects (WIT 1.1.0's `explain`).
    explains: bool,
    imports: Vec<String>,
    cache_hit: bool,
    load_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<compactor_runtime::TierDescription>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gate: Option<GateReport>,
}

#[derive(Serialize)]
struct GateReport {
    standalone_can_compact: bool,
    role: String,
}

pub(crate) fn exec(command: Command) -> anyhow::Result<ExitCode> {
    let (args, detailed) = match command {
        Command::Check(args) => (args, false),
        Command::Info(args) => (args, true),
        Command::Test(args) => return test(args),
        Command::Simulate(args) => return simulate(args),
    };
    if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&args.plugin_config).is_err() {
        anyhow::bail!("--plugin-config must be a JSON object, got {:?}", args.plugin_config);
    }
    let source = PluginSource::parse(&args.plugin, &std::env::current_dir()?);
    let runtime = compactor_engine::plugin_runtime(ArtifactCache::default_dir())?;
    let loaded = runtime.load(&source)?;
    let world = loaded.contract.world;
    let mut report = Report {
        plugin: source.to_string(),
        world: loaded.contract.world,
        wit_version: loaded.contract.wit_version.to_string(),
        host_wit_version: host_wit_version().to_string(),
        accepted_wit_versions: accepted_wit_versions(),
        explains: loaded.contract.exports_explain,
        imports: loaded.contract.imports.clone(),
        cache_hit: loaded.stats.cache_hit,
        load_ms: loaded.stats.load_time.as_secs_f64() * 1000.0,
        tier: None,
        gate: None,
    };
    match world {
        World::TierPolicy => {
            let instance = runtime.tier(loaded)?.instantiate(&args.plugin_config, PluginLimits::default())?;
            report.tier = Some(instance.description().clone());
        }
        World::ClusterGate => {
            let mut gate = runtime.gate(loaded)?.instantiate(&args.plugin_config, PluginLimits::default())?;
            let node = NodeInfo { id: "local".into(), role: "standalone".into(), ..Default::default() };
            report.gate = Some(GateReport { standalone_can_compact: gate.can_compact(&node)?, role: gate.role(&node)? });
        }
    }
    match (args.format, detailed) {
        (Format::Json, _) => crate::table::print_json(&report)?,
        (Format::Table, false) => println!(
            "ok: {} is a {} component for compactor:policy@{} (host speaks {})",
            report.plugin, report.world, report.wit_version, report.host_wit_version
        ),
        (Format::Table, true) => print_info(&report),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_info(report: &Report) {
    println!("plugin:       {}", report.plugin);
    println!("world:        {}", report.world);
    println!(
        "wit version:  compactor:policy@{} (host speaks {}, accepts {})",
        report.wit_version, report.host_wit_version, report.accepted_wit_versions
    );
    if report.world == World::TierPolicy {
        let explains =
            if report.explains { "yes, in its own words (explain, WIT 1.1)" } else { "no: plan --explain uses the host's reasons" };
        println!("explains:     {explains}");
    }
    println!("loaded in:    {:.2} ms ({})", report.load_ms, if report.cache_hit { "cached artifact" } else { "compiled" });
    println!("imports:      {}", report.imports.join(", "));
    if let Some(tier) = &report.tier {
        println!("tier:         {} — {}", tier.name, tier.description);
        println!("partitions:   {}", tier.partition_level);
        println!("outputs:      *_{}.parquet", tier.output_suffix);
        println!("min files:    {}", tier.min_files);
        println!("config:       {}", tier.effective_config);
    }
    if let Some(gate) = &report.gate {
        println!("standalone:   {} (role {})", if gate.standalone_can_compact { "may compact" } else { "may not compact" }, gate.role);
    }
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let runtime = compactor_engine::plugin_runtime(ArtifactCache::default_dir())?;
    let outcomes = compactor_policy_testkit::fixtures::run_dir(&runtime, &args.plugin, &args.fixtures)?;
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if args.format == Format::Json {
        crate::table::print_json(&outcomes)?;
    } else {
        let mut table = crate::table::Table::new(["FIXTURE", "RESULT", "FUEL", "DETAIL"]);
        for outcome in &outcomes {
            let result = if outcome.passed { "pass" } else { "FAIL" };
            table.row([outcome.fixture.clone(), result.into(), outcome.fuel.to_string(), outcome.detail.clone()]);
        }
        table.print(&format!("{} fixtures: {} passed, {failed} failed", outcomes.len(), outcomes.len() - failed))?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    use compactor_policy_testkit::simulate::{Backfill, Ingestion, SimTier, SimulationSpec};
    let schedule = |text: &str| compactor_engine::config::parse_schedule(text).map_err(|e| anyhow::anyhow!("invalid schedule {e}"));
    let tiers: Vec<SimTier> = match (&args.config, &args.plugin) {
        (_, Some(plugin)) => {
            if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&args.plugin_config).is_err() {
                anyhow::bail!("--plugin-config must be a JSON object, got {:?}", args.plugin_config);
            }
            vec![SimTier {
                name: "tier".into(),
                plugin: plugin.clone(),
                config_json: args.plugin_config.clone(),
                schedule: schedule(&args.schedule)?,
            }]
        }
        (config, None) => {
            let config = match config {
                Some(path) => compactor_engine::config::Config::load(path)?,
                None => compactor_engine::config::Config::parse("[storage]\nurl = \"memory://\"\n")?,
            };
            let base = config.base_dir.clone();
            config
                .tiers
                .iter()
                .filter(|t| t.enabled)
                .map(|t| {
                    // Paths in the config are relative to it.
                    let plugin = match compactor_runtime::PluginSource::parse(&t.plugin, &base) {
                        PluginSource::Path(path) => path.display().to_string(),
                        PluginSource::Builtin(_) => t.plugin.clone(),
                    };
                    Ok(SimTier { name: t.name.clone(), plugin, config_json: t.config_json(), schedule: schedule(t.effective_schedule())? })
                })
                .collect::<anyhow::Result<_>>()?
        }
    };
    let file_bytes = compactor_model::units::parse_size(&args.file_size)
        .ok_or_else(|| anyhow::anyhow!("--file-size {:?}: expected a size such as 1MiB", args.file_size))?;
    let spec = SimulationSpec {
        start: chrono::DateTime::parse_from_rfc3339("2026-04-01T00:00:00Z")?.to_utc(),
        hours: args.hours,
        settle_hours: args.settle_hours,
        ingestion: Ingestion {
            measurements: args.measurements.max(1),
            files_per_hour: args.files_per_hour,
            file_bytes,
            late_percent: args.late_percent.min(100),
            backfill: (args.backfill_files > 0).then_some(Backfill {
                at_hour: args.backfill_at_hour,
                days_back: args.backfill_days_back,
                files: args.backfill_files,
            }),
        },
        tiers,
        max_files_per_batch: 30,
    };
    let runtime = compactor_engine::plugin_runtime(ArtifactCache::default_dir())?;
    if args.measurements == 0 {
        anyhow::bail!("--measurements must be at least 1");
    }
    if args.late_percent > 100 {
        anyhow::bail!("--late-percent must be 0 to 100, got {}", args.late_percent);
    }
    let report = compactor_policy_testkit::simulate::simulate(&runtime, &spec)?;
    if args.format == Format::Json {
        crate::table::print_json(&report)?;
    } else {
        let mut table = crate::table::Table::new(["TIER", "CYCLES", "JOBS", "FILES IN", "REWRITTEN", "PARTITIONS"]);
        for t in &report.tiers {
            table.row([
                t.tier.clone(),
                t.cycles.to_string(),
                t.jobs.to_string(),
                t.files_in.to_string(),
                compactor_model::units::format_bytes(t.bytes_rewritten),
                t.partitions.to_string(),
            ]);
        }
        let last = report.timeline.last();
        table.print(&format!(
            "{} h of ingestion + {} h settling: {} files ({}) in, {} files left; write amplification {:.2}",
            report.hours,
            report.settle_hours,
            report.files_ingested,
            compactor_model::units::format_bytes(report.bytes_ingested),
            last.map_or(0, |s| s.files),
            report.write_amplification
        ))?;
        if report.converged {
            println!("fixed point: every tier converged");
        } else {
            println!("NOT CONVERGED:");
            for flag in &report.flags {
                println!("  {} {}: {}", flag.tier, compactor_runtime::sanitize(&flag.partition, 256), flag.problem);
            }
        }
    }
    // The chart last: a path that cannot be written loses no result.
    if let Some(path) = &args.svg {
        let title = spec.tiers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(" + ");
        compactor_policy_testkit::simulate::write_svg(&report, &title, path)?;
    }
    Ok(if report.converged { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
