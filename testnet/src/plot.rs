//! SVG plots of a run (plotters): progress of every node, completion-time
//! CDF by role, disk-queue fill of the slow-disk nodes, and what each node
//! gave against what it received.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::config::Role;
use crate::report::Report;

const SIZE: (u32, u32) = (900, 520);
const MIB: f64 = 1024.0 * 1024.0;

fn color(role: Role) -> RGBColor {
    match role {
        Role::Seeder => RGBColor(90, 90, 90),
        Role::Leecher => RGBColor(31, 119, 180),
        Role::FreeRider => RGBColor(214, 39, 40),
        Role::Liar => RGBColor(148, 103, 189),
    }
}

fn plot_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {what}: {e}")
}

/// Writes every plot into `dir`.
pub fn write_all(report: &Report, dir: &Path) -> Result<()> {
    progress(report, &dir.join("progress.svg"))?;
    completion_cdf(report, &dir.join("completion_cdf.svg"))?;
    disk_queue(report, &dir.join("disk_queue.svg"))?;
    given_vs_received(report, &dir.join("upload_vs_download.svg"))?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A white SVG chart with a caption, axes and their labels.
fn chart<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    (x_desc, y_desc): (&str, &str),
) -> Result<Chart<'a, 'b>, DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// A 2-pixel line with an entry in the legend.
fn labelled_line(
    chart: &mut Chart<'_, '_>,
    points: impl IntoIterator<Item = (f64, f64)>,
    c: RGBAColor,
    label: &str,
) -> DrawResult {
    chart
        .draw_series(LineSeries::new(points, c.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
    Ok(())
}

/// The legend, boxed in the top right corner.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> DrawResult {
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
}

/// The run's own time: simulated seconds for a simulation.
fn x_max(report: &Report) -> f64 {
    report
        .simulated
        .as_ref()
        .map_or(report.wall_seconds, |s| s.seconds)
        .max(1.0)
}

fn progress(report: &Report, path: &Path) -> Result<()> {
    let err = plot_err("progress.svg");
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let mut chart = chart(
        &root,
        "Progress of every node (blue: contributors, red: free-riders)",
        0.0..x_max(report),
        0.0..100.0,
        ("seconds", "% verified"),
    )
    .map_err(&err)?;
    for n in report.nodes.iter().filter(|n| n.role.downloads()) {
        let c = color(n.role);
        chart
            .draw_series(LineSeries::new(
                n.samples.iter().map(|s| (s.t, 100.0 * s.progress)),
                c.stroke_width(if n.slow_disk_rate.is_some() { 3 } else { 1 }),
            ))
            .map_err(&err)?;
    }
    root.present().map_err(&err)?;
    Ok(())
}

fn completion_cdf(report: &Report, path: &Path) -> Result<()> {
    let err = plot_err("completion_cdf.svg");
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let mut chart = chart(
        &root,
        "Completion times by role (share of the role's nodes done)",
        0.0..x_max(report),
        0.0..1.0,
        ("seconds after joining", "fraction complete"),
    )
    .map_err(&err)?;
    for role in [Role::Leecher, Role::FreeRider] {
        let of_role: Vec<_> = report.nodes.iter().filter(|n| n.role == role).collect();
        if of_role.is_empty() {
            continue;
        }
        let mut times: Vec<f64> = of_role
            .iter()
            .filter_map(|n| n.completion_seconds)
            .collect();
        times.sort_by(f64::total_cmp);
        let total = of_role.len() as f64;
        let mut points = vec![(0.0, 0.0)];
        for (i, t) in times.iter().enumerate() {
            points.push((*t, i as f64 / total));
            points.push((*t, (i + 1) as f64 / total));
        }
        points.push((x_max(report), times.len() as f64 / total));
        labelled_line(&mut chart, points, color(role).into(), role.name()).map_err(&err)?;
    }
    legend(&mut chart).map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

fn disk_queue(report: &Report, path: &Path) -> Result<()> {
    let err = plot_err("disk_queue.svg");
    // The slow-disk nodes, or every downloading node when none is slow.
    let slow: Vec<_> = report
        .nodes
        .iter()
        .filter(|n| n.slow_disk_rate.is_some())
        .collect();
    let shown: Vec<_> = if slow.is_empty() {
        report.nodes.iter().filter(|n| n.role.downloads()).collect()
    } else {
        slow
    };
    let cap = shown
        .iter()
        .map(|n| n.disk_capacity_bytes)
        .max()
        .unwrap_or(1) as f64
        / MIB;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let mut chart = chart(
        &root,
        "Disk queue: queued + outstanding bytes (dashed: capacity)",
        0.0..x_max(report),
        0.0..cap * 1.1,
        ("seconds", "MiB"),
    )
    .map_err(&err)?;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, cap), (x_max(report), cap)],
            6,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(&err)?;
    for (i, n) in shown.iter().enumerate() {
        let c = Palette99::pick(i).to_rgba();
        let points = n.samples.iter().map(|s| (s.t, s.disk_used as f64 / MIB));
        labelled_line(&mut chart, points, c, &n.name).map_err(&err)?;
    }
    if shown.len() <= 8 {
        legend(&mut chart).map_err(&err)?;
    }
    root.present().map_err(&err)?;
    Ok(())
}

fn given_vs_received(report: &Report, path: &Path) -> Result<()> {
    let err = plot_err("upload_vs_download.svg");
    let nodes: Vec<_> = report.nodes.iter().filter(|n| n.role.downloads()).collect();
    let max = nodes
        .iter()
        .map(|n| n.downloaded.max(n.uploaded))
        .max()
        .unwrap_or(1) as f64
        / MIB;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let mut chart = chart(
        &root,
        "Given vs received per node (tit-for-tat: givers receive)",
        0.0..max * 1.05,
        0.0..max * 1.05,
        ("received MiB", "uploaded MiB"),
    )
    .map_err(&err)?;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (max, max)],
            6,
            4,
            RGBColor(160, 160, 160).stroke_width(1),
        ))
        .map_err(&err)?;
    chart
        .draw_series(nodes.iter().map(|n| {
            Circle::new(
                (n.downloaded as f64 / MIB, n.uploaded as f64 / MIB),
                5,
                color(n.role).filled(),
            )
        }))
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}
