//! `compactor plugin check|info|test`: validate a component, describe it,
//! and run it against table-driven fixtures.

use std::process::ExitCode;

use compactor_runtime::PluginLimits;
use compactor_runtime::{ArtifactCache, NodeInfo, PluginSource, World, host_wit_version};
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
    println!("wit version:  compactor:policy@{} (host speaks {})", report.wit_version, report.host_wit_version);
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
