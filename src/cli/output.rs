//! Output for people and for scripts. Every command can print its result as
//! one JSON document (`--json`), and otherwise as text or an aligned table.

use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;

use super::CliError;
use crate::api::ImageEntry;

/// The options every command of `portable` and `machine` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Print results as one JSON document: short (one line; the default),
    /// pretty (indented) or off (text, as without the option).
    #[arg(long, global = true, value_name = "STYLE", num_args = 0..=1, require_equals = true, default_missing_value = "short")]
    pub json: Option<JsonStyle>,
    /// Log what is done, to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Print nothing but errors (and no progress bars).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print tables without their header line (and nothing for an empty list).
    #[arg(long, global = true)]
    pub no_legend: bool,
    /// Accepted as portablectl and machinectl accept it: wharf never pages.
    #[arg(long, global = true)]
    pub no_pager: bool,
    /// Do not let polkit ask for a password: a caller other than root is
    /// then let in only where polkit's rules allow it without one.
    #[arg(long, global = true)]
    pub no_ask_password: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JsonStyle {
    /// One line.
    Short,
    /// Indented.
    Pretty,
    /// No JSON: text.
    Off,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text; `legend`: tables have their header line.
    Human {
        legend: bool,
    },
    Json(JsonStyle),
}

impl Format {
    pub fn new(output: &OutputArgs) -> Format {
        match output.json {
            None | Some(JsonStyle::Off) => Format::Human { legend: !output.no_legend },
            Some(style) => Format::Json(style),
        }
    }

    /// Whether tables are printed with their header line.
    pub fn legend(self) -> bool {
        matches!(self, Format::Human { legend: true })
    }

    pub fn is_json(self) -> bool {
        matches!(self, Format::Json(_))
    }

    /// Prints `value` as JSON if asked for, else calls `human` to print it.
    pub fn emit<T: Serialize>(self, value: &T, human: impl FnOnce(&T) -> String) -> Result<(), CliError> {
        let text = match self {
            Format::Json(JsonStyle::Short) => serde_json::to_string(value).map_err(|e| CliError::Output(e.into()))?,
            Format::Json(JsonStyle::Pretty) => {
                serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.into()))?
            }
            Format::Human { .. } | Format::Json(JsonStyle::Off) => human(value),
        };
        let mut stdout = std::io::stdout().lock();
        if text.is_empty() {
            return Ok(());
        }
        writeln!(stdout, "{}", text.trim_end_matches('\n')).map_err(CliError::Output)
    }
}

/// `read-only --json` of both tools: the image named as `list` and
/// `list-images` name it (its file name) and its path.
#[derive(Debug, Serialize)]
pub struct ReadOnlyView {
    pub name: String,
    pub path: String,
    pub read_only: bool,
}

impl ReadOnlyView {
    /// `argument` as the daemon took it (a name in `pool`, or a path).
    pub fn new(pool: &crate::image::Pool, argument: &str, read_only: bool) -> Result<ReadOnlyView, CliError> {
        let cwd = super::current_dir()?;
        let path = pool.locate(argument, Some(&cwd)).map_err(|e| CliError::Usage(e.to_string()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(ReadOnlyView { name, path: path.display().to_string(), read_only })
    }
}

/// What a command on several machines gives with `--json` for each: its
/// `name` and what was done, or the error it failed with, in the shape a
/// whole command's error has.
pub fn per_name_record(name: &str, result: &Result<serde_json::Value, CliError>) -> serde_json::Value {
    let mut record = match result {
        Ok(serde_json::Value::Object(fields)) => fields.clone(),
        Ok(_) => serde_json::Map::new(),
        Err(error) => serde_json::Map::from_iter([(
            "error".to_string(),
            serde_json::json!({ "kind": error.kind(), "message": super::one_line(&error.to_string()) }),
        )]),
    };
    record.insert("name".to_string(), name.into());
    serde_json::Value::Object(record)
}

/// Lays out rows under headers (printed if `legend`), each column as wide
/// as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>], legend: bool) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| if legend { h.len() } else { 0 }).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // One string, written in place: `portable list` may lay out thousands of rows.
    let mut out = String::with_capacity((rows.len() + 1) * (widths.iter().sum::<usize>() + widths.len()));
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(cell);
            if i + 1 < widths.len() {
                out.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    if legend {
        line(&mut headers.iter().copied());
    }
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out.pop();
    out
}

/// The image table of `portable list` and `machine list-images`.
pub fn images_table(images: &[ImageEntry], with_path: bool, legend: bool) -> String {
    images_table_by(images, None, with_path, legend)
}

/// [`images_table`] with a column saying who attached each image (`by`, in
/// the same order as `images`), before the path.
pub fn images_table_by(images: &[ImageEntry], by: Option<&[String]>, with_path: bool, legend: bool) -> String {
    if images.is_empty() {
        return if legend { "No images.".to_string() } else { String::new() };
    }
    let mut rows: Vec<Vec<String>> = images
        .iter()
        .map(|image| {
            vec![
                image.name.clone(),
                image.kind.clone(),
                if image.read_only { "yes" } else { "no" }.to_string(),
                if image.size > 0 { human_size(image.size) } else { "-".to_string() },
                image.state.clone(),
            ]
        })
        .collect();
    let mut headers = vec!["NAME", "KIND", "RO", "SIZE", "STATE"];
    if let Some(by) = by {
        headers.push("BY");
        for (row, by) in rows.iter_mut().zip(by) {
            row.push(if by.is_empty() { "-".to_string() } else { by.clone() });
        }
    }
    if with_path {
        headers.push("PATH");
        for (row, image) in rows.iter_mut().zip(images) {
            row.push(image.path.clone());
        }
    }
    table(&headers, &rows, legend)
}

/// Sizes as people read them: 1.5K, 230.0M, 2.1G.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes}B") } else { format!("{value:.1}{}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--no-legend`: rows only, aligned as wide as their own cells.
    #[test]
    fn a_table_without_legend_has_rows_only() {
        let rows = vec![vec!["a".to_string(), "long-kind".to_string()], vec!["bb".to_string(), "k".to_string()]];
        assert_eq!(table(&["NAME", "KIND"], &rows, false), "a  long-kind\nbb k");
        assert_eq!(images_table(&[], true, false), "");
        assert_eq!(images_table(&[], true, true), "No images.");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["foobar.raw".to_string(), "squashfs".to_string(), "attached".to_string()],
            vec!["x".to_string(), "directory".to_string(), "detached".to_string()],
        ];
        assert_eq!(
            table(&["NAME", "KIND", "STATE"], &rows, true),
            "NAME       KIND      STATE\nfoobar.raw squashfs  attached\nx          directory detached"
        );
    }

    /// A machine of several: what was done, or its error as a whole
    /// command's error document has it, beside its name.
    #[test]
    fn per_name_records_carry_the_name_and_the_error() {
        let done = per_name_record("f28", &Ok(serde_json::json!({ "signal": 2 })));
        assert_eq!(done, serde_json::json!({ "name": "f28", "signal": 2 }));
        let failed = per_name_record("f29", &Err(CliError::Usage("machine 'f29'\n is not running".into())));
        assert_eq!(
            failed,
            serde_json::json!({ "name": "f29", "error": { "kind": "usage", "message": "machine 'f29' is not running" } })
        );
    }

    #[test]
    fn sizes_are_short() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0G");
    }
}
