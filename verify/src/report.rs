//! `sluice-verify run --report DIR`: per scenario a JSON report, a Markdown
//! report and an SVG timeline (acknowledgements per partition over time,
//! the faults marked), drawn with `plotters`; and `DIR/README.md` with the
//! table of every scenario. People would rather look at an outage than
//! read about it.

use std::path::Path;

use plotters::prelude::*;

use crate::scenario::Outcome;

/// Width of one bucket of the timeline.
const BUCKET_MS: u64 = 100;

/// Writes `outcome`'s JSON, Markdown and SVG into `dir`.
pub fn write(dir: &Path, outcome: &Outcome) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = &outcome.name;
    let json = serde_json::json!({
        "scenario": name,
        "description": outcome.description,
        "report": outcome.report,
        "group": outcome.group,
        "divergent_replicas": outcome.divergent_replicas,
        "faults": outcome.outages.iter().map(|(what, at, outage)| serde_json::json!({
            "fault": what, "at_ms": at, "outage_ms": outage,
        })).collect::<Vec<_>>(),
        "worst_outage_ms": outcome.worst_outage_ms(),
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    write_file(&dir.join(format!("{name}.json")), &text)?;
    plot(&dir.join(format!("{name}.svg")), outcome)?;
    write_file(&dir.join(format!("{name}.md")), &markdown(outcome))
}

/// `DIR/README.md`: the table, each row linking its scenario's report.
pub fn index(dir: &Path, outcomes: &[Outcome]) -> Result<(), String> {
    let mut text = String::from("# sluice-verify run\n\n");
    text.push_str(&crate::scenario::table(outcomes));
    text.push('\n');
    for o in outcomes {
        text.push_str(&format!("- [{0}]({0}.md)\n", o.name));
    }
    write_file(&dir.join("README.md"), &text)
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn markdown(o: &Outcome) -> String {
    let r = &o.report;
    let mut md = format!("# {}\n\n{}\n\n", o.name, o.description);
    md.push_str(&crate::scenario::table(std::slice::from_ref(o)));
    md.push_str(&format!(
        "\nAcknowledged {}, send errors {}, consumed {}, lost {}, duplicated {}, order \
         violations {}, offsets with two values {}, consumers backwards {} / skipped {}, fatal \
         client errors {}.\n\n",
        r.acked,
        r.send_errors,
        r.consumed,
        r.lost.len(),
        r.duplicated.len(),
        r.order_violations.len(),
        r.conflicting_offsets.len(),
        r.went_backwards.len(),
        r.skipped.len(),
        r.fatal_errors.len()
    ));
    md.push_str(&format!(
        "![acknowledgements over time]({}.svg)\n\n",
        o.name
    ));
    md.push_str(
        "| fault | at (ms) | next acknowledgement of every partition (ms) |\n|---|---|---|\n",
    );
    for (what, at, outage) in &o.outages {
        let outage = outage.map_or_else(|| "never".to_string(), |v| v.to_string());
        md.push_str(&format!("| {what} | {at} | {outage} |\n"));
    }
    if let Some(group) = &o.group {
        md.push_str(&format!(
            "\nConsumer group: read more than once {}, unread {}, rebalances during the faults {}.\n",
            group.redelivered,
            group.unread.len(),
            group.rebalances
        ));
        for failure in &group.failures {
            md.push_str(&format!("- failed: {failure}\n"));
        }
    }
    match &o.divergent_replicas {
        Some(d) if d.is_empty() => md.push_str("\nReplicas byte-identical once healed.\n"),
        Some(d) => md.push_str(&format!(
            "\nReplicas still different once healed: {}.\n",
            d.join(", ")
        )),
        None => {}
    }
    if !r.lost.is_empty() {
        md.push_str("\nLost (first 20): ");
        let first: Vec<String> = r
            .lost
            .iter()
            .take(20)
            .map(|(v, (t, p, off))| format!("`{v}` ({t}-{p}@{off})"))
            .collect();
        md.push_str(&first.join(", "));
        md.push('\n');
    }
    md
}

/// Acknowledgements per [`BUCKET_MS`] per partition, with a red line at
/// each fault.
fn plot(path: &Path, o: &Outcome) -> Result<(), String> {
    let end_ms = o
        .acks
        .values()
        .filter_map(|t| t.iter().max())
        .chain(o.outages.iter().map(|(_, at, _)| at))
        .max()
        .copied()
        .unwrap_or(0)
        + BUCKET_MS;
    let buckets = (end_ms / BUCKET_MS) as usize + 1;
    let series: Vec<(i32, Vec<u64>)> = o
        .acks
        .iter()
        .map(|(partition, times)| {
            let mut counts = vec![0u64; buckets];
            for t in times {
                counts[(*t / BUCKET_MS) as usize] += 1;
            }
            (*partition, counts)
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|(_, c)| c.iter())
        .max()
        .copied()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let seconds = end_ms as f64 / 1000.0;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1000, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&o.name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..seconds, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds into the run")
            .y_desc(format!("acks per {BUCKET_MS} ms"))
            .draw()?;
        for (i, (partition, counts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    counts
                        .iter()
                        .enumerate()
                        .map(|(b, c)| ((b as u64 * BUCKET_MS) as f64 / 1000.0, *c as f64)),
                    color.stroke_width(1),
                ))?
                .label(format!("partition {partition}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        for (what, at, _) in &o.outages {
            let x = *at as f64 / 1000.0;
            chart.draw_series(LineSeries::new(
                vec![(x, 0.0), (x, top)],
                RED.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                what.clone(),
                (x, top * 0.97),
                ("sans-serif", 11).into_font().color(&RED),
            )))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("drawing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_has_its_json_markdown_and_timeline() {
        let outcome = Outcome {
            name: "demo".into(),
            description: "a demonstration".into(),
            report: Default::default(),
            group: None,
            divergent_replicas: Some(Vec::new()),
            outages: vec![("Kill [1]".into(), 1000, Some(1500))],
            acks: [(0, vec![10, 20, 2600]), (1, vec![15, 2700])].into(),
        };
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &outcome).unwrap();
        index(dir.path(), std::slice::from_ref(&outcome)).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("demo.json")).unwrap())
                .unwrap();
        assert_eq!(json["worst_outage_ms"], 1500);
        let md = std::fs::read_to_string(dir.path().join("demo.md")).unwrap();
        assert!(md.contains("| Kill [1] | 1000 | 1500 |"), "{md}");
        assert!(
            md.contains("![acknowledgements over time](demo.svg)"),
            "{md}"
        );
        let svg = std::fs::read_to_string(dir.path().join("demo.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("Kill [1]"), "{svg}");
        let readme = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
        assert!(readme.contains("[demo](demo.md)"), "{readme}");
    }
}
