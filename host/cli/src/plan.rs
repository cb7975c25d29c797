//! `compactor plan`: the batches a cycle would run, changing nothing.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use compactor_engine::Plan;
use compactor_engine::{CycleOptions, GateDecision, Manager};

use crate::Format;
use crate::table::Table;

/// Show the batches a compaction cycle would run, without changing anything.
#[derive(Debug, clap::Args)]
#[command(after_help = "Lists the storage once, runs each tier's policy on every partition, and prints the\n\
resulting batches in tier order, then database, measurement, partition and batch number.\n\
Nothing in storage changes. Exit status 1 means a tier or partition could not be planned\n\
(the rest of the plan is still printed).")]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) config: crate::ConfigFile,
    /// The time the policies see as now (RFC 3339; default: the current time).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    now: Option<DateTime<Utc>>,
    /// Only this database.
    #[arg(long, value_name = "DB")]
    database: Option<String>,
    /// Ignore the policies' age rules (they see a clock ten years ahead):
    /// for backfilled data that would otherwise wait.
    #[arg(long)]
    force: bool,
    /// Only this tier (repeatable; default: every enabled tier).
    #[arg(long = "tier", value_name = "NAME")]
    tiers: Vec<String>,
    /// Also say, for every partition each tier looked at, why it was or was
    /// not selected (with `--format json`: an object with `batches` and
    /// `partitions`).
    #[arg(long)]
    explain: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text).map(|t| t.to_utc()).map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-04-11T15:00:00Z)"))
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let manager = crate::open_manager(&args.config.path, &args.tiers)?;
    let options = CycleOptions {
        now: Some(args.now.unwrap_or_else(Utc::now)),
        tiers: args.tiers,
        database: args.database,
        force: args.force,
        explain: args.explain,
        ..Default::default()
    };
    let plan = plan(&manager, &options)?;
    // The plan is what the tiers would do; the gate decides whether this
    // node does it.
    let gate = manager.gate_decision();
    if gate != GateDecision::Standalone {
        eprintln!("note: {gate}");
    }
    print_plan(&plan, args.format, args.explain)?;
    let gate_failed = matches!(gate, GateDecision::Failed { .. } | GateDecision::CutOff { .. });
    Ok(if plan.problems.is_empty() && !gate_failed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Plans one cycle with `manager`, changing nothing.
pub(crate) fn plan(manager: &Manager, options: &CycleOptions) -> anyhow::Result<Plan> {
    crate::runtime()?.block_on(manager.plan(options)).with_context(|| format!("cannot plan over {}", manager.storage()))
}

pub(crate) fn print_plan(plan: &Plan, format: Format, explain: bool) -> anyhow::Result<()> {
    for problem in &plan.problems {
        eprintln!("warning: {problem}");
    }
    // Every object left in place, by name, in either format (the JSON
    // answer stays the batch list).
    for object in &plan.set_aside {
        eprintln!("left in place: {:?}: {}", object.key, object.reason.escape_debug());
    }
    match format {
        Format::Json => {
            let batches = &plan.batches;
            if explain {
                crate::table::print_json(
                    &serde_json::json!({ "batches": batches, "partitions": plan.partitions, "set_aside": plan.set_aside }),
                )
            } else {
                crate::table::print_json(&batches)
            }
        }
        Format::Table => {
            if explain {
                let mut reasons = Table::new(["TIER", "PARTITION", "SELECTED", "REASON"]);
                for verdict in &plan.partitions {
                    let selected = if verdict.selected { "yes" } else { "no" };
                    reasons.row([verdict.tier.clone(), verdict.partition_path.clone(), selected.into(), verdict.reason.clone()]);
                }
                reasons.print(&format!("{} partitions looked at\n", plan.partitions.len()))?;
            }
            let mut table = Table::new(["TIER", "DATABASE", "MEASUREMENT", "PARTITION", "BATCH", "FILES", "SIZE"]);
            for batch in &plan.batches {
                let c = &batch.candidate;
                table.row([
                    batch.tier_key(),
                    c.database.clone(),
                    c.measurement.clone(),
                    c.partition_path.clone(),
                    format!("{}/{}", c.batch_number, c.total_batches),
                    c.files.len().to_string(),
                    compactor_model::units::format_bytes(batch.bytes),
                ]);
            }
            let files: usize = plan.tiers.iter().map(|t| t.files).sum();
            let bytes: u64 = plan.tiers.iter().map(|t| t.bytes).sum();
            let per_tier: Vec<String> =
                plan.tiers.iter().map(|t| format!("{}: {} in {} partitions", t.tier, t.batches, t.partitions_selected)).collect();
            let summary = format!(
                "{} batches in {} partitions, {} files, {} ({}){}",
                plan.batches.len(),
                plan.partition_count(),
                files,
                compactor_model::units::format_bytes(bytes),
                per_tier.join("; "),
                if plan.problems.is_empty() { String::new() } else { format!("; {} problems (see above)", plan.problems.len()) },
            );
            table.print(&summary)?;
            if !plan.set_aside.is_empty() {
                println!("{} objects are left in place: compaction cannot take them (listed above)", plan.set_aside.len());
            }
            if plan.deferred_by_budget > 0 {
                println!("{} more batches wait for a later cycle: their tenants' max_bytes_per_cycle is spent", plan.deferred_by_budget);
            }
            let requests = plan.tiers.iter().fold(plan.planning_requests, |total, t| total + t.requests);
            println!(
                "cost of the cycle: {} requests ({} LIST, {} GET, {} PUT incl. parts, {} DELETE); reads {}, writes at most {}",
                requests.total(),
                requests.list,
                requests.get,
                requests.put,
                requests.delete,
                compactor_model::units::format_bytes(bytes),
                compactor_model::units::format_bytes(bytes)
            );
            for tier in &plan.tiers {
                let r = tier.requests;
                println!(
                    "  {}: {} GET, {} PUT, {} DELETE; reads {}",
                    tier.tier,
                    r.get,
                    r.put,
                    r.delete,
                    compactor_model::units::format_bytes(tier.bytes)
                );
            }
            Ok(())
        }
    }
}
