//! `genbench fit` end to end on the scaling fixtures (the binary's subcommand is a thin wrapper
//! over `fit_command::run`).

use std::path::{Path, PathBuf};

use genbench_harness::fit_command::{run, FitRequest};

fn copy_fixtures(dir: &Path) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/scaling");
    for f in ["params_sweep.csv", "compute_log.jsonl"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
}

fn request(log: PathBuf, x: &str, y: &str) -> FitRequest {
    FitRequest {
        log: log.clone(),
        x: x.into(),
        y: y.into(),
        group: None,
        irreducible: None,
        frontier: false,
        plot: None,
        // Outputs beside the log here, as these tests copy the log into their own folder.
        out_dir: log.parent().map(Path::to_path_buf),
        no_plot: false,
    }
}

#[test]
fn params_sweep_table_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixtures(dir.path());
    let outcome = run(&request(dir.path().join("params_sweep.csv"), "params", "loss_last")).unwrap();
    assert_eq!(outcome.fits.len(), 1);
    let fit = &outcome.fits[0].fit;
    assert!((fit.alpha + 0.23250809694446106).abs() < 1e-10, "{}", fit.alpha);
    let table = outcome.table();
    assert!(table.contains("all    12  -0.2325  [-0.2366, -0.2284]  2.026e-9"), "{table}");
    assert!(table.contains("all: L = (2.03e-9·N)^-0.233"), "{table}");

    let json: serde_json::Value = serde_json::to_value(&outcome).unwrap();
    let f0 = &json["fits"][0];
    assert_eq!(f0["n"], 12);
    assert_eq!(f0["points"].as_array().unwrap().len(), 12);
    assert_eq!(f0["points"][0]["line"], 2);
    assert!(json["beta_ci_method"].as_str().unwrap().starts_with("delta method"));
    assert!(f0["beta_ci95"][0].as_f64().unwrap() < 2.0e-9 && f0["beta_ci95"][1].as_f64().unwrap() > 2.0e-9);

    let png = dir.path().join("params_sweep.fit-loss_last-vs-params.png");
    assert!(png.is_file() && png.with_extension("svg").is_file());
    assert_eq!(outcome.plot.unwrap().png, png);
}

#[test]
fn grouped_and_frontier_fits() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixtures(dir.path());
    let log = dir.path().join("compute_log.jsonl");
    let mut req = request(log.clone(), "compute", "loss");
    req.group = Some("model".into());
    req.no_plot = true;
    let grouped = run(&req).unwrap();
    let groups: Vec<&str> = grouped.fits.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(groups, ["var-d6", "var-d10", "var-d14", "var-d20", "var-d26"]);
    assert!(grouped.fits.iter().all(|g| g.fit.n == 40));

    req.frontier = true;
    req.irreducible = Some(2.0);
    req.no_plot = false;
    let f = run(&req).unwrap();
    assert_eq!(f.fits.len(), 1);
    assert_eq!(f.fits[0].fit.n, 68);
    assert!((f.fits[0].fit.alpha + 0.11844493122667502).abs() < 1e-10, "{}", f.fits[0].fit.alpha);
    assert!(f.table().contains("frontier definition: all rows sorted by compute ascending"));
    assert!(dir.path().join("compute_log.fit-loss-vs-compute-frontier.png").is_file());
}

fn error(log_text: &str, name: &str, x: &str, y: &str, irreducible: Option<f64>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join(name);
    std::fs::write(&log, log_text).unwrap();
    let mut req = request(log.clone(), x, y);
    req.irreducible = irreducible;
    req.no_plot = true;
    format!("{:#}", run(&req).unwrap_err()).replace(&log.display().to_string(), name)
}

#[test]
fn bad_logs_say_what_and_where() {
    let csv = "model,params,loss_last\na,1e6,3.0\nb,1e7,2.0\nc,1e8,1.5\n";
    assert_eq!(
        error(csv, "s.csv", "params", "loss", None),
        "s.csv: no column `loss` (also tried test_loss, val_loss, eval_loss); available columns: model, params, loss_last"
    );
    assert_eq!(
        error("params,loss\n1,2\n2,1\n", "s.csv", "params", "loss", None),
        "s.csv: has 2 usable points; a power-law fit needs at least 3"
    );
    assert_eq!(
        error("params,loss\n1,2\n0,1\n3,1\n", "s.csv", "params", "loss", None),
        "s.csv: fitting loss against params: line 3: params = 0 is not positive, so it has no logarithm"
    );
    assert_eq!(
        error(csv, "s.csv", "params", "loss_last", Some(1.6)),
        "s.csv: fitting loss_last against params: line 4: loss_last - L_inf = 1.5 - 1.6 = -0.10000000000000009 is not positive; \
         the irreducible loss must lie below every point"
    );
    assert_eq!(
        error("{\"compute\": 1, \"loss\": 2}\n{\"compute\": 2, \"loss\": \"n/a\"}\n", "t.jsonl", "compute", "loss", None),
        "t.jsonl:2: column `loss` is `n/a`, expected a number"
    );
    let missing = format!("{:#}", run(&request(PathBuf::from("/nonexistent/log.csv"), "params", "loss")).unwrap_err());
    assert_eq!(missing, "/nonexistent/log.csv: cannot read: No such file or directory (os error 2)");
}

#[test]
fn plots_go_to_the_output_folder_never_the_logs() {
    let data = tempfile::tempdir().unwrap();
    copy_fixtures(data.path());
    let out = tempfile::tempdir().unwrap();
    let before: Vec<_> = std::fs::read_dir(data.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let mut req = request(data.path().join("params_sweep.csv"), "params", "loss_last");
    req.out_dir = Some(out.path().join("fits"));
    let outcome = run(&req).unwrap();
    let png = out.path().join("fits/params_sweep.fit-loss_last-vs-params.png");
    assert_eq!(outcome.plot.unwrap().png, png);
    assert!(png.is_file() && png.with_extension("svg").is_file());
    let after: Vec<_> = std::fs::read_dir(data.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "nothing written beside the log");
}
