//! The standard library is compiled into `hyb`: a copy of the binary alone in an empty folder,
//! with no `HYB_STDLIB`, still resolves `import std.…`; `HYB_STDLIB=DIR` overrides it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A copy of the built `hyb` in a fresh empty folder, far from the source tree.
struct Installed {
    dir: tempfile::TempDir,
    exe: PathBuf,
}

impl Installed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("hyb");
        std::fs::copy(env!("CARGO_BIN_EXE_hyb"), &exe).unwrap();
        Installed { dir, exe }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the copy from its folder, with `HYB_STDLIB` set only when `stdlib` is given.
    fn run(&self, args: &[&str], stdlib: Option<&Path>) -> Output {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).current_dir(self.dir.path()).env("NO_COLOR", "1").env_remove("HYB_STDLIB");
        if let Some(dir) = stdlib {
            cmd.env("HYB_STDLIB", dir);
        }
        // Another test thread forking while the copy was open for writing keeps it busy
        // for a moment (ETXTBSY); the copy is complete, so try again.
        for _ in 0..100 {
            match cmd.output() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                result => return result.unwrap(),
            }
        }
        cmd.output().unwrap()
    }
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

const MODEL: &str = "import std.layers\nimport std.falcon_h1\n\nmodel m {\n    vocab = 32\n    d = 16\n    layers = pattern(\"M*\")\n    heads = HEADS\n    ssm_heads = 2\n    ssm_head_dim = 8\n    d_state = 4\n    chunk = 4\n}\n";

#[test]
fn a_copied_binary_checks_imports_and_trains_without_the_source_tree() {
    let hyb = Installed::new();
    std::fs::write(hyb.path("m.hyb"), MODEL.replace("HEADS", "2")).unwrap();
    assert_ok(&hyb.run(&["check", "m.hyb"], None));

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/falcon_h1/gqa_basic");
    assert_ok(&hyb.run(&["import", fixture.to_str().unwrap(), "-o", "out", "--name", "m"], None));
    assert_ok(&hyb.run(&["check", "out/m.hyb"], None));
    let train = "train out/m.hyb --data mqar --mqar-pairs 3 --steps 2 --batch 2 --seq 16 --eval-every 0 --out run";
    assert_ok(&hyb.run(&train.split(' ').collect::<Vec<_>>(), None));
    assert!(hyb.path("run/checkpoint.safetensors").exists());
}

/// An error inside a std block names the module by its virtual path and shows its lines.
#[test]
fn errors_in_the_embedded_stdlib_show_its_source() {
    let hyb = Installed::new();
    std::fs::write(hyb.path("m.hyb"), MODEL.replace("HEADS", "3")).unwrap();
    let out = hyb.run(&["check", "m.hyb"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("╭─[<std>/layers.hyb:"), "{err}");
    assert!(err.contains("head_dim: int = d / heads"), "{err}");
}

#[test]
fn hyb_stdlib_takes_precedence_over_the_embedded_stdlib() {
    let hyb = Installed::new();
    let stdlib = hyb.path("my_stdlib");
    std::fs::create_dir(&stdlib).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), stdlib.join(e.file_name())).unwrap();
    }
    let layers = std::fs::read_to_string(stdlib.join("layers.hyb")).unwrap();
    std::fs::write(
        stdlib.join("layers.hyb"),
        layers + "\nblock only_in_my_stdlib(x: [B, T, d]) -> [B, T, d] {\n    return x\n}\n",
    )
    .unwrap();
    let model = MODEL.replace("HEADS", "2").replace("pattern(\"M*\")", "pattern(\"M*X\", X = only_in_my_stdlib)");
    std::fs::write(hyb.path("m.hyb"), model).unwrap();

    assert_ok(&hyb.run(&["check", "m.hyb"], Some(&stdlib)));
    let out = hyb.run(&["check", "m.hyb"], None);
    assert_eq!(out.status.code(), Some(1), "the embedded stdlib has no `only_in_my_stdlib`");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only_in_my_stdlib"));
}
