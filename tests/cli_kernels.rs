//! `--kernels` / `GENBENCH_KERNELS` from the outside: `genbench info` names the route in force,
//! the flag wins over the environment, and a bad value is a clear error before any work.

use std::process::{Command, Output};

fn genbench(args: &[&str], env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genbench"));
    cmd.args(args).env_remove("GENBENCH_KERNELS");
    if let Some(v) = env {
        cmd.env("GENBENCH_KERNELS", v);
    }
    let out = cmd.output().expect("run genbench");
    println!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn route_in_info(out: &Output) -> String {
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let json = &text[text.find('{').expect("info prints JSON")..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["kernel_route"].as_str().expect("info has kernel_route").to_string()
}

#[test]
fn info_names_the_route_and_the_flag_wins() {
    assert_eq!(route_in_info(&genbench(&["info"], None)), "fast");
    assert_eq!(route_in_info(&genbench(&["info"], Some("generic"))), "generic");
    assert_eq!(route_in_info(&genbench(&["--kernels", "generic", "info"], None)), "generic");
    assert_eq!(route_in_info(&genbench(&["info", "--kernels", "fast"], Some("generic"))), "fast");
}

#[test]
fn bad_route_is_a_clear_error() {
    for (args, env, needles) in [
        (vec!["info"], Some("gpu"), vec!["GENBENCH_KERNELS", "'gpu'", "expected `fast`"]),
        (vec!["--kernels", "gpu", "info"], None, vec!["--kernels", "gpu"]),
    ] {
        let out = genbench(&args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: expected failure");
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: printed a result: {}", String::from_utf8_lossy(&out.stdout));
        for n in needles {
            assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
        }
    }
}
