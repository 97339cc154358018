//! The µP coordinate check: under µP the mean |activation| of every layer stays flat as the
//! width grows 8×; under standard parametrisation it grows.

use hyb_runtime::mup::{coordinate_check, growth, plot_rows, CoordCheck, Parametrisation};
use std::path::Path;

#[test]
fn activations_are_flat_in_width_under_mup_and_grow_under_standard_parametrisation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_path_buf();
    let rows = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mup_width.hyb");
            let cfg = CoordCheck {
                widths: vec![32, 64, 128, 256],
                base_width: 32,
                steps: 4,
                lr: 1e-2,
                batch: 4,
                seq: 32,
                seed: 0,
            };
            coordinate_check(&file, None, &cfg, &out).unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(rows.len(), 8);
    let (mup, sp) = (growth(&rows, Parametrisation::Mup), growth(&rows, Parametrisation::Standard));
    eprintln!("activation growth over 8× width: µP {mup:.2}, SP {sp:.2}");
    assert!(mup < 1.5, "µP activations grew {mup:.2}× with width");
    assert!(sp > 4.0, "SP activations grew only {sp:.2}× with width");
    let pngs = plot_rows(&rows, dir.path()).unwrap();
    assert_eq!(pngs.len(), 2);
    for p in pngs {
        assert!(std::fs::read(&p).unwrap().starts_with(b"\x89PNG"), "{} is not a PNG", p.display());
    }
}
