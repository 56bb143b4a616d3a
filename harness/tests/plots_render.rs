//! Renders every chart kind to PNG and SVG and checks the files. Set GENBENCH_PLOT_SAMPLES=DIR
//! to keep the images for looking at; otherwise they go to a temporary directory.

use std::path::{Path, PathBuf};

use genbench_harness::fit::{fit_power_law, frontier, AxisNames};
use genbench_harness::plots::{
    fid_vs_time_chart, frontier_chart, per_step_chart, power_law_chart, resolution_chart, write_atomically, write_chart, write_png, Chart,
    QualitySpeedPoint, ResolutionPoint, Scale, Series, StepQuantity, Style,
};
use genbench_harness::records::StepRecord;
use genbench_harness::sweep_log::SweepLog;

fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("GENBENCH_PLOT_SAMPLES") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            (None, PathBuf::from(dir))
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/scaling").join(name)
}

/// A real PNG of the requested size with more than a blank page in it, and an SVG with text.
fn check_files(stem: &Path, size: (u32, u32)) {
    let png = std::fs::read(stem.with_extension("png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR width and height, big-endian at bytes 16..24.
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), size);
    assert!(png.len() > 15_000, "{} is suspiciously small ({} bytes)", stem.display(), png.len());
    let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<text"), "SVG without text");
}

#[test]
fn scaling_law_plots_from_the_fixtures() {
    let (_keep, dir) = out_dir();
    let log = SweepLog::read(&fixture("params_sweep.csv")).unwrap();
    let mut groups = Vec::new();
    let mut fits = Vec::new();
    for y in ["loss_last", "loss_avg"] {
        let e = log.extract("params", y, None).unwrap();
        let points = e.groups[0].1.clone();
        let fit = fit_power_law(&points, &AxisNames { x: e.x_column.clone(), y: y.into() }, None).unwrap();
        groups.push((y.to_string(), points));
        fits.push(fit);
    }
    let fit_refs: Vec<(String, &_, _)> = fits.iter().zip(&groups).map(|(f, (label, pts))| (label.clone(), f, pts.clone())).collect();
    let names = AxisNames { x: "params".into(), y: "test loss".into() };
    let chart = power_law_chart("Loss vs parameters (params_sweep.csv)", &names, &groups, &fit_refs);
    let stem = dir.join("scaling_params");
    write_chart(&chart, &stem).unwrap();
    check_files(&stem, chart.size);
    // The legend carries each formula and r.
    let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
    assert!(svg.contains("loss_last: L = (2.03e-9·N)^-0.233, r = -0.9997"), "legend text missing");

    let log = SweepLog::read(&fixture("compute_log.jsonl")).unwrap();
    let by_model = log.extract("compute", "loss", Some("model")).unwrap();
    let all: Vec<_> = by_model.groups.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let f = frontier(&all);
    let fit = fit_power_law(&f, &AxisNames { x: "compute".into(), y: "loss".into() }, Some(2.0)).unwrap();
    let chart = frontier_chart(
        "Loss vs training compute, C_min frontier",
        &AxisNames { x: "compute".into(), y: "loss".into() },
        &by_model.groups,
        &f,
        &fit,
    );
    let stem = dir.join("scaling_frontier");
    write_chart(&chart, &stem).unwrap();
    check_files(&stem, chart.size);
}

#[test]
fn runner_charts_render() {
    let (_keep, dir) = out_dir();
    // VAR Table 1 (v2+): FID and time relative to VAR-d30, as published.
    let published = [
        ("VAR", "d16", 0.4, 3.30),
        ("VAR", "d20", 0.5, 2.57),
        ("VAR", "d24", 0.6, 2.09),
        ("VAR", "d30", 1.0, 1.92),
        ("Diffusion", "DiT-L/2", 31.0, 5.02),
        ("Diffusion", "DiT-XL/2", 45.0, 2.27),
        ("Diffusion", "ADM", 168.0, 10.94),
        ("Masked", "MaskGIT", 0.5, 6.18),
        ("AR", "VQGAN", 19.0, 18.65),
        ("AR", "RQTran.", 21.0, 7.55),
    ];
    let points: Vec<QualitySpeedPoint> =
        published.iter().map(|&(f, m, t, fid)| QualitySpeedPoint { family: f.into(), model: m.into(), time: t, fid }).collect();
    let chart = fid_vs_time_chart("FID vs time (VAR Table 1, published)", "time relative to VAR-d30", &points);
    let stem = dir.join("fid_vs_time");
    write_chart(&chart, &stem).unwrap();
    check_files(&stem, chart.size);

    // Per-step FLOPs of VAR-d16 per scale (`VarConfig::reference_step_flops` without CFG, here
    // x2 for CFG) and the LlamaGen-B step formula; times assume 100 GFLOP/s plus 2 ms of overhead per step, only to have a
    // plausible second panel.
    let var_gflop = [0.62, 1.85, 3.91, 6.82, 10.57, 15.22, 27.17, 42.99, 74.38, 116.84];
    let mut steps = Vec::new();
    for (i, g) in var_gflop.iter().enumerate() {
        steps.push(step("var", "var-d16", i as u32, 2.0 * g, (i + 1) as u64));
    }
    let (l, d, h, v) = (12.0, 768.0, 2048.0, 16384.0);
    for t in 0..256u32 {
        let k = f64::from(t) + 1.0;
        let gflop = 2.0 * 2.0 * (l * (8.0 * d * d + 6.0 * d * h + 4.0 * k * d) + 2.0 * d * v) / 1e9;
        steps.push(step("llamagen", "llamagen-b", t, gflop, 1));
    }
    for (q, name) in [(StepQuantity::Gflop, "per_step_gflop"), (StepQuantity::Milliseconds, "per_step_ms")] {
        let chart = per_step_chart(&steps, q);
        let stem = dir.join(name);
        write_chart(&chart, &stem).unwrap();
        check_files(&stem, chart.size);
    }

    // Wall clock vs resolution: synthetic power laws with slopes 2 and 2.4 and a little scatter.
    let mut res = Vec::new();
    for (k, r) in [128.0, 256.0, 384.0, 512.0].iter().enumerate() {
        let wiggle = 1.0 + 0.03 * (k as f64 - 1.5);
        res.push(ResolutionPoint { family: "var".into(), resolution: *r, seconds: 0.02 * (r / 128.0f64).powf(2.0) * wiggle });
        res.push(ResolutionPoint { family: "llamagen".into(), resolution: *r, seconds: 0.3 * (r / 128.0f64).powf(2.4) / wiggle });
    }
    res.push(ResolutionPoint { family: "mar".into(), resolution: 256.0, seconds: 4.0 });
    let chart = resolution_chart("Wall clock vs resolution (synthetic timings)", &res);
    let stem = dir.join("resolution");
    write_chart(&chart, &stem).unwrap();
    check_files(&stem, chart.size);
    let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
    assert!(svg.contains("var: slope 2"), "fitted slope missing from the legend");
    assert!(svg.contains("mar (too few points for a slope)"));
}

fn step(family: &str, model: &str, step: u32, gflop: f64, tokens: u64) -> StepRecord {
    StepRecord {
        family: family.into(),
        model: model.into(),
        batch: 1,
        step,
        kind: "transformer".into(),
        tokens,
        attended: tokens,
        ms: gflop / 100.0 * 1e3 + 2.0,
        gflop,
    }
}

#[test]
fn failed_draw_leaves_no_file_and_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = Chart {
        series: vec![Series::new("a", vec![(1.0, 1.0), (10.0, 3.0)], Style::Line, genbench_harness::plots::palette(0))],
        ..Chart::new("ok", "x", "y").scales(Scale::Log, Scale::Log)
    };
    let mut bad = good.clone();
    bad.series[0].points.push((0.0, 1.0)); // zero on a log axis
    let path = dir.path().join("p.png");
    let err = write_png(&bad, &path).unwrap_err().to_string();
    assert!(err.contains("which a log axis cannot show"), "{err}");
    assert!(!path.exists());
    write_png(&good, &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(write_png(&bad, &path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before, "a failed draw replaced the good image");

    // A writer that fails after putting bytes in its file (as a backend that painted the
    // background and then hit an error would): nothing appears under the real name.
    let other = dir.path().join("q.png");
    let err = write_atomically(&other, |tmp| {
        std::fs::write(tmp, b"half a picture")?;
        anyhow::bail!("font missing")
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("font missing"));
    assert!(!other.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind: {leftovers:?}");
}

#[test]
fn legend_moves_below_when_every_corner_has_data() {
    let (_keep, dir) = out_dir();
    // Two interleaved clouds filling the whole plot.
    let cloud = |phase: f64| -> Vec<(f64, f64)> {
        (0..400)
            .map(|i| {
                let t = f64::from(i);
                ((t * 0.618 + phase).fract() * 10.0, (t * 0.377 + phase * 0.5).fract() * 5.0)
            })
            .collect()
    };
    let mut chart = Chart::new("Legend below the plot", "x", "y");
    chart.series.push(Series::new(
        "cloud A",
        cloud(0.1),
        Style::Points(genbench_harness::plots::Marker::Circle),
        genbench_harness::plots::palette(0),
    ));
    chart.series.push(Series::new(
        "cloud B",
        cloud(0.6),
        Style::Points(genbench_harness::plots::Marker::Triangle),
        genbench_harness::plots::palette(1),
    ));
    let stem = dir.join("legend_below");
    write_chart(&chart, &stem).unwrap();
    check_files(&stem, chart.size);
}
