//! Output helpers: aligned text tables and JSON on stdout.

use std::io::Write;

/// The longest cell shown, in bytes; longer ones are cut.
const MAX_CELL_BYTES: usize = 2000;

/// A table printed with aligned columns.
pub(crate) struct Table<const N: usize> {
    header: [&'static str; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    pub(crate) fn new(header: [&'static str; N]) -> Self {
        Self { header, rows: Vec::new() }
    }

    pub(crate) fn row(&mut self, row: [String; N]) {
        // Cells can quote what users, other tools' object names and plugins
        // wrote: escape what would drive or reorder the terminal, and keep
        // each short enough to align (`format!`'s width is a u16).
        self.rows.push(row.map(|cell| compactor_runtime::sanitize(&cell, MAX_CELL_BYTES)));
    }

    /// Prints the table, then `summary` on its own line.
    pub(crate) fn print(&self, summary: &str) -> anyhow::Result<()> {
        let mut widths = self.header.map(str::len);
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = std::io::stdout().lock();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
            let padded: Vec<String> = cells.zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            writeln!(out, "{}", padded.join("  ").trim_end())
        };
        if !self.rows.is_empty() {
            line(&mut self.header.iter().copied())?;
            for row in &self.rows {
                line(&mut row.iter().map(String::as_str))?;
            }
        }
        writeln!(out, "{summary}")?;
        Ok(())
    }
}

/// Pretty JSON and a newline on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
