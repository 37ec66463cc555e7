//! The timeline picture: acknowledged posts per second over the run, with each fault's
//! interval (start to all up again) shaded in its kind's colour, and the hostile clients'
//! phases as a grey band along the bottom.
//!
//! Drawn with `plotters` into an RGB buffer and encoded with `image`: no system library. Text
//! needs a font file: the DejaVu Sans of Debian's `fonts-dejavu-core` is loaded at run time;
//! without it the picture is drawn without any text (and the report says so).

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;

use crate::records::FaultRecord;
use crate::scenario::FaultKind;

/// The font used for text, from the Debian package `fonts-dejavu-core`.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 500;
/// Beyond this many faults their labels would overlap: the legend names the kinds instead.
const LABELLED_FAULTS_MAX: usize = 12;
/// Height of the hostile phases' band, as a fraction of the chart's.
const HOSTILE_BAND: f64 = 0.04;
const HOSTILE_COLOUR: RGBColor = RGBColor(90, 90, 90);

fn colour(kind: FaultKind) -> RGBColor {
    match kind {
        FaultKind::Kill => RGBColor(220, 40, 40),
        FaultKind::Pause => RGBColor(240, 150, 20),
        FaultKind::Partition => RGBColor(140, 60, 200),
        FaultKind::Restart => RGBColor(40, 160, 80),
    }
}

/// Registers the font with plotters once; false when it cannot be loaded.
fn load_font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let Ok(bytes) = std::fs::read(FONT_PATH) else {
            return false;
        };
        // plotters keeps fonts for the life of the process; leaking one file's bytes once is it.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

/// Writes the PNG; returns whether it has text (a font was found). `hostile_phases` are
/// `(start_ms, end_ms)`.
pub fn draw(
    path: &Path,
    acks_per_second: &[u64],
    faults: &[FaultRecord],
    hostile_phases: &[(u64, u64)],
    seed: u64,
) -> anyhow::Result<bool> {
    let with_text = load_font();
    let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|error| anyhow!("{error:?}"))?;
        let x_max = (acks_per_second.len().max(1)) as f64;
        let y_max = acks_per_second.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.15;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(15);
        if with_text {
            builder
                .caption(
                    format!(
                        "seed {seed}: acknowledged posts per second; faults shaded (start to all up){}",
                        if hostile_phases.is_empty() { "" } else { ", hostile phases in grey" }
                    ),
                    ("sans-serif", 20),
                )
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|error| anyhow!("{error:?}"))?;
        if with_text {
            chart
                .configure_mesh()
                .x_desc("seconds since the workload started")
                .y_desc("acks per second")
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|error| anyhow!("{error:?}"))?;
        }
        for fault in faults {
            let start = fault.started_ms as f64 / 1000.0;
            let end = fault
                .recovered_ms
                .or(fault.healed_ms)
                .map_or(x_max, |end| end as f64 / 1000.0)
                .max(start + 0.1);
            let style = colour(fault.kind).mix(0.22).filled();
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(start, 0.0), (end, y_max)],
                    style,
                )))
                .map_err(|error| anyhow!("{error:?}"))?;
            if with_text && faults.len() <= LABELLED_FAULTS_MAX {
                let label = format!("{} {}", fault.kind, fault.targets.join("+"));
                chart
                    .draw_series(std::iter::once(Text::new(
                        label,
                        (start, y_max * 0.97),
                        ("sans-serif", 12).into_font().color(&colour(fault.kind)),
                    )))
                    .map_err(|error| anyhow!("{error:?}"))?;
            }
        }
        for (start, end) in hostile_phases {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (*start as f64 / 1000.0, 0.0),
                        (*end as f64 / 1000.0, y_max * HOSTILE_BAND),
                    ],
                    HOSTILE_COLOUR.mix(0.6).filled(),
                )))
                .map_err(|error| anyhow!("{error:?}"))?;
        }
        let points = acks_per_second
            .iter()
            .enumerate()
            .map(|(second, count)| (second as f64 + 0.5, *count as f64));
        chart
            .draw_series(LineSeries::new(
                points,
                ShapeStyle::from(&BLUE).stroke_width(2),
            ))
            .map_err(|error| anyhow!("{error:?}"))?
            .label("acks per second")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    ShapeStyle::from(&BLUE).stroke_width(2),
                )
            });
        if with_text {
            // One legend entry per kind of fault present (an empty series carries it).
            for kind in FaultKind::ALL
                .into_iter()
                .filter(|kind| faults.iter().any(|fault| fault.kind == *kind))
            {
                chart
                    .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                    .map_err(|error| anyhow!("{error:?}"))?
                    .label(kind.to_string())
                    .legend(move |(x, y)| {
                        Rectangle::new(
                            [(x, y - 6), (x + 20, y + 6)],
                            colour(kind).mix(0.4).filled(),
                        )
                    });
            }
            if !hostile_phases.is_empty() {
                chart
                    .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                    .map_err(|error| anyhow!("{error:?}"))?
                    .label("hostile clients")
                    .legend(|(x, y)| {
                        Rectangle::new(
                            [(x, y - 3), (x + 20, y + 3)],
                            HOSTILE_COLOUR.mix(0.6).filled(),
                        )
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|error| anyhow!("{error:?}"))?;
        }
        root.present().map_err(|error| anyhow!("{error:?}"))?;
    }
    image::save_buffer(path, &buffer, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(with_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(index: usize, kind: FaultKind) -> FaultRecord {
        let started_ms = 5_000 + index as u64 * 9_000;
        FaultRecord {
            index,
            lane: 0,
            kind,
            shape: None,
            targets: vec![format!("n{}", index % 3 + 1)],
            survivors: Vec::new(),
            victim_rooms: Vec::new(),
            started_ms,
            healed_ms: Some(started_ms + 4_000),
            recovered_ms: Some(started_ms + 4_500),
            detection_ms: None,
            rehosted_ms: None,
            first_served_ms: None,
            journal_conflicts: 0,
            notes: Vec::new(),
        }
    }

    #[test]
    fn timelines_are_written_as_png_with_few_or_many_faults() {
        let directory = tempfile::tempdir().expect("tempdir");
        for count in [3, 30] {
            let faults: Vec<FaultRecord> = (0..count)
                .map(|index| fault(index, FaultKind::ALL[index % 4]))
                .collect();
            let seconds = 10 + count * 9;
            let acks: Vec<u64> = (0..seconds)
                .map(|second| 300 + (second as u64 * 37) % 120)
                .collect();
            let path = directory.path().join(format!("timeline-{count}.png"));
            let hostile: Vec<(u64, u64)> = (0..count as u64)
                .map(|index| (5_000 + index * 9_000, 9_000 + index * 9_000))
                .collect();
            draw(&path, &acks, &faults, &hostile, 42).expect("drawn");
            let bytes = std::fs::read(&path).expect("written");
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
            if let Some(keep) = std::env::var_os("CHAOS_KEEP_TIMELINE") {
                std::fs::copy(
                    &path,
                    std::path::Path::new(&keep).join(format!("timeline-{count}.png")),
                )
                .expect("copy");
            }
        }
    }
}
