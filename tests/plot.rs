//! `sleuth plot`: metrics.jsonl → PNG. Checks the image really carries each run's curves (its
//! colour's pixels), that `null` figures are skipped, and that a malformed line is reported
//! with its file and line number.

use std::io::Write;
use std::path::Path;

use sleuth::plot::{render, RunMetrics};

fn write_run(dir: &Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let mut f = std::fs::File::create(run.join("metrics.jsonl")).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    run
}

fn line(step: usize, reward: f64, kl: Option<f64>, guard: bool) -> String {
    let kl = kl.map_or("null".to_string(), |k| k.to_string());
    let guard = if guard {
        r#","guard":{"reason":"kl","restored_step":1,"lr_scale":0.5}"#
    } else {
        ""
    };
    format!(
        r#"{{"step":{step},"reward_mean":{reward},"reward_std":0.3,"format_ok_rate":{f},"searches_mean":{s},"response_tokens_mean":{t},"kl":{kl},"entropy":1.5{guard}}}"#,
        f = reward / 2.0 + 0.5,
        s = step as f64 / 10.0,
        t = 100 + step * 3,
    )
}

/// Pixels whose colour is within a small distance of `rgb`.
fn count_colour(png_path: &Path, rgb: [u8; 3]) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected colour type {other:?}"),
    };
    let n = buf[..info.buffer_size()]
        .chunks(px)
        .filter(|p| (0..3).all(|i| (p[i] as i32 - rgb[i] as i32).abs() <= 8))
        .count();
    (info.width, info.height, n)
}

#[test]
fn two_runs_are_drawn_in_their_colours_and_nulls_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<String> = (1..=20)
        .map(|s| {
            line(
                s,
                -1.0 + s as f64 / 20.0,
                (s % 3 == 0).then_some(0.01 * s as f64),
                s == 7,
            )
        })
        .collect();
    let b: Vec<String> = (1..=12).map(|s| line(s, -0.5, None, false)).collect();
    let ra = RunMetrics::read(&write_run(dir.path(), "run-a", &a)).unwrap();
    let rb = RunMetrics::read(&write_run(dir.path(), "run-b", &b)).unwrap();
    assert_eq!(ra.label, "run-a");
    assert_eq!(ra.series("kl").len(), 6, "null KL steps are skipped");
    assert!(rb.series("kl").is_empty());
    assert_eq!(ra.guard_steps(), vec![7.0]);

    let out = dir.path().join("curves.png");
    render(&[ra, rb], &out, 3, (900, 500)).unwrap();
    assert!(
        !dir.path().join("curves.tmp.png").exists(),
        "temp file renamed away"
    );
    let (w, h, blue) = count_colour(&out, [31, 119, 180]);
    assert_eq!((w, h), (900, 500));
    let (_, _, red) = count_colour(&out, [214, 39, 40]);
    assert!(blue > 200, "run-a's curves: {blue} pixels");
    assert!(red > 100, "run-b's curves: {red} pixels");
}

#[test]
fn malformed_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = write_run(
        dir.path(),
        "bad",
        &[line(1, 0.0, None, false), "{not json".into()],
    );
    let e = RunMetrics::read(&run).unwrap_err().to_string();
    assert!(e.contains("metrics.jsonl:2:"), "{e}");
    let run = write_run(dir.path(), "nostep", &[r#"{"reward_mean":1}"#.into()]);
    let e = RunMetrics::read(&run).unwrap_err().to_string();
    assert!(e.contains("metrics.jsonl:1:") && e.contains("step"), "{e}");
    let empty = write_run(dir.path(), "empty", &[]);
    assert!(RunMetrics::read(&empty)
        .unwrap_err()
        .to_string()
        .contains("no metrics lines"));
}
