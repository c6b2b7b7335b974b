//! `sleuth plot`: training curves of runs' `metrics.jsonl` rendered to one PNG ([`sleuth::plot`]).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

/// Flags of `sleuth plot`.
#[derive(Args)]
pub struct PlotArgs {
    /// Run directories (or metrics.jsonl files); several runs are overlaid, one colour each.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output PNG (default: <run>/curves.png for a single run; required for several).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Moving-average window in steps for the thick curves (1 = raw only).
    #[arg(long, default_value_t = 5)]
    pub smooth: usize,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1900)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 800)]
    pub height: u32,
}

/// `sleuth plot`: renders the curves and prints the PNG path.
pub fn run_plot(a: PlotArgs) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|r| sleuth::plot::RunMetrics::read(r))
        .collect::<Result<Vec<_>, _>>()?;
    let out = match (&a.out, a.runs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) if one.is_dir() => one.join("curves.png"),
        _ => bail!("give --out FILE.png when plotting several runs or a metrics file"),
    };
    sleuth::plot::render(&runs, &out, a.smooth, (a.width, a.height))?;
    println!("{}", out.display());
    Ok(())
}
