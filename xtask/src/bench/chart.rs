//! The closed-loop results as a PNG bar chart (plotters, bitmap backend; text through
//! ab_glyph with a TrueType font found on the system — no fontconfig needed).

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use plotters::{
    prelude::*,
    style::{
        register_font,
        text_anchor::{HPos, Pos, VPos},
        FontStyle,
    },
};

use crate::closed_loop::{Results, SIZES, VARIANTS};

/// DejaVu Sans (Debian `fonts-dejavu-core`, which `cargo xtask bench` installs if missing).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const COLORS: [RGBColor; 5] = [
    RGBColor(150, 150, 150), // trivial
    RGBColor(31, 119, 180),  // ikelb
    RGBColor(214, 39, 40),   // nft
    RGBColor(255, 127, 14),  // kernel
    RGBColor(120, 180, 230), // ikelb with the lever
];

pub fn draw(r: &Results, machine: &str, path: &Path) -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| format!("reading the chart font {FONT}"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a usable TrueType font"))?;

    let ymax = SIZES
        .iter()
        .flat_map(|(s, _)| VARIANTS.iter().map(move |v| r.median(s, v.key)))
        .fold(0.0f64, f64::max)
        * 1.32;
    let root = BitMapBackend::new(path, (1200, 680)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(56);
    title
        .draw(&Text::new(
            "ikelb closed loop: packets per second through one core (higher is better)",
            (20, 10),
            ("sans-serif", 21).into_font().color(&BLACK),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    title
        .draw(&Text::new(
            machine.to_owned(),
            (20, 36),
            ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(|e| anyhow!("{e}"))?;

    let mut chart = ChartBuilder::on(&body)
        .margin_left(10)
        .margin_right(20)
        .margin_bottom(10)
        .x_label_area_size(82)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..SIZES.len() as f64, 0f64..ymax)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc("Mpps (64-byte frames)")
        .y_label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;

    let width = 0.8 / VARIANTS.len() as f64;
    for (vi, variant) in VARIANTS.iter().enumerate() {
        let (v, label) = (variant.key, variant.what);
        let color = COLORS[vi];
        let bars = SIZES.iter().enumerate().map(|(si, (s, _))| {
            let x0 = si as f64 + 0.1 + vi as f64 * width;
            Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.92, r.median(s, v))],
                color.filled(),
            )
        });
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        for (si, (s, _)) in SIZES.iter().enumerate() {
            let x = si as f64 + 0.1 + (vi as f64 + 0.46) * width;
            let m = r.median(s, v);
            let at = chart.backend_coord(&(x, m));
            root.draw(&Text::new(
                format!("{m:.2}"),
                (at.0, at.1 - 6),
                ("sans-serif", 15)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        }
    }
    for (si, (s, clients)) in SIZES.iter().enumerate() {
        let at = chart.backend_coord(&(si as f64 + 0.5, 0.0));
        let t = r.median(s, "trivial");
        let i = r.median(s, "ikelb");
        let n = r.median(s, "nft");
        let l = r.median(s, "lever");
        let centered = |size| {
            ("sans-serif", size)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top))
        };
        root.draw(&Text::new(
            format!("{} clients", thousands(*clients)),
            (at.0, at.1 + 8),
            centered(17),
        ))
        .map_err(|e| anyhow!("{e}"))?;
        root.draw(&Text::new(
            format!("ikelb = {:.2} × trivial, {:.1} × nft", i / t, i / n),
            (at.0, at.1 + 30),
            centered(15),
        ))
        .map_err(|e| anyhow!("{e}"))?;
        root.draw(&Text::new(
            format!("with the lever: {:.2} × trivial, {:.1} × nft", l / t, l / n),
            (at.0, at.1 + 50),
            centered(15),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// 1000000 → "1,000,000".
pub fn thousands(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
