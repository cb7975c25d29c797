//! A simulator that proves (or disproves) that tier policies converge:
//! replay hours of ingestion into an in-memory lake, run the tiers in order
//! on their cron schedules as a real cycle would (each tier planned by the
//! engine's planning core, outputs replacing their inputs, named as the
//! job names them), and report files per partition
//! over time, the bytes rewritten (write amplification), and whether every
//! tier reaches a fixed point.
//!
//! Fixed point: after ingestion stops and the lake settles, no tier selects
//! anything any more, even with every age rule met; a policy that keeps
//! re-selecting its own output, or leaves a partition above its declared
//! `min_files` forever, is flagged, naming the partition.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use std::sync::Arc;

use compactor_model::{FileMeta, HeldFiles, Partition, group_into_partitions, output_name};
use compactor_planning::{Candidate, Listing, Plan, PlanOptions, PlannedTier, PolicyFactory, plan_tier};
use compactor_runtime::{PluginLimits, PluginRuntime, PluginSource, TierPlugin};

/// One tier of the simulation, in configured order.
#[derive(Debug, Clone)]
pub struct SimTier {
    /// Tier name.
    pub name: String,
    /// `builtin:NAME` or a path.
    pub plugin: String,
    /// Its `[tiers.config]` as JSON.
    pub config_json: String,
    /// When its cycles fire (5-field cron, UTC).
    pub schedule: cron::Schedule,
}

/// What arrives, and when.
#[derive(Debug, Clone, Serialize)]
pub struct Ingestion {
    /// Measurements, each with the same rate.
    pub measurements: usize,
    /// Files per hour and measurement.
    pub files_per_hour: u32,
    /// Size of each file, in bytes.
    pub file_bytes: u64,
    /// Percent of each hour's files that belong to the previous hour
    /// (late data, written into that hour's directory).
    pub late_percent: u32,
    /// A backfill: at this simulated hour, `files` files for the day
    /// `days_back` days before the start.
    pub backfill: Option<Backfill>,
}

/// Old data written late.
#[derive(Debug, Clone, Serialize)]
pub struct Backfill {
    /// Simulated hour at which it arrives.
    pub at_hour: u32,
    /// How many days before the start its day is.
    pub days_back: u32,
    /// Files, spread over the day's 24 hours.
    pub files: u32,
}

/// The whole simulation.
#[derive(Debug, Clone)]
pub struct SimulationSpec {
    /// Simulated start (UTC).
    pub start: DateTime<Utc>,
    /// Hours of ingestion.
    pub hours: u32,
    /// Hours of cycles after ingestion stops, before the fixed point is
    /// checked.
    pub settle_hours: u32,
    /// What arrives.
    pub ingestion: Ingestion,
    /// The tiers, in order.
    pub tiers: Vec<SimTier>,
    /// Largest batch (Arc's `max_files_per_batch`).
    pub max_files_per_batch: usize,
}

/// A problem found: the tier and partition, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    /// Tier.
    pub tier: String,
    /// Partition key prefix.
    pub partition: String,
    /// What is wrong.
    pub problem: String,
}

/// One tier's work over the simulation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TierTotals {
    /// Tier.
    pub tier: String,
    /// Cycles run.
    pub cycles: usize,
    /// Jobs (batches) run.
    pub jobs: usize,
    /// Files merged.
    pub files_in: usize,
    /// Bytes read and written again.
    pub bytes_rewritten: u64,
    /// Partitions it compacted at least once.
    pub partitions: usize,
}

/// The lake at the end of one simulated hour.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Hours since the start.
    pub hour: u32,
    /// Files in the lake.
    pub files: usize,
    /// Files in the fullest partition (an hour, or a day's own files).
    pub max_files_per_partition: usize,
    /// Mean files per non-empty partition.
    pub mean_files_per_partition: f64,
    /// Bytes rewritten so far, all tiers.
    pub bytes_rewritten: u64,
}

/// What the simulation found.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationReport {
    /// Hours of ingestion, then of settling.
    pub hours: u32,
    /// Settling hours.
    pub settle_hours: u32,
    /// Files ingested.
    pub files_ingested: usize,
    /// Bytes ingested.
    pub bytes_ingested: u64,
    /// Bytes rewritten by all tiers.
    pub bytes_rewritten: u64,
    /// `bytes_rewritten / bytes_ingested`.
    pub write_amplification: f64,
    /// Per tier.
    pub tiers: Vec<TierTotals>,
    /// Files per partition, hour by hour.
    pub timeline: Vec<Sample>,
    /// Whether every tier reached a fixed point.
    pub converged: bool,
    /// What kept it from converging.
    pub flags: Vec<Flag>,
}

struct LoadedTier {
    spec: SimTier,
    plugin: TierPlugin,
    suffix: String,
    min_files: u32,
    level: compactor_model::PartitionLevel,
}

/// The in-memory lake.
#[derive(Default)]
struct Lake {
    files: BTreeMap<String, FileMeta>,
    /// Output key → the tier that wrote it.
    outputs: HashMap<String, String>,
    /// Jobs run so far: each job's clock is `now` plus its sequence in
    /// nanoseconds, as every real job names its output by its own clock (two
    /// candidates of one partition both have a batch 1).
    sequence: i64,
}

impl Lake {
    fn add(&mut self, key: String, size: u64, at: DateTime<Utc>) {
        self.files.insert(key.clone(), FileMeta { key, size, last_modified: at });
    }

    /// One listing per measurement, as the engine lists them.
    fn listings(&self, database: &str, measurements: &[String]) -> Vec<Listing> {
        measurements
            .iter()
            .map(|m| {
                let prefix = format!("{database}/{m}/");
                let files = self.files.values().filter(|f| f.key.starts_with(&prefix)).cloned().collect();
                Listing { database: database.to_owned(), measurement: m.clone(), files }
            })
            .collect()
    }

    /// The keys under the partition `path`.
    fn keys_under(&self, path: &str) -> BTreeSet<String> {
        let prefix = format!("{path}/");
        self.files.keys().filter(|k| k.starts_with(&prefix)).cloned().collect()
    }

    /// The partitions of every measurement at `level`.
    fn partitions(&self, database: &str, measurements: &[String], level: compactor_model::PartitionLevel) -> Vec<Partition> {
        let all: Vec<FileMeta> = self.files.values().cloned().collect();
        measurements
            .iter()
            .flat_map(|m| {
                let prefix = format!("{database}/{m}/");
                let files: Vec<FileMeta> = all.iter().filter(|f| f.key.starts_with(&prefix)).cloned().collect();
                group_into_partitions(database, m, &files, level)
            })
            .collect()
    }
}

const DATABASE: &str = "sim";

/// Loads `tier`'s component (a path relative to the current directory) and
/// asks it how it plans.
fn load(runtime: &PluginRuntime, tier: &SimTier) -> anyhow::Result<LoadedTier> {
    let base = std::env::current_dir().unwrap_or_default();
    let plugin = runtime.load_tier(&PluginSource::parse(&tier.plugin, &base))?;
    let description = plugin.instantiate(&tier.config_json, PluginLimits::default())?.description().clone();
    Ok(LoadedTier {
        spec: tier.clone(),
        plugin,
        suffix: description.output_suffix,
        min_files: description.min_files,
        level: description.partition_level,
    })
}

/// Runs the simulation.
pub fn simulate(runtime: &PluginRuntime, spec: &SimulationSpec) -> anyhow::Result<SimulationReport> {
    let tiers = spec.tiers.iter().map(|tier| load(runtime, tier)).collect::<anyhow::Result<Vec<_>>>()?;
    let measurements: Vec<String> = (0..spec.ingestion.measurements.max(1)).map(|i| format!("m{i}")).collect();
    let mut lake = Lake::default();
    let mut totals: Vec<TierTotals> = tiers.iter().map(|t| TierTotals { tier: t.spec.name.clone(), ..Default::default() }).collect();
    let mut compacted: Vec<BTreeSet<String>> = vec![BTreeSet::new(); tiers.len()];
    // (tier, partition) → the partition's files right after the tier compacted it.
    let mut after_compaction: HashMap<(usize, String), BTreeSet<String>> = HashMap::new();
    let mut flags: Vec<Flag> = Vec::new();
    let mut report = SimulationReport {
        hours: spec.hours,
        settle_hours: spec.settle_hours,
        files_ingested: 0,
        bytes_ingested: 0,
        bytes_rewritten: 0,
        write_amplification: 0.0,
        tiers: Vec::new(),
        timeline: Vec::new(),
        converged: true,
        flags: Vec::new(),
    };
    let step = Duration::minutes(5);
    let end = spec.start + Duration::hours(i64::from(spec.hours + spec.settle_hours));
    let arrivals = arrivals(spec, &measurements);
    let mut next_arrival = 0;
    let mut now = spec.start;
    while now < end {
        let until = now + step;
        // Files that arrive in this step.
        while next_arrival < arrivals.len() && arrivals[next_arrival].1 < until {
            let (key, at) = &arrivals[next_arrival];
            lake.add(key.clone(), spec.ingestion.file_bytes, *at);
            report.files_ingested += 1;
            report.bytes_ingested += spec.ingestion.file_bytes;
            next_arrival += 1;
        }
        // Tiers whose schedule fires in this step, in configured order.
        for (index, tier) in tiers.iter().enumerate() {
            let fires = tier.spec.schedule.after(&(now - Duration::nanoseconds(1))).next().is_some_and(|t| t < until);
            if !fires {
                continue;
            }
            totals[index].cycles += 1;
            let cycle = Cycle { index, tier, lake: &mut lake, totals: &mut totals[index], compacted: &mut compacted[index] };
            cycle.run(now, &measurements, spec.max_files_per_batch, &mut after_compaction, &mut flags);
        }
        now = until;
        if (now - spec.start).num_minutes() % 60 == 0 {
            report.timeline.push(sample(
                &lake,
                &measurements,
                (now - spec.start).num_hours() as u32,
                totals.iter().map(|t| t.bytes_rewritten).sum(),
            ));
        }
    }
    // The fixed point: with every age rule met, nothing is selected any more.
    let far = end + Duration::days(30);
    for (index, tier) in tiers.iter().enumerate() {
        let mut instance = tier.plugin.instantiate(&tier.spec.config_json, PluginLimits::default())?;
        for partition in lake.partitions(DATABASE, &measurements, tier.level) {
            let selected: Vec<String> = match instance.select_candidates(&partition, far) {
                Ok(answer) => answer.into_iter().flatten().collect(),
                Err(e) => {
                    flag(&mut flags, &tier.spec.name, &partition.path, format!("its policy failed: {e}"));
                    continue;
                }
            };
            let own = |k: &String| lake.outputs.get(k) == Some(&tier.spec.name);
            if !selected.is_empty() && selected.iter().all(own) {
                flag(&mut flags, &tier.spec.name, &partition.path, "keeps re-selecting its own output".into());
            } else if selected.len() >= 2 {
                flag(
                    &mut flags,
                    &tier.spec.name,
                    &partition.path,
                    format!("still selects {} files after the lake settled", selected.len()),
                );
            }
            let waiting = partition.files.iter().filter(|f| !own(&f.key)).count();
            if selected.is_empty() && tier.min_files >= 2 && waiting >= tier.min_files as usize {
                flag(
                    &mut flags,
                    &tier.spec.name,
                    &partition.path,
                    format!("left above its threshold: {waiting} files, min_files {}", tier.min_files),
                );
            }
        }
        totals[index].partitions = compacted[index].len();
    }
    report.bytes_rewritten = totals.iter().map(|t| t.bytes_rewritten).sum();
    report.write_amplification =
        if report.bytes_ingested == 0 { 0.0 } else { report.bytes_rewritten as f64 / report.bytes_ingested as f64 };
    report.tiers = totals;
    report.converged = flags.is_empty();
    report.flags = flags;
    Ok(report)
}

fn flag(flags: &mut Vec<Flag>, tier: &str, partition: &str, problem: String) {
    let flag = Flag { tier: tier.into(), partition: partition.into(), problem };
    if !flags.contains(&flag) {
        flags.push(flag);
    }
}

/// One tier's cycle over the lake.
struct Cycle<'a> {
    index: usize,
    tier: &'a LoadedTier,
    lake: &'a mut Lake,
    totals: &'a mut TierTotals,
    compacted: &'a mut BTreeSet<String>,
}

impl Cycle<'_> {
    /// Plans the tier over the lake as the engine does (the planning core:
    /// validation, the 2-file rule, Arc's batching), then merges each
    /// planned batch into an output named as the job names it.
    fn run(
        mut self,
        now: DateTime<Utc>,
        measurements: &[String],
        max_batch: usize,
        after_compaction: &mut HashMap<(usize, String), BTreeSet<String>>,
        flags: &mut Vec<Flag>,
    ) {
        let name = self.tier.spec.name.clone();
        let plan = plan_over(self.tier, &self.lake.listings(DATABASE, measurements), now, max_batch);
        for problem in &plan.problems {
            flag(flags, &name, problem.partition.as_deref().unwrap_or(""), problem.message.clone());
        }
        let mut batches = plan.batches.into_iter().peekable();
        while let Some(first) = batches.next() {
            let path = first.candidate.partition_path.clone();
            let mut partition = vec![first];
            while let Some(next) = batches.next_if(|b| b.candidate.partition_path == path) {
                partition.push(next);
            }
            let present = self.lake.keys_under(&path);
            if after_compaction.get(&(self.index, path.clone())) == Some(&present) {
                flag(flags, &name, &path, "keeps re-selecting its own output".into());
                continue;
            }
            for batch in partition {
                self.merge(&batch.candidate, now);
            }
            self.compacted.insert(path.clone());
            after_compaction.insert((self.index, path.clone()), self.lake.keys_under(&path));
        }
    }

    fn merge(&mut self, batch: &Candidate, now: DateTime<Utc>) {
        let bytes: u64 = batch.files.iter().filter_map(|k| self.lake.files.remove(k)).map(|f| f.size).sum();
        for key in &batch.files {
            self.lake.outputs.remove(key);
        }
        self.lake.sequence += 1;
        let job_clock = now + Duration::nanoseconds(self.lake.sequence);
        let key = format!("{}/{}", batch.partition_path, output_name(&batch.measurement, job_clock, batch.batch_number, &self.tier.suffix));
        self.lake.add(key.clone(), bytes, now);
        self.lake.outputs.insert(key, self.tier.spec.name.clone());
        self.totals.jobs += 1;
        self.totals.files_in += batch.files.len();
        self.totals.bytes_rewritten += bytes;
    }
}

/// The batches a simulated cycle of `tier` runs over `files` at `now`
/// (grouped by their `{database}/{measurement}/` prefix): the engine's
/// plan, computed by the same planning core. Tests compare the two.
pub fn plan_batches(
    runtime: &PluginRuntime,
    tier: &SimTier,
    files: &[FileMeta],
    now: DateTime<Utc>,
    max_files_per_batch: usize,
) -> anyhow::Result<Vec<Candidate>> {
    let loaded = load(runtime, tier)?;
    let mut listings: BTreeMap<(String, String), Listing> = BTreeMap::new();
    for file in files {
        let mut segments = file.key.splitn(3, '/');
        let (Some(database), Some(measurement), Some(_)) = (segments.next(), segments.next(), segments.next()) else { continue };
        listings
            .entry((database.to_owned(), measurement.to_owned()))
            .or_insert_with(|| Listing { database: database.to_owned(), measurement: measurement.to_owned(), files: Vec::new() })
            .files
            .push(file.clone());
    }
    let listings: Vec<Listing> = listings.into_values().collect();
    Ok(plan_over(&loaded, &listings, now, max_files_per_batch).batches.into_iter().map(|b| b.candidate).collect())
}

/// The engine's plan of `tier` over `listings` at `now`: the planning core
/// with nothing held.
fn plan_over(tier: &LoadedTier, listings: &[Listing], now: DateTime<Utc>, max_batch: usize) -> Plan {
    let planned = PlannedTier {
        name: tier.spec.name.clone(),
        tenant: None,
        enabled: true,
        policy: Ok(Arc::new(tier.plugin.clone()) as Arc<dyn PolicyFactory>),
        config_json: tier.spec.config_json.clone(),
        limits: PluginLimits::default(),
    };
    let options = PlanOptions {
        now,
        database: None,
        databases: None,
        max_files_per_batch: i64::try_from(max_batch).unwrap_or(i64::MAX),
        multipart_threshold: u64::MAX,
        explain: false,
        stop: Default::default(),
        deadline: None,
        cancel: None,
        resume_after: None,
        fuel_left: None,
        share: None,
    };
    let mut plan = Plan::default();
    plan_tier(&planned, listings, Some(&HeldFiles::default()), &options, &mut plan);
    plan
}

/// Every file of the ingestion, with its arrival time, in arrival order.
fn arrivals(spec: &SimulationSpec, measurements: &[String]) -> Vec<(String, DateTime<Utc>)> {
    let ingestion = &spec.ingestion;
    let mut out = Vec::new();
    let mut sequence = 0u64;
    let mut name = |measurement: &str, hour_dir: DateTime<Utc>, written: DateTime<Utc>| {
        sequence += 1;
        format!(
            "{DATABASE}/{measurement}/{}/{measurement}_{}_{sequence:09}.parquet",
            hour_dir.format("%Y/%m/%d/%H"),
            written.format("%Y%m%d_%H%M%S")
        )
    };
    for hour in 0..spec.hours {
        let hour_start = spec.start + Duration::hours(i64::from(hour));
        for measurement in measurements {
            for i in 0..ingestion.files_per_hour {
                let written = hour_start + Duration::seconds(i64::from(i) * 3600 / i64::from(ingestion.files_per_hour.max(1)));
                let late = hour > 0 && (i * 100 / ingestion.files_per_hour.max(1)) < ingestion.late_percent;
                let dir = if late { hour_start - Duration::hours(1) } else { hour_start };
                out.push((name(measurement, dir, written), written));
            }
        }
        if let Some(backfill) = ingestion.backfill.as_ref().filter(|b| b.at_hour == hour) {
            let day = spec.start - Duration::days(i64::from(backfill.days_back));
            for i in 0..backfill.files {
                let dir = day + Duration::hours(i64::from(i % 24));
                out.push((name(&measurements[0], dir, hour_start), hour_start));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    out
}

fn sample(lake: &Lake, measurements: &[String], hour: u32, bytes_rewritten: u64) -> Sample {
    // Partitions as the lake holds them: each hour, and each day's own files.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for key in lake.files.keys() {
        let parent = key.rsplit_once('/').map_or(key.as_str(), |(dir, _)| dir);
        *counts.entry(parent.to_owned()).or_default() += 1;
    }
    let _ = measurements;
    let partitions = counts.len().max(1);
    Sample {
        hour,
        files: lake.files.len(),
        max_files_per_partition: counts.values().copied().max().unwrap_or(0),
        mean_files_per_partition: lake.files.len() as f64 / partitions as f64,
        bytes_rewritten,
    }
}

/// Draws the timeline: files (total, fullest partition) and bytes rewritten
/// over the simulated hours, as an SVG file.
pub fn write_svg(report: &SimulationReport, title: &str, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(320);
    let hours = report.timeline.last().map_or(1, |s| s.hour.max(1));
    let max_files = report.timeline.iter().map(|s| s.files).max().unwrap_or(1).max(1);
    let mut files = ChartBuilder::on(&top)
        .caption(format!("{title}: files in the lake"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..hours, 0usize..max_files + max_files / 10 + 1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    files.configure_mesh().x_desc("hours").y_desc("files").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    files
        .draw_series(LineSeries::new(report.timeline.iter().map(|s| (s.hour, s.files)), &BLUE))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("all files")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    files
        .draw_series(LineSeries::new(report.timeline.iter().map(|s| (s.hour, s.max_files_per_partition)), &RED))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("fullest partition")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    files.configure_series_labels().border_style(BLACK).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let max_bytes = report.timeline.iter().map(|s| mib(s.bytes_rewritten)).fold(1.0, f64::max);
    let mut bytes = ChartBuilder::on(&bottom)
        .caption("bytes rewritten (MiB, cumulative)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..hours, 0f64..max_bytes * 1.1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    bytes.configure_mesh().x_desc("hours").y_desc("MiB").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    bytes
        .draw_series(LineSeries::new(report.timeline.iter().map(|s| (s.hour, mib(s.bytes_rewritten))), &GREEN))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tiers: Vec<SimTier>) -> SimulationSpec {
        SimulationSpec {
            start: crate::at("2026-04-01T00:00:00Z"),
            hours: 48,
            settle_hours: 48,
            ingestion: Ingestion { measurements: 1, files_per_hour: 12, file_bytes: 1 << 20, late_percent: 10, backfill: None },
            tiers,
            max_files_per_batch: 30,
        }
    }

    fn tier(name: &str, plugin: &str, config: &str, schedule: &str) -> SimTier {
        SimTier { name: name.into(), plugin: plugin.into(), config_json: config.into(), schedule: schedule.parse().unwrap() }
    }

    #[test]
    fn arcs_tiers_converge() {
        let runtime = crate::runtime().unwrap();
        let report = simulate(
            &runtime,
            &spec(vec![tier("hourly", "builtin:hourly", "{}", "0 5 * * * *"), tier("daily", "builtin:daily", "{}", "0 0 3 * * *")]),
        )
        .unwrap();
        assert!(report.converged, "{:#?}", report.flags);
        assert!(report.tiers[0].jobs > 0 && report.tiers[1].jobs > 0, "{:#?}", report.tiers);
        // Every byte is written by hourly, then by daily: about 2×.
        assert!((1.5..3.0).contains(&report.write_amplification), "{}", report.write_amplification);
    }
}
